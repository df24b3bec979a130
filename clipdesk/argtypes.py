"""Checked number arguments for the command line: one clear usage error (exit 2) for text that is
not a number or a number outside what the option accepts (NaN included)."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(convert: Callable[[str], float], ok: Callable[[float], bool], requirement: str):
    """An argparse ``type``: ``convert`` the text, then require ``ok(value)``; ``requirement`` is
    the message when it fails (``{v}`` and ``{text}`` are filled in)."""
    noun = "a whole number" if convert is int else "a number"

    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if not ok(v):  # comparisons with NaN are false, so NaN never passes
            raise argparse.ArgumentTypeError(requirement.format(v=v, text=text))
        return v

    return parse


probability = number(float, lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1")
positive_int = number(int, lambda v: 1 <= v <= 1_000_000, "must be between 1 and 1000000 (got {v})")
finite_float = number(float, math.isfinite, "must be a finite number (got {text!r})")
