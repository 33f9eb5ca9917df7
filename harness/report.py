"""Turn run records into the numbers a reviewer asks for, and into a regression verdict.

The JSON report is the source of truth, so `compare` never needs the runs again;
Markdown is for mailing-list replies and HTML (inline SVG, nothing fetched) opens
offline from a CI artifact.  Statistics are pure Python with a fixed bootstrap
seed so the same records always give the same report.
"""

from __future__ import annotations

import html
import json
import math
import random
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from harness.errors import TapmigError
from harness.record import RunRecord

SCHEMA = "tapmig.report/1"
METRICS = ("blackout_ms", "downtime_ms", "stop_resume_ms", "lost")
JUDGED = {"blackout_ms": "blackout", "downtime_ms": "QMP downtime"}
META_KEYS = ("qemu_versions", "accel", "guest", "host_kernel", "date")
SEED = 20240601
RESAMPLES = 2000
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
Report = dict[str, Any]


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest sample with at least a fraction q of samples at or below it.

    Always an observed value, so p95 of a handful of runs is honestly the worst run.
    """
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _bootstrap(*sides: list[float]) -> list[float]:
    """95% percentile interval of the median (or ratio of medians); each side resampled alone."""
    rng = random.Random(SEED)

    def draw(v: list[float]) -> float:
        return float(statistics.median(rng.choices(v, k=len(v))))

    stats = [draw(sides[0]) / (draw(sides[1]) if len(sides) > 1 else 1) for _ in range(RESAMPLES)]
    return [percentile(stats, 0.025), percentile(stats, 0.975)]


def median_ci(values: list[float]) -> list[float] | None:
    """None below 3 samples, where resampling means nothing."""
    return _bootstrap(values) if len(values) >= 3 else None


def ratio_ci(num: list[float], den: list[float]) -> list[float] | None:
    """Independent resampling, as runs of two builds or modes are not paired; None if a
    resampled denominator could be zero."""
    return _bootstrap(num, den) if min(len(num), len(den)) >= 3 and min(den) > 0 else None


def summarize(values: list[float], missing: int) -> dict[str, Any]:
    """`missing` counts ok runs without this figure, so gaps stay visible in the report."""
    if not values:
        return dict.fromkeys(("min", "median", "p95", "max", "ci"), None) | {
            "n": 0, "missing": missing}
    return {"n": len(values), "missing": missing, "min": min(values),
            "median": float(statistics.median(values)), "p95": percentile(values, 0.95),
            "max": max(values), "ci": median_ci(values)}


def _short_paths(paths: list[str]) -> dict[str, str]:
    """The shortest tail (at least dir/name) that still tells the builds apart."""
    parts = {p: [x for x in PurePosixPath(p).parts if x != "/"] for p in paths}
    for k in range(2, max((len(v) for v in parts.values()), default=0) + 1):
        tails = {p: "/".join(v[-k:]) for p, v in parts.items()}
        if len(set(tails.values())) == len(tails):
            return tails
    return {p: p for p in paths}


def _values(recs: list[RunRecord], metric: str) -> list[float]:
    return [float(v) for r in recs if r.status == "ok" and (v := getattr(r, metric)) is not None]


def _reasons(recs: list[RunRecord], status: str) -> dict[str, Any]:
    hit = [r.error or "(no reason recorded)" for r in recs if r.status == status]
    return {"count": len(hit), "reasons": dict(Counter(hit))}


def _groups(records: list[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for rec in records:
        groups.setdefault((rec.qemu, rec.mode), []).append(rec)
    return groups


def combination_stats(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One entry per (qemu binary, mode), in the order the runs happened."""
    groups = _groups(records)
    short = _short_paths(sorted({q for q, _ in groups}))
    out = []
    for (qemu, mode), recs in groups.items():
        version = ", ".join(sorted({r.qemu_version for r in recs}))
        ok = sum(r.status == "ok" for r in recs)
        out.append({
            "key": f"{mode}@{qemu}", "qemu": qemu, "qemu_version": version, "mode": mode,
            "build": f"{version} ({short[qemu]})", "runs": len(recs), "ok": ok,
            "failed": _reasons(recs, "failed"), "unsupported": _reasons(recs, "unsupported"),
            "metrics": {m: summarize(v := _values(recs, m), ok - len(v)) for m in METRICS},
        })
    return out


