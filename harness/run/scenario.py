"""One migration of a live guest, new-TAP or local, measured; returns a RunRecord.

A run is a sequence of named phases, each a function of the Lab: boot the source,
then one measured hop (start the target, migrate, switch the host side, resume),
then verify. A chained run calls the hop phases again on the same Lab.

The shape follows the upstream test (tests/functional/x86_64/test_tap_migration.py
of the series) with the changes that make it pass under TCG:
- the prober runs at a bounded 1 kHz, and only around the migration, so the
  guest's own ping checks are not drowned by a flood;
- the outage is the hole between replies that overlaps [STOP, RESUME], not the
  first and last "no answer yet" line of the whole log;
- -nodefaults (no empty CD-ROM for SeaBIOS to wait on), a small sparse RAM file.
"""

from __future__ import annotations

import datetime
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from harness.analysis import ping
from harness.errors import (
    CheckFailed,
    MigrationError,
    QEMUError,
    TapmigError,
    UsageError,
)
from harness.host.rundir import SHM_DIR
from harness.qemu.vm import VM
from harness.record import RunRecord
from harness.run import traffic
from harness.run.config import GUEST_CIDR, HOST_CIDR, TAP0, TAP_MAC, Config
from harness.run.lab import Lab
from harness.run.observer import Observer
from harness.run.setup import Setup, settle

ENDED = ("completed", "failed", "cancelled")
Log = Callable[[str], None]


def event_time(ev: dict[str, Any]) -> float:
    ts = ev["timestamp"]
    return float(ts["seconds"]) + float(ts["microseconds"]) / 1e6


# -- the phases ------------------------------------------------------------------------


def boot_source(lab: Lab) -> float:
    """The source QEMU, its guest up and answering both ways; seconds to boot."""
    lab.source = lab.start_vm("source", incoming=False)
    boot0 = time.monotonic()
    lab.source.cmd("cont")
    lab.guest.bring_up(lab.source, GUEST_CIDR, lab.cfg.boot_timeout)
    boot_s = round(time.monotonic() - boot0, 3)
    lab.log(f"source guest ready in {boot_s:.1f}s")
    lab.notify("booted")
    lab.guest_pings_host(lab.source)
    lab.host_pings_guest()
    return boot_s


def start_target(lab: Lab) -> VM:
    """An incoming QEMU on the same RAM file, listening on the migration socket."""
    name = "target" if lab.hop == 0 else f"target-{lab.hop + 1}"
    lab.target = lab.start_vm(name, incoming=True)
    lab.target.cmd("migrate-incoming", uri=migration_uri(lab))
    return lab.target


def migration_uri(lab: Lab) -> str:
    return f"unix:{lab.rundir / f'migration-{lab.hop + 1}.sock'}"


def migrate(lab: Lab, rec: RunRecord) -> None:
    """Source to target; both must end completed, the source postmigrate, the target
    paused. With pause_before_switchover the fault hook runs at pre-switchover."""
    src, dst = _pair(lab)
    lab.notify("migrating")
    lab.log(f"migrating ({lab.cfg.mode})...")
    src.cmd("migrate", uri=migration_uri(lab))
    status = migration_status(lab, src)
    while status not in ENDED:
        if status == "pre-switchover":
            lab.notify("switchover")
            src.cmd("migrate-continue", state="pre-switchover")
        status = migration_status(lab, src)
    for vm, side, end in ((src, "source", status), (dst, "target", None)):
        end = end or migration_end(lab, vm)
        if end != "completed":
            desc = _migration_error(src, dst)
            raise MigrationError(f"migration {end} on the {side}: {desc}", side=side,
                                 status=end, error_desc=desc)
    states = _runstate_past(src, "finish-migrate"), dst.cmd("query-status")["status"]
    if states != ("postmigrate", "paused"):
        raise MigrationError(f"after migration the source is {states[0]} and the target "
                             f"{states[1]}; expected postmigrate and paused",
                             side="source" if states[0] != "postmigrate" else "target",
                             status="completed")
    info = src.cmd("query-migrate")
    rec.downtime_ms = float(info["downtime"]) if "downtime" in info else None
    lab.notify("migrated")


def switch_host_side(lab: Lab) -> None:
    """New-TAP: the host's IP and MAC follow the guest to the target's TAP. Local
    mode moves nothing: the same kernel TAP serves the target."""
    new = lab.target_tap()
    if new != lab.host_tap:
        lab.ns.move_host_side(lab.host_tap, new, HOST_CIDR, TAP_MAC)
        lab.host_tap = new


