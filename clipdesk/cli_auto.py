"""The ``auto`` subcommands: categories that keep applying (:mod:`clipdesk.ops.auto`).

``auto add PROBE [--category C] [--precision 0.9] [--write-tags] [--sort-into DIR --copy|--move]`` (the
actions of every category, or of category C only), ``auto list``,
``auto remove PROBE``, ``auto run [PROBE…]``, ``auto inbox``, ``auto undo``; ``clipdesk watch`` runs them after
every batch it indexes. Same ``--json`` / exit-code contract as every command (the main CLI's
output function and its one handler of ClipdeskError).
"""
from __future__ import annotations

import argparse

from clipdesk.argtypes import probability


def add_commands(sub, parents=()) -> None:
    sp = sub.add_parser("auto", parents=list(parents), help="categories that keep applying to new photos")
    asub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = asub.add_parser("add", parents=list(parents), help="keep applying probe PROBE to new photos")
    a.add_argument("probe")
    a.add_argument("--category", metavar="C",
                   help="the actions below are category C's own (default: every category without its own)")
    a.add_argument("--precision", type=probability, default=0.9,
                   help="how often an applied category must be right (default 0.9): sets its threshold")
    a.add_argument("--write-tags", action="store_true", help="write the category as an XMP keyword (sidecar)")
    a.add_argument("--sort-into", metavar="DIR", help="also put the photo into DIR/<category>/")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--copy", dest="mode", action="store_const", const="copy", help="copy into DIR (default)")
    g.add_argument("--move", dest="mode", action="store_const", const="move", help="move into DIR")
    a.set_defaults(mode="copy")
    asub.add_parser("list", parents=list(parents), help="the probes that keep applying, with their thresholds")
    a = asub.add_parser("remove", parents=list(parents), help="stop applying probe PROBE")
    a.add_argument("probe")
    a = asub.add_parser("run", parents=list(parents), help="apply them to the photos not seen yet")
    a.add_argument("probes", nargs="*", metavar="PROBE")
    asub.add_parser("inbox", parents=list(parents), help="new photos under their category's threshold")
    asub.add_parser("undo", parents=list(parents), help="take the last batch back (sorting, keywords, Inbox)")
    sp.set_defaults(care=run_cli)


def run_cli(args: argparse.Namespace, open_library, emit) -> int:
    from clipdesk.ops import auto

    lib = open_library(args)
    try:
        if args.action == "add":
            if args.mode == "move" and not args.sort_into:
                raise auto.AutoError("--move needs --sort-into DIR.")
            setting, thresholds = auto.add(lib, args.probe, args.precision, args.write_tags, args.sort_into, args.mode,
                                           args.category)
            emit(args, {"setting": setting.as_dict(), "thresholds": {k: v.__dict__ for k, v in thresholds.items()}},
                 [f"'{args.probe}' keeps applying to new photos:"]
                 + ["  " + t.describe() + f" ({setting.actions(c).describe()})" for c, t in thresholds.items()])
        elif args.action == "list":
            store = auto.load_store(lib)
            rows = [s.as_dict() for s in store["auto"].values()]
            lines = []
            for s in store["auto"].values():
                lines.append(f"{s.probe}: precision {s.precision:g}")
                lines += ["  " + auto.Threshold(**t).describe() + f" ({s.actions(c).describe()})"
                          for c, t in s.thresholds.items()]
            emit(args, rows, lines or ["No probe applies automatically ('clipdesk auto add PROBE')."])
        elif args.action == "remove":
            auto.remove(lib, args.probe)
            emit(args, {"removed": args.probe}, [f"'{args.probe}' no longer applies automatically."])
        elif args.action == "run":
            reports = auto.run(lib, args.probes or None)
            emit(args, [r.as_dict() for r in reports], [r.describe() for r in reports] or ["No probe applies automatically."])
            return 1 if any(r.problems for r in reports) else 0
        elif args.action == "undo":
            done = auto.undo(lib)
            emit(args, done, [f"Undid the last batch of '{done['probe']}' ({done['applied']} photos applied)."])
        else:
            inbox = auto.load_store(lib)["inbox"]
            emit(args, inbox, [f"{e['path']}  {e['category']} {e['probability']:.0%}? ({e['probe']})" for e in inbox]
                 or ["The Inbox is empty."])
        return 0
    finally:
        lib.close()
