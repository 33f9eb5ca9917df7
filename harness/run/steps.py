"""The hop's steps on real QEMUs, each a function of the Lab that returns what it saw
as a frozen value (harness.run.results): boot the source; then, for a hop, start the
target, migrate, switch the host side, resume; then the guest's checks on the target.
harness.run.session runs them in order; a step changes the Lab (who serves, which TAP
holds the host's address) and nothing else.

The shape follows the upstream test (tests/functional/x86_64/test_tap_migration.py
of the series) with the changes that make it pass under TCG:
- the prober runs at a bounded 1 kHz, and only around the migration, so the
  guest's own ping checks are not drowned by a flood;
- the outage is the hole between replies that overlaps [STOP, RESUME], not the
  first and last "no answer yet" line of the whole log;
- -nodefaults (no empty CD-ROM for SeaBIOS to wait on), a small sparse RAM file.
"""

from __future__ import annotations

import time
from typing import Any

from harness.analysis import ramblock
from harness.analysis.noise import min_settle_s
from harness.errors import MigrationError, QEMUError, RamBlockMismatch
from harness.host import tunfiles
from harness.qemu.vm import VM
from harness.run import guest_traffic, hop_probes
from harness.run.config import GUEST_CIDR, HOST_CIDR, TAP0, TAP_MAC
from harness.run.lab import Lab
from harness.run.results import (
    HeldFiles,
    HopPlan,
    Migration,
    Observed,
    Resumed,
    SameTap,
    Switch,
    Verified,
)
from harness.vocabulary import Mode

ENDED = ("completed", "failed", "cancelled")


def event_time(ev: dict[str, Any]) -> float:
    ts = ev["timestamp"]
    return float(ts["seconds"]) + float(ts["microseconds"]) / 1e6


def boot_source(lab: Lab, mode: Mode | None = None) -> float:
    """The source QEMU, set up for the run's mode (or `mode`), its guest up and answering
    both ways; seconds to boot."""
    source = lab.start_vm("source", incoming=False, mode=mode)
    lab.source = source
    boot0 = time.monotonic()
    source.cmd("cont")
    lab.guest.bring_up(source, GUEST_CIDR, lab.cfg.boot_timeout)
    boot_s = round(time.monotonic() - boot0, 3)
    lab.log(f"source guest ready in {boot_s:.1f}s")
    lab.notify("booted", boot_s)
    lab.guest_pings_host(source)
    lab.host_pings_guest()
    return boot_s


def plan(lab: Lab, number: int, started: str) -> HopPlan:
    """Hop `number` of the guest the Lab's source serves: who takes part and where its
    files go."""
    src = lab.serving()
    done = lab.migrations  # migrations so far: a failed one reuses its names
    target = "target" if done == 0 else f"target-{done + 1}"
    return HopPlan(number, started, (lab.side(src.binary), lab.target_side()),
                   (src.name, target), (lab.host_tap, lab.target_tap()),
                   (lab.trace_log(src.name), lab.trace_log(target)),
                   lab.rundir / f"migration-{done + 1}.sock",
                   "" if done == 0 else f"-{done + 1}")


def observe(lab: Lab, plan: HopPlan) -> Observed:
    """One migration with the probes running across it (ICMP, flows, the TCP
    connection); what each step saw, once the probes stopped."""
    cfg, src = lab.cfg, lab.serving()
    with hop_probes.probing(lab, plan) as probes:
        # The target starts while the probes start up, inside the settle time rather than
        # after it: the probes see the host as it is while a QEMU starts, and the hop
        # saves a target's start-up. The settle time counts from the first ICMP reply.
        lab.notify("probing")
        ram_blocks = check_ram_blocks(src, start_target(lab, plan))
        first = probes.wait_answering()
        settle_s = max(cfg.settle_s, min_settle_s(probes.pinger.interval))
        time.sleep(max(0.0, settle_s - (time.time() - first)))
        # The source's counters after the settle time: which queues it used since the
        # last reading (the servers' start, or the previous hop's check).
        baseline = lab.queue_baseline
        source_queues = (guest_traffic.read_queues(src).since(baseline)
                         if baseline is not None else None)
        migration = migrate(lab, plan)
        switch = switch_host_side(lab)
        resumed = resume(lab, plan, switch)
        lab.notify("resumed", resumed)
        recovered = probes.wait_recovered(resumed.resume)
        time.sleep(cfg.tail_s)
        logs = probes.stop(recovered, source_queues)
    return Observed(ram_blocks, migration, switch, resumed, logs)


