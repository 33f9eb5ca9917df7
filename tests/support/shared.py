"""One booted guest that many tests migrate in turn: conftest.py's `booted` and `hop`.

Under TCG a boot costs 6-10 s and a hop about one. A test whose subject is one
migration (a variant, a fault the source survives, a traffic check) therefore
chains a hop onto the guest the previous test left serving, as a chain does: the
same phases, checks and footprint sampling (harness.run.chain.hop), and a record
assembled as a run's (harness.run.assemble). What a guest is booted with is its
Key; a hop may change the rest of the Config (traffic, prober, timeouts, out).

A hop that failed leaves the lab as the fault left it, so that the test can look at
both QEMUs; before the next hop the failed target goes, and the guest is reused only
if its source still runs and answers both ways (events left over from the failed
migration are discarded, so that the next hop reads its own). A test that breaks the
guest on purpose calls spend(). Either way the next test gets a fresh boot, never a
guest in doubt. A test may also start QEMUs of its own on the guest's lab
(own_qemus()): they go when it ends, and the guest is then in doubt too. What the
guest holds is registered with the leak check as kept.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from harness.errors import QEMUError, TapmigError
from harness.guest.spec import Guest
from harness.qemu import accel
from harness.qemu.capabilities import Capabilities
from harness.qemu.vm import VM
from harness.record import RunRecord
from harness.run import chain, phases, scenario, traffic
from harness.run.assemble import Context, assemble, with_artifacts
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Observer, PhaseClock
from harness.run.results import Hop
from harness.run.scenario import now
from harness.run.setup import Setup
from harness.testing.leaks import Kept
from harness.vocabulary import AccelChoice, Mode

# conftest.py's `hop`: observers, then Config changes, in; the hop's record out.
Hopper = Callable[..., RunRecord]
# What the guest is booted with; a hop that asks for another value needs another guest.
BOOT_FIELDS = frozenset({"qemu", "mode", "accel", "vhost", "queues", "vcpus", "ram_mib",
                         "guest", "cache", "boot_timeout"})
# The guest's echo servers start once, for as many flows as any hop may ask for.
MAX_FLOWS = 8
MIGRATION_EVENTS = ("MIGRATION", "STOP", "RESUME")
SETTLE_S = 5.0  # for a source whose migration failed to run again (QEMU resumes it)


# A boot is no subject of these tests, only their precondition: four TCG vCPUs on a
# busy two-core host were seen to take minutes.
BOOT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Key:
    """The Config fields a guest is booted with, beyond the QEMU and the guest.
    or_new_tap: local mode where the QEMU has the series, else new-TAP (a case that
    wants the most telling mode a QEMU has, not both)."""

    mode: Mode = "new-tap"
    queues: int = 4
    vcpus: int = 1
    or_new_tap: bool = False

    def __str__(self) -> str:
        mode = f"{self.mode}-or-new-tap" if self.or_new_tap else self.mode
        return f"{mode}-q{self.queues}" + (f"-v{self.vcpus}" if self.vcpus > 1 else "")

    def resolved(self, caps: Capabilities) -> Key:
        """The Key this QEMU runs: or_new_tap resolved."""
        if self.or_new_tap and caps.missing_for_local():
            return replace(self, mode="new-tap", or_new_tap=False)
        return self


def on(*keys: Key) -> pytest.MarkDecorator:
    """The test runs on a shared guest of each key (pytest groups the tests of a key)."""
    return pytest.mark.parametrize("booted", keys, indirect=True, ids=str)


class Booted:
    """One boot: the Lab, the stack of the QEMU serving the guest, and the last hop."""

    def __init__(self, cfg: Config, setup: Setup, ident: str,
                 observers: Sequence[Observer[Lab]] = ()) -> None:
        self.stack = ExitStack()  # the namespace, RAM file and run dir
        self.serving = ExitStack()  # the QEMU that runs the guest
        self.clock = PhaseClock()
        try:
            self.lab = Lab(cfg, setup, self.stack, print, (self.clock, *observers))
            self.lab.stack = self.serving
            self.tap0 = self.lab.add_taps()
            self.boot_s = phases.boot_source(self.lab)
            self.lab.cfg = replace(cfg, flows=MAX_FLOWS, tcp="sparse")
            self.lab.queue_baseline = traffic.start_servers(self.lab, phases.serving(self.lab))
            self.lab.guest_servers = True
        except BaseException:
            self.close()
            raise
        self.lab.cfg = cfg
        self.ctx = Context(cfg, setup, now(), boot_s=self.boot_s, chain=ident)
        self.hops = 0
        self.last: tuple[ExitStack, VM, TapmigError | None] | None = None
        self.doubt = False  # something other than a hop touched the source

    def holding(self) -> tuple[set[str], set[int]]:
        """What the leak check must not blame on the test that is running."""
        lab = self.lab
        names = {f"netns {lab.ns.name}", f"shm {lab.shm}", f"rundir {lab.rundir}"}
        pids = {vm.pid for vm in (lab.source, lab.target) if vm is not None and vm.pid}
        return names, {p for p in pids if p is not None}

    def close(self) -> None:
        self.serving.close()
        self.stack.close()


class SharedGuest:
    """A guest of one Key on one QEMU, booted on first use and again when spent."""

    def __init__(self, key: Key, setup: Setup, kept: Kept) -> None:
        self.key, self.setup, self.kept = key, setup, kept
        self.base = Config(qemu=setup.caps.qemu, mode=key.mode, queues=key.queues,
                           vcpus=key.vcpus, guest=setup.guest, accel=setup.accel,
                           boot_timeout=BOOT_TIMEOUT)
        self.booted: Booted | None = None
        self.boots = 0

    @property
    def lab(self) -> Lab:
        """The lab as the last hop left it, for a test to look at."""
        if self.booted is None:
            raise AssertionError("no guest is booted: hop() first")
        return self.booted.lab

    def hop(self, observers: Sequence[Observer[Lab]] = (), **changes: Any) -> RunRecord:
        """One measured migration of the guest, with this Config's changes; its record,
        failed or not. With out=DIR, its probe logs and timeline are kept in DIR."""
        if fixed := sorted(BOOT_FIELDS & set(changes)):
            raise AssertionError(f"{fixed} are fixed at boot: use another Key")
        b = self._ready()
        cfg = replace(self.base, **changes)
        lab = b.lab
        lab.cfg, lab.observers = cfg, (b.clock, *observers)
        src = phases.serving(lab)
        # The source was started for an earlier hop: this hop's pause-before-switchover.
        src.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "pause-before-switchover", "state": cfg.pause_before_switchover}])
        lab.queue_baseline = (lab.queue_baseline or traffic.read_queues(src)) if cfg.flows \
            else None
        suffix = "" if lab.hop == 0 else f"-{lab.hop + 1}"
        hop_stack = ExitStack()
        lab.stack = hop_stack
        b.hops += 1
        current = Hop(b.hops, now())
        t0, error = time.monotonic(), None
        try:
            chain.hop(lab, current, b.tap0, b.clock)
        except TapmigError as exc:
            error = exc
        except BaseException:
            hop_stack.close()
            self.spend()
            raise
        rec = assemble(replace(b.ctx, cfg=cfg), current, error, round(time.monotonic() - t0, 3))
        if cfg.out is not None:
            rec = with_artifacts(rec, keep_files(lab, rec, current, suffix, src, cfg.out))
        b.last = (hop_stack, src, error)
        return rec

    def serves(self) -> bool:
        """The guest's source runs and answers both ways (it may first have to resume
        by itself, as QEMU resumes a source whose migration failed)."""
        lab = self.lab
        src = lab.source
        try:
            deadline = time.monotonic() + SETTLE_S
            while src is None or src.cmd("query-status")["status"] != "running":
                if src is None or not src.is_running() or time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
            lab.guest_pings_host(src)
            lab.host_pings_guest()
        except TapmigError:
            return False
        return True

    def boot(self, observers: Sequence[Observer[Lab]] = ()) -> Lab:
        """A fresh boot, watched from its start (the phase "booted") by the observers;
        a test that needs it is marked fresh_guest, so that it runs first of its Key's."""
        self.spend()
        return self._ready(observers).lab

    @contextmanager
    def own_qemus(self) -> Iterator[Lab]:
        """The booted lab, with every QEMU the test starts on it (lab.launch) in a stack
        of the test's own, shut when the block ends; the guest is then in doubt."""
        b = self._ready()
        mine = ExitStack()
        b.lab.stack, b.doubt = mine, True
        try:
            yield b.lab
        finally:
            b.lab.stack = b.serving
            mine.close()

    def spend(self) -> None:
        """This guest is not to be used again: the next hop boots a fresh one."""
        if self.booted is not None:
            self.kept.remove(self.booted.holding)
            booted, self.booted = self.booted, None
            if booted.last is not None:
                booted.last[0].close()
            booted.close()

    close = spend

    def _ready(self, observers: Sequence[Observer[Lab]] = ()) -> Booted:
        """The guest, after the last hop's leftovers went; booted anew if it is gone or
        no longer serves."""
        if self.booted is not None and self.booted.last is not None:
            self._settle(self.booted)
        if self.booted is not None and self.booted.doubt:
            self._recover(self.booted)
        if self.booted is None:
            ident = f"shared-{self.key}-{secrets.token_hex(3)}"
            self.booted = Booted(self.base, self.setup, ident, observers)
            self.boots += 1
            self.kept.add(self.booted.holding)
        return self.booted

    def _settle(self, b: Booted) -> None:
        """After the last hop: the QEMU that quit, or the target that failed, goes."""
        assert b.last is not None
        hop_stack, src, error = b.last
        b.last = None
        lab = b.lab
        if lab.source is not src:  # the hop resumed on its target, which serves now
            b.serving.close()
            b.serving = hop_stack
        else:
            lab.target = None
            hop_stack.close()
        lab.stack = b.serving
        b.doubt = b.doubt or error is not None
        trim(lab)

    def _recover(self, b: Booted) -> None:
        """A guest in doubt is used again only if it still serves, and without the
        events its source's failed migration left."""
        b.doubt = False
        if not self.serves():
            self.spend()
            return
        discard_events(phases.serving(b.lab))
        b.lab.queue_baseline = None


