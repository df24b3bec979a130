"""The command line's one progress bar: tqdm on stderr, driven by the core's Progress callbacks.
Its own module so every command module (cli, cli_care, cli_interop, cli_auto) uses it without
importing the command line's entry point."""
from __future__ import annotations

import sys


def progress_bar(desc: str):
    """A tqdm bar on stderr driven by the core's Progress callbacks."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="img", file=sys.stderr, disable=None, dynamic_ncols=True)

    def update(p) -> None:
        if p.stage == "scan":
            bar.set_description(f"scanning ({p.done} files)")
            return
        if p.total and bar.total != p.total:
            bar.reset(total=p.total)
            bar.set_description(desc)
        bar.n = p.done
        if p.failed:
            bar.set_postfix(failed=p.failed, refresh=False)
        bar.refresh()

    return bar, update
