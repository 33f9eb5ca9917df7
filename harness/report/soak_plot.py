"""Pictures of a soak: each tracked figure of a chain against the hop, with its fit.

A LEAK or DRIFT stated in words asks to be believed. The points and the fitted Theil-Sen
line (harness.analysis.trend) let a reader see the growth, and see a flat counter stay
flat. The line is drawn over the hops the verdict was judged on (memory: the second half),
and the points left out of it are drawn pale. Inline SVG, no script and nothing fetched,
like the rest of the report, so the page opens offline from a CI artifact. report.md gets
the same per figure as text: first -> last, the slope and a sparkline.

Input is one chain summary (harness.report.chain_summary); one written before "series"
existed gets no pictures and no text here.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from harness.analysis.trend import COUNTERS, DRIFTS, MEMORY, MIN_TREND, UNITS

WIDTH, HEIGHT = 320, 200  # four panels side by side in a 1400 px window
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 56, 30  # the axes inside a panel
INSET = 6  # the first and the last hop's points clear of the axes
ORDER = MEMORY + DRIFTS + COUNTERS  # the figures whose shape tells most come first
LABELS = {"qemu_anon_kib": "QEMU anon memory", "tapmig_rss_kib": "tapmig RSS",
          "tapmig_heap_kib": "tapmig heap in use",
          "blackout_ms": "blackout", "downtime_ms": "QMP downtime", "qemu_fds": "QEMU fds",
          "qemu_tun_fds": "QEMU TUN fds", "tap_queues_attached": "TAP queues attached",
          "tap_queues_disabled": "TAP queues disabled", "interfaces": "interfaces",
          "tapmig_fds": "tapmig fds"}
COLOURS = {"point": "#1f77b4", "unfitted": "#8fb3d9", "fit": "#333", "flag": "#d62728",
           "grid": "#e4e4e4", "frame": "#ccc", "note": "#555"}
SPARKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24


def _num(v: float, sign: bool = False) -> str:
    """Three significant digits, but whole numbers from 100 up: 1260, not 1.26e+03; a
    sign when asked, except on zero, so a flat figure reads 0."""
    if v == 0:
        return "0"
    text = f"{v:+.0f}" if abs(v) >= 100 else f"{v:+.3g}"
    return text if sign else text.removeprefix("+")


def label(metric: str) -> str:
    unit = UNITS.get(metric)
    return LABELS.get(metric, metric) + (f", {unit}" if unit else "")


def flag_word(f: dict[str, Any]) -> str:
    """LEAK or DRIFT when flagged, as the chain's flag lines say it; else nothing."""
    return "" if not f.get("flagged") else ("LEAK" if f.get("kind") == "leak" else "DRIFT")


def slope_parts(f: dict[str, Any]) -> tuple[str, str | None]:
    """("+12 KiB/hop", "[+11.8, +12.2]"): the fitted slope and its 95% interval, None
    where there are too few hops to have one."""
    if f.get("per_hop") is None:
        return "one hop: no trend", None
    unit = UNITS.get(f["metric"], "")
    ci = f.get("ci")
    return (f"{_num(f['per_hop'], True)} {unit + '/hop' if unit else 'per hop'}",
            None if ci is None else f"[{_num(ci[0], True)}, {_num(ci[1], True)}]")


def fit_text(f: dict[str, Any], hops: list[int]) -> str:
    """Which hops the line is fitted on, and why when it is not all of them."""
    if f.get("fit_hops") is None or f.get("intercept") is None:
        return "no fitted line"
    a, b = f["fit_hops"]
    text = f"fit: hops {a} to {b}"
    if f["metric"] in MEMORY and hops and a > hops[0]:
        text += ", 2nd half (after warm-up)"
    return text + (f"; n={f['n']} < {MIN_TREND}: too few" if f["n"] < MIN_TREND else "")


def fit_ends(f: dict[str, Any]) -> list[tuple[float, float]]:
    """The fitted line's two ends, (hop, value), or none where there is no line."""
    if f.get("fit_hops") is None or f.get("intercept") is None or f.get("per_hop") is None:
        return []
    return [(x, f["per_hop"] * x + f["intercept"]) for x in f["fit_hops"]]


def ticks(lo: float, hi: float, whole: bool) -> list[float]:
    """Round values from at or below lo to at or above hi, about four steps apart; `whole`
    for counts, which have no fractional ticks."""
    if hi <= lo:
        pad = 1.0 if whole or lo == 0 else abs(lo) * 0.01
        lo, hi = (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad
    raw = (hi - lo) / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 5, 10) if s * mag >= raw)
    step = max(step, 1.0) if whole else step
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return [round(k * step, 9) for k in range(first, last + 1)]


