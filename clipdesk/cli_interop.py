"""The library-interop subcommands: ``tags`` (import, write, remove, undo, show), ``sort``, ``journal``.

Registered on the main parser by :func:`add_commands`; :func:`run_cli` runs them with the main
CLI's library opener and output function, so the ``--json`` / exit-code contract is the same.
"""
from __future__ import annotations

import argparse
import os
import sys

from clipdesk.argtypes import probability

COMMANDS = frozenset({"tags", "sort", "journal", "export"})


def _selection(sp: argparse.ArgumentParser, label: bool) -> None:
    g = sp.add_mutually_exclusive_group()
    if label:
        g.add_argument("--label", metavar="L", help="every photo of label L")
    g.add_argument("--probe", metavar="P", help="photos probe P recognises")
    g.add_argument("--classify", metavar='"a,b,c"', help="zero-shot categories, comma-separated")
    sp.add_argument("--min-probability", type=probability, default=None, metavar="P",
                    help="only predictions at least this sure (default: 0.8 for a probe's tags, else 0)")
    sp.add_argument("--threshold", type=probability, help='with --classify: "none" under this probability')
    sp.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")


def add_commands(sub, parents: list[argparse.ArgumentParser] = ()) -> None:
    """Add ``tags``, ``sort`` and ``journal`` to the main parser's subparsers."""
    def cmd(parent, name: str, help: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=list(parents), help=help, description=help)
        p.set_defaults(interop_parser=p)
        return p

    sp = cmd(sub, "tags", "read keywords other apps wrote, write recognised ones into XMP sidecars")
    tsub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = cmd(tsub, "import", "make the keywords of indexed photos (sidecars, XMP, IPTC) labels")
    a.add_argument("paths", nargs="*", metavar="PATH", help="only photos under these (default: all)")
    a.add_argument("--prefix", default="", help='put every imported label under this, e.g. "lr/"')
    for action, help in (("write", "write keywords into XMP sidecars beside the photos (journaled)"),
                         ("remove", "remove keywords from the photos' XMP sidecars (journaled)")):
        a = cmd(tsub, action, help)
        _selection(a, label=True)
        a.add_argument("--prefix", default="clipdesk/", help='keyword prefix (default "clipdesk/"; "" for none)')
        a.add_argument("--resume", action="store_true", help="finish an interrupted tags write/remove")
        a.add_argument("--embedded", action="store_true",
                       help="write into the photos' own XMP (JPEG, TIFF, DNG) instead of sidecars; "
                            "journaled, undo restores each photo byte for byte")
    a = cmd(tsub, "undo", "restore the sidecars of the last tags write/remove exactly as they were")
    a.add_argument("--operation", metavar="ID", help="a specific operation ('clipdesk journal' lists them)")
    a = cmd(tsub, "show", "the keywords of photos, as tags import reads them")
    a.add_argument("paths", nargs="+", metavar="PATH")

    sp = cmd(sub, "sort", "put photos into DIR/<category>/ by a probe or zero-shot categories (journaled)")
    _selection(sp, label=False)
    sp.add_argument("--into", metavar="DIR", help="destination folder")
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--copy", dest="mode", action="store_const", const="copy", help="copy (default)")
    mode.add_argument("--move", dest="mode", action="store_const", const="move",
                      help="move (the library follows the photos)")
    mode.add_argument("--link", dest="mode", action="store_const", const="link", help="symbolic links")
    sp.add_argument("--undo", action="store_true", help="undo the last sort")
    sp.add_argument("--resume", action="store_true", help="finish an interrupted sort")
    sp.add_argument("--operation", metavar="ID", help="with --undo: a specific operation")

    cmd(sub, "journal", "list the journaled operations (tags write/remove, sort) and their state")

    sp = cmd(sub, "export", "results as files other programs read")
    esub = sp.add_subparsers(dest="action", required=True, metavar="FORMAT")
    a = cmd(esub, "csv", "one row per photo: path, category, probability (the app's Export CSV columns)")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--label", metavar="L", help="every photo of label L")
    g.add_argument("--probe", metavar="P", help="probe P's prediction for every photo")
    g.add_argument("--classify", metavar='"a,b,c"', help="zero-shot categories, comma-separated")
    a.add_argument("--threshold", type=probability, help='with --classify: no category under this probability')
    a.add_argument("-o", "--output", required=True, metavar="FILE", help="the CSV file ('-': standard output)")
    a.add_argument("--bom", action="store_true", help="start with a UTF-8 byte-order mark (for Excel)")


def _bar(desc: str):
    from clipdesk.progress import progress_bar

    return progress_bar(desc)


def _with_bar(desc: str, fn, *args, **kw):
    bar, update = _bar(desc)
    try:
        return fn(*args, progress=update, **kw)
    finally:
        bar.close()


def _warn(problems) -> None:
    for p in problems:
        print(f"clipdesk: {p.path}: {p.reason}", file=sys.stderr)


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def run_cli(args: argparse.Namespace, open_library, emit) -> int:
    if args.command == "journal":
        from clipdesk.journal import Journal
        from clipdesk.library import default_library_folder

        folder = os.path.abspath(os.path.expanduser(getattr(args, "library", None) or default_library_folder()))
        ops = [op.summary() for op in Journal(folder).operations()]
        emit(args, ops, [f"{o['operation']}  {o['description']}: {o['done']}/{o['steps']} steps"
                         + (" (undone)" if o["undone"] else "" if o["finished"] else " (interrupted)") for o in ops])
        return 0
    if args.command == "export" and not (args.label or args.probe or args.classify):
        args.interop_parser.error("give one of --label, --probe or --classify")
    if args.command == "export" and args.output == "-" and getattr(args, "json", False):
        args.interop_parser.error("--json and --output - would both write to standard output")
    lib = open_library(args)
    try:
        if args.command == "export":
            return _export(args, lib, emit)
        if args.command == "tags":
            return _tags(args, lib, emit)
        return _sort(args, lib, emit)
    finally:
        lib.close()


