"""A report as Markdown (for mailing-list replies) and HTML (inline SVG, nothing fetched,
so it opens offline from a CI artifact)."""

from __future__ import annotations

import html
import math
import random

from harness.report import chain_summary, phase_render, phases, units
from harness.report.model import (
    COUNTED,
    JUDGED,
    TRAFFIC_JUDGED,
    TRAFFIC_METRICS,
    Combination,
    Report,
    Summary,
)

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
JITTER_SEED = 20240601  # the same report always draws the same picture
TABLE_HEAD = ("build", "mode", "n", "blackout median ms [95% CI]", "blackout p95 ms",
              "QMP downtime median ms", "STOP→RESUME median ms", "lost median",
              "lost STOP→RESUME per run [95% CI]")


def _cell(x: float | None) -> str:
    """A table cell in ms; the column's header names the unit."""
    return units.ms(x, 1, "—", unit=False)


def ci_text(ci: list[float] | None, digits: int = 1) -> str:
    return "[CI n/a, n<3]" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _rows(report: Report) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for c in report.combinations:
        m = c.metrics
        b, lost = m["blackout_ms"], m["lost"].median
        rows.append((c.build, c.mode, str(b.n), f"{_cell(b.median)} {ci_text(b.ci)}",
                     _cell(b.p95), _cell(m["downtime_ms"].median),
                     _cell(m["stop_resume_ms"].median), "—" if lost is None else f"{lost:g}",
                     _loss(c)))
    return rows


def _loss(c: Combination) -> str:
    """ICMP's (and the flows') requests lost between STOP and RESUME, as a rate per run
    with its exact interval: local migration promises none."""
    parts = [f"{n.rate:g} {ci_text(n.ci, 2)}" + ("" if metric == "lost_in_window" else
                                                   " flows")
             for metric in COUNTED if metric != "lost"
             and (n := c.counts.get(metric)) is not None]
    return "; ".join(parts) or "—"


UPDATE_HEAD = ("pair", "machine", "mode", "n", "blackout median ms [95% CI]",
               "lost STOP→RESUME per run [95% CI]", "largest phase")


def _update_rows(report: Report) -> list[tuple[str, ...]]:
    """The upgrade/rollback matrix: one row per pair (source -> target) and mode."""
    rows: list[tuple[str, ...]] = []
    for c in (c for c in report.combinations if c.target_qemu):
        b = c.metrics["blackout_ms"]
        phased = [(s.median, k) for k, s in c.phases.items()
                  if s.median is not None and k in phases.ORDER]
        top = max(phased, default=None)
        rows.append((c.build, c.machine or "—", c.mode, str(b.n),
                     f"{_cell(b.median)} {ci_text(b.ci)}", _loss(c),
                     "—" if top is None else f"{top[1]} {top[0]:.1f} ms"))
    return rows


TRAFFIC_HEAD = ("build", "mode", "worst-flow blackout median ms [95% CI]",
                "flow spread median ms", "flow requests lost median", "TCP stall median ms",
                "TCP retransmissions median")


def _traffic_rows(report: Report) -> list[tuple[str, ...]]:
    """The traffic figures (harness.run.hop_probes) of the combinations that have them."""
    def med(m: dict[str, Summary], k: str) -> str:
        return _cell(m[k].median) if k in m else "—"

    rows: list[tuple[str, ...]] = []
    for c in report.combinations:
        m = c.metrics
        if not any(k in m for k in TRAFFIC_METRICS):
            continue
        worst = m.get("flow_blackout_ms")
        rows.append((c.build, c.mode, "—" if worst is None else
                     f"{_cell(worst.median)} {ci_text(worst.ci)}", med(m, "flow_spread_ms"),
                     med(m, "flow_lost"), med(m, "tcp_stall_ms"), med(m, "tcp_retrans")))
    return rows


def _timeline_links(report: Report) -> list[tuple[str, str]]:
    """(label, path) of each combination's timeline pictures."""
    return [(f"{c.mode} {c.build}: {which}", path) for c in report.combinations
            for which, path in c.timelines.items()]


def _gaps(c: Combination) -> list[str]:
    """Every run or figure of one combination that did not make it into the table."""
    name = f"{c.mode} {c.build}"
    out = []
    for outcomes, what in ((c.unsupported, "not supported"), (c.failed, "failed"),
                           (c.inconclusive, "inconclusive (host too noisy to judge)")):
        for reason, count in outcomes.reasons.items():
            out.append(f"{what}: {name}: {count} of {c.runs} runs: {reason}")
    for metric, s in c.metrics.items():
        if s.missing:
            out.append(f"missing: {name}: {s.missing} ok runs without {metric}")
    return out


def _notes(report: Report) -> tuple[list[str], list[str]]:
    """Ratio lines, then the gaps of every combination."""
    ratio_lines = [f"{JUDGED[r.metric]} {r.label}: "
                   + ("undefined" if r.ratio is None else f"{r.ratio:.2f}x {ci_text(r.ci, 2)}")
                   for r in report.ratios]
    return ratio_lines, [*report.notes, *(g for c in report.combinations for g in _gaps(c))]