def ratios(records: list[RunRecord], combos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """B/A for builds sharing a mode, local/new-tap for modes sharing a build."""
    groups = _groups(records)
    out = []
    for i, a in enumerate(combos):
        for b in combos[i + 1:]:
            if a["mode"] == b["mode"]:
                num, den, label = b, a, f"{b['build']} / {a['build']}, {a['mode']}"
            elif a["qemu"] == b["qemu"]:
                num, den = (a, b) if a["mode"] == "local" else (b, a)
                label = f"{num['mode']} / {den['mode']}, {a['build']}"
            else:
                continue
            for metric in JUDGED:
                nv = _values(groups[(num["qemu"], num["mode"])], metric)
                dv = _values(groups[(den["qemu"], den["mode"])], metric)
                if not nv or not dv:
                    continue  # a side that never ran (unsupported, all failed): no ratio
                defined = bool(nv) and bool(dv) and statistics.median(dv) > 0
                out.append({
                    "metric": metric, "label": label, "num": num["key"], "den": den["key"],
                    "ratio": statistics.median(nv) / statistics.median(dv) if defined else None,
                    "ci": ratio_ci(nv, dv) if defined else None,
                })
    return out


def _meta(records: list[RunRecord], meta: dict[str, str]) -> dict[str, str]:
    ran = [r for r in records if r.status != "unsupported"] or records

    def distinct(attr: str) -> str:
        # Unsupported records stop before choosing an accelerator; they would show "auto".
        return ", ".join(sorted({str(getattr(r, attr)) for r in ran if getattr(r, attr)}))

    derived = {
        "qemu_versions": "; ".join(dict.fromkeys(f"{r.qemu_version} ({r.qemu})" for r in records)),
        "accel": distinct("accel"), "guest": distinct("guest"),
        "host_kernel": distinct("host_kernel"),
        "date": min((r.started for r in records if r.started), default=""),
    }
    fallback = dict.fromkeys(META_KEYS, "unknown") | {
        "date": datetime.now(UTC).isoformat(timespec="seconds")}
    return fallback | meta | {k: v for k, v in derived.items() if v}


def build_report(records: list[RunRecord], meta: dict[str, str], partial: bool) -> Report:
    """Records win over `meta` for context, since they describe what actually ran."""
    combos = combination_stats(records)
    series: dict[str, list[dict[str, Any]]] = {}
    for (qemu, mode), recs in _groups(records).items():
        pts = [{"iteration": r.iteration if r.iteration is not None else i,
                "blackout_ms": r.blackout_ms, "downtime_ms": r.downtime_ms}
               for i, r in enumerate(recs, 1) if r.status == "ok"]
        series[f"{mode}@{qemu}"] = sorted(pts, key=lambda p: p["iteration"])
    return {"schema": SCHEMA, "partial": partial, "meta": _meta(records, meta),
            "combinations": combos, "ratios": ratios(records, combos), "series": series}


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _ci(ci: list[float] | None, digits: int = 1) -> str:
    return "[CI n/a, n<3]" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


TABLE_HEAD = ("build", "mode", "n", "blackout median ms [95% CI]", "blackout p95 ms",
              "QMP downtime median ms", "STOP→RESUME median ms", "lost median")


def _rows(report: Report) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for c in report["combinations"]:
        m = c["metrics"]
        b, lost = m["blackout_ms"], m["lost"]["median"]
        rows.append((c["build"], c["mode"], str(b["n"]), f"{_ms(b['median'])} {_ci(b['ci'])}",
                     _ms(b["p95"]), _ms(m["downtime_ms"]["median"]),
                     _ms(m["stop_resume_ms"]["median"]), "—" if lost is None else f"{lost:g}"))
    return rows


def _notes(report: Report) -> tuple[list[str], list[str]]:
    """Ratio lines, then every run or figure that did not make it into the table."""
    ratio_lines = [f"{JUDGED[r['metric']]} {r['label']}: "
                   + ("undefined" if r["ratio"] is None else f"{r['ratio']:.2f}x {_ci(r['ci'], 2)}")
                   for r in report["ratios"]]
    gaps = []
    for c in report["combinations"]:
        name = f"{c['mode']} {c['build']}"
        for status, what in (("unsupported", "not supported"), ("failed", "failed")):
            for reason, count in c[status]["reasons"].items():
                gaps.append(f"{what}: {name}: {count} of {c['runs']} runs: {reason}")
        for metric, s in c["metrics"].items():
            if s["missing"]:
                gaps.append(f"missing: {name}: {s['missing']} ok runs without {metric}")
    return ratio_lines, gaps


def _title(report: Report) -> str:
    return "tapmig report" + (" — PARTIAL (interrupted: not every planned run completed)"
                              if report["partial"] else "")


def _context(report: Report) -> str:
    m = report["meta"]
    return (f"QEMU {m['qemu_versions']}; accel {m['accel']}; guest {m['guest']}; "
            f"host kernel {m['host_kernel']}; date {m['date']}")


def render_markdown(report: Report) -> str:
    """Plain enough to paste into a mailing-list reply as is."""
    def row(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    ratio_lines, gaps = _notes(report)
    lines = [f"# {_title(report)}", "", _context(report), "", row(TABLE_HEAD),
             "|" + "---|" * 2 + "--:|" * (len(TABLE_HEAD) - 2)]
    lines += [row(r) for r in _rows(report)] or ["(no runs recorded)"]
    lines += ["", "Ratios of medians [95% bootstrap CI]:"] + [f"- {x}" for x in ratio_lines or
                                                             ["none"]]
    lines += ["", "Not supported / failed / missing:"] + [f"- {x}" for x in gaps or ["none"]]
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
    series = report["series"]
    its = [p["iteration"] for pts in series.values() for p in pts] or [1]
    ys = [p[m] for pts in series.values() for p in pts for m in JUDGED if p[m] is not None]
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
    for i, c in enumerate(report["combinations"]):
        colour = COLOURS[i % len(COLOURS)]
        for metric, dash, fill in (("blackout_ms", "", colour), ("downtime_ms", "5,3", "white")):
            pts = [(p["iteration"], p[metric]) for p in series[c["key"]] if p[metric] is not None]
            name = html.escape(f"{c['mode']} {c['build']} {JUDGED[metric]}")
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
    return _svg("plot-iterations", plot_w + 80, ly, "Blackout (solid) and QMP downtime (dashed) "
                "per iteration", parts)


def _svg_distribution(report: Report) -> str:
    combos = report["combinations"]
    col, h = 180, 390
    w = 60 + col * max(len(combos), 1)
    values = {c["key"]: [p["blackout_ms"] for p in report["series"][c["key"]]
                         if p["blackout_ms"] is not None] for c in combos}
    parts, top = _axes(w, h, [v for vs in values.values() for v in vs], "blackout ms")
    jitter = random.Random(SEED)

    def y(v: float) -> float:
        return h - 40 - (h - 60) * v / top

    for i, c in enumerate(combos):
        mid, colour = 60 + col * (i + 0.5), COLOURS[i % len(COLOURS)]
        for v in values[c["key"]]:
            parts.append(f'<circle class="pt" cx="{mid + jitter.uniform(-30, 30):.1f}" '
                         f'cy="{y(v):.1f}" r="4" fill="{colour}" fill-opacity="0.6">'
                         f"<title>{v:g} ms</title></circle>")
        stats = c["metrics"]["blackout_ms"]
        for key, dash in (("median", ""), ("p95", "4,3")):
            if stats[key] is not None:
                parts.append(f'<line x1="{mid - 45}" x2="{mid + 45}" y1="{y(stats[key]):.1f}" '
                             f'y2="{y(stats[key]):.1f}" stroke="black" stroke-width="2" '
                             f'stroke-dasharray="{dash}"><title>{key}</title></line>')
        for j, text in enumerate((c["mode"], *c["build"].split(" ", 1))):
            parts.append(f'<text x="{mid}" y="{h - 26 + 12 * j}" text-anchor="middle" '
                         f'class="small">{html.escape(text)}</text>')
    return _svg("plot-distribution", w + 10, h, "Blackout per combination "
                "(solid: median, dashed: p95)", parts)


def _svg(ident: str, w: int, h: int, title: str, parts: list[str]) -> str:
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg id="{ident}" '
            f'width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">'
            + "".join(parts) + "</svg></figure>")


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
        f"</style></head><body><h1>{esc(_title(report))}</h1>",
        banner if report["partial"] else "", f"<p>{esc(_context(report))}</p>",
        f"<table><tr>{head}</tr>{body}</table>", _svg_iterations(report),
        _svg_distribution(report), "<h2>Ratios of medians [95% bootstrap CI]</h2><ul>",
        "".join(f"<li>{esc(x)}</li>" for x in ratio_lines or ["none"]) + "</ul>",
        "<h2>Not supported / failed / missing</h2><ul>",
        "".join(f"<li>{esc(x)}</li>" for x in gaps or ["none"]) + "</ul></body></html>", ""])


