"""The run's table: what `tapmig run` prints, one figure per line, from the record; then
where the blackout went, phase by phase (harness.analysis.downtime)."""

from __future__ import annotations

from harness.analysis.downtime import RESIDUAL, Breakdown, Phase
from harness.record import RunRecord
from harness.report import phases
from harness.report.units import ms
from harness.report.units import number as num

TOP_DEVICES = 3  # the largest devices a device line names, besides virtio-net


def format_record(rec: RunRecord) -> str:
    rows = [
        ("status", rec.status),
        ("mode", f"{rec.mode} (queues={rec.queues}, vhost={'on' if rec.vhost else 'off'})"),
        ("QEMU", f"{rec.qemu_version} {rec.qemu}"),
        ("accelerator", f"{rec.accel}: {rec.accel_reason}"),
        ("guest", rec.guest),
        ("ping blackout", f"{ms(rec.blackout_ms)} (resolution {ms(rec.resolution_ms)}, "
                          f"{rec.prober} prober every {ms(rec.interval_ms)})"),
        ("lost packets", f"{num(rec.lost)} (late replies: {num(rec.late_replies)})"),
        *loss_rows(rec),
        ("QMP downtime", ms(rec.downtime_ms)),
        ("STOP -> RESUME", f"{ms(rec.stop_resume_ms)} (outage began "
                           f"{ms(rec.pre_stop_ms)} before STOP)"),
        *traffic_rows(rec),
        *handover_rows(rec),
        ("run time", num(rec.duration_s, " s")),
    ]
    width = max(len(k) for k, _ in rows)
    table = [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join([*table, *breakdown_lines(rec)])


PROMISE = {"local": "local migration promises none: what arrives while the VM is stopped "
                    "waits in the TAP",
           "new-tap": "new-TAP drops what reaches the old TAP while the VM is stopped"}


def loss_rows(rec: RunRecord) -> list[tuple[str, str]]:
    """Requests sent between STOP and RESUME and never answered, beside the mode's promise."""
    if rec.lost_in_window is None:
        return []
    flows = ("" if rec.flow_lost_in_window is None
             else f", flows {rec.flow_lost_in_window}")
    return [("lost STOP -> RESUME", f"ICMP {rec.lost_in_window}{flows} ({PROMISE[rec.mode]})")]


def handover_rows(rec: RunRecord) -> list[tuple[str, str]]:
    """Per queue, the target's TUN file against the source's (harness.analysis.handover)."""
    h = rec.checks.get("handover")
    if not isinstance(h, dict):
        return []
    qs = h.get("queues", [])
    found: dict[str, int] = {}
    for q in qs:
        found[q["found"]] = found.get(q["found"], 0) + 1
    words = ", ".join(f"{n} {kind}" for kind, n in found.items())
    fds = " ".join(f"{q['source_fd']}->{q['target_fd']}" for q in qs)
    what = ("the same open file as the source's (kcmp)" if rec.mode == "local"
            else f"new files on {h.get('target_tap')}")
    return [("TAP handover", f"{len(qs)} queues: {words}; expected {what}; "
             f"fds source->target {fds} (proof {num(h.get('took_ms'), ' ms')})")]


def traffic_rows(rec: RunRecord) -> list[tuple[str, str]]:
    """The run table's lines for the traffic figures, where the run had them."""
    rows = []
    if rec.queues_live is not None:
        carried = {True: "yes", False: "NO", None: "-"}[rec.queues_all_carried]
        cpus = f"{rec.vcpus} vCPU{'s' if rec.vcpus != 1 else ''}"
        rows.append(("queues live", f"{rec.queues_live} of {rec.queues} ({cpus}); "
                                    f"all carried traffic on the target: {carried}"))
    if (every := rec.queue_packets.get("all")) is not None:
        rows.append(("all queues enabled", f"{every['live']} of {every['max']} after the hop; "
                     f"packets per queue pair rx {every['rx']}, tx {every['tx']}"))
    if rec.flows:
        rows.append((f"{rec.flows} UDP flows",
                     f"worst blackout {ms(rec.flow_blackout_ms)}, best "
                     f"{ms(rec.flow_blackout_min_ms)} (spread {ms(rec.flow_spread_ms)}); "
                     f"lost {num(rec.flow_lost)}"))
    if rec.tcp != "off":
        rto = {True: "yes", False: "no", None: "-"}[rec.tcp_rto]
        rows.append((f"TCP ({rec.tcp})", f"stall {ms(rec.tcp_stall_ms)}, retransmissions "
                     f"{num(rec.tcp_retrans)}, RTO {rto}"))
    return rows


def _stretch(kind: str, ps: list[Phase]) -> tuple[str, str]:
    """One stretch of a kind: its phases in order, and their sum where there are several."""
    if kind == RESIDUAL:
        return kind, "; ".join(f"{p.ms:g} ms unsplit: {', '.join(p.covers)}" for p in ps)
    names = " · ".join(f"{p.name} {p.ms:g}" for p in ps) + " ms"
    return kind, names if len(ps) == 1 else f"{sum(p.us for p in ps) / 1000:g} ms = {names}"


def _devices(bd: Breakdown) -> list[tuple[str, str]]:
    """The largest devices saved and loaded, and virtio-net's save and load."""
    rows = []
    for name, verb in (("devices_saved", "saved"), ("transfer_and_load", "loaded")):
        devs = [d for p in bd.phases if p.name == name for d in p.devices]
        if devs:
            top = sorted(devs, key=lambda d: -d.us)[:TOP_DEVICES]
            rows.append((f"largest {verb}", ", ".join(
                f"{phases.short_device(d.idstr)} {d.us / 1000:g}" for d in top) + " ms"))
    save, load = bd.virtio_net_save_ms, bd.virtio_net_load_ms
    rows.append(("virtio-net", "not available: no device save or load in the traces"
                 if save is None and load is None else
                 f"save {ms(save, none='not available')}, load {ms(load, none='not available')}"))
    return rows


def breakdown_rows(bd: Breakdown) -> list[tuple[str, str]]:
    """Each phase in ms, in order, under who spends it; the residual named; what the
    QEMU could not tell said as not available, never as zeros."""
    rows = [_stretch(kind, ps) for kind, ps in phases.runs(bd.phases)]
    rows.append((f"{RESIDUAL} in all", f"{bd.residual_ms:g} ms ({phases.residual_note(bd)})"))
    rows += _devices(bd)
    rows.append(("QEMU's downtime", "not available: its trace has no src-downtime-start "
                 "and -end" if bd.qemu_downtime_ms is None else
                 f"{bd.qemu_downtime_ms:g} ms (src-downtime-start to -end, by its trace)"))
    if bd.missing:
        rows.append(("not available", bd.missing))
    rows += [("trace problem", p) for p in bd.problems]
    return rows


def flow_row(bd: Breakdown) -> tuple[str, str]:
    """The worst flow's hole, one figure per stretch: before STOP, in QEMU, in the
    harness, or after RESUME."""
    names = [(kind, sum(p.ms for p in ps)) for kind, ps in phases.runs(bd.phases)]
    return "worst flow", f"{bd.blackout_ms:g} ms: " + " · ".join(
        f"{k} {round(v, 3):g}" for k, v in names) + " ms"


def breakdown_lines(rec: RunRecord) -> list[str]:
    """The block under the table: where the blackout goes."""
    bd = phases.icmp(rec)
    if bd is None:
        return [f"where the blackout goes: not available: {phases.NO_BREAKDOWN}"]
    by = ("the harness's own marks alone (no QEMU trace)" if bd.events == "none" else
          f"QEMU's {bd.events} trace events and the harness's own marks")
    head = f"where the blackout goes: ICMP hole {bd.blackout_ms:g} ms, by {by}"
    if not bd.phases:
        return [head, f"  not available: {bd.missing}"]
    rows = breakdown_rows(bd)
    if (fb := phases.flow(rec)) is not None and fb.phases:
        rows.append(flow_row(fb))
    width = max(len(k) for k, _ in rows)
    return [head, *(f"  {k:<{width}}  {v}" for k, v in rows)]
