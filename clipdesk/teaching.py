"""Names for what the Teach loop stores beside the user's own labels.

A photo *rejected* for category A ("this is not A") is stored in the label ``NEGATIVE_PREFIX + A``.
The prefix is reserved: user labels may not start with it, so the two never collide, and label
lists shown to people hide these labels.
"""
from __future__ import annotations

NEGATIVE_PREFIX = "__not__."
NONE_CLASS = "(none of these)"  # the extra class a multi-class probe learns from rejected photos


def negative_label(name: str) -> str:
    return NEGATIVE_PREFIX + name


def is_negative(label: str) -> bool:
    return label.startswith(NEGATIVE_PREFIX)


def positive_of(label: str) -> str:
    """``"__not__.Anna"`` → ``"Anna"``."""
    return label[len(NEGATIVE_PREFIX):] if is_negative(label) else label
