"""Which phase moved: `compare`'s per-phase look at two reports' breakdowns
(harness.report.phase_summary), so that a regression verdict says where the time went.

A phase moved when its medians' 95% intervals do not overlap, the test `compare` applies
to the blackout itself. The phase that moved most is the one that grew most among those
that moved (or, when none did, the one that grew most, said to be within its intervals).
For the QMP downtime only QEMU's own phases are candidates: the harness's steps and the
network around the stop are not in QEMU's figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.report import phases
from harness.report.model import Combination, Summary
from harness.report.phase_render import ci, num
from harness.report.phase_summary import KEYS, label

# The figures a phase can explain: the blackout is every phase of the ICMP hole; the
# flows' and TCP's outages have holes of their own, not summarized here.
CANDIDATES = {"blackout_ms": phases.ORDER,
              "downtime_ms": tuple(p for p in phases.ORDER if phases.KIND[p] == "QEMU")}


@dataclass
class PhaseMove:
    """One phase of one matched combination, baseline against current."""

    combination: str
    phase: str
    baseline_ms: float | None
    current_ms: float | None
    delta_ms: float | None
    moved: bool  # the intervals of the two medians do not overlap
    why: str


def _move(label_: str, key: str, b: Summary, c: Summary) -> PhaseMove:
    if b.median is None or c.median is None:
        side = "baseline" if b.median is None else "current report"
        return PhaseMove(label_, key, b.median, c.median, None, False,
                         f"not available in the {side}")
    delta = round(c.median - b.median, 3)
    change = f"{num(b.median)} -> {num(c.median)} ms ({num(delta, True)})"
    if b.ci is None or c.ci is None:
        return PhaseMove(label_, key, b.median, c.median, delta, False,
                         f"{change}, CI undefined (n<3): not judged")
    moved = c.ci[0] > b.ci[1] or c.ci[1] < b.ci[0]
    return PhaseMove(label_, key, b.median, c.median, delta, moved,
                     f"{change}, CI {ci(c.ci)} vs baseline {ci(b.ci)}"
                     + (" do not overlap: moved" if moved else " overlap"))


def moves(label_: str, b: Combination, c: Combination) -> tuple[list[PhaseMove], list[str]]:
    """Every figure both breakdowns have, and the lines that say which moved."""
    for side, combo in (("the baseline", b), ("the current report", c)):
        if not combo.phases:
            return [], [f"{label_}: phases not compared: {side} has no breakdown"]
    found = [_move(label_, key, b.phases[key], c.phases[key]) for key in KEYS
             if key in b.phases and key in c.phases]
    moved = [m for m in found if m.moved]
    lines = [f"{label_}: phase {label(m.phase)} moved: {m.why}" for m in moved]
    if not moved:
        lines.append(f"{label_}: phases: none moved beyond its intervals"
                     f" ({len(found)} compared)")
    only = sorted(set(b.phases) ^ set(c.phases))
    if only:
        lines.append(f"{label_}: phases in one report only, not compared: {', '.join(only)}")
    return found, lines


def shrank_most(found: list[PhaseMove], metric: str) -> tuple[str | None, str]:
    """(phase, words) for an improvement: the phase that shrank most, beyond its
    intervals first."""
    shrank = sorted((m for m in found if m.phase in CANDIDATES.get(metric, ())
                     and m.delta_ms is not None and m.delta_ms < 0),
                    key=lambda m: (m.moved, -(m.delta_ms or 0.0)), reverse=True)
    if not shrank:
        return None, "; no phase shrank" if found and metric in CANDIDATES else ""
    top = shrank[0]
    return top.phase, (f"; the phase that moved most: {top.phase} "
                       f"{num(top.delta_ms or 0.0, True)} ms ({num(top.baseline_ms or 0.0)} -> "
                       f"{num(top.current_ms or 0.0)} ms"
                       + ("" if top.moved else ", within its intervals") + ")")


def most(found: list[PhaseMove], metric: str, regressed: bool) -> tuple[str | None, str]:
    """(phase, the words its verdict line ends with). A regression names the phase that
    grew most (beyond its intervals first); a verdict of ok or noise names a phase only
    if one grew beyond its intervals, which the total's noise can hide."""
    grew = sorted((m for m in found if m.phase in CANDIDATES.get(metric, ())
                   and m.delta_ms is not None and m.delta_ms > 0),
                  key=lambda m: (m.moved, m.delta_ms or 0.0), reverse=True)
    if metric not in CANDIDATES or not found or not (regressed or (grew and grew[0].moved)):
        return None, ""
    if not grew:
        return None, "; no phase grew"
    top = grew[0]
    change = (f"{top.phase} {num(top.delta_ms or 0.0, True)} ms ({num(top.baseline_ms or 0.0)}"
              f" -> {num(top.current_ms or 0.0)} ms")
    if not regressed:
        return top.phase, f"; yet phase {change}) moved beyond its intervals"
    return top.phase, (f"; the phase that moved most: {change}"
                       + ("" if top.moved else ", within its intervals") + ")")
