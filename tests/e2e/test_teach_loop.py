"""The whole teaching loop in the real window, with real pointer drags and key presses.

first run offline → demo model → sample library → search → drag three photos into bucket A and
three into bucket B from the Teach grid → train → apply → accept one, reject one, retrain (the
buckets still get photos: "none of the buckets" does not take over) →
press 1 at once (the photo goes to bucket 1, not into the threshold box) → export CSV (a
category in every row) → undo → open a new library (Ctrl+O) and come back through the Welcome
page's recent list (buckets and model still there). Each step checks what the window shows afterwards and saves a screenshot
(``E2E_OUT`` or the test's temp folder). Run with ``make e2e``; needs Xvfb and xdotool.
"""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest

from .harness import Session, output_folder

pytestmark = pytest.mark.e2e

SAMPLE_PHOTOS = sum(1 for p in (Path(__file__).resolve().parents[2] / "assets" / "sample").rglob("*.jpg"))


@pytest.fixture
def outdir(tmp_path) -> Path:
    return output_folder("teach-loop", tmp_path / "e2e", ("library", "other-library", "home", "screenshots",
                                                           "state.json", "app.log", "teach-export.csv"))


def count_of(text: str) -> int:
    return int(text.split()[0].replace(",", ""))


def predicted_counts(text: str) -> dict[str, int]:
    """"Predicted: A 60 · B 70 · none of the buckets 13" → {"A": 60, "B": 70, "none of the buckets": 13}."""
    out = {}
    for part in text.removeprefix("Predicted: ").split(" · "):
        name, _, n = part.rpartition(" ")
        out[name] = int(n.replace(",", ""))
    return out


def bucket_total(s: Session, state: dict) -> int:
    return sum(count_of(w["text"]) for name, w in state["widgets"].items()
               if name.startswith("bucketCount:") and w.get("visible"))


def bucket_paths(s: Session, name: str, state: dict | None = None) -> set[str]:
    return {i["path"] for i in s.items(f"bucketList:{name}", state) if i["path"]}


def visible_dialogs(state: dict) -> list[dict]:
    return [w for w in state["windows"] if w["name"] != "mainWindow" and w["class"] not in ("QMenu",)]


def drag_into_bucket(s: Session, source: str, bucket: str, n: int, exclude: set[str]) -> list[str]:
    """Drag ``n`` photos from grid ``source`` onto bucket ``bucket``, one gesture per photo.

    The grid is read again before each drag: a photo put in a bucket leaves the suggestions.
    """
    moved: list[str] = []
    for _ in range(n):
        item = next(i for i in s.items(source) if i["path"] and i["path"] not in exclude | set(moved))
        target = s.wait_widget(f"bucketList:{bucket}")
        s.drag(s.center(item), s.center(target))
        s.wait(lambda st: item["path"] in bucket_paths(s, bucket, st), 10,
               f"{os.path.basename(item['path'])} to show in bucket {bucket} after the drag")
        moved.append(item["path"])
        time.sleep(0.3)  # let the grid settle before reading its layout again
    return moved