def write_report(report: Report, out_dir: Path) -> dict[str, Path]:
    """Each file appears whole or not at all, so a killed run never leaves a torn report."""
    texts = {"json": json.dumps(report, indent=2) + "\n", "md": render_markdown(report),
             "html": render_html(report)}
    paths = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for ext, text in texts.items():
            path = out_dir / f"report.{ext}"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            paths[ext] = path
    except OSError as exc:
        raise TapmigError(f"cannot write the report to {out_dir}: {exc.strerror or exc}; "
                          "choose a writable output directory") from exc
    return paths


def load_report(path: Path) -> Report:
    """Fail on the file's name, not later on a KeyError deep inside `compare`."""
    expect = f"expected report.json written by 'tapmig measure' (schema {SCHEMA!r})"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TapmigError(f"{path}: cannot read: {exc}; {expect}") from exc
    if not text.strip():
        raise TapmigError(f"{path}: file is empty; {expect}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TapmigError(f"{path}: not JSON ({exc}); {expect}") from exc
    found = data.get("schema") if isinstance(data, dict) else type(data).__name__
    if found != SCHEMA:
        raise TapmigError(f"{path}: not a tapmig report (found schema {found!r}); {expect}")
    try:
        for c in data["combinations"]:
            _ = (c["mode"], c["qemu"], c["qemu_version"], c["build"])
            _ = [(c["metrics"][m]["median"], c["metrics"][m]["ci"]) for m in JUDGED]
    except (KeyError, TypeError) as exc:
        raise TapmigError(f"{path}: incomplete tapmig report (bad {exc}); {expect}") from exc
    return dict(data)


def parse_threshold(text: str) -> float:
    """'10%' and '0.1' both mean ten percent; a bare number above 1 is almost surely a typo."""
    raw = text.strip()
    try:
        value = float(raw.removesuffix("%")) / (100 if raw.endswith("%") else 1)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value > 1 and not raw.endswith("%")):
        raise TapmigError(f"bad threshold {text!r}: give a non-negative percentage like '10%' "
                          "or a fraction like '0.1'")
    return value


