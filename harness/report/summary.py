"""Turn run records into the numbers a reviewer asks for: statistics and report files.

The JSON report (harness.report.model) is the source of truth, so `compare`
(harness.report.compare) never needs the runs again; Markdown and HTML come from
harness.report.render. The statistics (harness.report.stats) are pure Python with a
fixed bootstrap seed, so the same records always give the same report.
"""

from __future__ import annotations

import json
import platform
import statistics
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from harness import atomic
from harness.errors import UsageError
from harness.record import RunRecord
from harness.report import phase_summary
from harness.report.chain_summary import chain_summaries
from harness.report.model import (
    COUNTED,
    JUDGED,
    METRICS,
    SCHEMA,
    TRAFFIC_METRICS,
    UNKNOWN,
    Combination,
    Count,
    Meta,
    Outcomes,
    Point,
    Ratio,
    Report,
)
from harness.report.render import render_html, render_markdown
from harness.report.stats import median_ci, percentile, rate_ci, ratio_ci, summarize

# Report is re-exported: report.json's dataclass is what callers of build_report get.
__all__ = ["Report", "build_report", "combination_stats", "cpu_model", "load_report",
           "median_ci", "percentile", "ratio_ci", "ratios", "summarize", "write_report"]

CPUINFO = Path("/proc/cpuinfo")


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


def _outcomes(recs: list[RunRecord], status: str) -> Outcomes:
    hit = [r.error or "(no reason recorded)" for r in recs if r.status == status]
    return Outcomes(len(hit), dict(Counter(hit)))


Groups = dict[str, list[RunRecord]]


def combination_key(rec: RunRecord) -> str:
    """mode@binary, or for a live update mode@source->target@machine: an upgrade, its
    rollback and a binary migrated to itself are three combinations, never one."""
    target = rec.target_qemu or rec.qemu
    return f"{rec.mode}@{rec.qemu}" + (f"->{target}@{rec.machine}" if target != rec.qemu else "")


def _groups(records: list[RunRecord]) -> Groups:
    groups: Groups = {}
    for rec in records:
        groups.setdefault(combination_key(rec), []).append(rec)
    return groups


def combination_stats(records: list[RunRecord]) -> list[Combination]:
    """One entry per (qemu binary, mode), in the order the runs happened."""
    groups = _groups(records)
    short = _short_paths(sorted({q for recs in groups.values() for r in recs[:1]
                                 for q in (r.qemu, r.target_qemu or r.qemu)}))
    out = []
    for key, recs in groups.items():
        qemu, target = recs[0].qemu, recs[0].target_qemu or recs[0].qemu
        version = ", ".join(sorted({r.qemu_version for r in recs}))
        ok = sum(r.status == "ok" for r in recs)
        build, target_version = f"{version} ({short[qemu]})", ""
        if target != qemu:
            target_version = ", ".join(sorted({r.target_qemu_version for r in recs}))
            build += f" -> {target_version} ({short[target]})"
        out.append(Combination(
            key=key, qemu=qemu, qemu_version=version, mode=recs[0].mode,
            target_qemu=target if target != qemu else "", target_qemu_version=target_version,
            machine=recs[0].machine, build=build, runs=len(recs), ok=ok,
            failed=_outcomes(recs, "failed"), unsupported=_outcomes(recs, "unsupported"),
            inconclusive=_outcomes(recs, "inconclusive"),
            metrics={m: summarize(v := _values(recs, m), ok - len(v))
                     for m in METRICS + _traffic_metrics(recs)},
            timelines=_timelines(recs), counts=_counts(recs)))
        phase_summary.attach(out[-1], recs)
    return out


def _counts(recs: list[RunRecord]) -> dict[str, Count]:
    """Each counted figure over the ok runs that have it, as a rate per run."""
    out = {}
    for metric in COUNTED:
        values = [int(v) for r in recs if r.status == "ok"
                  and (v := getattr(r, metric)) is not None]
        if values:
            out[metric] = Count(sum(values), len(values), round(sum(values) / len(values), 4),
                                rate_ci(sum(values), len(values)))
    return out


def _traffic_metrics(recs: list[RunRecord]) -> tuple[str, ...]:
    """The traffic figures some run of these has: the rest were not measured, not missing."""
    return tuple(m for m in TRAFFIC_METRICS if any(getattr(r, m) is not None for r in recs))


