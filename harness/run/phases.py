"""The phases of a run, each a function of the Lab that returns what it observed.

Boot the source, then one measured hop (start the target, migrate, switch the host
side, resume), then verify. A chain calls the hop phases again on the same Lab.
Each phase's caller keeps its result in the hop's harness.run.results.Hop, and
harness.run.assemble makes the record; no phase writes a record.

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
from pathlib import Path
from typing import Any

from harness.analysis import flows, handover, noise, ping, ramblock
from harness.analysis.downtime import Breakdown, HopMarks, breakdown, load_trace
from harness.analysis.noise import FIX_NOISE, FIX_SAMPLES, Calibration, calibrate
from harness.errors import (
    CheckFailed,
    Inconclusive,
    InternalError,
    MigrationError,
    QEMUError,
    RamBlockMismatch,
)
from harness.host import tunfiles
from harness.qemu.vm import VM
from harness.run import traffic
from harness.run.config import GUEST_CIDR, HOST_CIDR, TAP0, TAP_MAC
from harness.run.lab import Lab
from harness.run.results import HeldFiles, Hop, HopLogs, Icmp, Migration, Resumed, Switch
from harness.vocabulary import Mode

ENDED = ("completed", "failed", "cancelled")


def event_time(ev: dict[str, Any]) -> float:
    ts = ev["timestamp"]
    return float(ts["seconds"]) + float(ts["microseconds"]) / 1e6


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


def target_name(lab: Lab) -> str:
    return "target" if lab.hop == 0 else f"target-{lab.hop + 1}"


def start_target(lab: Lab) -> VM:
    """An incoming QEMU on the same RAM file, listening on the migration socket."""
    lab.target = lab.start_vm(target_name(lab), incoming=True)
    lab.target.cmd("migrate-incoming", uri=migration_uri(lab))
    return lab.target


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


def migration_uri(lab: Lab) -> str:
    return f"unix:{lab.rundir / f'migration-{lab.hop + 1}.sock'}"


def migrate(lab: Lab) -> Migration:
    """Source to target; both must end completed, the source postmigrate, the target
    paused. With pause_before_switchover, observers see the phase "switchover"."""
    src, dst = pair(lab)
    lab.notify("migrating")
    lab.log(f"migrating ({lab.cfg.mode})...")
    since = len(src.stderr()), len(dst.stderr())  # QEMU's words about this migration follow
    sent = time.time()
    src.cmd("migrate", uri=migration_uri(lab))
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
    lab.notify("migrated")
    return Migration(downtime, sent, src_at, dst_at)


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


def resume(lab: Lab, taps: tuple[str, str]) -> Resumed:
    """`cont` on the target; the TUN files both QEMUs hold are read while both exist;
    the source quits, and the target becomes the next source."""
    src, dst = pair(lab)
    lab.notify("resuming")
    sent = time.time()
    dst.cmd("cont")
    resumed = event_time(dst.wait_event("RESUME", timeout=10))
    stopped = event_time(src.wait_event("STOP", timeout=10))
    held = held_files(src, dst, taps)
    src.shutdown()
    lab.source, lab.target = dst, None
    lab.hop += 1
    return Resumed(stopped, resumed, sent, held)


def held_files(src: VM, dst: VM, taps: tuple[str, str]) -> HeldFiles:
    """Each QEMU's TUN files, and every pair of them that is one open file description.
    Read after RESUME, so the guest's outage does not pay for it."""
    t0 = time.perf_counter()
    if src.pid is None or dst.pid is None:
        raise InternalError("a QEMU of the hop has no process while both must exist")
    source, target = tunfiles.tun_files(src.pid), tunfiles.tun_files(dst.pid)
    same = frozenset((s.fd, d.fd) for s in source for d in target
                     if tunfiles.same_file(src.pid, s.fd, dst.pid, d.fd))
    return HeldFiles(taps[0], taps[1], tuple(source), tuple(target), same,
                     round(1000 * (time.perf_counter() - t0), 3))


def handover_of(held: HeldFiles, mode: Mode, queues: int) -> handover.Handover:
    """The per-queue evidence, from what both QEMUs held."""
    return handover.match(mode, queues, held.source, held.target, held.source_tap,
                          held.target_tap, lambda s, d: (s, d) in held.same)