def resume(lab: Lab, rec: RunRecord) -> None:
    """`cont` on the target, the source quits; the target becomes the next source."""
    src, dst = _pair(lab)
    lab.notify("resuming")
    dst.cmd("cont")
    rec.resume_ts = event_time(dst.wait_event("RESUME", timeout=10))
    rec.stop_ts = event_time(src.wait_event("STOP", timeout=10))
    rec.stop_resume_ms = round(1000 * (rec.resume_ts - rec.stop_ts), 3)
    src.shutdown()
    lab.source, lab.target = dst, None
    lab.hop += 1


def measured_hop(lab: Lab, rec: RunRecord) -> None:
    """One migration with the probes running across it (ICMP, and the flows and TCP
    connection of harness.run.traffic), and the outage they saw."""
    cfg = lab.cfg
    assert lab.source is not None
    if not lab.guest_servers:  # once per guest: its echo servers outlive a migration
        lab.queue_baseline = traffic.start_servers(lab, lab.source)
        lab.guest_servers = True
    with traffic.HopProbes(lab) as probes:
        time.sleep(cfg.settle_s)
        probes.read_source(lab.source)
        lab.notify("probing")
        start_target(lab)
        migrate(lab, rec)
        switch_host_side(lab)
        resume(lab, rec)
        lab.notify("resumed")
        assert rec.resume_ts is not None
        recovered = probes.wait_recovered(rec.resume_ts)
        time.sleep(cfg.tail_s)
        logs = probes.stop(recovered)
    assert rec.stop_ts is not None and rec.resume_ts is not None
    icmp = ping.parse(logs.ping)
    result = ping.analyze(icmp, window=(rec.stop_ts, rec.resume_ts))
    rec.blackout_ms, rec.lost = result.blackout_ms, result.lost
    rec.blackout_start, rec.blackout_end = result.blackout_start, result.blackout_end
    if result.blackout_start is not None:
        rec.pre_stop_ms = round(max(0.0, 1000 * (rec.stop_ts - result.blackout_start)), 3)
    rec.resolution_ms, rec.late_replies = result.resolution_ms, result.late_replies
    rec.interval_ms = result.interval_ms
    traffic.record_hop(lab, rec, logs, icmp)


def verify(lab: Lab, rec: RunRecord, tap0_index: int) -> None:
    """The guest answers both ways on the target, local mode kept the very same
    TAP, fresh flows are answered on every live queue pair, and the outage lies in
    [STOP - eps, RESUME + eps]."""
    assert lab.source is not None
    if lab.local:
        _prove_same_tap(lab, rec, lab.source, tap0_index)
    lab.guest_pings_host(lab.source)
    lab.host_pings_guest()
    traffic.verify_target(lab, rec)
    rec.epsilon_ms = traffic.epsilon_ms(lab)
    _check_window(rec, rec.epsilon_ms)


# -- a run -----------------------------------------------------------------------------


def new_record(cfg: Config) -> RunRecord:
    return RunRecord(mode=cfg.mode, qemu=cfg.qemu, qemu_version="", accel="tcg", guest="",
                     vhost=cfg.vhost, queues=cfg.queues, prober=cfg.prober, vcpus=cfg.vcpus,
                     flows=cfg.flows, tcp=cfg.tcp,
                     host_kernel=platform.release(),
                     started=datetime.datetime.now(datetime.UTC).isoformat())


def run(cfg: Config, log: Log = print, setup: Setup | None = None,
        observers: Sequence[Observer[Lab]] = (), shm_dir: Path = SHM_DIR) -> RunRecord:
    """One migration; failures become a record with status failed or unsupported.
    Pass the Setup a campaign settled once, or run() settles it itself."""
    rec = new_record(cfg)
    t0 = time.monotonic()
    try:
        _run(cfg, rec, log, settle(cfg, log, setup), observers, shm_dir)
    except TapmigError as exc:
        rec.fail(exc)
    rec.duration_s = round(time.monotonic() - t0, 3)
    if cfg.out is not None:
        cfg.out.mkdir(parents=True, exist_ok=True)
        rec.write(cfg.out / "record.json")
    return rec


def _run(cfg: Config, rec: RunRecord, log: Log, setup: Setup,
         observers: Sequence[Observer[Lab]], shm_dir: Path) -> None:
    caps = setup.caps
    rec.qemu, rec.qemu_version, rec.interface = caps.qemu, caps.version, caps.interface
    rec.guest, rec.accel, rec.accel_reason = setup.guest.name, setup.accel, setup.accel_reason
    log(f"accelerator: {rec.accel_reason}")
    with ExitStack() as stack:
        lab = Lab(cfg, setup, stack, log, observers, shm_dir)
        try:
            tap0_index = lab.add_taps()
            rec.boot_s = boot_source(lab)
            measured_hop(lab, rec)
            verify(lab, rec, tap0_index)
            assert lab.source is not None
            lab.source.shutdown()
        finally:
            if cfg.out is not None:
                save_artifacts(lab, cfg.out, rec)
    log(f"done: blackout {rec.blackout_ms} ms, QMP downtime {rec.downtime_ms} ms")