def discard_events(vm: VM) -> None:
    """Events of a failed migration that no wait took: the next hop must read its own."""
    for name in MIGRATION_EVENTS:
        while True:
            try:
                vm.wait_event(name, timeout=0)
            except QEMUError:
                break


def trim(lab: Lab) -> None:
    """The run dir keeps only the serving QEMU's sockets and logs."""
    vm = phases.serving(lab)
    keep = {vm.qmp_path, vm.console_path, vm.console_log, vm.stderr_log}
    for path in lab.rundir.iterdir():
        if path not in keep and not path.is_dir():
            path.unlink(missing_ok=True)


def keep_files(lab: Lab, rec: RunRecord, hop: Hop, suffix: str, src: VM,
               out: Path) -> dict[str, str]:
    """The hop's files under a single run's names (ping.log, source-console.log ...)."""
    out.mkdir(parents=True, exist_ok=True)
    kept = {}
    names = {f"{stem}{suffix}.log": f"{stem}.log" for stem in ("ping", "flows", "tcp")}
    names["fresh-flows.log"] = "fresh-flows.log"
    names[src.console_log.name] = "source-console.log"
    dst = lab.target if lab.source is src else lab.source
    if dst is not None:
        names[dst.console_log.name] = "target-console.log"
    for name, as_name in names.items():
        if (lab.rundir / name).is_file():
            shutil.copyfile(lab.rundir / name, out / as_name)
            kept[Path(as_name).stem] = as_name
    if hop.logs is not None and rec.stop_ts is not None:
        scenario.write_timeline(out / "timeline.html", rec, hop.logs)
        kept["timeline"] = "timeline.html"
    return kept


def setup_for(caps: Capabilities, guest: Guest, requested: AccelChoice, cache: Path) -> Setup:
    """The Setup every shared guest of one QEMU starts from, the accelerator chosen
    (its KVM probe cached) as a run chooses it."""
    name, reason = accel.choose(requested, caps.qemu, guest, cache, log=lambda _m: None)
    return Setup.of(Config(caps.qemu), caps, guest, name, reason)
