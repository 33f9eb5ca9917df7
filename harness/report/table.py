"""The run's table: what `tapmig run` prints, one figure per line, from the record."""

from __future__ import annotations

from harness.record import RunRecord
from harness.report.units import ms
from harness.report.units import number as num


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
        ("QMP downtime", ms(rec.downtime_ms)),
        ("STOP -> RESUME", f"{ms(rec.stop_resume_ms)} (outage began "
                           f"{ms(rec.pre_stop_ms)} before STOP)"),
        *traffic_rows(rec),
        ("run time", num(rec.duration_s, " s")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def traffic_rows(rec: RunRecord) -> list[tuple[str, str]]:
    """The run table's lines for the traffic figures, where the run had them."""
    rows = []
    if rec.queues_live is not None:
        carried = {True: "yes", False: "NO", None: "-"}[rec.queues_all_carried]
        cpus = f"{rec.vcpus} vCPU{'s' if rec.vcpus != 1 else ''}"
        rows.append(("queues live", f"{rec.queues_live} of {rec.queues} ({cpus}); "
                                    f"all carried traffic on the target: {carried}"))
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
