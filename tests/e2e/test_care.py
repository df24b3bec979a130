"""Library care in the real window, with real pointer clicks and key presses (Xvfb + xdotool).

Duplicates: the Duplicates tab → Find duplicates → a group is shown → "Move the others to the
Trash" → the confirmation → the file is in the (temporary) desktop Trash → Ctrl+Z → it is back.
Watching: 20 photos copied into a watched folder appear in the Search grid within seconds, with no
rescan. Screenshots at 1600×1000 and 1024×640 (``E2E_OUT`` or the test's temp folder). The tiny
model has random weights, so the similarity is set low: the pixel check decides what is a duplicate.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from .harness import Session, output_folder

pytestmark = [pytest.mark.e2e, pytest.mark.shared_data]
CLASSES = ("bird", "fish", "tool", "flower", "planet", "monument")


@pytest.fixture
def outdir(tmp_path) -> Path:
    return output_folder("care", tmp_path / "e2e", ("library", "home", "screenshots", "photos", "incoming", "state.json",
                                           "app.log"))


def real_photos(shared: Path, per_class: int, skip: int = 0) -> list[Path]:
    return [p for c in CLASSES for p in sorted((shared / "photos" / "labelled" / c).glob("*.jpg"))[skip:skip + per_class]]


def names_in_group(s: Session, state: dict, n: int) -> set[str]:
    return {w["text"] for name, w in state["widgets"].items() if name.startswith(f"dupName:{n}:") and w.get("visible")}


def group_with(s: Session, state: dict, name: str) -> int | None:
    for key, w in state["widgets"].items():
        if key.startswith("dupName:") and w.get("visible") and w["text"] == name:
            return int(key.split(":")[1])
    return None


def test_duplicates_trash_undo_and_watching(outdir: Path, shared_data: Path) -> None:
    started = time.monotonic()
    photos = outdir / "photos"
    (photos / "backup").mkdir(parents=True)
    for i, src in enumerate(real_photos(shared_data, 2)):
        shutil.copy(src, photos / f"{src.parent.name}-{i}.jpg")  # short names: a cell shows them whole
    originals = sorted(photos.glob("*.jpg"))
    a, b = originals[0], originals[3]
    shutil.copy(a, photos / "backup" / "copy-of-a.jpg")  # an exact copy
    with Image.open(b) as im:  # a half-size re-encode: a near-duplicate
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(photos / "small-b.jpg", quality=85)
    total = len(originals) + 2
    trash = outdir / "home" / ".local" / "share" / "Trash"

    with Session(outdir, (1600, 1000), ["--library", str(outdir / "library"), "--model", "test-tiny",
                                        "--add-folder", str(photos)]) as s:
        s.fit_window()
        s.wait(lambda st: (g := s.widget("searchGrid", st)) and g["count"] == total, 120,
               f"all {total} photos indexed and shown")
        s.wait(lambda st: (w := s.widget("watchFolders", st)) and w["checked"], 10, "Watch folders on")

        # Duplicates: the tab, a low similarity (random weights), Find.
        s.click_tab("tabs", "Duplicates")
        s.wait(lambda st: "Nothing is moved" in s.widget("duplicatesEmpty", st)["text"], 10, "the empty state")
        s.screenshot("duplicates-empty")
        s.click("duplicateThreshold")
        s.key("ctrl+a")
        s.type("0.5")
        s.key("Return")
        s.click("findDuplicates")
        st = s.wait(lambda st: s.widget("dupGroup:0", st) and st, 60, "a duplicate group to be shown")
        s.wait(lambda st: s.widget("findDuplicates", st)["enabled"], 30, "the search to end")
        st = s.state()
        n = group_with(s, st, "small-b.jpg")
        assert n is not None, "the half-size copy is in a group"
        assert names_in_group(s, st, n) == {b.name, "small-b.jpg"}
        assert s.widget(f"dupKind:{n}", st)["text"] == "Near-duplicates"
        e = group_with(s, st, "copy-of-a.jpg")
        assert e is not None and s.widget(f"dupKind:{e}", st)["text"] == "Exact copies"
        assert s.widget(f"dupKeep:{n}:0", st)["checked"], "the suggested keeper is pre-selected"
        s.screenshot("duplicates-found")

        # Move the other to the Trash, through the confirmation.
        s.click(f"dupTrash:{n}")
        box = s.wait(lambda st: next((w for w in st["windows"] if w["name"] == "confirmTrash"), None), 10,
                     "the confirmation")
        assert s.widget("confirmTrashButton")["text"] == "Move 1 file to the Trash", box
        s.screenshot("duplicates-confirm")
        s.click("confirmTrashButton")
        s.wait(lambda st: not (photos / "small-b.jpg").exists() and (trash / "files" / "small-b.jpg").exists(), 20,
               "small-b.jpg to be in the Trash")
        assert (trash / "info" / "small-b.jpg.trashinfo").exists()
        s.wait(lambda st: "moved to the Trash" in s.widget(f"dupSummary:{n}", st)["text"], 10, "the group resolved")
        s.screenshot("duplicates-trashed")

        # Ctrl+Z (the focus on the groups, not in a text field): back where it was.
        s.click("duplicateSummary")
        s.key("ctrl+z")
        s.wait(lambda st: (photos / "small-b.jpg").exists() and not (trash / "files" / "small-b.jpg").exists(), 20,
               "Ctrl+Z to bring small-b.jpg back")
        s.wait(lambda st: (k := group_with(s, st, "small-b.jpg")) is not None
               and "can go" in s.widget(f"dupSummary:{k}", st)["text"], 30, "the group shown again")
        s.click_tab("tabs", "Search")
        s.wait(lambda st: s.widget("searchGrid", st)["count"] == total, 20, "the photo back in the library")
        s.screenshot("duplicates-undone")

        # Watching: a memory card's worth of photos copied in appears without a rescan.
        incoming = photos / "card"
        incoming.mkdir()
        copied = time.monotonic()
        for i, src in enumerate(real_photos(shared_data, 4, skip=4)[:20]):
            shutil.copy(src, incoming / f"IMG_{i:04d}.jpg")
        s.wait(lambda st: s.widget("searchGrid", st)["count"] == total + 20, 60, "20 copied photos in the grid")
        seen_after = time.monotonic() - copied
        s.screenshot("watched-20-new")

        # The small laptop size: the Duplicates tab still usable.
        s.fit_window((1024, 640))
        s.click_tab("tabs", "Duplicates")
        time.sleep(0.5)
        s.screenshot("small-duplicates")
        s.click_tab("tabs", "Search")
        time.sleep(0.5)
        s.screenshot("small-search")
    assert seen_after < 30, f"the copied photos took {seen_after:.1f} s to appear"
    print(f"end-to-end care: 20 copied photos shown {seen_after:.1f} s after the copy began; "
          f"whole run {time.monotonic() - started:.1f} s; screenshots in {outdir / 'screenshots'}")
