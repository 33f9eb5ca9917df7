"""The report's "Where the blackout goes" section, as Markdown and HTML: per build, a row
per phase in the order it happens, a column per mode (median [95% CI]) and, where the
build ran both modes, local - new-TAP with its interval.

Cells say "not available" where a QEMU could not split a phase and "no such step" where
a mode has none: a zero in this table is a measured zero.
"""

from __future__ import annotations

import html

from harness.report.model import Combination, PhaseDiff, Report, Summary
from harness.report.phase_summary import KEYS, kind, label
from harness.report.stats import SEED

INTRO = ("Each phase of the ICMP hole (from the last reply before it to the first after "
         "it), in the order it happens: the median over the ok runs with a breakdown, ms "
         "[95% bootstrap CI of the median]. Harness time is the harness's own steps between "
         "migration completed and `cont`, not QEMU's. local - new-tap is the difference of "
         f"the medians [95% bootstrap CI, each mode resampled alone, seed {SEED}].")


def num(v: float, sign: bool = False) -> str:
    """Three significant digits: phases run from µs to tens of ms."""
    text = f"{v:+.3g}" if sign else f"{v:.3g}"
    return "0" if text.lstrip("+-") == "0" else text


def ci(c: list[float] | None, sign: bool = False) -> str:
    return "[CI n/a, n<3]" if c is None else f"[{num(c[0], sign)}, {num(c[1], sign)}]"


def cell(c: Combination, key: str) -> str:
    s: Summary | None = c.phases.get(key)
    if not c.breakdowns:
        return "not available: no breakdown"
    if s is None:
        return "no such step"
    if s.median is None:
        return "not available"
    gap = f" ({s.missing} of {s.n + s.missing} not available)" if s.missing else ""
    return f"{num(s.median)} {ci(s.ci)}{gap}"


def diff_cell(d: PhaseDiff | None) -> str:
    if d is None:
        return "—"
    return d.note if d.delta is None else f"{num(d.delta, True)} {ci(d.ci, True)}"


def builds(report: Report) -> list[tuple[str, list[Combination]]]:
    """The combinations by build, in report order."""
    out: dict[str, list[Combination]] = {}
    for c in report.combinations:
        out.setdefault(c.qemu, []).append(c)
    return [(cs[0].build, cs) for cs in out.values()]


def table(report: Report, combos: list[Combination]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of one build: one row per figure any of its combinations has."""
    keys = {c.key for c in combos}
    diffs = {d.phase: d for d in report.phase_diffs if d.num in keys and d.den in keys}
    head = ["phase", "who", *(f"{c.mode} (n={c.breakdowns})" for c in combos)]
    if diffs:
        head.append("local - new-tap (n=" + next(f"{d.n_num} vs {d.n_den}" for d in
                                                diffs.values()) + ")")
    rows = []
    for key in KEYS:
        if any(key in c.phases for c in combos):
            row = [label(key), kind(key), *(cell(c, key) for c in combos)]
            rows.append(row + ([diff_cell(diffs.get(key))] if diffs else []))
    return head, rows


def has_phases(report: Report) -> bool:
    return any(c.breakdowns or c.breakdown_notes for c in report.combinations)


def markdown(report: Report) -> list[str]:
    """The section; nothing for a report whose runs have no breakdown at all."""
    if not has_phases(report):
        return []

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |"

    lines = ["", "## Where the blackout goes", "", INTRO]
    for build, combos in builds(report):
        head, rows = table(report, combos)
        lines += ["", f"### {build}", "", row(head), "|---|---|" + "--:|" * (len(head) - 2),
                  *(row(r) for r in rows)]
        lines += [f"- {c.mode}: {n}" for c in combos for n in c.breakdown_notes]
    return lines


def html_section(report: Report) -> str:
    if not has_phases(report):
        return ""
    esc = html.escape
    parts = [f"<h2>Where the blackout goes</h2><p>{esc(INTRO)}</p>"]
    for build, combos in builds(report):
        head, rows = table(report, combos)
        body = "".join(f'<tr class="kind-{esc(r[1].replace(" ", "-"))}">'
                       + "".join(f"<td>{esc(x)}</td>" for x in r) + "</tr>" for r in rows)
        notes = "".join(f"<li>{esc(c.mode)}: {esc(n)}</li>" for c in combos
                        for n in c.breakdown_notes)
        parts.append(f"<h3>{esc(build)}</h3><table class='phases'><tr>"
                     + "".join(f"<th>{esc(h)}</th>" for h in head) + f"</tr>{body}</table>"
                     + (f"<ul>{notes}</ul>" if notes else ""))
    return "".join(parts)
