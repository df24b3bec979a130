"""Duplicates: exact and near groups, the pixel check, the keeper, the approximate index path,
moving to the Trash, the setting, the CLI and the evaluation command.

The tiny test model has random weights, so its embeddings say nothing about duplicates: these
tests use a low threshold (every pair is a candidate) and check the mechanics, the pixel check
(which does not depend on the model) and the grouping rules.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from clipdesk import duplicates as dup
from clipdesk.cli import main
from clipdesk.duplicates import DuplicatePhoto, find_duplicates, keep_order, suggested_keep, trash_others
from clipdesk.errors import ClipdeskError

pytestmark = pytest.mark.shared_data
LOW = 0.5  # with random weights every pair must reach the pixel check


@pytest.fixture(autouse=True)
def _own_trash(trash_dir) -> Path:
    """Every test here gets a Trash of its own (conftest's ``trash_dir``), used or not."""
    return trash_dir


def _sources(shared: Path, n: int = 4) -> list[Path]:
    classes = ["bird", "fish", "tool", "monument", "planet", "flower"]
    return [sorted((shared / "photos" / "labelled" / c).glob("*.jpg"))[1] for c in classes[:n]]


@pytest.fixture
def dup_photos(tmp_path, shared_data) -> dict:
    """Per source photo: the original, an exact copy elsewhere, a half-size JPEG, a PNG and a
    mirrored copy (not a duplicate). Dates are set so the original is the oldest."""
    root = tmp_path / "photos"
    out = {}
    for k, src in enumerate(_sources(shared_data)):
        with Image.open(src) as im:
            im = im.convert("RGB")
        d = root / f"set{k}"
        (root / "backup").mkdir(parents=True, exist_ok=True)
        d.mkdir(parents=True)
        files = {"original": d / "original.jpg", "copy": root / "backup" / f"IMG_{k}.jpg",
                 "resized": d / "small.jpg", "png": d / "converted.png", "mirrored": d / "mirrored.jpg"}
        im.save(files["original"], quality=95)
        shutil.copyfile(files["original"], files["copy"])
        im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS).save(files["resized"], quality=85)
        im.save(files["png"])
        ImageOps.mirror(im).save(files["mirrored"], quality=95)
        for age, f in enumerate(files.values()):  # the original is the oldest file
            os.utime(f, ns=(1_600_000_000_000_000_000 + age * 10**12,) * 2)
        out[k] = {name: str(p) for name, p in files.items()}
    return {"root": root, "sets": out}


def _indexed(library, root):
    report = library.index([str(root)])
    assert report.failed == 0
    return library


def test_exact_and_near_groups_on_real_photos(library, dup_photos):
    _indexed(library, dup_photos["root"])
    report = find_duplicates(library, LOW)
    exact = [g for g in report.groups if g.kind == "exact"]
    near = [g for g in report.groups if g.kind == "near"]
    sets = dup_photos["sets"]
    assert sorted(sorted(p.path for p in g.photos) for g in exact) == \
        sorted(sorted([s["original"], s["copy"]]) for s in sets.values())
    # Near groups: the original with its resized and PNG versions, never the mirrored one, and
    # never two different photos together.
    assert sorted(sorted(p.path for p in g.photos) for g in near) == \
        sorted(sorted([s["original"], s["resized"], s["png"]]) for s in sets.values())
    for g in report.groups:
        assert g.suggested_keep == g.photos[0].path
        assert g.suggested_keep in {s["original"] for s in sets.values()}
        assert all(0.0 < p.score <= 1.0 + 1e-6 for p in g.photos)
    assert report.rejected_by_pixels > 0  # the mirrored copies and the other photos were candidates
    assert report.candidates >= report.rejected_by_pixels


def test_fingerprint_twins_are_not_exact(library, tmp_path):
    """Two files with equal size, head and tail (the catalog's fingerprint) but different middles
    are not exact duplicates; they show the same picture, so they are near-duplicates."""
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(1)
    arr = (rng.integers(0, 60, (400, 400, 3)) + np.linspace(0, 190, 400)[None, :, None]).astype(np.uint8)
    Image.fromarray(arr).save(root / "a.bmp")
    arr[200, 200] = 255 - arr[200, 200]  # one pixel in the middle of a 480 KB file
    Image.fromarray(arr).save(root / "b.bmp")
    _indexed(library, root)
    assert len(library.catalog.hash_groups()) == 1  # same fingerprint...
    report = find_duplicates(library, LOW)
    assert [g.kind for g in report.groups] == ["near"]  # ...but not the same bytes