@dataclass
class Verdict:
    """The lines say why, per combination and figure, so CI logs need no second look."""

    regressed: bool
    lines: list[str]


def _partner(b: dict[str, Any], base: list[dict[str, Any]],
             cur: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Same mode and version (and path if versions repeat); else the only build on each side."""
    same_mode = [c for c in cur if c["mode"] == b["mode"]]
    same_ver = [c for c in same_mode if c["qemu_version"] == b["qemu_version"]]
    for cands in ([c for c in same_ver if c["qemu"] == b["qemu"]], same_ver):
        if len(cands) == 1:
            return cands[0]
    if len(same_mode) == 1 and sum(x["mode"] == b["mode"] for x in base) == 1:
        return same_mode[0]
    return None


def _judge(b: dict[str, Any], c: dict[str, Any], threshold: float) -> tuple[bool, str]:
    bm, cm = b["median"], c["median"]
    if bm is None:
        return False, "no baseline measurement, not compared"
    if cm is None:
        return True, f"REGRESSED: no successful measurement now (baseline median {bm:.1f} ms)"
    change = f"median {bm:.1f} -> {cm:.1f} ms" + (f" ({(cm - bm) / bm:+.1%})" if bm else "")
    over = cm > bm * (1 + threshold)
    limit = f"threshold +{threshold:.1%}"
    if b["ci"] is None or c["ci"] is None:
        why = f"{'above' if over else 'within'} {limit}; CI undefined (n<3), threshold alone used"
        return over, f"{'REGRESSED' if over else 'ok'}: {change}, {why}"
    apart = c["ci"][0] > b["ci"][1]
    cis = f"CI {_ci(c['ci'])} vs baseline {_ci(b['ci'])}"
    why = (f"above {limit} and {cis} do not overlap" if over and apart else
           f"above {limit} but {cis} overlap: noise" if over else f"within {limit}")
    return over and apart, f"{'REGRESSED' if over and apart else 'ok'}: {change}, {why}"


def compare(baseline: Report, current: Report, threshold: float) -> Verdict:
    """Regression = worse by more than the threshold AND outside the noise of both runs."""
    base, cur = baseline["combinations"], current["combinations"]
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for b in base:
        free = [c for c in cur if all(c is not taken for _, taken in pairs)]
        if (p := _partner(b, base, free)) is not None:
            pairs.append((b, p))
    if not pairs:
        def desc(cs: list[dict[str, Any]]) -> str:
            return ", ".join(f"{c['mode']} {c['qemu_version']}" for c in cs) or "no runs"
        raise TapmigError(f"reports have no combination in common: baseline has {desc(base)}, "
                          f"current has {desc(cur)}; compare runs of the same modes and builds")
    lines, regressed = [], False
    for name, rep in (("baseline", baseline), ("current", current)):
        if rep["partial"]:
            lines.append(f"note: {name} report is PARTIAL")
    for b, c in pairs:
        label = f"{b['mode']} {b['build']}" + ("" if b["build"] == c["build"]
                                                else f" -> {c['build']}")
        for metric, what in JUDGED.items():
            bad, why = _judge(b["metrics"][metric], c["metrics"][metric], threshold)
            regressed |= bad
            lines.append(f"{label}: {what}: {why}")
    matched = [id(x) for pair in pairs for x in pair]
    lines += [f"not compared: {side} {x['mode']} {x['build']} has no counterpart"
              for side, cs in (("baseline", base), ("current", cur))
              for x in cs if id(x) not in matched]
    return Verdict(regressed, lines)
