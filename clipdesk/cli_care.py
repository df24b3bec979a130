"""Library care on the command line: ``duplicates``, ``watch`` and ``eval duplicates``.

Registered by ``clipdesk.cli`` through :func:`add_commands`; each subcommand sets ``care`` to its
handler, which the CLI calls with ``(args, open_library, emit)``. Messages and progress go to
stderr, results to stdout (``--json``: one JSON document; ``watch --json``: one per line).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading

from clipdesk.argtypes import number

log = logging.getLogger("clipdesk")

_threshold = number(float, lambda v: 0.5 <= v <= 1.0, "must be a cosine similarity between 0.5 and 1")
_seconds = number(float, lambda v: 0.0 < v <= 86400, "must be between 0 and 86400 seconds")
_count = number(int, lambda v: v >= 2, "must be at least 2")


def add_commands(subparsers, parents=(), eval_subparsers=None) -> None:
    """Add ``duplicates`` and ``watch`` to ``subparsers`` (and ``duplicates`` to ``eval``)."""
    parents = list(parents)
    sp = subparsers.add_parser("duplicates", parents=parents, help="find exact and near-duplicate photos",
                               description="Groups of duplicate photos: exact copies (same bytes) and "
                               "near-duplicates (re-encoded, resized, slightly cropped, converted, edited "
                               "exports), checked on their pixels so merely similar photos are not grouped.")
    sp.add_argument("--threshold", type=_threshold, metavar="T",
                    help="embedding cosine for near-duplicate candidates (default: the library's setting)")
    sp.add_argument("--remember", action="store_true", help="save --threshold as this library's setting")
    sp.add_argument("--folder", metavar="P", help="only photos under this folder")
    sp.add_argument("--trash", action="store_true",
                    help="move every photo but the suggested one of each group to the Trash (shows the "
                    "plan; add --yes to do it). Labels move to the kept photo")
    sp.add_argument("--yes", action="store_true", help="with --trash: do it")
    sp.add_argument("--undo", action="store_true",
                    help="bring the photos of the last --trash back from the Trash (labels too)")
    sp.add_argument("--operation", metavar="ID", help="with --undo: a specific operation ('clipdesk journal')")
    sp.set_defaults(care=run_duplicates)

    sp = subparsers.add_parser("watch", parents=parents, help="keep the library current as photos change",
                               description="Watch the library's folders and index new, changed, moved and "
                               "deleted photos as they happen (headless; Ctrl+C or SIGTERM stops). Folders "
                               "that deliver no file events (network shares) are rescanned periodically.")
    sp.add_argument("--debounce", type=_seconds, default=1.0, metavar="S",
                    help="index after S seconds without events (default 1)")
    sp.add_argument("--poll", type=_seconds, default=120.0, metavar="S",
                    help="rescan folders without events every S seconds (default 120)")
    sp.add_argument("--force-poll", action="store_true", help="rescan periodically instead of using events")
    sp.add_argument("--no-catch-up", action="store_true",
                    help="skip the first rescan (of what changed while nothing watched)")
    sp.set_defaults(care=run_watch)

    if eval_subparsers is not None:
        a = eval_subparsers.add_parser(
            "duplicates", parents=parents, help="precision/recall of duplicate detection on a photo folder",
            description="Build an evaluation set from PHOTOS (true duplicates of each photo: JPEG quality 60, "
            "half size, 5% crop, PNG, exposure +15%, EXIF stripped; near-misses: mirrored, heavily "
            "cropped, and the other photos), index it with --model in a temporary library, and print "
            "precision and recall per threshold. Random weights (test-tiny) check the mechanics only.")
        a.add_argument("photos", metavar="PHOTOS")
        a.add_argument("--limit", type=_count, metavar="N", help="use N photos drawn at random (default: all)")
        a.add_argument("--keep", metavar="DIR", help="build the set and library in DIR and keep them")
        a.set_defaults(care=run_eval)


# ---------------------------------------------------------------------- duplicates
def run_duplicates(args, open_library, emit) -> int:
    from clipdesk.duplicates import set_library_threshold

    lib = open_library(args)
    try:
        if args.undo:
            return _undo(args, lib, emit)
        if args.remember:
            if args.threshold is None:
                from clipdesk.errors import ClipdeskError

                raise ClipdeskError("--remember needs --threshold.")
            set_library_threshold(lib, args.threshold)
        from clipdesk.progress import progress_bar

        bar, update = progress_bar("comparing")
        try:
            report = lib.find_duplicates(args.threshold, args.folder, progress=update)
        finally:
            bar.close()
        for path in report.unreadable[:20]:
            log.warning("could not check %s (unreadable or missing)", path)
        if args.trash:
            return _trash(args, lib, report, emit)
        lines = []
        for g in report.groups:
            lines.append(f"{g.kind} ({len(g.photos)} photos):")
            lines += [f"  {'keep' if p.path == g.suggested_keep else '    '} {p.score:.3f}  "
                      f"{p.width or '?'}x{p.height or '?'}  {p.path}" for p in g.photos]
        extra = sum(len(g.photos) - 1 for g in report.groups)
        log.info("%d groups, %d photos that could go (threshold %.3f; %d candidate pairs, %d rejected "
                 "on their pixels) in %.1f s", len(report.groups), extra, report.threshold, report.candidates,
                 report.rejected_by_pixels, report.seconds)
        emit(args, [g.as_dict() for g in report.groups], lines or ["no duplicates"])
        return 0
    finally:
        lib.close()


def _trash(args, lib, report, emit) -> int:
    if not args.yes:
        plan = [{"keep": g.suggested_keep, "trash": [p.path for p in g.photos if p.path != g.suggested_keep]}
                for g in report.groups]
        lines = [f"keep {p['keep']}\n" + "\n".join(f"  trash {t}" for t in p["trash"]) for p in plan]
        emit(args, {"plan": plan, "done": False},
             (lines or ["no duplicates"]) + ["(nothing moved: add --yes to move these to the Trash)"])
        return 0
    from clipdesk.duplicates import trash_groups

    results = trash_groups(lib, [(g, None) for g in report.groups])  # one operation: one undo
    for r in results:
        for path, reason in r.failed:
            log.warning("left %s: %s", path, reason)
    operation = next((r.operation for r in results if r.operation), None)
    lines = [f"kept {r.kept}; moved {len(r.trashed)} to the Trash" for r in results] or ["no duplicates"]
    if operation:
        lines.append(f"(undo: clipdesk duplicates --undo --operation {operation})"
                     if all(r.undoable for r in results) else
                     "(on this platform clipdesk cannot tell where the Trash keeps files: restore them from "
                     "the Trash itself)")
    emit(args, {"done": True, "operation": operation, "results": [r.as_dict() for r in results]}, lines)
    return 1 if any(r.failed for r in results) else 0


def _undo(args, lib, emit) -> int:
    from clipdesk.progress import progress_bar
    from clipdesk.duplicates import undo_trash

    bar, update = progress_bar("indexing")
    try:
        r = undo_trash(lib, args.operation, progress=update)
    finally:
        bar.close()
    lines = [f"{r.reverted} photo{'s' if r.reverted != 1 else ''} back from the Trash"]
    lines += [f"  left {c.path}: {c.reason}" for c in r.conflicts]
    emit(args, r.as_dict(), lines)
    return 1 if r.conflicts else 0


# ---------------------------------------------------------------------- watch
def run_watch(args, open_library, emit) -> int:
    from clipdesk.errors import ClipdeskError
    from clipdesk.ops.watch import LibraryWatcher

    lib = open_library(args)
    stop = threading.Event()
    as_json = getattr(args, "json", False)

    def show(update) -> None:
        if as_json:
            sys.stdout.write(json.dumps(update.as_dict()) + "\n")
            sys.stdout.flush()
        elif update.kind in ("refresh", "rescan"):
            r = update.report
            changed = {k: v for k, v in r.as_dict().items() if k in ("added", "updated", "moved", "removed", "failed") and v}
            if changed or update.kind == "refresh":
                print(", ".join(f"{k} {v}" for k, v in changed.items()) or "no change", "-", ", ".join(update.roots),
                      flush=True)
            for f in r.failures:
                log.warning("skipped %s: %s", f.path, f.reason)
        elif update.kind == "error":
            log.warning("%s (will retry)", update.message)
        else:
            log.info("%s", update.message)

    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if not lib.catalog.folders():
            raise ClipdeskError("The library has no folders to watch: add one with 'clipdesk index FOLDER'.")
        from clipdesk.ops import auto

        watcher = LibraryWatcher(lib, show, debounce=args.debounce, poll_interval=args.poll,
                                 force_poll=args.force_poll, catch_up=not args.no_catch_up,
                                 after_batch=lambda: "\n".join(r.describe() for r in auto.run(lib) if r.photos or r.problems))
        watcher.start()
        log.info("watching %d folders (Ctrl+C to stop)", len(lib.catalog.folders()))
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            watcher.stop()
        log.info("stopped")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        lib.close()


# ---------------------------------------------------------------------- eval duplicates
def run_eval(args, open_library, emit) -> int:
    import shutil

    from clipdesk.duplicates import build_eval_set, evaluate_duplicates
    from clipdesk.errors import ClipdeskError
    from clipdesk.library import Library

    if not os.path.isdir(args.photos):
        raise ClipdeskError(f"No folder {args.photos}.")
    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="clipdesk-dupeval-")
    try:
        log.info("building the evaluation set in %s", work)
        items = build_eval_set(args.photos, os.path.join(work, "set"), args.limit)
        lib = Library(os.path.join(work, "library"), model=getattr(args, "model", None),
                      weights=getattr(args, "weights", None), device=getattr(args, "device", None),
                      status=lambda m: log.info("%s", m))
        try:
            from clipdesk.progress import progress_bar

            bar, update = progress_bar("indexing")
            try:
                lib.index([os.path.join(work, "set")], progress=update)
            finally:
                bar.close()
            res = evaluate_duplicates(lib, items)
        finally:
            lib.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    emit(args, res, _eval_lines(res))
    return 0


def _eval_lines(res: dict) -> list[str]:
    fd = res["find_duplicates"]
    random = res["model"].startswith("test-") or res["model"].endswith("/random")
    lines = [f"model {res['model']}: {res['photos']} photos, {res['images']} images, {res['pairs']} pairs, "
             f"{res['duplicate_pairs']} of them duplicates"]
    if random:
        lines.append("NOTE: random weights: the embedding figures check the mechanics only; the pixel "
                     "check figures do not depend on the model")
    lines.append(f"pixel check alone (aspect change <= {res['max_aspect_change']}):")
    lines += [f"  {k:28s} precision {v['precision']:.4f}  recall {v['recall']:.4f}  (false pairs {v['false_pairs']})"
              for k, v in res["pixel_check"].items()]
    lines.append("threshold  embedding alone P / R      embedding + pixel check P / R")
    for t, v in res["embedding"].items():
        c = res["embedding_and_pixels"][t]
        lines.append(f"  {t:.2f}      {v['precision']:.4f} / {v['recall']:.4f}        "
                     f"{c['precision']:.4f} / {c['recall']:.4f}")
    lines.append(f"chosen threshold {res['chosen_threshold']:.2f} (best F1 of embedding + pixel check); "
                 f"find_duplicates there: precision {fd['precision']:.4f}, recall {fd['recall']:.4f}, "
                 f"{fd['groups']} groups")
    lines.append("  recall by kind of duplicate: " + ", ".join(f"{k} {v}" for k, v in fd["recall_by_variant"].items()))
    lines.append("  false pairs by kind: " + ", ".join(f"{k} {v}" for k, v in fd["false_pairs_by_kind"].items()))
    if not random:
        lines.append(f"to use it: clipdesk duplicates --threshold {res['chosen_threshold']:.2f} --remember")
    return lines
