"""One migration of a live guest, new-TAP or local, measured; returns a RunRecord.

The shape follows the upstream test (tests/functional/x86_64/test_tap_migration.py
of the v12 series) with the changes that make it pass under TCG:
- probes run at a bounded 1 kHz, and only around the migration, so the
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
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import accel, ping, rootless
from harness.cache import default_cache
from harness.errors import TapmigError
from harness.guest import Guest, build_embedded
from harness.netns import Namespace
from harness.probe import Capabilities, probe
from harness.record import MODES, RunRecord
from harness.resources import SHM_DIR, RunDir, ShmFile, reap_orphans
from harness.vm import VM, VMError

GUEST_IP = "192.168.100.2"
HOST_IP = "192.168.100.1"
PREFIXLEN = 24
GUEST_MAC = "d6:0d:75:f8:0f:b7"
TAP_MAC = "e6:1d:44:b5:03:5d"
TAP0, TAP1 = "tap0", "tap1"
TUN = Path("/dev/net/tun")
# Slack around [STOP, RESUME] for the outage. 50 ms is upstream's value, right
# for KVM. Under TCG on a small host the source guest can stall tens of ms
# before STOP (migration setup holds the BQL, so no packet I/O), and the target
# needs tens of ms after RESUME with a cold translation cache: 62 ms and 52 ms
# were seen here. The stall is reported as pre_stop_ms either way.
EPSILON_MS = {"kvm": 50.0, "tcg": 150.0}


ENDED = ("completed", "failed", "cancelled")


class Unsupported(TapmigError):
    """This QEMU or host cannot run the requested variant; the message names what is missing."""


@dataclass
class Config:
    qemu: str
    mode: str = "new-tap"
    accel: str = "auto"
    vhost: bool = False
    queues: int = 4
    ram_mib: int = 256
    out: Path | None = None
    guest: Guest | None = None
    cache: Path = field(default_factory=default_cache)
    boot_timeout: float = 60.0
    migrate_timeout: float = 60.0
    epsilon_ms: float | None = None  # None: EPSILON_MS for the accelerator in use
    probe_interval: float | None = None  # None: ping.INTERVALS[probe]
    probe: str = "tapmig"  # or "iputils"
    # Fault injection for reliability tests: called as fault(phase, migration, vms) at
    # "booted", "probing" and "switchover" (the migration held at pre-switchover).
    fault: Callable[[str, Migration, dict[str, VM]], None] | None = None
    shm_dir: Path = SHM_DIR
    qmp_timeout: float = 30.0  # for one QMP reply; a hung QEMU fails the run after this
    settle_s: float = 0.5  # probing before migration starts
    tail_s: float = 0.5  # probing after RESUME


def event_time(ev: dict[str, Any]) -> float:
    ts = ev["timestamp"]
    return float(ts["seconds"]) + float(ts["microseconds"]) / 1e6


def check_host() -> None:
    """Refuse early, in one line, what would otherwise fail deep inside a run."""
    if not rootless.privileged():
        raise TapmigError("tapmig needs root or CAP_NET_ADMIN to create namespaces and TAPs; "
                          "run it with sudo")
    if not TUN.exists():
        raise TapmigError(f"{TUN} is missing; load the tun module (modprobe tun)")
    ping.require_iputils()


def check_variant(cfg: Config, caps: Capabilities) -> None:
    if cfg.mode not in MODES:
        raise TapmigError(f"unknown mode {cfg.mode!r}; use one of {', '.join(MODES)}")
    if cfg.queues < 1 or cfg.queues > 16:
        raise TapmigError(f"--queues {cfg.queues} is out of range; use 1 to 16")
    if not caps.x_ignore_shared:
        raise Unsupported(f"{caps.qemu} lacks the x-ignore-shared migration capability")
    if cfg.mode == "local" and (missing := caps.missing_for_local()):
        raise Unsupported(f"{caps.qemu} ({caps.version}) cannot do local migration: "
                          f"missing {', '.join(missing)}")
    if cfg.vhost and caps.vhost_net:
        raise Unsupported(f"vhost=on needs vhost-net: {caps.vhost_net}")


class Migration:
    """The moving parts of one run, torn down by the ExitStack that owns them."""

    def __init__(self, cfg: Config, caps: Capabilities, guest: Guest, accel_name: str,
                 stack: ExitStack, log: Callable[[str], None]) -> None:
        self.cfg, self.caps, self.guest, self.accel = cfg, caps, guest, accel_name
        self.log = log
        self.rundir = stack.enter_context(RunDir())
        self.ns = stack.enter_context(Namespace())
        self.shm = stack.enter_context(ShmFile(cfg.ram_mib, cfg.shm_dir))
        self.stack = stack
        self.boot_s: float | None = None

    def vm_args(self, incoming: bool) -> list[str]:
        cpu = "host" if self.accel == "kvm" else "max"
        args = [
            "-machine", "q35,memory-backend=ram0", "-accel", self.accel, "-cpu", cpu,
            "-smp", "1", "-m", f"{self.cfg.ram_mib}M",
            "-object", f"memory-backend-file,id=ram0,size={self.cfg.ram_mib}M,"
                       f"mem-path={self.shm},share=on",
            "-nodefaults", "-display", "none", "-no-reboot", "-S",
            *accel.firmware_args(),
            "-device", "pcie-pci-bridge,id=pci.1,bus=pcie.0",
            *self.guest.boot_args(f"{GUEST_IP}/{PREFIXLEN}"),
        ]
        return [*args, "-incoming", "defer"] if incoming else args

    def launch(self, name: str, incoming: bool) -> VM:
        """A QEMU with no NIC yet, owned by the run's ExitStack."""
        return self.stack.enter_context(VM(name, self.caps.qemu, self.vm_args(incoming),
                                           self.rundir, prefix=self.ns.exec_prefix(),
                                           qmp_timeout=self.cfg.qmp_timeout))

    def netdev(self, incoming: bool) -> dict[str, Any]:
        local = self.cfg.mode == "local"
        netdev: dict[str, Any] = {"type": "tap", "id": "net0", "queues": self.cfg.queues,
                                  "script": "no", "downscript": "no", "vhost": self.cfg.vhost}
        if local and incoming:
            # The series ignores ifname/vnet_hdr with incoming-fds and reviewers asked
            # for errors, so leave them out: the fds carry the TAP's identity.
            netdev["incoming-fds"] = True
        else:
            netdev.update(ifname=TAP1 if (incoming and not local) else TAP0, vnet_hdr=True)
        return netdev

    def nic(self) -> dict[str, Any]:
        nic: dict[str, Any] = {"driver": "virtio-net-pci", "id": "nic0", "netdev": "net0",
                               "bus": "pci.1", "mac": GUEST_MAC, "romfile": ""}
        if self.cfg.queues > 1:
            nic.update(mq=True, vectors=2 * self.cfg.queues + 2)
        if self.caps.local_migration:
            nic["local-migration"] = self.cfg.mode == "local"
        return nic

    def prepare_migration(self, vm: VM, local: bool) -> None:
        caps = [{"capability": "events", "state": True},
                {"capability": "x-ignore-shared", "state": True}]
        if self.cfg.fault is not None:  # a point where a fault hits mid-migration, every time
            caps.append({"capability": "pause-before-switchover", "state": True})
        vm.cmd("migrate-set-capabilities", capabilities=caps)
        if self.caps.local:  # Debian's 7.2 has no such parameter; upstream's test dies there
            vm.cmd("migrate-set-parameters", local=local)

    def start_vm(self, name: str, incoming: bool) -> VM:
        vm = self.launch(name, incoming)
        vm.cmd("netdev_add", self.netdev(incoming))
        vm.cmd("device_add", self.nic())
        self.prepare_migration(vm, self.cfg.mode == "local")
        return vm

    def boot_source(self) -> VM:
        src = self.start_vm("source", incoming=False)
        boot0 = time.monotonic()
        src.cmd("cont")
        self.guest.bring_up(src, f"{GUEST_IP}/{PREFIXLEN}", self.cfg.boot_timeout)
        self.boot_s = round(time.monotonic() - boot0, 3)
        self.log(f"source guest ready in {self.boot_s:.1f}s")
        return src

    def migration_status(self, vm: VM) -> str:
        """The next MIGRATION status change on one side."""
        return str(vm.wait_event("MIGRATION", timeout=self.cfg.migrate_timeout)
                   ["data"]["status"])

    def migration_end(self, vm: VM) -> str:
        """The terminal MIGRATION status on one side: completed, failed or cancelled."""
        while (status := self.migration_status(vm)) not in ENDED:
            pass
        return status

    def guest_pings_host(self, vm: VM) -> None:
        # "1 packets received" (busybox) or "1 received" (iputils), only if in time.
        vm.run_console(f"ping -c 1 -W 3 {HOST_IP}", r" 1 (packets )?received",
                       failure=r" 0 (packets )?received", timeout=20)

    def host_pings_guest(self) -> None:
        if not ping.ping_once(self.ns.exec_prefix(), GUEST_IP, timeout_s=3):
            raise TapmigError(f"the host could not ping the guest at {GUEST_IP}")