def test_teach_loop_by_mouse_and_keyboard(outdir: Path) -> None:
    started = time.monotonic()
    library = outdir / "library"
    # A fresh home, the default (downloadable) model and no network: the first run real users hit.
    with Session(outdir, (1600, 1000), ["--library", str(library)], env={"HF_HUB_OFFLINE": "1"}) as s:
        s.fit_window()
        s.screenshot("first-run")

        # Sample library: the model cannot be fetched → one dialog within 10 s → demo model. The
        # model's warm-up starts with the window: where it fails fast (the installed bundle starts
        # in a moment) the dialog is up before the person clicks, else it follows the click. Both
        # are a first run; either way the person ends on the sample library with the demo model.
        clicked = time.monotonic()
        if not s.widget("modelDialog"):
            s.click("openSample")
        # 10 s on an idle machine (+2 s for the harness); a machine shared with other work gets its
        # share of the cores: the limit grows with the load, which is printed beside the time
        busy = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
        s.wait_widget("modelDialog", timeout=15 * busy + 15)
        took = time.monotonic() - clicked
        print(f"model dialog after {took:.1f} s (loadavg {open('/proc/loadavg').read().strip()})")
        assert took < 12 * busy, f"the model dialog took {took:.1f} s (more than 10 s, load ×{busy:.1f})"
        time.sleep(0.5)  # a second, stacked dialog would show up by now
        st = s.state()
        assert len(visible_dialogs(st)) == 1, f"expected one dialog, got {visible_dialogs(st)}"
        s.screenshot("model-dialog")
        s.click("useDemo")
        s.wait(lambda st: not s.widget("modelDialog", st), 10, "the model dialog to close")
        time.sleep(1)
        if s.widget("openSample"):  # the dialog came first (or took the click): the Welcome page is still there
            s.click("openSample")

        # The library by date, with no query typed.
        s.wait(lambda st: (g := s.widget("searchGrid", st)) and g["count"] == SAMPLE_PHOTOS
               and len(g["items"]) > 0, 90, f"the Search grid to show all {SAMPLE_PHOTOS} sample photos")
        s.wait(lambda st: str(SAMPLE_PHOTOS) in s.widget("countLabel", st)["text"], 10, "the photo count")
        s.screenshot("library-by-date")

        # Search by typing.
        s.click("search")
        s.type("a red flower")
        s.key("Return")
        s.wait(lambda st: "match" in s.widget("countLabel", st)["text"], 30, "the search results count")
        if "show all" in s.widget("countLabel")["text"]:
            # the demo model's random weights may make no photo stand out: "show all" is one click
            s.click("countLabel")
        first = s.wait(lambda st: s.items("searchGrid", st), 10, "search results")
        s.screenshot("search")
        assert first[0]["path"], "grid items carry their paths"

        # Teach: two buckets, three photos dragged into each from the Teach grid.
        s.click_tab("tabs", "Teach")
        s.wait(lambda st: len(s.items("teachGrid", st)) >= 6, 30, "photos in the Teach grid")
        for name in ("A", "B"):
            s.click("bucketName")
            s.type(name)
            s.click("addBucket")
            s.wait_widget(f"bucket:{name}")
        s.screenshot("buckets-empty")
        in_a = drag_into_bucket(s, "teachGrid", "A", 3, set())
        s.screenshot("bucket-a-filled")
        drag_into_bucket(s, "teachGrid", "B", 3, set(in_a))
        st = s.state()
        assert count_of(s.widget("bucketCount:A", st)["text"]) == 3
        assert count_of(s.widget("bucketCount:B", st)["text"]) == 3
        s.screenshot("buckets-filled")

        # Train, then apply to the library.
        s.click("train")
        s.wait(lambda st: "%" in s.widget("trainResult", st)["text"], 60, "the training result")
        trained_text = s.widget("trainResult")["text"]
        s.screenshot("trained")
        s.click("apply")
        s.wait(lambda st: len(s.items("reviewGrid", st)) > 2, 60, "photos to review after Apply")
        s.screenshot("review")
        in_buckets = bucket_paths(s, "A") | bucket_paths(s, "B")
        offered = {i["path"] for i in s.items("reviewGrid")}
        assert not offered & in_buckets, f"photos already in buckets are offered again: {offered & in_buckets}"

        # Accept one: it becomes an example, the bucket grows and it leaves the review list.
        total = bucket_total(s, s.state())
        pick = s.items("reviewGrid")[0]
        s.click_at(*s.center(pick))
        s.wait(lambda st: any(i["selected"] for i in s.items("reviewGrid", st)), 5, "the review selection")
        s.click("accept")
        s.wait(lambda st: bucket_total(s, st) == total + 1, 15, "the accepted photo to join a bucket")
        s.wait(lambda st: pick["path"] not in {i["path"] for i in s.items("reviewGrid", st)}, 10,
               "the accepted photo to leave the review list")

        # Reject one: it leaves the review list (an example of "not this"), no bucket grows.
        pick = s.items("reviewGrid")[0]
        s.click_at(*s.center(pick))
        s.click("reject")
        s.wait(lambda st: pick["path"] not in {i["path"] for i in s.items("reviewGrid", st)}, 10,
               "the rejected photo to leave the review list")
        assert bucket_total(s, s.state()) == total + 1
        s.screenshot("reviewed")

        # Correct one: a photo the probe put in the category shown goes into the *other* bucket by
        # that bucket's number key; it is taught as a correction, and the status line says so.
        shown = s.widget("reviewCategory")["text"]
        other, key = ("B", "2") if shown == "A" else ("A", "1")
        pick = s.items("reviewGrid")[0]
        before = count_of(s.widget(f"bucketCount:{other}")["text"])
        s.click_at(*s.center(pick))
        s.wait(lambda st: any(i["selected"] for i in s.items("reviewGrid", st)), 5, "the review selection")
        s.key(key)
        s.wait(lambda st: count_of(s.widget(f"bucketCount:{other}", st)["text"]) == before + 1, 10,
               f"the corrected photo to join bucket {other}")
        s.wait(lambda st: "taught as a correction" in (s.widget("statusbar", st).get("text") or ""), 5,
               "the status line to say it is a correction")
        assert pick["path"] in bucket_paths(s, other)
        s.screenshot("corrected")

        # One click retrains and re-applies.
        s.click("retrain")
        s.wait(lambda st: (t := s.widget("trainResult", st)["text"]) != trained_text and "%" in t, 60,
               "the retrained result")
        s.wait(lambda st: len(s.items("reviewGrid", st)) > 0, 60, "the review list after retraining")
        s.screenshot("retrained")

        # One Reject (above) and Retrain & apply: the buckets still get photos, and "none of the
        # buckets" does not take over the library (issue 26, trap 3).
        s.wait(lambda st: (s.widget("reviewCounts", st) or {}).get("text", "").startswith("Predicted: "), 30,
               "the predicted counts per category")
        predicted = predicted_counts(s.widget("reviewCounts")["text"])
        print(f"predicted after one reject and a retrain: {predicted}")
        assert predicted.get("A", 0) > 0 and predicted.get("B", 0) > 0, predicted
        total_predicted = sum(predicted.values())
        assert predicted.get("none of the buckets", 0) < total_predicted / 2, predicted

        # Keys right after Retrain & apply act on the photos: 1 puts the photo the keyboard is on
        # into bucket A; the "Select ≥ 80 %" box next to the buttons is left alone.
        s.wait(lambda st: not s.widget("cancelJobs", st), 30, "the jobs to finish")
        threshold = s.widget("exportCsvThreshold")["text"]
        st = s.state()
        assert st["focus"] == "reviewGrid", f"focus is on {st['focus']!r} after Retrain & apply"
        before_a = count_of(s.widget("bucketCount:A", st)["text"])
        s.key("1")
        s.wait(lambda st: count_of(s.widget("bucketCount:A", st)["text"]) == before_a + 1, 10,
               "key 1 after Retrain & apply to put a photo into bucket A")
        assert s.widget("exportCsvThreshold")["text"] == threshold, "the threshold changed"
        s.screenshot("key-1-after-retrain")

        # Export CSV through the save dialog, typed like a person would.
        csv_path = outdir / "teach-export.csv"
        if csv_path.exists():
            csv_path.unlink()
        s.click("exportCsv")
        s.wait(lambda st: any(w["class"] == "QFileDialog" for w in st["windows"]), 10, "the save dialog")
        s.screenshot("export-dialog")
        s.key("ctrl+a")
        s.type(str(csv_path))
        s.key("Return")
        s.wait(lambda st: csv_path.exists() and csv_path.stat().st_size > 0, 10, "the CSV file to be written")
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        assert len(rows) > 1 and "path" in rows[0][0].lower(), rows[:2]
        assert all(os.path.isabs(r[0]) for r in rows[1:])
        assert all(r[1] for r in rows[1:]), [r for r in rows[1:] if not r[1]][:3]  # a category in every row
        in_a = bucket_paths(s, "A")
        assert all(r[1] == "A" for r in rows[1:] if r[0] in in_a)  # the person's buckets, as they made them
        s.screenshot("exported")

        # Undo: Ctrl+Z four times takes back key 1, the correction, the reject and the accept.
        s.click_tab("tabs", "Teach")
        s.click_at(*s.center(s.wait_widget("teachGrid")))
        for _ in range(4):
            s.key("ctrl+z")
        s.wait(lambda st: bucket_total(s, st) == total, 10, "Ctrl+Z to take the accepted photo back out")
        s.screenshot("undone")

        # Another library and back: Ctrl+O opens a new (empty) one without asking for weights again;
        # the Welcome page's recent list leads back, buckets and all.
        counts = {b: count_of(s.widget(f"bucketCount:{b}")["text"]) for b in ("A", "B")}
        other = outdir / "other-library"
        other.mkdir()
        s.key("ctrl+o")
        s.wait(lambda st: any(w["class"] == "QFileDialog" for w in st["windows"]), 10, "the library dialog")
        s.key("ctrl+a")
        s.type(str(other))
        s.key("Return")
        s.wait(lambda st: s.widget("welcomeOpenLibrary", st) and s.items("recentLibraries", st), 20,
               "the Welcome page with the recent libraries")
        time.sleep(2)  # a model dialog would show up by now
        assert not visible_dialogs(s.state()), "switching asked again for the model"
        # the status line (under the transient "Opened the library …") names the model kept for it
        s.wait(lambda st: "model test-tiny" in ((s.widget("libraryStatus", st) or {}).get("text") or ""), 15,
               "the status line to name the demo model for the new library")
        s.screenshot("other-library-welcome")
        back = s.items("recentLibraries")[0]
        assert back["path"] == str(library), back
        s.click_at(*s.center(back))
        s.wait(lambda st: all(s.widget(f"bucketCount:{b}", st) and count_of(s.widget(f"bucketCount:{b}", st)["text"])
                              == n for b, n in counts.items()), 30, "the buckets back after switching back")
        s.wait(lambda st: s.items("reviewGrid", st) and s.items("teachGrid", st), 30,
               "the Review list (the probe applied again) and the suggestions after switching back")
        s.screenshot("switched-back")

        # The same window at a small laptop size: every view still usable.
        s.fit_window((1024, 640))
        for tab in ("Search", "Sort", "Teach"):
            s.click_tab("tabs", tab)
            time.sleep(0.5)
            s.screenshot(f"small-{tab.lower()}")
    elapsed = time.monotonic() - started
    print(f"end-to-end teach loop: {elapsed:.1f} s; screenshots in {outdir / 'screenshots'}")