def _title(report: Report) -> str:
    return "tapmig report" + (" — PARTIAL (interrupted: not every planned run completed)"
                              if report.partial else "")


def context(report: Report) -> str:
    """What ran and where, in one line: the things `compare` insists are alike."""
    m = report.meta
    interval = "" if m.probe_interval_ms is None else f" every {m.probe_interval_ms:g} ms"
    return (f"QEMU {m.qemu_versions}; accel {m.accel}; guest {m.guest}; "
            f"host kernel {m.host_kernel}; date {m.date}; CPU {m.cpu_model}; "
            f"probe {m.prober}{interval}; {m.queues}")


def render_markdown(report: Report) -> str:
    """Plain enough to paste into a mailing-list reply as is."""
    def row(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    ratio_lines, gaps = _notes(report)
    lines = [f"# {_title(report)}", "", context(report), "", row(TABLE_HEAD),
             "|" + "---|" * 2 + "--:|" * (len(TABLE_HEAD) - 2)]
    lines += [row(r) for r in _rows(report)] or ["(no runs recorded)"]
    if traffic := _traffic_rows(report):
        lines += ["", "Traffic across the migration (UDP flows, TCP connection):", "",
                  row(TRAFFIC_HEAD), "|" + "---|" * 2 + "--:|" * (len(TRAFFIC_HEAD) - 2)]
        lines += [row(r) for r in traffic]
    if updates := _update_rows(report):
        lines += ["", "Live updates (source -> target, on one machine type):", "",
                  row(UPDATE_HEAD), "|" + "---|" * 3 + "--:|" * 3 + "---|"]
        lines += [row(r) for r in updates]
    lines += phase_render.markdown(report)
    if links := _timeline_links(report):
        lines += ["", "Timelines:"] + [f"- [{label}]({path})" for label, path in links]
    lines += ["", "Ratios of medians [95% bootstrap CI]:"] + [f"- {x}" for x in ratio_lines or
                                                             ["none"]]
    lines += ["", "Not supported / failed / missing:"] + [f"- {x}" for x in gaps or ["none"]]
    lines += chain_summary.markdown(report.chains)
    return "\n".join(lines) + "\n"


def _ticks(top: float) -> list[float]:
    raw = max(top, 1e-9) / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 5, 10) if s * mag >= raw)
    return [i * step for i in range(math.ceil(top / step) + 1)]