def run(cfg: Config, log: Callable[[str], None] = print) -> RunRecord:
    """One migration; failures become a record with status failed or unsupported."""
    started = datetime.datetime.now(datetime.UTC)
    rec = RunRecord(mode=cfg.mode, qemu=cfg.qemu, qemu_version="", accel=cfg.accel,
                    guest="", vhost=cfg.vhost, queues=cfg.queues,
                    host_kernel=platform.release(), started=started.isoformat())
    t0 = time.monotonic()
    try:
        _run(cfg, rec, log)
    except Unsupported as exc:
        rec.status, rec.error = "unsupported", str(exc)
    except TapmigError as exc:
        rec.status, rec.error = "failed", str(exc)
    rec.duration_s = round(time.monotonic() - t0, 3)
    if cfg.out is not None:
        cfg.out.mkdir(parents=True, exist_ok=True)
        rec.write(cfg.out / "record.json")
    return rec


def preflight(cfg: Config) -> Capabilities:
    """Everything that can be refused before any resource exists, in one line."""
    caps = probe(cfg.qemu)
    check_variant(cfg, caps)
    check_host()
    return caps


def _run(cfg: Config, rec: RunRecord, log: Callable[[str], None]) -> None:
    caps = probe(cfg.qemu)
    rec.qemu, rec.qemu_version = caps.qemu, caps.version
    check_variant(cfg, caps)
    check_host()
    reap_orphans()
    guest = cfg.guest or build_embedded(cfg.cache, log)
    rec.guest = guest.name
    rec.accel, rec.accel_reason = accel.choose(cfg.accel, caps.qemu, guest, cfg.cache, log)
    log(f"accelerator: {rec.accel_reason}")
    with ExitStack() as stack:
        m = Migration(cfg, caps, guest, rec.accel, stack, log)
        try:
            _migrate(m, rec, log)
        finally:
            if cfg.out is not None:
                _save_artifacts(m, cfg.out, rec)