# -- helpers of the phases ---------------------------------------------------------------


def _pair(lab: Lab) -> tuple[VM, VM]:
    if lab.source is None or lab.target is None:
        raise UsageError("a migration phase ran without both a source and a target")
    return lab.source, lab.target


def migration_status(lab: Lab, vm: VM) -> str:
    """The next MIGRATION status change on one side."""
    return str(vm.wait_event("MIGRATION", timeout=lab.cfg.migrate_timeout)["data"]["status"])


def migration_end(lab: Lab, vm: VM) -> str:
    """The terminal MIGRATION status on one side: completed, failed or cancelled."""
    while (status := migration_status(lab, vm)) not in ENDED:
        pass
    return status


def _prove_same_tap(lab: Lab, rec: RunRecord, dst: VM, tap0_index: int) -> None:
    """Local migration: the very same kernel TAP keeps serving, after the source is gone."""
    before = lab.ns.stats(TAP0)
    lab.host_pings_guest()
    after = lab.ns.stats(TAP0)
    rec.checks["tap0_ifindex"] = [tap0_index, after.ifindex]
    rec.checks["tap0_rx_packets"] = [before.rx_packets, after.rx_packets]
    rec.checks["tap0_tx_packets"] = [before.tx_packets, after.tx_packets]
    if after.ifindex != tap0_index:
        raise CheckFailed(f"{TAP0} changed ifindex from {tap0_index} to {after.ifindex}",
                          check="same-tap")
    if not (after.rx_packets > before.rx_packets and after.tx_packets > before.tx_packets):
        raise CheckFailed(f"{TAP0} counters did not rise while the target guest answered "
                          f"ping (rx {before.rx_packets}->{after.rx_packets}, "
                          f"tx {before.tx_packets}->{after.tx_packets})", check="same-tap")
    if not dst.is_running():
        raise CheckFailed("the target QEMU died after migration", check="same-tap")


def _check_window(rec: RunRecord, epsilon_ms: float) -> None:
    """The outage must lie within [STOP - eps, RESUME + eps]: the network went down
    no earlier than the guest stopped, and came back promptly after it resumed."""
    assert rec.stop_ts is not None and rec.resume_ts is not None
    if rec.blackout_start is None or rec.blackout_end is None:
        raise CheckFailed("no replies around the migration window: the prober saw no "
                          "outage boundaries (is the ping log empty?)", check="window")
    eps = epsilon_ms / 1000
    if rec.blackout_start < rec.stop_ts - eps or rec.blackout_end > rec.resume_ts + eps:
        raise CheckFailed(
            f"blackout [{rec.blackout_start:.6f}, {rec.blackout_end:.6f}] lies outside "
            f"[STOP - {epsilon_ms:g} ms, RESUME + {epsilon_ms:g} ms] = "
            f"[{rec.stop_ts - eps:.6f}, {rec.resume_ts + eps:.6f}]", check="window")


def _runstate_past(vm: VM, transient: str, timeout: float = 5.0) -> str:
    """The runstate once QEMU has left `transient`: the source announces MIGRATION
    completed a moment before it moves from finish-migrate to postmigrate."""
    deadline = time.monotonic() + timeout
    while (state := str(vm.cmd("query-status")["status"])) == transient:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return state


def _migration_error(src: VM, dst: VM) -> str:
    try:
        info = src.cmd("query-migrate")
        desc = str(info.get("error-desc", "QEMU gave no error-desc"))
    except QEMUError as exc:
        desc = str(exc).splitlines()[0]
    err = dst.stderr().strip().splitlines()
    if dst.proc is not None and dst.proc.poll() is not None:  # e.g. the target was killed
        desc += f"; the target QEMU exited with status {dst.proc.returncode}"
    return desc + (f" (target said: {err[-1]})" if err else "")


def save_artifacts(lab: Lab, out: Path, rec: RunRecord) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("ping.log", "flows.log", "fresh-flows.log", "tcp.log", "timeline.html",
                 "source-console.log", "target-console.log",
                 "source-stderr.log", "target-stderr.log"):
        src = lab.rundir / name
        if src.exists():
            shutil.copyfile(src, out / name)
            rec.artifacts[Path(name).stem] = name
