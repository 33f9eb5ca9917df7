"""Where the blackout goes, over many runs: the median of each phase with its interval
per combination, and local minus new-TAP per phase on each build.

That difference is the series' cover letter's claim measured: in local mode management
"doesn't need to initialize new TAP and do a switch to it". A phase a run's QEMU could
not split (it lies in that run's residual) is not available, never 0; a phase a mode
has no step for (local has no host switch) is absent, and the difference says so
instead of inventing a zero on one side. The sums per kind carry the claim across that
absence: all of the harness's time in local against all of it in new-TAP.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence

from harness.analysis.downtime import Breakdown
from harness.record import RunRecord
from harness.report import phases
from harness.report.model import Combination, PhaseDiff
from harness.report.stats import diff_ci, summarize

# The figures besides the phases: each kind's sum, and virtio-net's save and load.
SUMS = ("sum:QEMU", "sum:harness time")
VIRTIO = ("virtio_net_save", "virtio_net_load")
KEYS = (*phases.ORDER, *SUMS, *VIRTIO)
LABELS = {"sum:QEMU": "all of QEMU's phases", "sum:harness time": "all harness time",
          "virtio_net_save": "virtio-net save", "virtio_net_load": "virtio-net load"}


def label(key: str) -> str:
    return LABELS.get(key, key)


def kind(key: str) -> str:
    """Who spends it: a phase's kind, a sum's own, virtio-net's QEMU."""
    return key.removeprefix("sum:") if key in SUMS else phases.KIND.get(key, "QEMU")


def figures(bd: Breakdown) -> dict[str, float | None]:
    """One run's figures by key: a phase it measured in ms, one it could not split (in a
    residual) None; one it has no step for is absent."""
    out: dict[str, float | None] = dict.fromkeys(
        (name for p in bd.phases for name in p.covers), None)
    out |= bd.phase_ms()
    kinds = phases.kind_ms(bd)
    out |= {key: kinds.get(kind(key)) for key in SUMS}
    out |= {"virtio_net_save": bd.virtio_net_save_ms, "virtio_net_load": bd.virtio_net_load_ms}
    return out


def run_figures(recs: Sequence[RunRecord]) -> list[dict[str, float | None]]:
    """The figures of each ok run that has a breakdown, in run order."""
    bds = [phases.icmp(r) for r in recs if r.status == "ok"]
    return [figures(bd) for bd in bds if bd is not None and bd.phases]


def values(runs: Sequence[dict[str, float | None]], key: str) -> list[float]:
    return [v for r in runs if (v := r.get(key)) is not None]


def attach(combo: Combination, recs: Sequence[RunRecord]) -> None:
    """Fill the combination's phases, breakdown count and notes from its runs."""
    runs = run_figures(recs)
    combo.breakdowns = len(runs)
    combo.phases = {key: summarize(v := values(runs, key), sum(key in r for r in runs) - len(v))
                    for key in KEYS if any(key in r for r in runs)}
    combo.breakdown_notes = notes(recs, len(runs))


def notes(recs: Sequence[RunRecord], with_breakdown: int) -> list[str]:
    """What the runs' QEMU could not tell, with how many runs it concerns."""
    ok = [r for r in recs if r.status == "ok"]
    found = Counter(bd.missing for r in ok if (bd := phases.icmp(r)) is not None and bd.missing)
    out = [f"not available in {n} of {len(ok)} runs: {why}" for why, n in found.items()]
    if len(ok) > with_breakdown:
        out.append(f"{len(ok) - with_breakdown} of {len(ok)} ok runs have no breakdown: "
                   f"{phases.NO_BREAKDOWN}")
    return out


def _diff(label_: str, num: Combination, den: Combination, key: str,
          a: list[float], b: list[float]) -> PhaseDiff:
    if a and b:
        delta = round(float(statistics.median(a) - statistics.median(b)), 3)
        ci = diff_ci(a, b)
        return PhaseDiff(label_, num.key, den.key, key, delta,
                         None if ci is None else [round(x, 3) for x in ci], len(a), len(b))
    if key not in num.phases or key not in den.phases:
        one, other = (den, num) if key not in num.phases else (num, den)
        note = f"{one.mode} only: {other.mode} has no such step"
    else:
        lacking = " and ".join(c.mode for c, v in ((num, a), (den, b)) if not v)
        note = f"not available: no {lacking} run could split it"
    return PhaseDiff(label_, num.key, den.key, key, None, None, len(a), len(b), note)


def differences(combos: Sequence[Combination],
                groups: dict[str, list[RunRecord]]) -> list[PhaseDiff]:
    """local - new-TAP per key, for each build that ran both modes with breakdowns."""
    out = []
    for local in (c for c in combos if c.mode == "local" and c.breakdowns):
        for newtap in (c for c in combos if c.mode == "new-tap" and c.qemu == local.qemu
                       and c.target_qemu == local.target_qemu and c.breakdowns):
            a = run_figures(groups[local.key])
            b = run_figures(groups[newtap.key])
            out += [_diff(local.build, local, newtap, key, values(a, key), values(b, key))
                    for key in KEYS if key in local.phases or key in newtap.phases]
    return out