def _migrate(m: Migration, rec: RunRecord, log: Callable[[str], None]) -> None:
    cfg = m.cfg
    local = cfg.mode == "local"
    mq = cfg.queues > 1
    m.ns.add_tap(TAP0, mac=TAP_MAC, cidr=f"{HOST_IP}/{PREFIXLEN}", multi_queue=mq)
    if not local:
        m.ns.add_tap(TAP1, multi_queue=mq)
    tap0_index = m.ns.index(TAP0)

    src = m.boot_source()
    rec.boot_s = m.boot_s
    vms = {"source": src}

    def fault(phase: str) -> None:
        if cfg.fault is not None:
            cfg.fault(phase, m, vms)

    fault("booted")
    m.guest_pings_host(src)
    m.host_pings_guest()

    ping_log = m.rundir / "ping.log"
    with ping.Pinger(GUEST_IP, ping_log, m.ns.exec_prefix(), cfg.probe_interval,
                     cfg.probe) as pinger:
        time.sleep(cfg.settle_s)
        fault("probing")
        dst = m.start_vm("target", incoming=True)
        vms["target"] = dst
        sock = f"unix:{m.rundir / 'migration.sock'}"
        dst.cmd("migrate-incoming", uri=sock)
        log(f"migrating ({cfg.mode})...")
        src.cmd("migrate", uri=sock)
        if cfg.fault is not None:
            while (status := m.migration_status(src)) not in ("pre-switchover", *ENDED):
                pass
            if status == "pre-switchover":
                fault("switchover")
                src.cmd("migrate-continue", state="pre-switchover")
        for vm in (src, dst):
            status = m.migration_end(vm)
            if status != "completed":
                raise TapmigError(f"migration {status} on the {vm.name}: "
                                  f"{_migration_error(src, dst)}")
        states = _runstate_past(src, "finish-migrate"), dst.cmd("query-status")["status"]
        if states != ("postmigrate", "paused"):
            raise TapmigError(f"after migration the source is {states[0]} and the target "
                              f"{states[1]}; expected postmigrate and paused")
        info = src.cmd("query-migrate")
        rec.downtime_ms = float(info["downtime"]) if "downtime" in info else None
        if not local:
            m.ns.move_host_side(TAP0, TAP1, f"{HOST_IP}/{PREFIXLEN}", TAP_MAC)
        dst.cmd("cont")
        resume = event_time(dst.wait_event("RESUME", timeout=10))
        stop = event_time(src.wait_event("STOP", timeout=10))
        src.shutdown()
        time.sleep(cfg.tail_s)
        text = pinger.stop()
    rec.stop_ts, rec.resume_ts = stop, resume
    rec.stop_resume_ms = round(1000 * (resume - stop), 3)

    result = ping.analyze(ping.parse(text), window=(stop, resume))
    rec.blackout_ms, rec.lost = result.blackout_ms, result.lost
    rec.blackout_start, rec.blackout_end = result.blackout_start, result.blackout_end
    if result.blackout_start is not None:
        rec.pre_stop_ms = round(max(0.0, 1000 * (stop - result.blackout_start)), 3)
    rec.resolution_ms, rec.late_replies = result.resolution_ms, result.late_replies
    rec.interval_ms = result.interval_ms

    if local:
        _prove_same_tap(m, rec, dst, tap0_index)
    m.guest_pings_host(dst)
    m.host_pings_guest()
    dst.shutdown()
    rec.epsilon_ms = cfg.epsilon_ms if cfg.epsilon_ms is not None else EPSILON_MS[rec.accel]
    _check_window(rec, rec.epsilon_ms)
    log(f"done: blackout {rec.blackout_ms} ms, QMP downtime {rec.downtime_ms} ms")


