"""The words every report uses for the phases of a blackout (harness.analysis.downtime):
who spends each phase, what it is, and a record's breakdowns read back.

One place, so that the run's table, the timeline, the measure report, `compare` and the
chains call a phase the same thing and put the same phases under "harness time": the
harness's own steps between migration completed and `cont` are not QEMU's, and a report
that mixed them in would credit QEMU (or the series) with the harness's speed.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.analysis.downtime import PHASES, RESIDUAL, Breakdown, Phase
from harness.record import RunRecord

ORDER = (*PHASES, RESIDUAL)  # the phases as they happen; the residual's total last
# Who spends the time: the network and the guest around the stop, QEMU, or the harness.
KIND = {"pre_stop": "before STOP", "src_stop": "QEMU", "ram": "QEMU",
        "devices_saved": "QEMU", "transfer_and_load": "QEMU", "dst_complete": "QEMU",
        "src_complete": "harness time", "harness_qmp": "harness time",
        "host_switch": "harness time", "harness_cont": "harness time",
        "cont_to_resume": "QEMU", "guest_warmup": "guest", RESIDUAL: "residual"}
KINDS = ("before STOP", "QEMU", "harness time", "guest", "residual")
WHAT = {"pre_stop": "network down before the source stops",
        "src_stop": "the source stops its vCPUs",
        "ram": "RAM (the iterable state) saved",
        "devices_saved": "device state saved",
        "transfer_and_load": "last bytes sent, the target loads (v12 hands the TAP over)",
        "dst_complete": "the target completes",
        "src_complete": "the harness waits for the source's completion",
        "harness_qmp": "the harness's QMP round trips",
        "host_switch": "the harness's new-TAP host switch",
        "harness_cont": "the harness, up to sending cont",
        "cont_to_resume": "cont to RESUME",
        "guest_warmup": "RESUME to the first reply (guest warm-up)",
        RESIDUAL: "what no checkpoint explains"}
NO_BREAKDOWN = ("this record has no downtime_breakdown (written before tapmig split the "
                "blackout, or the hop ended before its hole was measured)")


def icmp(rec: RunRecord) -> Breakdown | None:
    """The ICMP blackout's breakdown, None for a record without one."""
    return Breakdown.from_json(rec.downtime_breakdown)


def flow(rec: RunRecord) -> Breakdown | None:
    """The worst flow's breakdown, None for a record without flows or without one."""
    return Breakdown.from_json(rec.flow_breakdown)


def runs(bd: Sequence[Phase]) -> list[tuple[str, list[Phase]]]:
    """The phases in order, cut where the kind changes: (kind, phases) per stretch."""
    out: list[tuple[str, list[Phase]]] = []
    for p in bd:
        kind = KIND.get(p.name, "residual")
        if out and out[-1][0] == kind:
            out[-1][1].append(p)
        else:
            out.append((kind, [p]))
    return out


def kind_ms(bd: Breakdown) -> dict[str, float]:
    """ms per kind (QEMU, harness time ...), for the kinds the breakdown has."""
    out: dict[str, int] = {}
    for p in bd.phases:
        kind = KIND.get(p.name, "residual")
        out[kind] = out.get(kind, 0) + p.us
    return {k: v / 1000 for k, v in out.items()}


def residual_note(bd: Breakdown) -> str:
    """Why there is a residual (what was missing or out of order), or that there is none."""
    parts = [p.why for p in bd.phases if p.name == RESIDUAL and p.us]
    return "; ".join(parts) if parts else "every boundary was found"


def short_device(idstr: str) -> str:
    """ich9_ahci, not 0000:00:1f.2/ich9_ahci: the bus address says little in a report."""
    return idstr.split("/")[-1]
