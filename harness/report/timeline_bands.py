"""Where the hole goes, drawn under the replies: one band per phase (harness.analysis.
downtime), for the ICMP hole and for the worst flow's, on the timeline's time axis, and
the ICMP hole again stretched to the page's width, where the phases of a few hundred µs
can be seen and labelled.

QEMU's phases are blue, the harness's own steps orange (harness time, not QEMU's), the
network before STOP and the guest after RESUME grey and green, and the residual (what no
checkpoint explains) hatched red, so that nothing unexplained passes for a phase.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from harness.analysis.downtime import RESIDUAL, Breakdown, Phase
from harness.record import RunRecord
from harness.report import phases
from harness.report.canvas import LEFT, RIGHT, WIDTH, Canvas

BAND = 12  # a band's height
ZOOM = 22  # the stretched band's height
LABEL_GAP = 16  # px between two labels of the stretched band: at 60°, 14 px apart
SHADES = {"before STOP": ("#9aa7b8",), "QEMU": ("#2f5f9e", "#7fa6da"),
          "harness time": ("#e08a00", "#f5c270"), "guest": ("#5aa55a", "#9fd39f"),
          "residual": ("url(#residual)",)}
LEGEND = {"QEMU": "#2f5f9e", "harness time": "#e08a00", "before STOP": "#9aa7b8",
          "guest": "#5aa55a", "residual": "#c0392b"}
HATCH = ('<defs><pattern id="residual" width="6" height="6" patternUnits="userSpaceOnUse" '
         'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f6d5d2"/>'
         '<rect width="2.5" height="6" fill="#c0392b"/></pattern></defs>')


class Lane(Protocol):
    """What a band needs of the timeline's lane it belongs to."""

    label: str
    hole: tuple[float | None, float | None]


@dataclass(frozen=True)
class Band:
    """One hole's phases: the ICMP hole's, or the worst flow's (`lane` its row)."""

    label: str
    bd: Breakdown
    lane: int | None = None


def bands(rec: RunRecord, lanes: Sequence[Lane]) -> list[Band]:
    """The ICMP band, and the worst flow's where the record has one; none without."""
    out = []
    if (bd := phases.icmp(rec)) is not None and bd.phases:
        out.append(Band("ICMP", bd))
    if (fb := phases.flow(rec)) is not None and fb.phases:
        row = next((i for i, lane in enumerate(lanes) if i and lane.hole[0] is not None
                    and abs(lane.hole[0] - fb.hole[0]) < 1e-6), None)
        out.append(Band("worst flow" if row is None else lanes[row].label, fb, row))
    return out


def colours(bd: Breakdown) -> list[str]:
    """A fill per phase: its kind's, the shades taking turns within a stretch of a kind."""
    out = []
    for kind, ps in phases.runs(bd.phases):
        shades = SHADES.get(kind, SHADES["residual"])
        out += [shades[i % len(shades)] for i in range(len(ps))]
    return out


def tooltip(p: Phase) -> str:
    kind = phases.KIND.get(p.name, "residual")
    extra = f"; unsplit: {', '.join(p.covers)} ({p.why})" if p.covers else ""
    return (f"{p.name} {p.ms:g} ms, {kind}: {phases.WHAT.get(p.name, '')} "
            f"({p.start_by} → {p.end_by}){extra}")


def _rect(c: Canvas, p: Phase, x0: float, x1: float, y: float, h: float, fill: str,
          band: str) -> None:
    c.add("rect", x=x0, y=y, width=max(x1 - x0, 0.8), height=h, fill=fill,
          class_="phase-band", data_band=band, data_phase=p.name,
          data_kind=phases.KIND.get(p.name, "residual"), title=tooltip(p))


def draw_band(c: Canvas, band: Band, y: float, lane_y: float | None) -> None:
    """The band on the time axis at y; a thin copy on the flow's own lane at lane_y."""
    c.add("text", x=LEFT - 6, y=y + BAND - 2, text=f"{band.label} phases", font_size=10,
          text_anchor="end", fill="#444")
    which = "icmp" if band.lane is None else "flow"
    for p, fill in zip(band.bd.phases, colours(band.bd), strict=True):
        x0, x1 = c.x(max(p.start_us / 1e6, c.lo)), c.x(min(p.end_us / 1e6, c.hi))
        _rect(c, p, x0, x1, y, BAND, fill, which)
        if x1 - x0 >= 7 * len(p.name):
            c.add("text", x=(x0 + x1) / 2, y=y + BAND - 3, text=p.name, font_size=9,
                  text_anchor="middle", fill="white" if fill.startswith("#2") else "#222")
        if lane_y is not None:
            c.add("rect", x=x0, y=lane_y, width=max(x1 - x0, 0.8), height=3, fill=fill,
                  class_="lane-phase", data_phase=p.name)