def start_target(lab: Lab, plan: HopPlan) -> VM:
    """An incoming QEMU on the same RAM file, listening on the migration socket."""
    target = lab.start_vm(plan.names[1], incoming=True)
    lab.target = target
    target.cmd("migrate-incoming", uri=f"unix:{plan.socket}")
    return target


def check_ram_blocks(src: VM, dst: VM) -> dict[str, tuple[int, int]]:
    """Both sides' RAM blocks, by name and size, must match before the guest's state is
    sent: with x-ignore-shared only the shared RAM is skipped, and a ROM or firmware of
    another size (a new firmware build, a NIC ROM) fails the target's load, or worse.
    Refused while the guest still runs on the source, naming the block."""
    hmp = {"command-line": "info ramblock"}
    blocks = ramblock.parse(str(src.cmd("human-monitor-command", hmp)))
    theirs = ramblock.parse(str(dst.cmd("human-monitor-command", hmp)))
    if bad := ramblock.mismatch(blocks, theirs):
        raise RamBlockMismatch(bad.describe(src.binary, dst.binary), bad.name,
                               bad.source_size, bad.target_size)
    return blocks


def migrate(lab: Lab, plan: HopPlan) -> Migration:
    """Source to target; both must end completed, the source postmigrate, the target
    paused. With pause_before_switchover, observers see the phase "switchover"."""
    src, dst = lab.pair_of_vms()
    lab.notify("migrating")
    lab.log(f"migrating ({lab.cfg.mode})...")
    since = len(src.stderr()), len(dst.stderr())  # QEMU's words about this migration follow
    sent = time.time()
    src.cmd("migrate", uri=f"unix:{plan.socket}")
    status, src_at = migration_event(lab, src)
    while status not in ENDED:
        if status == "pre-switchover":
            lab.notify("switchover")
            src.cmd("migrate-continue", state="pre-switchover")
        status, src_at = migration_event(lab, src)
    _completed(src, dst, "source", status, since)
    dst_status, dst_at = migration_end_event(lab, dst)
    _completed(src, dst, "target", dst_status, since)
    states = _runstate_past(src, "finish-migrate"), dst.cmd("query-status")["status"]
    if states != ("postmigrate", "paused"):
        raise MigrationError(f"after migration the source is {states[0]} and the target "
                             f"{states[1]}; expected postmigrate and paused",
                             side="source" if states[0] != "postmigrate" else "target",
                             status="completed")
    info = src.cmd("query-migrate")
    downtime = float(info["downtime"]) if "downtime" in info else None
    migration = Migration(downtime, sent, src_at, dst_at)
    lab.notify("migrated", migration)
    return migration


def switch_host_side(lab: Lab) -> Switch | None:
    """New-TAP: the host's IP and MAC follow the guest to the target's TAP. Local
    mode moves nothing: the same kernel TAP serves the target."""
    new = lab.target_tap()
    if new == lab.host_tap:
        return None
    start = time.time()
    lab.ns.move_host_side(lab.host_tap, new, HOST_CIDR, TAP_MAC)
    lab.host_tap = new
    return Switch(start, time.time())


