"""The chains of a report: per chain, how it ended, what QEMU held first and last, and
which figures are flagged as leaking or drifting (harness.analysis.trend), and each
figure's series against the hop, drawn by harness.report.soak_plot.

Plain JSON-ready dicts, so report.json carries them and `tapmig report` can rebuild
them from records alone. Summaries written before "series" existed still render,
without the pictures.
"""

from __future__ import annotations

import html
import statistics
from typing import Any

from harness.analysis.trend import (
    MIN_TREND,
    PHASE,
    PHASE_DRIFT_FLOOR_MS,
    Finding,
    findings,
    phase_findings,
    shown,
    unit,
)
from harness.record import RunRecord
from harness.report import soak_plot

HEAD = ("chain", "mode", "QEMU", "hops ok", "median hop s", "QEMU fds", "TUN fds",
        "TAP queues attached", "QEMU anon MiB", "tapmig MiB", "interfaces",
        "blackout drift ms/100 hops [95% CI]", "end")


def _end(recs: list[RunRecord]) -> str:
    last = recs[-1]
    ok = sum(r.status == "ok" for r in recs)
    undecided = sum(r.status == "inconclusive" for r in recs)
    if last.status in ("ok", "inconclusive"):
        if undecided:
            return f"{len(recs)} hops: {ok} ok, {undecided} inconclusive (host too noisy)"
        return f"{ok} hops, all ok"
    kind = (last.failure or {}).get("kind", last.status)
    reason = (last.error or "no reason recorded").splitlines()[0]
    return f"ended at hop {last.hop} after {ok} ok: {kind}: {reason}"


def _flag_line(chain: str, f: Finding) -> str:
    ci = "" if f.ci is None else f" [{f.ci[0]:+.3g}, {f.ci[1]:+.3g}]"
    slope = ("" if f.per_hop is None else
             f", {f.per_hop:+.3g} {unit(f.metric)}/hop{ci}".replace(" /", "/"))
    word = "LEAK" if f.kind == "leak" else "DRIFT"
    return (f"{word}: {chain}: {f.metric} {f.first:g} -> {f.last:g} over {f.n} hops"
            f"{slope}: {f.note}")


def summarize_chain(ident: str, recs: list[RunRecord]) -> dict[str, Any]:
    recs = sorted(recs, key=lambda r: r.hop or 0)
    ok = [r for r in recs if r.status == "ok"]
    prints = [r.footprint for r in ok if r.footprint]
    hop_s = [r.duration_s for r in ok if r.duration_s is not None]
    found = findings(recs)
    drifts = phase_findings(recs)
    return {
        "chain": ident, "mode": recs[0].mode, "qemu": recs[0].qemu,
        "qemu_version": recs[0].qemu_version, "shard": recs[0].shard, "hops": len(recs),
        "ok": len(ok), "end": _end(recs), "boot_s": recs[0].boot_s,
        "median_hop_s": statistics.median(hop_s) if hop_s else None,
        "first": prints[0] if prints else None, "last": prints[-1] if prints else None,
        "findings": [f.to_json() for f in found],
        "flags": [_flag_line(ident, f) for f in (*found, *drifts) if f.flagged],
        "series": shown(recs),
        # Each phase of the blackout along the chain; absent from summaries before them.
        "phase_findings": [f.to_json() for f in drifts],
    }


