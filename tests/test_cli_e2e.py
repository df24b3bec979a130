"""End-to-end CLI runs in real subprocesses, on the real photos of ../shared/data (marker shared_data)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SUBPROCESS_TIMEOUT

pytestmark = pytest.mark.shared_data

CLI = [sys.executable, "-m", "clipdesk.cli"]


def clipdesk(library, *args, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.run([*CLI, "--library", str(library), *args], capture_output=True, text=True,
                       env=env, timeout=SUBPROCESS_TIMEOUT)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def as_json(p):
    return json.loads(p.stdout)  # exactly one JSON document on stdout


def test_labelled_photos_end_to_end(tmp_path, shared_data):
    photos = shared_data / "photos" / "labelled"
    lib = tmp_path / "lib"
    first = as_json(clipdesk(lib, "index", str(photos), "--model", "test-tiny", "--json"))
    assert first["added"] == 359 and first["failed"] == 0 and first["seconds"] > 0
    again = as_json(clipdesk(lib, "index", "--json"))
    assert (again["unchanged"], again["added"], again["removed"]) == (359, 0, 0)

    status = as_json(clipdesk(lib, "status", "--json"))
    assert status["images"] == 359 and status["model"] == "test-tiny" and status["dim"] == 64
    assert status["folders"] == [str(photos)]

    hits = as_json(clipdesk(lib, "search", "a bird on a branch", "-k", "7", "--json"))
    assert len(hits) == 7 and all(Path(h["path"]).is_absolute() for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    fish = str(photos / "fish")
    in_fish = as_json(clipdesk(lib, "search", '"fish" - "bird"', "--folder", fish, "-k", "100", "--json"))
    assert len(in_fish) == 39 and all(h["path"].startswith(fish + os.sep) for h in in_fish)

    crow = photos / "bird" / "animals__birds__crow.jpg"
    similar = as_json(clipdesk(lib, "similar", str(crow), "-k", "5", "--json"))
    assert len(similar) == 5 and str(crow) not in [s["path"] for s in similar]

    classes = as_json(clipdesk(lib, "classify", "--labels", "bird,fish,tool", "--json"))
    assert len(classes) == 359 and {c["label"] for c in classes} <= {"bird", "fish", "tool"}
    assert all(1 / 3 - 1e-6 <= c["probability"] <= 1 for c in classes)

    birds = sorted((photos / "bird").iterdir())[:3]
    tools = sorted((photos / "tool").iterdir())[:3]
    clipdesk(lib, "label", "add", "bird", *map(str, birds))
    clipdesk(lib, "label", "add", "my tools", *map(str, tools[:2]))
    clipdesk(lib, "label", "add", "my tools", str(tools[2]), "--corrected")  # a probe had said otherwise
    labels = as_json(clipdesk(lib, "label", "list", "--json"))
    assert labels == {"bird": [str(p) for p in birds], "my tools": [str(p) for p in tools]}
    listed = clipdesk(lib, "label", "list").stdout.splitlines()
    assert listed == ["bird: 3 images", "my tools: 3 images (1 given as corrections)"]
    trained = as_json(clipdesk(lib, "train", "things", "--json"))
    assert trained["probe"] == "things" and trained["labels"] == ["bird", "my tools"]
    assert trained["examples"] == 6 and 0 <= trained["cv_accuracy"] <= 1
    preds = as_json(clipdesk(lib, "predict", "things", "--json"))
    assert len(preds) == 359 and {p["label"] for p in preds} <= {"bird", "my tools"}
    by_path = {p["path"]: p for p in preds}
    assert all(by_path[str(b)]["label"] == "bird" for b in birds)
    assert len(as_json(clipdesk(lib, "suggest", "things", "-k", "4", "--json"))) == 4


def test_error_exit_codes(tmp_path):
    lib = tmp_path / "lib"
    usage = clipdesk(lib, "search", check=False)
    assert usage.returncode == 2
    none = clipdesk(lib, "similar", str(tmp_path / "nope.jpg"), "--model", "test-tiny", check=False)
    assert none.returncode == 1 and "No library at" in none.stderr and not lib.exists()
    (tmp_path / "empty").mkdir()
    clipdesk(lib, "index", str(tmp_path / "empty"), "--model", "test-tiny")
    err = clipdesk(lib, "similar", str(tmp_path / "nope.jpg"), "--model", "test-tiny", check=False)
    assert err.returncode == 1 and "Image not found" in err.stderr
    assert "Traceback" not in err.stderr and err.stdout == ""
    bad = clipdesk(lib, "train", "x", "--model", "test-tiny", check=False)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
