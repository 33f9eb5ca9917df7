"""One formatter per unit, so a figure reads the same in the table, the report and the log."""

from __future__ import annotations


def ms(value: float | None, digits: int | None = None, none: str = "-",
       unit: bool = True) -> str:
    """Milliseconds: as measured (:g), or to `digits` places; `none` where not measured."""
    if value is None:
        return none
    text = f"{value:g}" if digits is None else f"{value:.{digits}f}"
    return f"{text} ms" if unit else text


def number(value: float | None, unit: str = "", none: str = "-") -> str:
    """A count or a measured figure with its unit (" s", " MiB" ...), as measured."""
    return none if value is None else f"{value:g}{unit}"


def duration(seconds: float) -> str:
    """Wall time for people: 45s, 3m07s, 2h05m."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