@dataclass(frozen=True)
class Frame:
    """Hops and values to pixels inside one panel's plot area."""

    hop_lo: float
    hop_hi: float
    lo: float
    hi: float

    def x(self, hop: float) -> float:
        span = self.hop_hi - self.hop_lo
        share = (hop - self.hop_lo) / span if span else 0.5
        return round(LEFT + INSET + (WIDTH - LEFT - RIGHT - 2 * INSET) * share, 1)

    def y(self, v: float) -> float:
        return round(HEIGHT - BOTTOM - (HEIGHT - BOTTOM - TOP) * (v - self.lo)
                     / (self.hi - self.lo), 1)


def frame(metric: str, hops: list[int], ys: list[float], ends: list[tuple[float, float]],
          ) -> tuple[Frame, list[float]]:
    """The panel's scales, wide enough for every point and the whole fitted line."""
    values = ys + [v for _, v in ends]
    marks = ticks(min(values), max(values), metric in COUNTERS)
    return Frame(hops[0], hops[-1], marks[0], marks[-1]), marks


def _text(x: float, y: float, text: str, **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x}" y="{y}"{extra}>{html.escape(text)}</text>'


def _axes(fr: Frame, marks: list[float]) -> list[str]:
    """Gridlines at the value ticks, the two axes, the hop ticks and their labels."""
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = [f'<line x1="{LEFT}" y1="{fr.y(t)}" x2="{right}" y2="{fr.y(t)}" '
             f'stroke="{COLOURS["grid"]}"/>' + _text(LEFT - 4, fr.y(t) + 3, _num(t),
                                                    text_anchor="end", font_size="10")
             for t in marks]
    parts += [f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="#888"/>',
              f'<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>']
    shown = [h for h in ticks(fr.hop_lo, fr.hop_hi, True) if fr.hop_lo <= h <= fr.hop_hi]
    for h in shown if len(shown) >= 2 else sorted({fr.hop_lo, fr.hop_hi}):
        parts.append(f'<line x1="{fr.x(h)}" y1="{bottom}" x2="{fr.x(h)}" y2="{bottom + 3}" '
                     'stroke="#888"/>'
                     + _text(fr.x(h), bottom + 13, f"{h:g}", text_anchor="middle",
                             font_size="10"))
    parts.append(_text(right, HEIGHT - 3, "hop", text_anchor="end", font_size="10",
                       fill=COLOURS["note"]))
    return parts


def _heading(f: dict[str, Any], hops: list[int]) -> list[str]:
    """Three lines: the figure (and its flag), the slope with its interval, the fit's hops."""
    word = flag_word(f)
    slope, ci = slope_parts(f)
    title = _text(8, 16, label(f["metric"]), font_size="12", font_weight="bold")
    if word:
        title += _text(WIDTH - 8, 16, word, font_size="12", font_weight="bold",
                       text_anchor="end", fill=COLOURS["flag"])
    ci_text = "95% CI n/a (too few hops)" if ci is None else f"95% CI {ci}"
    return [title, _text(8, 31, f"{slope}, {ci_text}", font_size="10"),
            _text(8, 44, fit_text(f, hops), font_size="10", fill=COLOURS["note"])]


def _marks(f: dict[str, Any], fr: Frame, hops: list[int], ys: list[float]) -> list[str]:
    """The points (hollow outside the fit), where the fit starts, and the fitted line."""
    ends = fit_ends(f)
    lo, hi = (ends[0][0], ends[1][0]) if ends else (hops[0], hops[-1])
    r = 2.4 if len(hops) <= 50 else 1.6
    fitted = f'fill="{COLOURS["point"]}"'
    left_out = f'fill="white" stroke="{COLOURS["unfitted"]}"'
    parts = [f'<circle class="pt" cx="{fr.x(h)}" cy="{fr.y(v)}" r="{r}" '
             f'{fitted if lo <= h <= hi else left_out}/>' for h, v in zip(hops, ys, strict=True)]
    if not ends:
        return parts
    (x1, y1), (x2, y2) = ends
    if x1 > hops[0]:
        parts.append(f'<line x1="{fr.x(x1)}" y1="{TOP}" x2="{fr.x(x1)}" '
                     f'y2="{HEIGHT - BOTTOM}" stroke="#999" stroke-dasharray="3,3"/>')
    colour = COLOURS["flag"] if f.get("flagged") else COLOURS["fit"]
    parts.append(f'<line class="fit" x1="{fr.x(x1)}" y1="{fr.y(y1)}" x2="{fr.x(x2)}" '
                 f'y2="{fr.y(y2)}" data-hops="{x1:g} {x2:g}" data-values="{y1!r} {y2!r}" '
                 f'stroke="{colour}" stroke-width="1.8" stroke-opacity="0.8"><title>Theil-Sen fit: '
                 f'y = {f["per_hop"]:g} * hop + {f["intercept"]:g}</title></line>')
    return parts