def test_keeper_prefers_resolution_then_date_then_original_format():
    def photo(path, w, h, taken, size=1000):
        return DuplicatePhoto(0, path, size, w, h, taken, 1.0)

    assert suggested_keep([photo("/a/small.jpg", 100, 100, 1.0), photo("/a/big.jpg", 200, 200, 9.0)]) == "/a/big.jpg"
    assert suggested_keep([photo("/a/new.jpg", 200, 200, 9.0), photo("/a/old.jpg", 200, 200, 1.0)]) == "/a/old.jpg"
    assert suggested_keep([photo("/a/x.png", 200, 200, 1.0), photo("/a/x.jpg", 200, 200, 1.0)]) == "/a/x.jpg"
    assert suggested_keep([photo("/a/x.png", 200, 200, 1.0), photo("/a/x.dng", 200, 200, 1.0)]) == "/a/x.dng"
    assert suggested_keep([photo("/a/IMG copy.jpg", 200, 200, 1.0), photo("/a/IMG.jpg", 200, 200, 1.0)]) == "/a/IMG.jpg"
    undated = photo("/a/undated.jpg", 200, 200, None)
    assert min([undated, photo("/a/dated.jpg", 200, 200, 5.0)], key=keep_order).path == "/a/dated.jpg"


def test_groups_do_not_chain():
    """A~B and B~C but not A~C (a burst drifting from one moment to the next): A's group holds
    only what is a duplicate of A."""
    from clipdesk.indexer.catalog import ImageInfo

    info = {i: ImageInfo(i, f"/p/{i}.jpg", 1000, 100 - i, 100, float(i), None) for i in (1, 2, 3)}
    pairs = {(1, 2): 0.97, (2, 3): 0.97, (1, 3): 0.91}
    same = {(1, 2), (2, 3)}
    report = dup.DuplicateReport()
    groups = dup._group(pairs, info, lambda a, b: (min(a, b), max(a, b)) in same, report, None)
    assert [[m.id for m in members] for members, _ in groups] == [[1, 2]]
    assert report.rejected_by_pixels == 1  # 1~3 (3 is left alone: 2 is taken by 1's group)


def test_pixel_check_separates_mirror_crop_and_colour_variants(shared_data):
    src = _sources(shared_data, 1)[0]
    with Image.open(src) as im:
        im = im.convert("RGB")
    w, h = im.size
    base = dup.pixel_summary(im)

    def same(other) -> bool:
        return dup.same_pixels(base, dup.pixel_summary(other))

    assert same(im.resize((w // 2, h // 2)))
    assert same(im.crop((int(w * 0.03), int(h * 0.02), w - int(w * 0.02), h - int(h * 0.03))))
    from PIL import ImageEnhance

    assert same(ImageEnhance.Brightness(im).enhance(1.15))
    assert not same(ImageOps.mirror(im))
    assert not same(im.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)))  # heavy crop
    with Image.open(shared_data / "photos" / "labelled" / "fruit" / "food__fruit__Apricot_whole.jpg") as fruit:
        fruit = fruit.convert("RGB")
    r, g, b = fruit.split()
    recoloured = Image.merge("RGB", (b, g, r))  # a colour variant of the same drawing
    assert not dup.same_pixels(dup.pixel_summary(fruit), dup.pixel_summary(recoloured))
    assert dup.same_pixels(dup.pixel_summary(fruit), dup.pixel_summary(fruit.resize((50, 50))))


def test_folder_filter_and_unknown_folder(library, dup_photos):
    _indexed(library, dup_photos["root"])
    only = dup_photos["root"] / "set0"
    report = find_duplicates(library, LOW, folder=str(only))
    assert [g.kind for g in report.groups] == ["near"]
    assert all(p.path.startswith(str(only) + os.sep) for g in report.groups for p in g.photos)
    with pytest.raises(ClipdeskError, match="not in the library"):
        find_duplicates(library, LOW, folder="/nowhere/else")


def test_threshold_is_a_library_setting(library, dup_photos):
    _indexed(library, dup_photos["root"])
    assert dup.library_threshold(library) == dup.DEFAULT_THRESHOLD
    dup.set_library_threshold(library, 0.95)
    assert dup.library_threshold(library) == 0.95
    assert find_duplicates(library).threshold == 0.95
    with pytest.raises(ClipdeskError, match="between 0.5 and 1"):
        dup.set_library_threshold(library, 1.5)
    library.catalog.set_meta(dup.THRESHOLD_META, "garbage")  # a damaged setting never blocks the feature
    assert dup.library_threshold(library) == dup.DEFAULT_THRESHOLD


def _synthetic_library(folder, n=3000, planted=60, dim=32, seed=0):
    """A catalog of n random unit vectors, ``planted`` of them with a near twin (cosine ~0.97)
    and as many with a merely similar neighbour (cosine ~0.8)."""
    from clipdesk.indexer.catalog import Catalog, ImageRecord

    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)

    def near(v, cos):
        noise = rng.standard_normal(dim).astype(np.float32)
        noise -= (noise @ v) * v
        noise /= np.linalg.norm(noise)
        out = cos * v + np.sqrt(1 - cos**2) * noise
        return out / np.linalg.norm(out)

    twins = np.stack([near(base[i], 0.97) for i in range(planted)])
    similar = np.stack([near(base[planted + i], 0.80) for i in range(planted)])
    vecs = np.vstack([base, twins, similar])
    cat = Catalog.open(str(folder))
    cat.set_meta("model", "test-tiny")
    cat.set_meta("dim", str(dim))
    cat.write_batch([ImageRecord(f"/synthetic/{k:05d}.jpg", 1000 + k, k, f"{k:032x}", 64, 64, float(k), v)
                     for k, v in enumerate(vecs)])
    cat.close()
    ids = {(k + 1, n + k + 1) for k in range(planted)}  # ids are 1-based, in insertion order
    return ids


@pytest.mark.parametrize("cells", ["one", "kmeans", "ivf"])
def test_range_search_finds_planted_twins_only(tmp_path, monkeypatch, cells):
    """Every planted twin and nothing else, whichever way the vectors are split into cells
    (uniform random vectors: the hardest case for cells, no clusters to follow)."""
    from clipdesk.indexer.vectors import VectorStore
    from clipdesk.library import Library

    planted = _synthetic_library(tmp_path / "lib")
    if cells == "kmeans":
        monkeypatch.setattr(dup, "SINGLE_CELL", 500)
    with Library(str(tmp_path / "lib")) as lib:
        if cells == "ivf":  # the index a >50k library uses (IVF, 8-bit codes), on a small one
            lib._store = VectorStore._build_ivf(lib.dim, lib.catalog.iter_vectors(), lib.catalog.vector_count())
            lib._store.generation = lib.catalog.generation
            assert lib.vectors.is_approximate
        pairs = dup.near_pairs(lib, 0.93)
        assert set(pairs) == planted
        assert all(0.95 < s < 0.99 for s in pairs.values())  # exact re-scored cosines
        report = find_duplicates(lib, 0.93, verify_pixels=False)
        assert sorted(tuple(sorted(p.id for p in g.photos)) for g in report.groups) == sorted(planted)


