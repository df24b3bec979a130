"""Packaging: the installed (non-editable) app has every module; the self-contained Linux app
(packaging/: the freezer's guards, the .desktop file, ``--version``, one window per library); and,
when ``CLIPDESK_BUNDLE`` names an installed bundle (CI sets it after installing the .deb), that
bundle run with an empty environment: no Python, no venv."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = os.environ.get("CLIPDESK_BUNDLE")
sys.path.insert(0, str(REPO / "packaging"))
import build as bundle_build  # noqa: E402 - packaging/build.py, the bundle's builder and checks


def test_every_source_package_is_installed():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    listed = set(cfg["packages"])
    found = set()
    for name, folder in dirs.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]))
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"


# ---------------------------------------------------------------------- the builder's checks
def test_system_libraries_are_only_the_desktops_own():
    ok = ["libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2", "libGL.so.1", "libEGL.so.1", "libxcb.so.1",
          "libGLdispatch.so.0", "libwayland-client.so.0"]
    bundled = ["libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxkbcommon-x11.so.0", "libfontconfig.so.1",
               "libdbus-1.so.3", "libX11.so.6", "libstdc++.so.6", "libGLU.so.1"]
    assert [n for n in ok if not bundle_build.SYSTEM_LIBS.match(n)] == []
    assert [n for n in bundled if bundle_build.SYSTEM_LIBS.match(n)] == []


def test_check_refuses_a_bundle_with_torch(tmp_path):
    app = tmp_path / "clipdesk"
    (app / "_internal" / "torch").mkdir(parents=True)
    (app / "_internal" / "torch" / "__init__.py").write_text("")
    with pytest.raises(SystemExit, match="torch"):
        bundle_build.check(app)


@pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd (glibc)")
def test_check_names_a_library_the_bundle_lacks(tmp_path):
    """An ELF file whose library is neither in the folder nor a desktop's own fails the build."""
    app = tmp_path / "clipdesk"
    (app / "_internal").mkdir(parents=True)
    import _ctypes

    lib = Path(_ctypes.__file__)
    shutil.copy(lib, app / "_internal" / lib.name)  # links libffi: not in this folder, not a system lib
    found = bundle_build.outside_libraries(app)
    assert any(n.startswith("libffi") for n in found[f"_internal/{lib.name}"])
    with pytest.raises(SystemExit, match="libffi"):
        bundle_build.check(app)


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None, reason="needs desktop-file-utils")
def test_desktop_file_is_valid_and_starts_the_app():
    desktop = REPO / "packaging" / "clipdesk.desktop"
    r = subprocess.run(["desktop-file-validate", str(desktop)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr
    entries = dict(line.split("=", 1) for line in desktop.read_text().splitlines() if "=" in line)
    assert entries["Exec"].split()[0] == "clipdesk-gui" and entries["Icon"] == "clipdesk"
    assert (REPO / "packaging" / "clipdesk.svg").read_text().lstrip().startswith("<?xml")
    apprun = REPO / "packaging" / "AppRun"
    assert os.access(apprun, os.X_OK) and "clipdesk-gui" in apprun.read_text()


# ---------------------------------------------------------------------- --version
def test_version_says_runtime_and_model():
    r = subprocess.run([sys.executable, "-m", "clipdesk.cli", "--version"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    from clipdesk import __version__

    assert lines[0] == f"clipdesk {__version__}"
    assert lines[1].startswith("runtime: onnxruntime ")
    assert lines[2].startswith("model: ") and "test-tiny" in lines[2]


def test_about_names_the_loaded_encoder():
    from clipdesk.about import report

    class Enc:
        name, backend, precision, device = "ViT-B-32/openai", "openvino", "bf16", "cpu"

    lines = report(model="ViT-B-32/openai", encoder=Enc())
    assert "model: ViT-B-32/openai (openvino, bf16, cpu)" in lines
    assert "model: ViT-B-32/openai (not loaded yet)" in report(model="ViT-B-32/openai")


# ---------------------------------------------------------------------- one window per library
def _gui(library: Path, home: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "XDG_"))}
    env.update(QT_QPA_PLATFORM="offscreen", HOME=str(home), XDG_CONFIG_HOME=str(home / "config"),
               XDG_DATA_HOME=str(home / "data"), XDG_CACHE_HOME=str(home / "cache"))
    return subprocess.Popen([sys.executable, "-m", "clipdesk.ui.app", "--library", str(library), "--model",
                             "test-tiny", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _folders(library: Path) -> list[str]:
    r = subprocess.run([sys.executable, "-m", "clipdesk.cli", "status", "--json", "--library", str(library)],
                       capture_output=True, text=True, timeout=60)
    return json.loads(r.stdout)["folders"] if r.returncode == 0 else []


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


def _stop(p: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if p.poll() is None:
        os.killpg(p.pid, sig)
        p.wait(20)


@pytest.mark.gui
def test_second_launch_shows_the_running_window_and_hands_over_its_folder(tmp_path):
    library, photos = tmp_path / "library", tmp_path / "photos"
    shutil.copytree(REPO / "assets" / "sample" / "bird", photos)
    first = _gui(library, tmp_path / "home")
    try:
        _wait(lambda: (library / "catalog.sqlite").exists(), 60, "the first window to open its library")
        second = _gui(library, tmp_path / "home", "--add-folder", str(photos))
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 0, out
        assert "already open on this library" in out
        assert first.poll() is None, "the first window must keep running"
        # the folder the second launch was given is added by the first (the one writer)
        _wait(lambda: str(photos) in _folders(library), 60, "the handed-over folder in the library")
    finally:
        _stop(first)


@pytest.mark.gui
def test_a_launch_after_a_crash_is_the_first_again(tmp_path):
    library = tmp_path / "library"
    crashed = _gui(library, tmp_path / "home")
    _wait(lambda: (library / "catalog.sqlite").exists(), 60, "the window to open its library")
    time.sleep(1)
    _stop(crashed, signal.SIGKILL)  # leaves its socket and lock file behind
    again = _gui(library, tmp_path / "home")
    try:
        time.sleep(8)
        assert again.poll() is None, f"a launch after a crash must open the window: {again.stdout.read()}"
    finally:
        _stop(again)


# ---------------------------------------------------------------------- the installed bundle
def _empty_env(home: Path) -> dict[str, str]:
    """What ``env -i HOME=... PATH=/usr/bin:/bin`` gives: no venv, no PYTHON*, the project's
    Python out of reach."""
    return {"HOME": str(home), "PATH": "/usr/bin:/bin"}


@pytest.mark.skipif(not BUNDLE, reason="set CLIPDESK_BUNDLE to an installed bundle (e.g. /opt/clipdesk)")
def test_installed_bundle_indexes_and_searches_with_an_empty_environment(tmp_path, shared_data):
    app = Path(BUNDLE)
    env = _empty_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    v = subprocess.run([str(app / "clipdesk"), "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr
    assert "torch: not installed" in v.stdout and f"self-contained app in {app}" in v.stdout, v.stdout
    photos = shared_data / "photos" / "labelled"
    n = sum(1 for p in photos.rglob("*.jpg"))
    lib = tmp_path / "library"
    r = subprocess.run([str(app / "clipdesk"), "--library", str(lib), "--model", "test-tiny", "--json", "index",
                        str(photos)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == n
    s = subprocess.run([str(app / "clipdesk"), "--library", str(lib), "--json", "search", "a bird", "-k", "5"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert s.returncode == 0, s.stderr
    hits = json.loads(s.stdout)
    assert len(hits) == 5 and all(Path(h["path"]).is_file() for h in hits)
    # user data in the platform folders under HOME, nothing written into the app's folder
    assert not any(p.stat().st_mtime > time.time() - 600 for p in (app / "_internal").rglob("*.sqlite"))


@pytest.mark.skipif(not BUNDLE, reason="set CLIPDESK_BUNDLE to an installed bundle (e.g. /opt/clipdesk)")
def test_installed_bundle_runs_its_model_host(tmp_path):
    """The app starts its model host as ``sys.executable -m clipdesk.model_host``; frozen, that is
    the bundle's own program, which must answer the host's protocol."""
    env = _empty_env(tmp_path)
    p = subprocess.Popen([str(Path(BUNDLE) / "clipdesk-gui"), "-m", "clipdesk.model_host"], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        req = {"op": "load", "arch": "test-tiny", "pretrained": "random", "weights": None, "folder": None,
               "device": None, "precision": None, "nbytes": 0}
        p.stdin.write(json.dumps(req).encode() + b"\n")
        p.stdin.flush()
        reply = json.loads(p.stdout.readline())
        assert reply.get("ok") and reply["dim"] > 0, reply
        p.stdin.write(json.dumps({"op": "quit", "nbytes": 0}).encode() + b"\n")
        p.stdin.flush()
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# What the README's apt-get line installs (the X11/XCB client libraries, xkbcommon, fontconfig,
# freetype, D-Bus, GLib): the bundle carries its own, so it must run with the system's hidden.
APT_LINE_LIBS = ("libxcb-", "libxkbcommon", "libX11", "libXau", "libXdmcp", "libXext", "libXrender",
                 "libfontconfig", "libfreetype", "libdbus-1", "libglib-2.0", "libgthread-2.0")


def _system_copies(prefixes: tuple[str, ...]) -> list[str]:
    found = set()
    for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        if os.path.isdir(d):
            for name in os.listdir(d):
                path = os.path.join(d, name)
                if name.startswith(prefixes) and ".so" in name and os.path.isfile(path):
                    found.add(os.path.realpath(path))
    return sorted(found)


@pytest.mark.skipif(not BUNDLE, reason="set CLIPDESK_BUNDLE to an installed bundle (e.g. /opt/clipdesk)")
@pytest.mark.skipif(shutil.which("Xvfb") is None or shutil.which("unshare") is None, reason="needs Xvfb, unshare")
def test_installed_bundle_opens_its_window_without_the_systems_x11_libraries(tmp_path):
    """The whole offscreen self-test, on a real X screen through Qt's xcb plugin, in a mount
    namespace where every system copy of the apt-get line's libraries is replaced by an empty file."""
    if os.geteuid() != 0:
        pytest.skip("hiding system libraries in a mount namespace needs root")
    hidden = _system_copies(APT_LINE_LIBS)
    assert hidden, "no system X11 library found to hide: the check would prove nothing"
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        buf = b""
        while not buf.endswith(b"\n"):  # Xvfb writes the display number once it accepts clients
            chunk = os.read(r, 16)
            assert chunk, "Xvfb exited at start"
            buf += chunk
        os.close(r)
        display = ":" + buf.decode().strip()
        binds = "; ".join(f"mount --bind /dev/null '{p}'" for p in hidden)
        script = f"set -e; {binds}; exec '{BUNDLE}/clipdesk-gui' --selftest '{tmp_path / 'out'}'"
        env = {**_empty_env(tmp_path), "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
        p = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True,
                           timeout=400)
        report = json.loads((tmp_path / "out" / "selftest.json").read_text()) \
            if (tmp_path / "out" / "selftest.json").exists() else {}
        assert p.returncode == 0, f"{p.stderr[-3000:]}\n{report}"
        assert report.get("ok"), report
    finally:
        xvfb.terminate()
        xvfb.wait(10)