def chain_summaries(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One summary per chain, in the order the chains appear among the records."""
    chains: dict[str, list[RunRecord]] = {}
    for rec in records:
        if rec.chain is not None:
            chains.setdefault(rec.chain, []).append(rec)
    return [summarize_chain(ident, recs) for ident, recs in chains.items()]


def leaks(chains: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flagged findings of kind "leak", each chain's: what fails a campaign. Read
    from the findings' fields, never from the flag lines, which are for people."""
    return [f for c in chains for f in c["findings"] if f["flagged"] and f["kind"] == "leak"]


def _span(c: dict[str, Any], get: Any) -> str:
    if c["first"] is None or c["last"] is None:
        return "—"
    a, b = get(c["first"]), get(c["last"])
    return f"{a:g}" if a == b else f"{a:g} → {b:g}"


def _drift(c: dict[str, Any]) -> str:
    for f in c["findings"]:
        if f["metric"] == "blackout_ms" and f["per_hop"] is not None:
            ci = f["ci"]
            shown = "" if ci is None else f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
            few = f" (n={f['n']}: too few hops)" if f["n"] < MIN_TREND else ""
            return f"{100 * f['per_hop']:+.1f}{shown}{few}"
    return "—"


def rows(chains: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for c in chains:
        hop_s = "—" if c["median_hop_s"] is None else f"{c['median_hop_s']:.2f}"
        out.append((
            c["chain"], c["mode"], c["qemu_version"], f"{c['ok']}/{c['hops']}", hop_s,
            _span(c, lambda f: f["qemu_fds"]), _span(c, lambda f: f["qemu_tun_fds"]),
            _span(c, lambda f: sum(q[0] for q in f["tap_queues"].values())),
            _span(c, lambda f: round(f["qemu_anon_kib"] / 1024, 1)),
            _span(c, lambda f: round(f["tapmig_rss_kib"] / 1024, 1)),
            _span(c, lambda f: len(f["interfaces"])), _drift(c), c["end"]))
    return out


def markdown(chains: list[dict[str, Any]]) -> list[str]:
    """The chain section of report.md; nothing when no record came from a chain."""
    if not chains:
        return []

    def row(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |"

    flags = [x for c in chains for x in c["flags"]]
    return ["", "## Chains (one boot, many migrations): first → last hop", "", row(HEAD),
            "|" + "---|" * 3 + "--:|" * (len(HEAD) - 4) + "---|",
            *[row(r) for r in rows(chains)], "", "Leaks and drift:",
            *[f"- {x}" for x in flags or ["none flagged"]],
            *phase_markdown(chains),
            *[line for c in chains for line in soak_plot.markdown(c)]]


def html_section(chains: list[dict[str, Any]]) -> str:
    if not chains:
        return ""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in HEAD)
    body = "".join("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in r) + "</tr>"
                   for r in rows(chains))
    flags = [x for c in chains for x in c["flags"]] or ["none flagged"]
    return (f"<h2>Chains (one boot, many migrations): first → last hop</h2><table>"
            f"<tr>{head}</tr>{body}</table><h3>Leaks and drift</h3><ul>"
            + "".join(f'<li class="flag">{esc(x)}</li>' for x in flags) + "</ul>"
            + phase_html(chains)
            + "".join(soak_plot.html_panels(c) for c in chains))


PHASE_NOTE = ("Theil-Sen slope of each phase of the blackout against the hop, ms/hop [95% CI];"
              " DRIFT as for the blackout, but only from a fitted change of "
              f"{PHASE_DRIFT_FLOOR_MS:g} ms over the chain")


def _signed(v: float) -> str:
    """+0.12, -3.1; a flat phase reads 0."""
    return "0" if v == 0 else f"{v:+.3g}"


def phase_rows(chains: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): a row per phase, a column per chain that has phase findings."""
    have = [c for c in chains if c.get("phase_findings")]
    per = [{f["metric"].removeprefix(PHASE): f for f in c["phase_findings"]} for c in have]
    names = list(dict.fromkeys(n for p in per for n in p))

    def cell(f: dict[str, Any] | None) -> str:
        if f is None:
            return "no such step"
        if f["per_hop"] is None:
            return "one hop: no trend"
        ci = "(no CI: too few hops)" if f["ci"] is None else \
            f"[{_signed(f['ci'][0])}, {_signed(f['ci'][1])}]"
        return f"{_signed(f['per_hop'])} {ci}" + (" DRIFT" if f["flagged"] else "")

    return (["phase", *(c["chain"] for c in have)],
            [[n, *(cell(p.get(n)) for p in per)] for n in names])


def phase_markdown(chains: list[dict[str, Any]]) -> list[str]:
    head, body = phase_rows(chains)
    if not body:
        return []
    return ["", f"Per-phase drift: {PHASE_NOTE}.", "",
            "| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1),
            *("| " + " | ".join(r) + " |" for r in body)]


def phase_html(chains: list[dict[str, Any]]) -> str:
    head, body = phase_rows(chains)
    if not body:
        return ""
    esc = html.escape
    return (f"<h3>Per-phase drift</h3><p>{esc(PHASE_NOTE)}</p><table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in r) + "</tr>"
                      for r in body) + "</table>")