def test_trash_others_moves_to_trash_keeps_labels_and_journals(library, dup_photos, trash_dir):
    _indexed(library, dup_photos["root"])
    s0 = dup_photos["sets"][0]
    library.add_to_label("favourites", [s0["resized"]])
    library.add_to_label("prints", [s0["png"], s0["original"]])
    group = next(g for g in find_duplicates(library, LOW).groups
                 if g.kind == "near" and g.suggested_keep == s0["original"])
    result = library.trash_duplicates(group)
    assert result.kept == s0["original"]
    assert sorted(result.trashed) == sorted([s0["resized"], s0["png"]]) and result.failed == []
    assert not os.path.exists(s0["resized"]) and not os.path.exists(s0["png"])
    trash_files = sorted(p.name for p in (trash_dir / "files").iterdir())
    assert trash_files == sorted(["small.jpg", "converted.png"])  # in the Trash, not deleted
    assert library.labels()["favourites"] == [s0["original"]]  # the label followed the kept photo
    assert library.labels()["prints"] == [s0["original"]]
    assert library.catalog.id_for_path(s0["resized"]) is None
    assert all(r.path not in result.trashed for r in library.search(library.embed_image_file(s0["original"]), k=50))
    # One journaled operation (kind "trash"), with where the Trash keeps each file.
    from clipdesk.journal import Journal

    [op] = Journal(library.folder).operations("trash")
    assert op.id == result.operation and op.finished and result.undoable
    assert sorted(s.source for s in op.steps) == sorted(result.trashed)
    assert sorted(os.path.basename(s.applied["trashed"]) for s in op.steps) == trash_files
    assert all(s.info["kept"] == s0["original"] for s in op.steps)

    # Undo: the files come back to their places, indexed again, with their labels; the labels the
    # keeper got only for them go away again.
    report = dup.undo_trash(library)
    assert report.reverted == 2 and report.conflicts == []
    assert os.path.exists(s0["resized"]) and os.path.exists(s0["png"])
    assert not list((trash_dir / "files").iterdir()) and not list((trash_dir / "info").iterdir())
    assert library.catalog.id_for_path(s0["resized"]) is not None
    assert library.labels()["favourites"] == [s0["resized"]]
    assert sorted(library.labels()["prints"]) == sorted([s0["png"], s0["original"]])
    assert Journal(library.folder).load(op.id).undone
    with pytest.raises(ClipdeskError, match="Nothing to undo"):
        dup.undo_trash(library)


def test_undo_never_overwrites_and_says_what_it_left(library, dup_photos, trash_dir):
    _indexed(library, dup_photos["root"])
    s3 = dup_photos["sets"][3]
    group = next(g for g in find_duplicates(library, LOW).groups
                 if g.kind == "near" and g.suggested_keep == s3["original"])
    result = trash_others(library, group)
    assert sorted(result.trashed) == sorted([s3["resized"], s3["png"]])
    Path(s3["png"]).write_bytes(b"a new file under the old name")  # the name is taken since
    report = dup.undo_trash(library, result.operation)
    assert report.reverted == 1 and [c.path for c in report.conflicts] == [s3["png"]]
    assert "nothing is overwritten" in report.conflicts[0].reason
    assert Path(s3["png"]).read_bytes() == b"a new file under the old name"
    assert [p.name for p in (trash_dir / "files").iterdir()] == ["converted.png"]  # still in the Trash
    assert os.path.exists(s3["resized"]) and library.catalog.id_for_path(s3["resized"]) is not None


def test_trash_where_the_location_is_unknown_says_undo_is_not_available(library, dup_photos, tmp_path):
    _indexed(library, dup_photos["root"])
    s0 = dup_photos["sets"][0]
    group = next(g for g in find_duplicates(library, LOW).groups
                 if g.kind == "near" and g.suggested_keep == s0["original"])
    elsewhere = tmp_path / "some-other-trash"
    elsewhere.mkdir()
    result = trash_others(library, group, trash=lambda p: shutil.move(p, elsewhere / os.path.basename(p)))
    assert len(result.trashed) == 2 and not result.undoable
    report = dup.undo_trash(library)
    assert report.reverted == 0 and len(report.conflicts) == 2
    assert all("not known on this platform" in c.reason for c in report.conflicts)
    assert not os.path.exists(s0["resized"])


def test_a_kill_between_journal_and_trash_is_recovered(library, dup_photos, trash_dir):
    """A step begun (journaled) whose file reached the Trash before a kill: undo finds it there."""
    from send2trash import send2trash

    from clipdesk.journal import Journal, _fingerprint

    _indexed(library, dup_photos["root"])
    s0 = dup_photos["sets"][0]
    with Journal(library.folder).start("trash", "test", [{"action": "trash", "path": s0["png"], "source": s0["png"],
                                                          "info": {"kept": s0["original"]}}]) as op:
        op._append(type="begin", n=0, path=s0["png"], fingerprint=_fingerprint(s0["png"]))
    send2trash(s0["png"])  # ... and the process died before its "done" record
    report = dup.undo_trash(library)
    assert report.reverted == 1 and os.path.exists(s0["png"])
    assert not list((trash_dir / "files").iterdir())