def measured_hop(lab: Lab, hop: Hop) -> None:
    """One migration with the probes running across it (ICMP, and the flows and TCP
    connection of harness.run.traffic); each result kept in `hop` as it arrives, then
    a flow that did not recover or a broken TCP connection fails the hop."""
    cfg, src = lab.cfg, serving(lab)
    traces = lab.trace_log(src.name), lab.trace_log(target_name(lab))
    taps = lab.host_tap, lab.target_tap()
    hop.sides = lab.side(src.binary), lab.target_side()
    if not lab.guest_servers:  # once per guest: its echo servers outlive a migration
        lab.queue_baseline = traffic.start_servers(lab, src)
        lab.guest_servers = True
    with traffic.HopProbes(lab) as probes:
        # The target starts while the probes start up, inside the settle time rather than
        # after it: the probes see the host as it is while a QEMU starts, and the hop
        # saves a target's start-up. The settle time counts from the first ICMP reply.
        lab.notify("probing")
        hop.ram_blocks = check_ram_blocks(src, start_target(lab))
        first = probes.wait_answering()
        time.sleep(max(0.0, cfg.settle_s - (time.time() - first)))
        probes.read_source(src)
        hop.migration = migrate(lab)
        hop.switch = switch_host_side(lab)
        hop.resumed = resumed = resume(lab, taps)
        lab.notify("resumed")
        recovered = probes.wait_recovered(resumed.resume)
        time.sleep(cfg.tail_s)
        hop.logs = logs = probes.stop(recovered)
    icmp = ping.parse(logs.ping)
    hop.icmp = icmp_result(icmp, resumed)
    hop.calibration = calibrate_window(lab, icmp, logs, hop.migration.sent)
    hop.traffic = traffic.analyze(lab, logs, resumed, hop.calibration.epsilon_ms)
    hop.breakdown, hop.flow_breakdown = where_it_went(lab, hop, traces)
    hop.handover = handover_of(resumed.held, cfg.mode, cfg.queues)
    handover.check(hop.handover, cfg.queues)
    traffic.judge(hop.traffic, cfg)


def where_it_went(lab: Lab, hop: Hop, traces: tuple[Path, Path]
                  ) -> tuple[Breakdown | None, Breakdown | None]:
    """The ICMP hole, and the worst flow's, split into QEMU's checkpoints and the
    harness's own steps, from both QEMUs' traces (read once the source has quit)."""
    m, s, r = hop.migration, hop.switch, hop.resumed
    if hop.icmp is None or m is None or r is None or hop.sides is None:
        return None, None
    marks = HopMarks(r.stop, r.cont_sent, r.resume, m.src_completed, m.dst_completed,
                     s.start if s else None, s.end if s else None)
    untraced = None if lab.cfg.trace else "tracing was off for this run (Config.trace)"
    src, dst = hop.sides
    # Each side was traced with its own binary's events, and is read as such.
    src_log = load_trace(traces[0]) if lab.cfg.trace and src.caps.trace else None
    dst_log = load_trace(traces[1]) if lab.cfg.trace and dst.caps.trace else None
    versions = dict.fromkeys((src.caps.version, dst.caps.version))
    qemu = f"QEMU {' -> '.join(versions)}"

    def split(hole: tuple[float | None, float | None]) -> Breakdown | None:
        if hole[0] is None or hole[1] is None:
            return None
        return breakdown((hole[0], hole[1]), marks, src_log, dst_log, qemu, untraced=untraced)

    a = hop.icmp.analysis
    worst = None
    if hop.traffic is not None and hop.traffic.flows is not None:
        holes = [f for f in hop.traffic.flows.flows if f.blackout_ms is not None]
        worst = max(holes, key=lambda f: f.blackout_ms or 0.0, default=None)
    flow = split((worst.blackout_start, worst.blackout_end)) if worst else None
    return split((a.blackout_start, a.blackout_end)), flow


def calibrate_window(lab: Lab, icmp: ping.PingLog, logs: HopLogs, cutoff: float
                     ) -> Calibration:
    """The window's epsilon from the host's noise in the settle time (up to `migrate`),
    with the accelerator's figure (or --epsilon-ms) as the floor."""
    flow_log = flows.parse(logs.flows) if logs.flows is not None else None
    return calibrate(noise.measure(icmp, cutoff, flow_log), traffic.epsilon_ms(lab))


