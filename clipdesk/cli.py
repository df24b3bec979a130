"""The ``clipdesk`` command line.

Contract: ``--json`` prints exactly one JSON document on stdout; progress bars and messages go to
stderr. Exit status: 0 on success (also when some images could not be decoded), 1 on an error (a
one-line message, no traceback), 2 on a usage error, 130 when interrupted (Ctrl+C, SIGINT) and
143 when terminated (SIGTERM). An interrupted command stops cleanly: what it committed stays, the
rest is redone by the next run. A second Ctrl+C during that clean-up exits at once (the catalog
is crash-safe).

Only ``index`` creates a library; every other command on a folder without one says so.

JSON output is always strict JSON (no NaN or Infinity). File names that are not valid UTF-8 are
written losslessly: the string shows each undecodable byte as U+FFFD, and a sibling field with
``_bytes`` appended to its name (``path_bytes``) holds the exact bytes, base64-encoded. In a list
of bare paths (``folder list``, ``label list``, ``status``), such a path becomes an object
``{"path": ..., "path_bytes": ...}``. Plain-text output writes such names as their raw bytes.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path

from clipdesk.argtypes import finite_float, number, positive_int, probability
from clipdesk.errors import ClipdeskError, LibraryNotFoundError
from clipdesk.progress import progress_bar

log = logging.getLogger("clipdesk")


def _date(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None


EPILOG = ("exit status: 0 success, 1 error (one line on stderr), 2 usage error, 130 interrupted "
          "(Ctrl+C), 143 terminated (SIGTERM). --json prints strict JSON; a file name that is not "
          "valid UTF-8 keeps its exact bytes, base64-encoded, in a sibling field named *_bytes "
          "(e.g. path_bytes).")


class _VersionAction(argparse.Action):
    """``--version``: clipdesk's version, the runtime and the model (computed only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from clipdesk.about import report

        print("\n".join(report()))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--library", metavar="DIR", default=argparse.SUPPRESS,
                        help="library folder (default: $CLIPDESK_LIBRARY or the user data dir)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document on stdout")
    common.add_argument("--model", metavar="NAME", default=argparse.SUPPRESS,
                        help="open_clip ARCH/PRETRAINED, or test-tiny (default: the library's model)")
    common.add_argument("--weights", metavar="FILE", default=argparse.SUPPRESS,
                        help="local checkpoint for --model's architecture (needs clipdesk[torch])")
    common.add_argument("--model-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="a model folder (ONNX: config.json, visual/, textual/ — e.g. one of Immich's)")
    common.add_argument("--device", default=argparse.SUPPRESS, help="cuda, mps or cpu (default: auto)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)

    p = argparse.ArgumentParser(prog="clipdesk", parents=[common], epilog=EPILOG,
                                description="Search and organise a photo library with CLIP.")
    p.add_argument("--version", action=_VersionAction, help="the version, the model runtime and the model")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    def filters(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-k", type=positive_int, default=20, help="number of results (default 20)")
        sp.add_argument("--folder", metavar="PREFIX", help="only images under this folder")
        sp.add_argument("--after", type=_date, metavar="DATE", help="taken on or after (YYYY-MM-DD)")
        sp.add_argument("--before", type=_date, metavar="DATE", help="taken before (YYYY-MM-DD)")
        sp.add_argument("--min-score", type=finite_float, metavar="S", help="drop results scoring under S")
        sp.add_argument("--sort", choices=["score", "date"], default="score")
        sp.add_argument("--rating", type=int, choices=range(1, 6), metavar="N",
                        help="only photos rated N stars or more (imported with 'tags import')")
        sp.add_argument("--picked", action="store_true", help="only photos flagged as picks (digiKam's pick label)")

    sp = cmd("index", "add folders and index new or changed photos (no PATH: rescan all folders)")
    sp.add_argument("paths", nargs="*", metavar="PATH")
    sp.add_argument("--reembed", action="store_true", help="convert a library made with another model")
    sp.add_argument("--batch-size", type=positive_int, default=32, help="images per model call (default 32)")
    cluster = sp.add_argument_group("on a Ray cluster (pip install 'clipdesk[cluster]'; see README, Beyond one machine)")
    cluster.add_argument("--engine", choices=["local", "ray"], default="local",
                         help="where photos are decoded and embedded (default local); the library is written here")
    cluster.add_argument("--address", metavar="auto|ray://HOST:PORT|HOST:PORT",
                         help="the Ray cluster (default: RAY_ADDRESS, else Ray on this machine)")
    cluster.add_argument("--gpus-per-worker", type=number(float, lambda v: 0 <= v <= 64, "must be between 0 and 64"),
                         metavar="N", help="GPUs each model worker reserves (default 0; 0.5 shares a GPU)")
    cluster.add_argument("--cpus-per-worker", type=number(float, lambda v: 0 < v <= 1024, "must be above 0"),
                         metavar="N", help="CPUs (decoding threads) of each model worker (default 1)")

    sp = cmd("search", 'text search; combine terms: "beach" + 0.5*"sunset" - "people", image paths too')
    sp.add_argument("query")
    filters(sp)

    sp = cmd("similar", "photos like an image (in the library or not)")
    sp.add_argument("image")
    filters(sp)

    sp = cmd("classify", "zero-shot: sort every photo into one of the given categories")
    sp.add_argument("--labels", required=True, help='comma-separated categories, e.g. "beach,city,food"')
    sp.add_argument("--threshold", type=probability, help='answer "none" (null) under this probability')

    sp = cmd("label", "manage labels (named sets of photos)")
    lsub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help in (("add", "add photos to a label (created if new)"), ("remove", "remove photos from a label")):
        a = lsub.add_parser(action, parents=[common], help=help)
        a.add_argument("name")
        a.add_argument("paths", nargs="+", metavar="PATH")
        if action == "add":
            a.add_argument("--corrected", action="store_true",
                           help="these photos are labelled because a probe predicted another label "
                                "(a correction: the probe weighs them apart from a fair sample)")
    lsub.add_parser("list", parents=[common], help="list labels and their photos")
    a = lsub.add_parser("delete", parents=[common], help="delete a label (photos are kept)")
    a.add_argument("name")

    sp = cmd("train", "train a probe on labels (default: all labels)")
    sp.add_argument("probe")
    sp.add_argument("--labels", help="comma-separated labels to use")
    sp.add_argument("--negatives", help="comma-separated labels of explicit counter-examples")

    sp = cmd("predict", "apply a probe to every photo")
    sp.add_argument("probe")

    sp = cmd("suggest", "photos whose labels would most improve a probe")
    sp.add_argument("probe")
    sp.add_argument("-k", type=positive_int, default=20)

    sp = cmd("probe", "list or delete probes")
    psub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    psub.add_parser("list", parents=[common], help="list probes")
    a = psub.add_parser("delete", parents=[common], help="delete a probe")
    a.add_argument("name")

    sp = cmd("folder", "list or remove library folders")
    fsub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    fsub.add_parser("list", parents=[common], help="list folders")
    a = fsub.add_parser("remove", parents=[common], help="forget a folder (files are not touched)")
    a.add_argument("path")

    cmd("status", "what the library holds")
    cmd("repair", "check the catalog and salvage what can be read from a damaged one (photos untouched)")
    sp = cmd("models", "list the installed models and those that can be fetched")
    sp.add_argument("--all", action="store_true", help="every name that can be fetched or exported")
    sp = cmd("model", "make model folders")
    msub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = msub.add_parser("export", parents=[common], help="write an open_clip model as a model folder "
                        "(needs clipdesk[torch]; downloads its weights once)")
    a.add_argument("name", metavar="ARCH/PRETRAINED")
    a.add_argument("--out", metavar="DIR", help="the folder to write (default: the installed models folder)")

    sp = cmd("eval", "measure zero-shot, few-shot and retrieval quality")
    esub = sp.add_subparsers(dest="what", required=True, metavar="WHAT")
    a = esub.add_parser("fewshot", parents=[common], help="few-shot learning curves on an embedding file")
    a.add_argument("--features", required=True, metavar="FILE.npz")
    a.add_argument("--seeds", type=positive_int, default=50)
    a.add_argument("--shots", type=number(int, lambda v: 1 <= v <= 1000, "must be between 1 and 1000 (got {v})"),
                   nargs="+", default=[1, 2, 4, 8, 16, 32], metavar="K", help="shots per class (default 1 2 4 8 16 32)")
    a.add_argument("--corrections", type=number(int, lambda v: 0 <= v <= 10_000, "must be between 0 and 10000 (got {v})"),
                   default=10, metavar="k", help="most confident mistakes corrected before a refit (0: skip; default 10)")
    a.add_argument("--negatives", type=number(int, lambda v: 0 <= v <= 10_000, "must be between 0 and 10000 (got {v})"),
                   default=10, metavar="k", help="most confident false positives of one class given as its negatives "
                   "before a refit (0: skip; default 10)")
    a.add_argument("--half", choices=("dev", "check"), help="only the development or check half of the classes")
    a.add_argument("--rejection", action="store_true", help="also one rejection of a wrong prediction at K = 3, "
                   "then a refit: how much of the library changes answer, accuracy before → after")
    a = esub.add_parser("calibration", parents=[common], help="per-category thresholds for a target precision: "
                        "the precision and recall they reach on held-out items")
    a.add_argument("--features", required=True, metavar="FILE.npz")
    a.add_argument("--seeds", type=positive_int, default=5)
    a.add_argument("--shots", type=number(int, lambda v: 1 <= v <= 1000, "must be between 1 and 1000 (got {v})"),
                   nargs="+", default=[4, 8, 16], metavar="K", help="examples per class (default 4 8 16)")
    a.add_argument("--half", choices=("dev", "check"), help="only the development or check half of the classes")
    a = esub.add_parser("zeroshot", parents=[common], help="top-1/top-5 on a folder per class")
    a.add_argument("folder")
    a = esub.add_parser("retrieval", parents=[common], help="recall@k on a captions.jsonl file")
    a.add_argument("captions")
    from clipdesk import cli_interop  # tags, sort, journal (library interop)

    cli_interop.add_commands(sub, [common])
    from clipdesk import cli_care  # duplicates, watch, eval duplicates (library care)

    cli_care.add_commands(sub, [common], esub)
    from clipdesk import cli_auto  # auto (categories that keep applying)

    cli_auto.add_commands(sub, [common])
    return p


def _exact_text(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _name_fields(s: str) -> tuple[str, str]:
    """A string holding undecodable file-name bytes (surrogate escapes) → (readable, base64 bytes)."""
    try:
        raw = os.fsencode(s)
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace"), base64.b64encode(raw).decode("ascii")


def json_safe(data):
    """``data`` with every non-UTF-8 name written as documented in the module docstring."""
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            k = _name_fields(k)[0] if isinstance(k, str) and not _exact_text(k) else k
            if isinstance(v, str) and not _exact_text(v):
                out[k], out[f"{k}_bytes"] = _name_fields(v)
            else:
                out[k] = json_safe(v)
        return out
    if isinstance(data, (list, tuple)):
        return [dict(zip(("path", "path_bytes"), _name_fields(v)))
                if isinstance(v, str) and not _exact_text(v) else json_safe(v) for v in data]
    return data


def _emit(args: argparse.Namespace, data, text_lines) -> None:
    if getattr(args, "json", False):
        # Serialised whole before anything is written: an error leaves stdout empty, never half
        # a document; allow_nan=False keeps it strict JSON.
        text = json.dumps(json_safe(data), indent=1, allow_nan=False)
        sys.stdout.write(text + "\n")
    else:
        for line in text_lines:
            print(line)


def _models(args: argparse.Namespace) -> int:
    from clipdesk import runtime

    if args.command == "model":  # model export
        spec = runtime.ModelSpec.parse(args.name)
        dest = Path(os.path.abspath(os.path.expanduser(args.out))) if args.out else \
            runtime.models_dir() / runtime.folder_name(spec.name)
        out = runtime.export_to_folder(spec, dest, status=lambda m: print(m, file=sys.stderr, flush=True))
        _emit(args, {"name": spec.name, "folder": str(out)}, [f"{spec.name} → {out}"])
        return 0
    installed = runtime.installed_models()
    names = {n for n, _ in installed}
    fetchable = [n for n in (runtime.fetchable_models() if getattr(args, "all", False) else runtime.FETCHABLE)
                 if n not in names]
    lines = ["installed:"] + [f"  {n}  ({p})" for n, p in installed]
    lines += ["can be fetched" + (" or exported:" if runtime.torch_available() else ":")]
    lines += [f"  {n}" for n in fetchable]
    if not getattr(args, "all", False) and runtime.torch_available():
        lines.append("  … and every open_clip pair ('clipdesk models --all'), exported with PyTorch")
    _emit(args, {"installed": [{"name": n, "folder": str(p)} for n, p in installed], "fetchable": fetchable},
          lines)
    return 0


def _open(args: argparse.Namespace, create: bool = False):
    from clipdesk.library import Library

    return Library(getattr(args, "library", None), model=getattr(args, "model", None),
                   weights=getattr(args, "weights", None), device=getattr(args, "device", None),
                   create=create, status=lambda m: log.info("%s", m), model_dir=getattr(args, "model_dir", None))


def _open_for_index(args: argparse.Namespace):
    """The library to index into, after checking that every PATH exists or is a folder the
    library knows (a missing one is an unplugged drive: its photos are kept). Created only when
    there are PATHs to add and all exist (no PATH means rescanning an existing library)."""
    paths = [os.path.abspath(os.path.expanduser(p)) for p in args.paths]
    missing = [p for p in paths if not os.path.exists(p)]
    try:
        lib = _open(args, create=bool(paths) and not missing)
    except LibraryNotFoundError:
        if not missing:
            raise
        lib = None
    unknown = [p for p in missing if lib is None or (p not in lib.catalog.folders()
                                                     and lib.catalog.id_for_path(p) is None)]
    if unknown:
        if lib is not None:
            lib.close()
        raise ClipdeskError(f"No such file or folder: {unknown[0]}"
                            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                            + ". 'clipdesk folder list' shows the library's folders.")
    return lib


def _marked(lib, args) -> set[int] | None:
    """The photos ``--rating``/``--picked`` keep; None without them (the metadata module, Exiv2
    and all, is not loaded for a plain search)."""
    if not (args.rating or args.picked):
        return None
    from clipdesk.tags import marked_ids

    return marked_ids(lib, args.rating, args.picked)


def _results(args, results) -> None:
    _emit(args, [r.as_dict() for r in results], [f"{r.score:.3f}  {r.path}" for r in results])


def _check_label(lib, name: str, paths=()) -> None:
    """``label remove``/``delete`` name an existing label and photos in the library (else nothing
    would happen, silently)."""
    if name not in lib.catalog.labels():
        raise ClipdeskError(f"No label named '{name}'. 'clipdesk label list' lists them.")
    absolute = [os.path.abspath(os.path.expanduser(p)) for p in paths]
    unknown = [p for p in absolute if lib.catalog.id_for_path(p) is None]
    if unknown:
        raise ClipdeskError(f"Not in the library: {', '.join(unknown[:5])}"
                            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))


def run(args: argparse.Namespace) -> int:
    c = args.command
    if getattr(args, "care", None):  # duplicates, watch, eval duplicates (clipdesk.cli_care)
        return args.care(args, _open, _emit)
    if c in ("models", "model"):
        return _models(args)
    if c == "eval":
        from clipdesk.teach import evaluation

        return evaluation.run_cli(args, _open, _emit)
    if c in ("tags", "sort", "journal", "export"):
        from clipdesk import cli_interop

        return cli_interop.run_cli(args, _open, _emit)

    if c == "repair":
        from clipdesk.library import repair_library

        res = repair_library(getattr(args, "library", None))
        lines = [f"{res['catalog']}: {res['status']}"]
        if res["status"] == "repaired":
            lines += [f"recovered rows: {res['recovered']}", f"damaged copy kept at {res['damaged_copy']}",
                      "run 'clipdesk index' to re-embed anything that was lost"]
        _emit(args, res, lines)
        return 0

    lib = _open_for_index(args) if c == "index" else _open(args)
    try:
        if c == "index":
            bar, update = progress_bar("indexing")
            try:
                engine = lib.ray_engine(args.address, args.gpus_per_worker or 0.0, args.cpus_per_worker or 1.0) \
                    if args.engine == "ray" else None
                report = lib.index(args.paths, progress=update, reembed=args.reembed, batch_size=args.batch_size,
                                   engine=engine)
            finally:
                bar.close()
            for f in report.failures:
                log.warning("skipped %s: %s", f.path, f.reason)
            for p in report.problems:
                if not p.is_file:
                    log.warning("%s: %s", p.path, p.reason)
            d = report.as_dict()
            d["seconds"] = round(d["seconds"], 3)
            _emit(args, d, [", ".join(f"{k} {v}" for k, v in d.items() if k != "seconds")
                            + f" in {d['seconds']:.1f} s"])
        elif c == "search":
            # a RAW + JPEG pair is one photo: shown once, at its better rank
            from clipdesk.library import search_without_twins

            found = search_without_twins(lib, args.query, args.k, folder=args.folder, after=args.after,
                                         before=args.before, min_score=args.min_score, sort="score",
                                         only=_marked(lib, args))
            if args.sort == "date":  # the same top-k in date order, as lib.search orders it
                found.sort(key=lambda r: (r.taken is None, r.taken or 0.0))
            if not found and lib.catalog.vector_count() == 0:
                log.warning("The library has no indexed photos yet: add some with 'clipdesk index FOLDER'.")
            _results(args, found)
        elif c == "similar":
            _results(args, lib.similar(args.image, args.k, folder=args.folder, after=args.after,
                                       before=args.before, min_score=args.min_score, sort=args.sort,
                                       only=_marked(lib, args)))
        elif c == "classify":
            bar, update = progress_bar("classifying")
            try:
                out = lib.classify(args.labels.split(","), args.threshold, progress=update)
            finally:
                bar.close()
            _emit(args, [o.as_dict() for o in out],
                  [f"{o.label or '-':20s} {o.probability:.2f}  {o.path}" for o in out])
        elif c == "label":
            if args.action == "add":
                n = lib.add_to_label(args.name, args.paths, corrected=args.corrected)
                _emit(args, {"label": args.name, "images": n}, [f"{args.name}: {n} images"])
            elif args.action == "remove":
                _check_label(lib, args.name, args.paths)
                n = lib.remove_from_label(args.name, args.paths)
                _emit(args, {"label": args.name, "images": n}, [f"{args.name}: {n} images"])
            elif args.action == "delete":
                _check_label(lib, args.name)
                lib.delete_label(args.name)
                _emit(args, {"deleted": args.name}, [f"deleted label {args.name}"])
            else:
                labels, fixed = lib.labels(), lib.corrections()
                _emit(args, labels, [f"{k}: {len(v)} images" + (f" ({len(fixed[k])} given as corrections)"
                                                                  if fixed.get(k) else "")
                                     for k, v in labels.items()])
        elif c == "train":
            split = (lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else [])
            r = lib.train(args.probe, split(args.labels) or None, split(args.negatives))
            _emit(args, r.as_dict(), [f"trained {r.probe} on {r.examples} examples of {', '.join(r.labels)}: "
                                      f"cross-validated accuracy {r.cv_accuracy:.3f} "
                                      f"(zero-shot on the same examples {r.zeroshot_accuracy:.3f})"])
        elif c == "predict":
            bar, update = progress_bar("predicting")
            try:
                out = lib.predict(args.probe, progress=update)
            finally:
                bar.close()
            _emit(args, [{"path": o.path, "label": o.label, "probability": round(o.probability, 6)} for o in out],
                  [f"{o.label or '-':20s} {o.probability:.2f}  {o.path}" for o in out])
        elif c == "suggest":
            out = lib.suggest(args.probe, args.k)
            _emit(args, [o.as_dict() for o in out],
                  [f"{o.label:20s} {o.probability:.2f}  {o.path}" for o in out])
        elif c == "probe":
            if args.action == "delete":
                lib.delete_probe(args.name)
                _emit(args, {"deleted": args.name}, [f"deleted probe {args.name}"])
            else:
                probes = lib.probes()
                _emit(args, [p.__dict__ for p in probes],
                      [f"{p.name}: DAMAGED: {p.damaged}" if p.damaged else
                       f"{p.name}: {', '.join(p.classes)} ({p.examples} examples, cv {p.cv_accuracy:.3f})"
                       for p in probes])
        elif c == "folder":
            if args.action == "remove":
                n = lib.remove_folder(args.path)
                _emit(args, {"removed": n}, [f"forgot {n} images"])
            else:
                folders = lib.catalog.folders()
                _emit(args, folders, folders)
        elif c == "status":
            st = lib.status()
            _emit(args, st, [f"library  {st['library']}", f"images   {st['images']}",
                             f"failed   {st['failed']}", f"model    {st['model']} (dim {st['dim']})",
                             "folders  " + ("\n         ".join(st["folders"]) or "-"),
                             "probes   " + (", ".join(st["probes"]) or "-")]
                  + [f"damaged  {d['reason']}" for d in st["damaged_probes"]])
        return 0
    finally:
        lib.close()


class Terminated(KeyboardInterrupt):
    """SIGTERM: stops a command exactly as Ctrl+C does (clean-up included), with exit status 143."""


def _in_finalizer(frame, depth: int = 64) -> bool:
    """Whether the interrupted code runs inside an object's ``__del__``."""
    while frame is not None and depth > 0:
        if frame.f_code.co_name == "__del__":
            return True
        frame, depth = frame.f_back, depth - 1
    return False


def _handle_stop_signals() -> tuple[dict, dict]:
    """SIGINT and SIGTERM raise KeyboardInterrupt / :class:`Terminated` in the main thread once;
    a second signal during the clean-up exits at once, with no traceback. Returns the state and
    the previous handlers."""
    state = {"stopping": False}

    def handler(signum, _frame):
        code = 143 if signum == signal.SIGTERM else 130
        if state["stopping"]:
            try:
                os.write(2, b"clipdesk: stopped\n")
            finally:
                os._exit(code)  # committed work is safe: the catalog survives even kill -9
        if _in_finalizer(_frame):
            # Python prints and drops an exception raised inside __del__ (a tqdm bar's, say): the
            # stop would be lost. Deliver the signal again a moment later, outside the finalizer.
            timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        state["stopping"] = True
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    return state, previous


def main(argv: list[str] | None = None) -> int:
    state, previous = _handle_stop_signals()
    try:
        return _main(argv)
    finally:
        if not state["stopping"]:  # after a stop, a second signal during shutdown still exits quietly
            for sig, h in previous.items():
                signal.signal(sig, h)


def _main(argv: list[str] | None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")  # file names print as their own bytes
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "engine", "ray") != "ray" and (args.address or args.gpus_per_worker is not None
                                                    or args.cpus_per_worker is not None):
        parser.error("--address, --gpus-per-worker and --cpus-per-worker go with --engine ray")
    logging.basicConfig(stream=sys.stderr, format="%(message)s",
                        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING)
    log.setLevel(logging.INFO)  # clipdesk's own status lines (model loading…) are worth seeing
    # huggingface_hub logs through a handler of its own: propagating to ours too printed each of
    # its messages (download retries) twice.
    logging.getLogger("huggingface_hub").propagate = False
    try:
        return run(args)
    except ClipdeskError as e:
        print(f"clipdesk: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print(f"clipdesk: {'terminated' if terminated else 'cancelled'}; what was done so far is kept",
              file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # output piped into e.g. head, which closed early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # noqa: BLE001 - the contract: one line, no traceback
        if os.environ.get("CLIPDESK_DEBUG"):
            raise
        print(f"clipdesk: internal error: {type(e).__name__}: {e} (set CLIPDESK_DEBUG=1 for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