def _undo_lines(r) -> list[str]:
    lines = [f"undid {r.operation}: {r.reverted} changes reverted"]
    lines += [f"kept {c.path}: {c.reason}" for c in r.conflicts]
    return lines


def _tags(args, lib, emit) -> int:
    from clipdesk import tags

    if args.action == "import":
        r = _with_bar("reading keywords", tags.import_tags, lib, args.paths, prefix=args.prefix)
        _warn(r.problems)
        emit(args, r.as_dict(), [f"{r.tagged} of {r.photos} photos have keywords"]
             + [f"{name}: {n} photos" for name, n in sorted(r.labels.items())])
        return 0
    if args.action == "show":
        out = {}
        for p in args.paths:
            keywords, problems = tags.read_photo_keywords(os.path.abspath(os.path.expanduser(p)))
            _warn(problems)
            out[os.path.abspath(os.path.expanduser(p))] = keywords
        emit(args, out, [f"{p}: {', '.join(k) or '-'}" for p, k in out.items()])
        return 0
    if args.action == "undo":
        r = tags.undo(lib, args.operation)
        emit(args, r.as_dict(), _undo_lines(r))
        return 0
    warned = 0  # problems already shown with the plan
    if args.resume:
        r = _with_bar("writing sidecars", tags.resume, lib)
    else:
        if not (args.label or args.probe or args.classify):
            args.interop_parser.error("give one of --label, --probe or --classify (or --resume)")
        keywords = _with_bar("selecting", tags.selection, lib, label=args.label, probe=args.probe,
                             min_probability=args.min_probability,
                             classify=_split(args.classify) if args.classify else None,
                             threshold=args.threshold, prefix=args.prefix)
        plan = tags.plan_write(keywords, remove=args.action == "remove", created=tags.created_sidecars(lib),
                               embedded=args.embedded)
        _warn(plan.problems)
        warned = len(plan.problems)
        if args.dry_run:
            emit(args, plan.as_dict(),
                 [f"{c.action:6s} {c.sidecar}  " + " ".join([f"+{k}" for k in c.add] + [f"-{k}" for k in c.remove])
                  for c in plan.changes] + [f"{len(plan.changes)} sidecars would change, {plan.unchanged} unchanged"])
            return 0
        r = _with_bar("writing sidecars", tags.apply_write, lib, plan, description=f"tags {args.action}")
    _warn(r.problems[warned:])
    emit(args, r.as_dict(), [r.summary() + (f" (undo: clipdesk tags undo --operation {r.operation})"
                                            if r.changed else "")])
    if not r.changed and getattr(args, "json", False):  # said on stdout otherwise
        print(f"clipdesk: {r.summary()}", file=sys.stderr)
    return 1 if not r.changed and r.problems else 0


def _export(args, lib, emit) -> int:
    from clipdesk import export

    rows = _with_bar("classifying" if not args.label else "reading", export.selection_rows, lib, label=args.label,
                     probe=args.probe, classify=_split(args.classify) if args.classify else None,
                     threshold=args.threshold)
    if args.output == "-":
        data, n = export.csv_bytes(rows, args.bom)
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    path = os.path.abspath(os.path.expanduser(args.output))
    try:
        n = export.write_csv(path, rows, args.bom)
    except OSError as e:
        raise export.ExportError(f"Cannot write {path}: {e.strerror or e}.") from None
    emit(args, {"file": path, "rows": n, "bom": args.bom}, [f"Exported {n} rows to {path}"])
    return 0


def _unit(p) -> str:
    parts = [f"its twin {os.path.basename(d)}" for _, d in p.twins]
    parts += [f"{len(p.sidecars)} sidecar{'s' if len(p.sidecars) != 1 else ''}"] if p.sidecars else []
    return f" (with {' and '.join(parts)})" if parts else ""


def _sort(args, lib, emit) -> int:
    from clipdesk import organise

    if args.undo:
        r = organise.undo(lib, args.operation)
        emit(args, r.as_dict(), _undo_lines(r))
        return 0
    if args.resume:
        r = _with_bar("sorting", organise.resume, lib)
    else:
        if not args.into or not (args.probe or args.classify):
            args.interop_parser.error("give --into DIR and one of --probe or --classify (or --undo, --resume)")
        rows = _with_bar("classifying", organise.classifications, lib, probe=args.probe,
                         classify=_split(args.classify) if args.classify else None, threshold=args.threshold)
        plan = organise.plan_sort(lib, rows, args.into, args.mode or "copy", args.min_probability or 0.0)
        _warn(plan.problems)
        if args.dry_run:
            emit(args, plan.as_dict(), [f"{plan.mode} {p.source} -> {p.dest}" + _unit(p) for p in plan.placements]
                 + [f"{len(plan.placements)} photos would be sorted, {plan.unsorted} unsorted, "
                    f"{plan.in_place} already in place"])
            return 0
        r = _with_bar("sorting", organise.apply_sort, lib, plan)
    emit(args, r.as_dict(), [f"{r.mode} {p.source} -> {p.dest}" + _unit(p) for p in r.placed]
         + [f"{len(r.placed)} photos sorted" + (f" (undo: clipdesk sort --undo --operation {r.operation})"
                                                if r.operation else "")])
    return 0