def _timelines(recs: list[RunRecord]) -> dict[str, str]:
    """The pictures of the run with the median blackout and of the worst run."""
    drawn = sorted((r for r in recs if r.status == "ok" and r.blackout_ms is not None
                    and "timeline" in r.artifacts), key=lambda r: r.blackout_ms or 0.0)
    if not drawn:
        return {}
    return {"median run": drawn[(len(drawn) - 1) // 2].artifacts["timeline"],
            "worst run": drawn[-1].artifacts["timeline"]}


def _pair(a: Combination, b: Combination) -> tuple[Combination, Combination, str] | None:
    """(numerator, denominator, label): B/A for builds sharing a mode, local/new-tap for
    modes sharing a build; None for combinations that differ in both."""
    if a.mode == b.mode:
        return b, a, f"{b.build} / {a.build}, {a.mode}"
    if a.qemu == b.qemu and a.target_qemu == b.target_qemu:
        num, den = (a, b) if a.mode == "local" else (b, a)
        return num, den, f"{num.mode} / {den.mode}, {a.build}"
    return None


def ratios(records: list[RunRecord], combos: list[Combination]) -> list[Ratio]:
    """Every comparable pair, for each judged figure both sides have."""
    groups = _groups(records)
    out = []
    for i, a in enumerate(combos):
        for b in combos[i + 1:]:
            if (pair := _pair(a, b)) is None:
                continue
            num, den, label = pair
            for metric in JUDGED:
                nv = _values(groups[num.key], metric)
                dv = _values(groups[den.key], metric)
                if not nv or not dv:
                    continue  # a side that never ran (unsupported, all failed): no ratio
                defined = statistics.median(dv) > 0
                out.append(Ratio(
                    metric=metric, label=label, num=num.key, den=den.key,
                    ratio=statistics.median(nv) / statistics.median(dv) if defined else None,
                    ci=ratio_ci(nv, dv) if defined else None))
    return out


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The host CPU as /proc/cpuinfo names it: timings of two CPU models do not compare."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or UNKNOWN


def _layout(rec: RunRecord) -> str:
    """The queue layout and the traffic beside ICMP, which change the figures too."""
    traffic = [f"{rec.vcpus} vCPUs"] if rec.vcpus != 1 else []
    traffic += [f"{rec.flows} flows"] if rec.flows else []
    traffic += [f"TCP {rec.tcp}"] if rec.tcp != "off" else []
    return ", ".join([f"{rec.queues} queues", f"vhost {'on' if rec.vhost else 'off'}", *traffic])


def _derived(records: list[RunRecord]) -> dict[str, str]:
    """Context the records themselves state; unsupported ones never chose an accelerator."""
    ran = [r for r in records if r.status != "unsupported"] or records

    def distinct(values: list[str]) -> str:
        return ", ".join(sorted({v for v in values if v}))

    return {
        "qemu_versions": "; ".join(dict.fromkeys(f"{r.qemu_version} ({r.qemu})" for r in records)),
        "accel": distinct([r.accel for r in ran]), "guest": distinct([r.guest for r in ran]),
        "host_kernel": distinct([r.host_kernel for r in ran]),
        "prober": distinct([r.prober for r in ran]), "queues": distinct([_layout(r) for r in ran]),
        "date": min((r.started for r in records if r.started), default=""),
    }


def _meta(records: list[RunRecord], given: dict[str, str]) -> Meta:
    """Records win over `given`, since they describe what actually ran; the CPU model is
    the caller's if given, else this host's (build_report runs where the runs ran)."""
    intervals = [r.interval_ms for r in records if r.status == "ok" and r.interval_ms]
    base = Meta(cpu_model=cpu_model(), date=datetime.now(UTC).isoformat(timespec="seconds"),
                probe_interval_ms=round(statistics.median(intervals), 3) if intervals else None)
    merged = {**base.to_json(), **given, **{k: v for k, v in _derived(records).items() if v}}
    return Meta.from_json(merged)


def build_report(records: list[RunRecord], meta: dict[str, str], partial: bool,
                 notes: list[str] | None = None) -> Report:
    """The statistics, ratios and per-iteration series of these records, where their
    blackouts went (per phase, and local - new-TAP), and their chains."""
    combos = combination_stats(records)
    series: dict[str, list[Point]] = {}
    for key, recs in _groups(records).items():
        pts = [Point(r.iteration if r.iteration is not None else i, r.blackout_ms,
                     r.downtime_ms, r.flow_blackout_ms)
               for i, r in enumerate(recs, 1) if r.status == "ok"]
        series[key] = sorted(pts, key=lambda p: p.iteration)
    return Report(partial=partial, meta=_meta(records, meta), combinations=combos,
                  ratios=ratios(records, combos), series=series,
                  chains=chain_summaries(records), notes=notes or [],
                  phase_diffs=phase_summary.differences(combos, _groups(records)))


def write_report(report: Report, out_dir: Path) -> dict[str, Path]:
    """Each file appears whole or not at all, so a killed run never leaves a torn report."""
    texts = {"json": json.dumps(report.to_json(), indent=2) + "\n",
             "md": render_markdown(report), "html": render_html(report)}
    paths = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for ext, text in texts.items():
            paths[ext] = out_dir / f"report.{ext}"
            atomic.write_text(paths[ext], text)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {out_dir}: {exc.strerror or exc}; "
                         "choose a writable output directory") from exc
    return paths


def load_report(path: Path) -> Report:
    """Fail on the file's name, not later on a KeyError deep inside `compare`."""
    expect = f"expected report.json written by 'tapmig measure' (schema {SCHEMA!r})"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}; {expect}") from exc
    if not text.strip():
        raise UsageError(f"{path}: file is empty; {expect}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not JSON ({exc}); {expect}") from exc
    found = data.get("schema") if isinstance(data, dict) else type(data).__name__
    if found != SCHEMA:
        raise UsageError(f"{path}: not a tapmig report (found schema {found!r}); {expect}")
    try:
        return Report.from_json(data)
    except (KeyError, TypeError, UsageError) as exc:
        raise UsageError(f"{path}: incomplete tapmig report (bad {exc}); {expect}") from exc
