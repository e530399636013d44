"""Sizes in words: bytes in the binary unit that keeps the number readable (a 150 MiB limit is not "0 GiB")."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size_text(n: float) -> str:
    """Bytes as 950 B, 2.35 MiB, 150 MiB, 1.21 GiB: three significant digits, the unit that fits."""
    value, unit = float(n), 0
    while abs(value) >= 1000 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{int(n):,} B"
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:.{digits}f} {_UNITS[unit]}"