def spread(xs: list[float], gap: float, lo: float, hi: float) -> list[float]:
    """Label positions near xs (sorted) but at least `gap` apart, inside [lo, hi]."""
    out: list[float] = []
    for x in xs:
        out.append(max(x, out[-1] + gap if out else lo))
    for i in range(len(out) - 1, -1, -1):
        out[i] = min(out[i], hi if i == len(out) - 1 else out[i + 1] - gap)
    return out


def draw_zoom(c: Canvas, band: Band, y: float) -> float:
    """The hole from its last reply to its first, at the page's width, each phase
    labelled with its ms below; returns the y under the labels."""
    bd = band.bd
    h0, h1 = bd.phases[0].start_us, bd.phases[-1].end_us
    width = WIDTH - LEFT - RIGHT

    def x(us: int) -> float:
        return round(LEFT + (us - h0) / max(h1 - h0, 1) * width, 1)

    c.add("text", x=LEFT, y=y - 6, font_size=11, text=(
        f"{band.label} hole stretched: {bd.blackout_ms:g} ms from the last reply before it "
        f"to the first after it; residual {bd.residual_ms:g} ms "
        f"({phases.residual_note(bd)})"))
    for p, fill in zip(bd.phases, colours(bd), strict=True):
        _rect(c, p, x(p.start_us), x(p.end_us), y, ZOOM, fill, "zoom")
    mids = [(x(p.start_us) + x(p.end_us)) / 2 for p in bd.phases]
    at = spread(mids, LABEL_GAP, LEFT, WIDTH - RIGHT - 4)
    for p, mid, lx in zip(bd.phases, mids, at, strict=True):
        top = y + ZOOM + 22
        c.add("line", x1=mid, y1=y + ZOOM, x2=lx, y2=top - 10, stroke="#888",
              stroke_width=0.6)
        weight = "bold" if p.name == RESIDUAL else "normal"
        c.add("text", x=lx, y=top, text=f"{p.name} {p.ms:g}", font_size=10,
              font_weight=weight, transform=f"rotate(60 {lx} {top})",
              fill=LEGEND[phases.KIND.get(p.name, "residual")])
    return y + ZOOM + 150


def legend() -> str:
    """The kinds' swatches, for the page's key."""
    return "".join(f'<span><i style="background:{colour}"></i>{html.escape(kind)}'
                   f'{" (the harness, not QEMU)" if kind == "harness time" else ""}</span>'
                   for kind, colour in LEGEND.items())


def table(found: list[Band]) -> str:
    """Every phase of every band in ms, in order, with what marks its ends."""
    head = "".join(f"<th>{html.escape(b.label)} ms</th>" for b in found)
    names = list(dict.fromkeys([*(p.name for b in found for p in b.bd.phases), RESIDUAL]))
    per = [b.bd.phase_ms() for b in found]
    icmp = {p.name: p for p in found[0].bd.phases}
    rows = []
    for name in names:
        cells = "".join(f"<td>{ms[name]:g}</td>" if name in ms else "<td>—</td>" for ms in per)
        p = icmp.get(name)
        ends = ("" if p is None else f"{p.start_by} → {p.end_by}") + (
            f": unsplit {', '.join(p.covers)} ({p.why})" if p is not None and p.covers else "")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>"
                    f"{html.escape(phases.KIND.get(name, 'residual'))}</td>{cells}"
                    f"<td>{html.escape(ends)}</td></tr>")
    notes = "".join(f"<p>not available: {html.escape(b.bd.missing)}</p>" for b in found[:1]
                    if b.bd.missing)
    return (f"<table class='phases'><tr><th>phase</th><th>who</th>{head}<th>from → to "
            f"({found[0].label})</th></tr>{''.join(rows)}</table>{notes}")