def icmp_result(icmp: ping.PingLog, resumed: Resumed) -> Icmp:
    """The ICMP outage around [STOP, RESUME], and when the unanswered requests were sent."""
    sent = ping.send_times(icmp)
    answered = {p.seq for p in icmp.lines if p.rtt_ms is not None}
    lost = [t for s, t in sent.items() if s not in answered and s <= max(answered, default=0)]
    return Icmp(ping.analyze(icmp, window=resumed.window),
                flows.when_lost(lost, resumed.window))


def verify(lab: Lab, hop: Hop, tap0_index: int) -> None:
    """The guest answers both ways on the target, local mode kept the very same
    TAP, fresh flows are answered on every live queue pair, and the outage lies in
    [STOP - eps, RESUME + eps]."""
    dst = serving(lab)
    if lab.local:
        hop.same_tap = same_tap(lab, dst, tap0_index)
    lab.host_pings_guest()
    hop.target = traffic.verify_target(lab)
    traffic.judge_target(hop.target, lab.cfg)
    if hop.icmp is None or hop.resumed is None or hop.calibration is None:
        raise InternalError("verify ran on a hop without its ICMP result")
    cal = hop.calibration
    hop.epsilon_ms = cal.epsilon_ms
    if not cal.judgeable:
        fix = FIX_SAMPLES if cal.figure is None else FIX_NOISE
        raise Inconclusive(f"inconclusive: {cal.reason}", cal.figure or "ICMP replies",
                           cal.figure_ms or 0.0, cal.epsilon_ms, fix)
    check_window(hop.icmp.analysis, hop.resumed, cal.floor_ms, cal.epsilon_ms)


# -- helpers of the phases ---------------------------------------------------------------


def serving(lab: Lab) -> VM:
    """The QEMU that runs the guest now."""
    if lab.source is None:
        raise InternalError("a phase that needs the serving QEMU ran without one")
    return lab.source


def pair(lab: Lab) -> tuple[VM, VM]:
    if lab.source is None or lab.target is None:
        raise InternalError("a migration phase ran without both a source and a target")
    return lab.source, lab.target


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


def same_tap(lab: Lab, dst: VM, tap0_index: int) -> dict[str, list[int]]:
    """Local migration: the very same kernel TAP keeps serving, after the source is gone;
    the evidence, for the record's checks."""
    before = lab.ns.stats(TAP0)
    lab.host_pings_guest()
    after = lab.ns.stats(TAP0)
    evidence = {"tap0_ifindex": [tap0_index, after.ifindex],
                "tap0_rx_packets": [before.rx_packets, after.rx_packets],
                "tap0_tx_packets": [before.tx_packets, after.tx_packets]}
    if after.ifindex != tap0_index:
        raise CheckFailed(f"{TAP0} changed ifindex from {tap0_index} to {after.ifindex}",
                          check="same-tap")
    if not (after.rx_packets > before.rx_packets and after.tx_packets > before.tx_packets):
        raise CheckFailed(f"{TAP0} counters did not rise while the target guest answered "
                          f"ping (rx {before.rx_packets}->{after.rx_packets}, "
                          f"tx {before.tx_packets}->{after.tx_packets})", check="same-tap")
    if not dst.is_running():
        raise CheckFailed("the target QEMU died after migration", check="same-tap")
    return evidence


def check_window(icmp: ping.Analysis, resumed: Resumed, floor_ms: float,
                 epsilon_ms: float) -> None:
    """The outage must lie within [STOP - floor, RESUME + eps]: the network went down
    no earlier than the guest stopped, and came back promptly after it resumed. Only
    the end's slack follows the host's noise: a busy host makes a fresh target late,
    but no load made the outage begin more than 22 ms before STOP
    (tests/data/noise/README.md)."""
    start, end = icmp.blackout_start, icmp.blackout_end
    if start is None or end is None:
        raise CheckFailed("no replies around the migration window: the prober saw no "
                          "outage boundaries (is the ping log empty?)", check="window")
    before, after = floor_ms / 1000, epsilon_ms / 1000
    if start < resumed.stop - before or end > resumed.resume + after:
        raise CheckFailed(
            f"blackout [{start:.6f}, {end:.6f}] lies outside "
            f"[STOP - {floor_ms:g} ms, RESUME + {epsilon_ms:g} ms] = "
            f"[{resumed.stop - before:.6f}, {resumed.resume + after:.6f}]", check="window")


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