def _prove_same_tap(m: Migration, rec: RunRecord, dst: VM, tap0_index: int) -> None:
    """Local migration: the very same kernel TAP keeps serving, after the source is gone."""
    before = m.ns.stats(TAP0)
    m.host_pings_guest()
    after = m.ns.stats(TAP0)
    rec.checks["tap0_ifindex"] = [tap0_index, after.ifindex]
    rec.checks["tap0_rx_packets"] = [before.rx_packets, after.rx_packets]
    rec.checks["tap0_tx_packets"] = [before.tx_packets, after.tx_packets]
    if after.ifindex != tap0_index:
        raise TapmigError(f"{TAP0} changed ifindex from {tap0_index} to {after.ifindex}")
    if not (after.rx_packets > before.rx_packets and after.tx_packets > before.tx_packets):
        raise TapmigError(f"{TAP0} counters did not rise while the target guest answered "
                          f"ping (rx {before.rx_packets}->{after.rx_packets}, "
                          f"tx {before.tx_packets}->{after.tx_packets})")
    if not dst.is_running():
        raise TapmigError("the target QEMU died after migration")


def _check_window(rec: RunRecord, epsilon_ms: float) -> None:
    """The outage must lie within [STOP - eps, RESUME + eps]: the network went down
    no earlier than the guest stopped, and came back promptly after it resumed."""
    assert rec.stop_ts is not None and rec.resume_ts is not None
    if rec.blackout_start is None or rec.blackout_end is None:
        raise TapmigError("no replies around the migration window: the probe saw no outage "
                          "boundaries (is the ping log empty?)")
    eps = epsilon_ms / 1000
    if rec.blackout_start < rec.stop_ts - eps or rec.blackout_end > rec.resume_ts + eps:
        raise TapmigError(
            f"blackout [{rec.blackout_start:.6f}, {rec.blackout_end:.6f}] lies outside "
            f"[STOP - {epsilon_ms:g} ms, RESUME + {epsilon_ms:g} ms] = "
            f"[{rec.stop_ts - eps:.6f}, {rec.resume_ts + eps:.6f}]")


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
    except VMError as exc:
        desc = str(exc).splitlines()[0]
    err = dst.stderr().strip().splitlines()
    if dst.proc is not None and dst.proc.poll() is not None:  # e.g. the target was killed
        desc += f"; the target QEMU exited with status {dst.proc.returncode}"
    return desc + (f" (target said: {err[-1]})" if err else "")


def _save_artifacts(m: Migration, out: Path, rec: RunRecord) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("ping.log", "source-console.log", "target-console.log",
                 "source-stderr.log", "target-stderr.log"):
        src = m.rundir / name
        if src.exists():
            shutil.copyfile(src, out / name)
            rec.artifacts[name.removesuffix(".log")] = name