def resume(lab: Lab, plan: HopPlan, switch: Switch | None) -> Resumed:
    """`cont` on the target; the TUN files both QEMUs hold are read while both exist;
    the source quits, and the target becomes the next source."""
    src, dst = lab.pair_of_vms()
    lab.notify("resuming", switch)
    sent = time.time()
    dst.cmd("cont")
    resumed = event_time(dst.wait_event("RESUME", timeout=10))
    stopped = event_time(src.wait_event("STOP", timeout=10))
    held = held_files(src, dst, plan.taps)
    src.shutdown()
    lab.source, lab.target = dst, None
    lab.migrations += 1
    return Resumed(stopped, resumed, sent, held)


def held_files(src: VM, dst: VM, taps: tuple[str, str]) -> HeldFiles:
    """Each QEMU's TUN files, and every pair of them that is one open file description.
    Read after RESUME, so the guest's outage does not pay for it."""
    t0 = time.perf_counter()
    src_pid, dst_pid = src.running_pid(), dst.running_pid()
    source, target = tunfiles.tun_files(src_pid), tunfiles.tun_files(dst_pid)
    same = frozenset((s.fd, d.fd) for s in source for d in target
                     if tunfiles.same_file(src_pid, s.fd, dst_pid, d.fd))
    return HeldFiles(taps[0], taps[1], tuple(source), tuple(target), same,
                     round(1000 * (time.perf_counter() - t0), 3))


def on_target(lab: Lab, plan: HopPlan, tap0_index: int) -> Verified:
    """The guest on the target once the source quit: the host pings it (in local mode
    across tap0's counters), then the guest's own traffic checks."""
    dst = lab.serving()
    same = same_tap(lab, dst, tap0_index) if lab.local else None
    if same is None:
        lab.host_pings_guest()
    target, baseline = guest_traffic.on_target(lab, dst, plan, lab.queue_baseline)
    lab.queue_baseline = baseline  # the next hop of the guest counts from here
    return Verified(same, target)


def same_tap(lab: Lab, dst: VM, tap0_index: int) -> SameTap:
    """tap0's ifindex and counters around the host's ping of the guest on the target,
    and whether the target still runs: harness.run.judge.same_tap decides."""
    before = lab.ns.stats(TAP0)
    lab.host_pings_guest()
    after = lab.ns.stats(TAP0)
    return SameTap((tap0_index, after.ifindex), (before.rx_packets, after.rx_packets),
                   (before.tx_packets, after.tx_packets), dst.is_running())


def migration_event(lab: Lab, vm: VM) -> tuple[str, float]:
    """The next MIGRATION status change on one side, and when QEMU emitted it."""
    ev = vm.wait_event("MIGRATION", timeout=lab.cfg.migrate_timeout)
    return str(ev["data"]["status"]), event_time(ev)


def migration_end(lab: Lab, vm: VM) -> str:
    """The terminal MIGRATION status on one side: completed, failed or cancelled."""
    return migration_end_event(lab, vm)[0]


def migration_end_event(lab: Lab, vm: VM) -> tuple[str, float]:
    """The terminal MIGRATION status on one side, and when QEMU emitted it."""
    while (status := migration_event(lab, vm))[0] not in ENDED:
        pass
    return status


def _completed(src: VM, dst: VM, side: str, end: str, since: tuple[int, int]) -> None:
    """A MigrationError naming the side, then that side's own stderr since `migrate`,
    every line of QEMU's chain of causes, not just the last."""
    if end == "completed":
        return
    desc = _migration_error(src, dst)
    vm, offset = (src, since[0]) if side == "source" else (dst, since[1])
    cause = vm.stderr_lines(offset)
    if side == "source" and not cause:  # the source only saw its peer go: the peer's words
        cause = [f"(target) {line}" for line in dst.stderr_lines(since[1])]
    said = f"; the {side} QEMU said: {' <- '.join(cause)}" if cause else ""
    raise MigrationError(f"migration {end} on the {side}: {desc}{said}", side=side, status=end,
                         error_desc=desc, cause="\n".join(cause))


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
    if dst.proc is not None and dst.proc.poll() is not None:  # e.g. the target was killed
        desc += f"; the target QEMU exited with status {dst.proc.returncode}"
    return desc
