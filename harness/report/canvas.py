"""The time axis the timeline's pictures share: wall-clock seconds to pixels, and SVG
elements written as text (no library: the page must open offline, as it is)."""

from __future__ import annotations

import html

LEFT, RIGHT = 120, 20  # the lanes' labels on the left
WIDTH = 1100


class Canvas:
    """SVG elements on a time axis: x(t) maps wall-clock seconds to pixels."""

    def __init__(self, lo: float, hi: float, stop: float) -> None:
        self.lo, self.hi, self.stop = lo, hi, stop
        self.parts: list[str] = []

    def x(self, t: float) -> float:
        return round(LEFT + (t - self.lo) / (self.hi - self.lo) * (WIDTH - LEFT - RIGHT), 1)

    def shown(self, t: float) -> bool:
        return self.lo <= t <= self.hi

    def add(self, tag: str, **attrs: object) -> None:
        """One element: `text` is its content, `title` its tooltip."""
        text, title = attrs.pop("text", None), attrs.pop("title", None)
        attr = " ".join(f'{k.rstrip("_").replace("_", "-")}="{v}"' for k, v in attrs.items())
        inner = "" if title is None else f"<title>{html.escape(str(title))}</title>"
        inner += "" if text is None else html.escape(str(text))
        self.parts.append(f"<{tag} {attr}>{inner}</{tag}>" if inner or text is not None
                          else f"<{tag} {attr}/>")

    def vline(self, t: float, y0: float, y1: float, color: str, label: str = "") -> None:
        self.add("line", x1=self.x(t), x2=self.x(t), y1=y0, y2=y1, stroke=color,
                 stroke_dasharray="4 3")
        if label:
            self.add("text", x=self.x(t) + 3, y=y0 - 4, text=label, font_size=11, fill=color)
