"""The default install runs every command without torch: a second environment made by `make
install-test` with `pip install -e .` alone (no extras) indexes, searches, classifies, teaches,
tags, sorts, finds duplicates and watches, and never imports torch."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SUBPROCESS_TIMEOUT

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def lite_python() -> str:
    path = os.environ.get("CLIPDESK_LITE_PYTHON")
    if not path or not Path(path).is_file():
        pytest.fail("CLIPDESK_LITE_PYTHON must point at the torch-free environment's python "
                    "(`make test` builds .venv-lite and sets it)")
    return path


# Runs the CLI in-process, then reports which model backends were imported along the way.
DRIVER = """
import json, sys
from clipdesk.cli import main
code = main(sys.argv[1:])
mods = sorted(m for m in ("torch", "open_clip", "torchvision") if m in sys.modules)
print("\\nMODULES " + json.dumps(mods), file=sys.stderr)
sys.exit(code)
"""


def test_the_default_install_has_no_torch(lite_python):
    out = subprocess.run([lite_python, "-c", "import importlib.util as u; print([m for m in "
                          "('torch', 'torchvision', 'open_clip', 'nvidia') if u.find_spec(m)])"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)


def test_every_command_runs_without_torch(lite_python, tmp_path, shared_data):
    env = dict(os.environ, CLIPDESK_CACHE_DIR=str(tmp_path / "cache"), CLIPDESK_MODELS=str(tmp_path / "models"),
               HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "xdg"), HF_HUB_OFFLINE="1")
    lib = str(tmp_path / "lib")
    photos = tmp_path / "photos"  # a copy: the watcher gets a new photo in it
    for name in ("bird", "fish", "tool"):
        shutil.copytree(shared_data / "photos" / "labelled" / name, photos / name)

    def cli(*args, ok=True):
        p = subprocess.run([lite_python, "-c", DRIVER, "--library", lib, *args, "--json"], capture_output=True,
                           text=True, timeout=SUBPROCESS_TIMEOUT, env=env)
        assert (p.returncode == 0) == ok, (args, p.stderr[-2000:])
        assert 'MODULES []' in p.stderr, (args, p.stderr[-500:])  # no backend of the torch extra was imported
        return json.loads(p.stdout) if ok and p.stdout.strip() else None

    added = cli("--model", "test-tiny", "index", str(photos / "bird"), str(photos / "fish"), str(photos / "tool"))
    assert added["added"] == 35 + 39 + 52 and added["failed"] == 0
    assert len(cli("search", "a bird on a branch", "-k", "5")) == 5
    assert len(cli("similar", str(next((photos / "fish").glob("*.jpg"))), "-k", "3")) == 3
    classified = cli("classify", "--labels", "bird,fish,tool")
    assert len(classified) == 126 and {r["label"] for r in classified} <= {"bird", "fish", "tool"}
    birds, fish = sorted((photos / "bird").glob("*.jpg"))[:4], sorted((photos / "fish").glob("*.jpg"))[:4]
    cli("label", "add", "bird", *map(str, birds))
    cli("label", "add", "fish", *map(str, fish))
    trained = cli("train", "animals")
    assert trained["examples"] == 8
    assert len(cli("predict", "animals")) == 126
    planned = cli("tags", "write", "--label", "bird", "--dry-run")
    assert planned is not None
    sorted_into = tmp_path / "sorted"
    placed = cli("sort", "--probe", "animals", "--into", str(sorted_into), "--copy")
    assert len(placed["placements"]) == 126 and len(list(sorted_into.rglob("*.jpg"))) == 126
    cli("sort", "--undo")
    assert not list(sorted_into.rglob("*.jpg"))
    assert isinstance(cli("duplicates"), list)
    status = cli("status")
    assert status["images"] == 126 and status["model"] == "test-tiny"
    watcher = subprocess.Popen([lite_python, "-c", DRIVER, "--library", lib, "watch", "--debounce", "0.5"],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        time.sleep(3)  # the watcher's start-up rescan
        shutil.copy(shared_data / "photos" / "labelled" / "flower" / sorted(
            os.listdir(shared_data / "photos" / "labelled" / "flower"))[0], photos / "fish" / "new-flower.jpg")
        deadline = time.monotonic() + 60
        while cli("status")["images"] != 127 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cli("status")["images"] == 127
    finally:
        watcher.send_signal(signal.SIGTERM)
        err = watcher.communicate(timeout=60)[1]
    assert watcher.returncode in (0, 143) and "MODULES []" in err, err[-1000:]
    # the GUI's import chain loads in the torch-free environment too
    gui = subprocess.run([lite_python, "-c", "import clipdesk.ui.main_window, sys; "
                          "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))"],
                         capture_output=True, text=True, timeout=120, env=dict(env, QT_QPA_PLATFORM="offscreen"))
    assert gui.returncode == 0 and gui.stdout.strip() == "[]", gui.stderr[-1000:]