def panel(f: dict[str, Any], hops: list[int], ys: list[float]) -> str:
    """One figure of one chain: its points against the hop, its fit, its verdict."""
    fr, marks = frame(f["metric"], hops, ys, fit_ends(f))
    edge = COLOURS["flag"] if f.get("flagged") else COLOURS["frame"]
    parts = [f'<rect x="0.5" y="0.5" width="{WIDTH - 1}" height="{HEIGHT - 1}" '
             f'fill="white" stroke="{edge}"/>', *_heading(f, hops), *_axes(fr, marks),
             *_marks(f, fr, hops, ys)]
    name = html.escape(f"{label(f['metric'])} per hop {flag_word(f)}".strip())
    return (f'<svg class="soak-panel" data-metric="{f["metric"]}" '
            f'data-flagged="{"yes" if f.get("flagged") else "no"}" width="{WIDTH}" '
            f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{name}" font-family="sans-serif">' + "".join(parts) + "</svg>")


def figures(chain: dict[str, Any]) -> list[tuple[dict[str, Any], list[int], list[float]]]:
    """(finding, hops, values) per figure that has both a series and a finding, in ORDER;
    none for a summary written before the series were kept."""
    series = chain.get("series") or {}
    hops = series.get("hop") or []
    found = {f["metric"]: f for f in chain.get("findings", [])}
    out = []
    for metric in ORDER:
        if metric in found and metric in series:
            pts = [(h, float(v)) for h, v in zip(hops, series[metric], strict=True)
                   if v is not None]
            if pts:
                out.append((found[metric], [h for h, _ in pts], [v for _, v in pts]))
    return out


def _caption(chain: dict[str, Any]) -> str:
    hops = len((chain.get("series") or {}).get("hop") or [])
    shown = (f"; {hops} of its {chain['ok']} ok hops shown, evenly spaced"
             if hops < chain.get("ok", 0) else "")
    return (f"Per hop: chain {chain['chain']} ({chain.get('mode')}, QEMU "
            f"{chain.get('qemu_version')}){shown}")


def html_panels(chain: dict[str, Any]) -> str:
    """The chain's panels, under a caption; "" for a summary without series."""
    drawn = figures(chain)
    if not drawn:
        return ""
    note = ("Each dot is one hop's figure; the line is the Theil-Sen fit over the hops the "
            "verdict was judged on (hollow dots are left out of it); red: flagged.")
    return (f"<h3>{html.escape(_caption(chain))}</h3><p class=\"small\">{note}</p>"
            '<div class="soak" style="display:flex;flex-wrap:wrap;gap:8px">'
            + "".join(panel(*fig) for fig in drawn) + "</div>")


def sparkline(ys: list[float], width: int = SPARK_WIDTH) -> str:
    """The series in at most `width` characters, each the mean of its share of the hops."""
    if not ys:
        return ""
    k = min(width, len(ys))
    means = [sum(part) / len(part) for i in range(k)
             if (part := ys[i * len(ys) // k:(i + 1) * len(ys) // k])]
    lo, hi = min(means), max(means)
    if hi == lo:
        return SPARKS[0] * len(means)
    return "".join(SPARKS[min(len(SPARKS) - 1, int((m - lo) / (hi - lo) * len(SPARKS)))]
                   for m in means)


def markdown(chain: dict[str, Any]) -> list[str]:
    """report.md's text form of the panels: a table row per figure; nothing without series."""
    drawn = figures(chain)
    if not drawn:
        return []
    lines = ["", f"{_caption(chain)}:", "",
             "| figure | first → last | slope [95% CI] | fit | series | flag |",
             "|---|--:|--:|---|---|---|"]
    for f, hops, ys in drawn:
        slope, ci = slope_parts(f)
        span = f"{ys[0]:g}" if ys[0] == ys[-1] else f"{ys[0]:g} → {ys[-1]:g}"
        cells = (label(f["metric"]), span, f"{slope} {ci or '(no CI: too few hops)'}",
                 fit_text(f, hops).removeprefix("fit: "), sparkline(ys), flag_word(f) or "—")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines
