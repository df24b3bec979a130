"""`make run`'s check for the system libraries Qt's X11 plugin needs."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_qt_deps", REPO / "scripts" / "check_qt_deps.py")
check_qt_deps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_qt_deps)

LDD_MISSING = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibxcb-cursor.so.0 => not found
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibweird-thing.so.3 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f)
"""


def _fake_qt(tmp_path: Path) -> Path:
    plugin = tmp_path / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    plugin.parent.mkdir(parents=True)
    plugin.write_bytes(b"")
    return tmp_path / "Qt"


def test_missing_libraries_are_named_with_the_install_command(tmp_path, monkeypatch, capsys):
    qt = _fake_qt(tmp_path)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, LDD_MISSING, ""))
    assert check_qt_deps.missing_libraries(qt) == ["libxcb-cursor.so.0", "libxcb-icccm.so.4",
                                                  "libxcb-keysyms.so.1", "libweird-thing.so.3"]
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    found = check_qt_deps.missing_libraries(qt)
    monkeypatch.setattr(check_qt_deps, "missing_libraries", lambda _qt: found)
    assert check_qt_deps.main() == 1
    err = capsys.readouterr().err
    assert "sudo apt-get install -y libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1" in err
    assert "libweird-thing.so.3" in err.splitlines()[-1]


def test_nothing_missing_or_offscreen_passes(tmp_path, monkeypatch):
    monkeypatch.setattr(check_qt_deps, "missing_libraries", lambda _qt: [])
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    assert check_qt_deps.main() == 0
    monkeypatch.setattr(check_qt_deps, "missing_libraries", lambda _qt: ["libxcb-cursor.so.0"])
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert check_qt_deps.main() == 0  # no window is opened: nothing to check
