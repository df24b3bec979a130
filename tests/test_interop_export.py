"""``clipdesk export csv``: the app's export columns on the command line (issue 27, item 6)."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipdesk import export
from conftest import make_photo


@pytest.fixture
def indexed(library, photos):
    # a name that is not UTF-8, as an old camera card or a Latin-1 system leaves it
    make_photo(Path(os.fsdecode(os.fsencode(str(photos)) + b"/home/caf\xe9.jpg")), (120, 60, 30), pattern=9)
    library.index([str(photos)])
    return library, photos


def cli(lib_folder: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipdesk.cli", "--library", lib_folder, *args],
                          capture_output=True, timeout=180)


def read_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline="")))


def test_export_csv_by_label_classify_and_probe(indexed, tmp_path):
    lib, photos = indexed
    latin = os.fsencode(str(photos)) + b"/home/caf\xe9.jpg"
    home = sorted(str(p) for p in (photos / "home").glob("img_*.jpg")) + [os.fsdecode(latin)]
    trip = sorted(str(p) for p in (photos / "trip 2019").glob("*.jpg"))
    lib.add_to_label("home", home)
    lib.add_to_label("trip", trip)
    lib.train("where", ["home", "trip"])
    app_rows = lib.classify(["a beach", "a room"]).as_rows()  # what the app's Sort view exports
    folder = lib.folder
    lib.close()
    out = tmp_path / "out" / "home.csv"
    out.parent.mkdir()
    p = cli(folder, "export", "csv", "--label", "home", "-o", str(out), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"file": str(out), "rows": 5, "bom": False}
    data = out.read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf") and latin in data  # the name's exact bytes
    rows = read_rows(data)
    assert rows[0] == ["path", "category", "probability"]
    assert sorted(r[0] for r in rows[1:]) == sorted(home) and {tuple(r[1:]) for r in rows[1:]} == {("home", "")}
    assert os.listdir(out.parent) == ["home.csv"]  # no temporary file left
    # zero-shot: the same bytes the app's Export CSV writes, one row per photo
    p = cli(folder, "export", "csv", "--classify", "a beach,a room", "-o", str(tmp_path / "cli.csv"), "--bom")
    assert p.returncode == 0, p.stderr
    export.write_csv(str(tmp_path / "app.csv"), app_rows, bom=True)
    cli_bytes = (tmp_path / "cli.csv").read_bytes()
    assert cli_bytes.startswith(b"\xef\xbb\xbfpath,category,probability\r\n")
    assert cli_bytes == (tmp_path / "app.csv").read_bytes()
    rows = read_rows(cli_bytes[3:])[1:]
    assert len(rows) == 9 == len({r[0] for r in rows}) and all(r[1] in ("a beach", "a room") for r in rows)
    assert all(0 <= float(r[2]) <= 1 and len(r[2].split(".")[1]) == 4 for r in rows)
    p = cli(folder, "export", "csv", "--probe", "where", "-o", "-")
    assert p.returncode == 0 and {r[1] for r in read_rows(p.stdout)[1:]} <= {"home", "trip", ""}
    p = cli(folder, "export", "csv", "--label", "nope", "-o", str(out))
    assert p.returncode == 1 and b"No label named 'nope'" in p.stderr and out.read_bytes() == data
    p = cli(folder, "export", "csv", "-o", str(out))
    assert p.returncode == 2 and b"--label" in p.stderr


def test_a_failed_export_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.csv"
    target.write_bytes(b"old")

    def rows():
        yield ("/p/a.jpg", "cat", 0.5)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        export.write_csv(str(target), rows())
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.csv"]


def test_the_app_exports_through_the_same_function():
    from clipdesk.ui.views import actions

    assert actions.write_csv is export.write_csv
