"""How the app writes sizes: one way everywhere (the preview and the duplicates cards once
disagreed, "kB" against "KB")."""
from __future__ import annotations

UNITS = ("kB", "MB", "GB", "TB")  # decimal, as desktop file managers show them


def human_size(n: int | None) -> str:
    """``834 bytes``, ``12 kB``, ``3.4 MB``: whole kilobytes, one decimal from megabytes on."""
    if n is None:
        return "size unknown"
    if n < 1000:
        return f"{n:,} byte{'s' if n != 1 else ''}"
    value = n / 1000
    for unit in UNITS:
        if value < 1000 or unit == UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "kB" else f"{value:.1f} {unit}"
        value /= 1000
    return ""