def test_trash_leaves_changed_files_and_refuses_a_stranger(library, dup_photos, tmp_path):
    _indexed(library, dup_photos["root"])
    s1 = dup_photos["sets"][1]
    group = next(g for g in find_duplicates(library, LOW).groups
                 if g.kind == "near" and g.suggested_keep == s1["original"])
    with pytest.raises(ClipdeskError, match="not in this duplicate group"):
        trash_others(library, group, keep=s1["mirrored"], trash=lambda p: None)
    with open(s1["png"], "ab") as f:  # edited after the search: maybe no longer a copy
        f.write(b"\0" * 10)
    moved = []
    result = trash_others(library, group, trash=moved.append)
    assert moved == [s1["resized"]]
    assert [p for p, _ in result.failed] == [s1["png"]] and os.path.exists(s1["png"])
    assert library.catalog.id_for_path(s1["png"]) is not None


def test_cli_duplicates_json_and_trash_plan(library, dup_photos, capsys):
    _indexed(library, dup_photos["root"])
    folder = library.folder
    library.close()
    assert main(["--library", folder, "duplicates", "--json", "--threshold", str(LOW)]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert {g["kind"] for g in groups} == {"exact", "near"} and len(groups) == 8
    for g in groups:
        assert set(g) == {"kind", "photos", "suggested_keep"}
        assert g["suggested_keep"] == g["photos"][0]["path"]
        for p in g["photos"]:
            assert set(p) == {"path", "size", "width", "height", "taken", "score"}
            assert os.path.isfile(p["path"])
    # --trash alone only shows the plan: nothing moves.
    assert main(["--library", folder, "duplicates", "--json", "--threshold", str(LOW), "--trash"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["done"] is False and len(plan["plan"]) == 8
    assert all(os.path.exists(t) for p in plan["plan"] for t in p["trash"])
    assert main(["--library", folder, "duplicates", "--threshold", "0.97", "--remember", "--json"]) == 0
    capsys.readouterr()
    from clipdesk.library import Library

    with Library(folder) as lib:
        assert dup.library_threshold(lib) == 0.97
    assert main(["--library", folder, "duplicates", "--remember"]) == 1
    assert "needs --threshold" in capsys.readouterr().err


def test_eval_duplicates_command(shared_data, capsys, tmp_path):
    photos = shared_data / "photos" / "labelled"
    assert main(["eval", "duplicates", str(photos), "--limit", "12", "--model", "test-tiny", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["photos"] == 12 and res["images"] == 12 * 9
    assert res["duplicate_pairs"] == 12 * 21  # 7 true copies of each photo: 21 pairs
    fd = res["find_duplicates"]
    assert fd["recall_by_variant"]["quality"] == 1.0 and fd["recall_by_variant"]["exif_stripped"] == 1.0
    assert fd["false_pairs_by_kind"]["mirrored"] + fd["false_pairs_by_kind"]["heavy_crop"] <= 6
    assert fd["precision"] >= 0.9 and fd["recall"] >= 0.85
    assert main(["eval", "duplicates", str(photos), "--limit", "3", "--model", "test-tiny"]) == 0
    out = capsys.readouterr().out
    assert "random weights" in out and "precision" in out


def test_progress_and_cancel(library, dup_photos):
    """What a GUI view needs: progress through the stages, and a cancel token that stops the job."""
    from clipdesk.indexer.pipeline import CancelToken, Cancelled

    _indexed(library, dup_photos["root"])
    seen = []
    find_duplicates(library, LOW, progress=seen.append)
    stages = [p.stage for p in seen]
    assert {"duplicates", "pixels", "done"} <= set(stages) and stages[-1] == "done"
    assert all(0 <= p.done <= p.total for p in seen if p.stage != "done")
    token = CancelToken()

    def cancel_on_first(p):
        token.cancel()

    with pytest.raises(Cancelled):
        find_duplicates(library, LOW, progress=cancel_on_first, cancel=token)


def test_cli_trash_yes_moves_the_others_to_the_trash(library, dup_photos, trash_dir, capsys):
    _indexed(library, dup_photos["root"])
    folder = library.folder
    library.close()
    only = str(dup_photos["root"] / "set2")
    assert main(["--library", folder, "duplicates", "--json", "--threshold", str(LOW), "--folder", only,
                 "--trash", "--yes"]) == 0
    out = json.loads(capsys.readouterr().out)
    s2 = dup_photos["sets"][2]
    assert out["done"] is True and [r["kept"] for r in out["results"]] == [s2["original"]]
    assert sorted(out["results"][0]["trashed"]) == sorted([s2["resized"], s2["png"]])
    assert os.path.exists(s2["original"]) and os.path.exists(s2["mirrored"]) and os.path.exists(s2["copy"])
    assert len(list((trash_dir / "files").iterdir())) == 2
    op = out["operation"]
    assert main(["--library", folder, "duplicates", "--json", "--undo", "--operation", op]) == 0
    undone = json.loads(capsys.readouterr().out)
    assert undone["reverted"] == 2 and undone["conflicts"] == []
    assert os.path.exists(s2["resized"]) and os.path.exists(s2["png"])
    assert main(["--library", folder, "duplicates", "--undo"]) == 1  # nothing left to undo: one clear error
    assert "Nothing to undo" in capsys.readouterr().err


def test_a_long_chain_of_similar_photos_is_grouped_without_chaining(tmp_path):
    """3,000 photos each a little further from the first (a time-lapse): every pair of
    neighbours is a candidate, but no group holds two photos below the threshold, and the
    grouping stays fast (linear in the candidate pairs)."""
    import time

    from clipdesk.indexer.catalog import Catalog, ImageRecord
    from clipdesk.library import Library

    rng = np.random.default_rng(3)
    dim, n = 32, 3000
    v = rng.standard_normal(dim).astype(np.float32)
    chain = []
    for _ in range(n):
        v = v + 0.08 * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
        chain.append(v / np.linalg.norm(v))
    cat = Catalog.open(str(tmp_path / "lib"))
    cat.set_meta("model", "test-tiny")
    cat.set_meta("dim", str(dim))
    cat.write_batch([ImageRecord(f"/chain/{k:05d}.jpg", 1000, k, f"{k:032x}", 64, 64, float(k), x)
                     for k, x in enumerate(chain)])
    cat.close()
    with Library(str(tmp_path / "lib")) as lib:
        t0 = time.perf_counter()
        report = find_duplicates(lib, 0.95, verify_pixels=False)
        seconds = time.perf_counter() - t0
        vecs = {k + 1: x for k, x in enumerate(chain)}
        assert report.candidates > n  # a dense chain of candidates
        assert report.groups and all(len(g.photos) >= 2 for g in report.groups)
        for g in report.groups:
            keeper = vecs[g.photos[0].id]
            assert all(float(vecs[p.id] @ keeper) >= 0.95 - 1e-3 for p in g.photos)  # all like the keeper
        assert len({p.id for g in report.groups for p in g.photos}) == sum(len(g.photos) for g in report.groups)
        assert seconds < 20, seconds


def test_a_journal_naming_another_file_as_the_trash_location_is_refused(library, dup_photos, trash_dir, tmp_path):
    """Undo moves the file a journal names: a tampered location outside a Trash's files/ is damage."""
    from clipdesk.journal import Journal, JournalError

    _indexed(library, dup_photos["root"])
    s0 = dup_photos["sets"][0]
    group = next(g for g in find_duplicates(library, LOW).groups
                 if g.kind == "near" and g.suggested_keep == s0["original"])
    result = trash_others(library, group)
    journal = Path(library.folder) / "journal" / f"{result.operation}.jsonl"
    text = journal.read_text()
    victim = tmp_path / "precious.jpg"
    victim.write_bytes(b"not a photo of the group")
    journal.write_text(text.replace(str(trash_dir / "files" / "small.jpg"), str(victim)))
    with pytest.raises(JournalError, match="bad Trash location"):
        Journal(library.folder).load(result.operation)
    with pytest.raises(JournalError):
        dup.undo_trash(library)
    assert victim.read_bytes() == b"not a photo of the group" and not os.path.exists(s0["resized"])