def _axes(width: int, height: int, ys: list[float], y_label: str) -> tuple[list[str], float]:
    """Y axis from zero with labelled gridlines; returns the SVG parts and the y-axis top."""
    ticks = _ticks(max(ys, default=0.0) or 1.0)
    parts = [f'<line x1="60" y1="20" x2="60" y2="{height - 40}" class="ax"/>',
             f'<line x1="60" y1="{height - 40}" x2="{width}" y2="{height - 40}" class="ax"/>',
             f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})">'
             f"{html.escape(y_label)}</text>"]
    for t in ticks:
        y = height - 40 - (height - 60) * t / ticks[-1]
        parts.append(f'<line x1="56" y1="{y:.1f}" x2="{width}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="52" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    return parts, ticks[-1]


def _svg_iterations(report: Report) -> str:
    h, plot_w = 380, 800
    series = report.series
    its = [p.iteration for pts in series.values() for p in pts] or [1]
    ys = [v for pts in series.values() for p in pts
          for v in (p.blackout_ms, p.downtime_ms, p.flow_blackout_ms) if v is not None]
    parts, top = _axes(60 + plot_w, h, ys, "ms")
    lo, hi = min(its), max(its)

    def x(it: float) -> float:
        return 60 + plot_w * ((it - lo) / (hi - lo) if hi > lo else 0.5)

    def y(v: float) -> float:
        return h - 40 - (h - 60) * v / top

    for it in sorted(set(its)) if len(set(its)) <= 20 else _ticks(hi):
        parts.append(f'<text x="{x(it):.1f}" y="{h - 22}" text-anchor="middle">{it:g}</text>')
    parts.append(f'<text x="{60 + plot_w / 2}" y="{h - 4}" text-anchor="middle">iteration</text>')
    ly = h + 10
    for i, c in enumerate(report.combinations):
        colour = COLOURS[i % len(COLOURS)]
        for metric, dash, fill in (("blackout_ms", "", colour), ("downtime_ms", "5,3", "white"),
                                   ("flow_blackout_ms", "1,3", colour)):
            pts = [(p.iteration, v) for p in series[c.key] if (v := getattr(p, metric)) is not None]
            if metric == "flow_blackout_ms" and not pts:
                continue  # runs without flows
            name = html.escape(f"{c.mode} {c.build} {(JUDGED | TRAFFIC_JUDGED)[metric]}")
            line = f'stroke="{colour}" stroke-dasharray="{dash}"'
            parts.append(f'<polyline fill="none" {line} points="'
                         + " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in pts) + '"/>')
            parts += [f'<circle class="pt" data-metric="{metric}" cx="{x(i):.1f}" cy="{y(v):.1f}"'
                      f' r="4" fill="{fill}" stroke="{colour}"><title>{name} #{i}: {v:g} ms'
                      "</title></circle>" for i, v in pts]
            parts.append(f'<line x1="60" y1="{ly}" x2="84" y2="{ly}" {line}/><circle cx="72" '
                         f'cy="{ly}" r="4" fill="{fill}" stroke="{colour}"/><text x="90" '
                         f'y="{ly + 4}">{name}</text>')
            ly += 18
    return _svg("plot-iterations", plot_w + 80, ly, "Blackout (solid), QMP downtime (dashed) "
                "and, with flows, the worst flow's blackout (dotted) per iteration", parts)


def _svg_distribution(report: Report) -> str:
    combos = report.combinations
    col, h = 180, 390
    w = 60 + col * max(len(combos), 1)
    values = {c.key: [p.blackout_ms for p in report.series[c.key] if p.blackout_ms is not None]
              for c in combos}
    parts, top = _axes(w, h, [v for vs in values.values() for v in vs], "blackout ms")
    jitter = random.Random(JITTER_SEED)

    def y(v: float) -> float:
        return h - 40 - (h - 60) * v / top

    for i, c in enumerate(combos):
        mid, colour = 60 + col * (i + 0.5), COLOURS[i % len(COLOURS)]
        for v in values[c.key]:
            parts.append(f'<circle class="pt" cx="{mid + jitter.uniform(-30, 30):.1f}" '
                         f'cy="{y(v):.1f}" r="4" fill="{colour}" fill-opacity="0.6">'
                         f"<title>{v:g} ms</title></circle>")
        stats = c.metrics["blackout_ms"]
        for key, value, dash in (("median", stats.median, ""), ("p95", stats.p95, "4,3")):
            if value is not None:
                parts.append(f'<line x1="{mid - 45}" x2="{mid + 45}" y1="{y(value):.1f}" '
                             f'y2="{y(value):.1f}" stroke="black" stroke-width="2" '
                             f'stroke-dasharray="{dash}"><title>{key}</title></line>')
        for j, text in enumerate((c.mode, *c.build.split(" ", 1))):
            parts.append(f'<text x="{mid}" y="{h - 26 + 12 * j}" text-anchor="middle" '
                         f'class="small">{html.escape(text)}</text>')
    return _svg("plot-distribution", w + 10, h, "Blackout per combination "
                "(solid: median, dashed: p95)", parts)


def _svg(ident: str, w: int, h: int, title: str, parts: list[str]) -> str:
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg id="{ident}" '
            f'width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">'
            + "".join(parts) + "</svg></figure>")


def _items(lines: list[str]) -> str:
    return "".join(f"<li>{html.escape(x)}</li>" for x in lines or ["none"])


def _traffic_html(report: Report) -> str:
    """The traffic table and the links to the timeline pictures, where there are any."""
    esc = html.escape
    parts = []
    if rows := _traffic_rows(report):
        head = "".join(f"<th>{esc(c)}</th>" for c in TRAFFIC_HEAD)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
                       for r in rows)
        parts.append(f"<h2>Traffic across the migration</h2><table><tr>{head}</tr>{body}"
                     "</table>")
    if links := _timeline_links(report):
        items = "".join(f'<li><a href="{esc(path)}">{esc(label)}</a></li>'
                        for label, path in links)
        parts.append(f"<h2>Timelines</h2><ul>{items}</ul>")
    return "".join(parts)


def _updates_html(report: Report) -> str:
    if not (rows := _update_rows(report)):
        return ""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in UPDATE_HEAD)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<h2>Live updates</h2><table><tr>{head}</tr>{body}</table>"


def render_html(report: Report) -> str:
    """One file with inline SVG and no scripts, so it opens offline from a CI artifact."""
    ratio_lines, gaps = _notes(report)
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in TABLE_HEAD)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
                   for r in _rows(report))
    banner = '<p class="partial">PARTIAL report: not every planned run completed.</p>'
    return "\n".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(_title(report))}</title><style>",
        "body{font-family:sans-serif;margin:1.5em}",
        "td,th{border:1px solid #ccc;padding:2px 6px} td{white-space:nowrap}",
        "table{border-collapse:collapse} .partial{color:#b00;font-weight:bold}",
        "svg{font-size:12px} .ax{stroke:black} .grid{stroke:#ddd} .small{font-size:10px}",
        ".kind-harness-time td{background:#fdf1df} .kind-residual td{background:#fbe3e1}",
        f"</style></head><body><h1>{esc(_title(report))}</h1>",
        banner if report.partial else "", f"<p>{esc(context(report))}</p>",
        f"<table><tr>{head}</tr>{body}</table>", _updates_html(report), _traffic_html(report),
        phase_render.html_section(report),
        _svg_iterations(report),
        _svg_distribution(report), "<h2>Ratios of medians [95% bootstrap CI]</h2><ul>",
        _items(ratio_lines) + "</ul>", "<h2>Not supported / failed / missing</h2><ul>",
        _items(gaps) + "</ul>", chain_summary.html_section(report.chains), "</body></html>", ""])
