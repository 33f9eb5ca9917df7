"""One booted guest that many tests migrate in turn: conftest.py's `booted` and `hop`.

Under TCG a boot costs 6-10 s and a hop about one. A test whose subject is one
migration (a variant, a fault the source survives, a traffic check) therefore
chains a hop onto the guest the previous test left serving, as a chain does: the
guest is a harness.run.session.Session, whose hop is every run's and chain's hop, and
its record is assembled as a run's (harness.run.assemble). What a guest is booted with is its
Key; a hop may change the rest of the Config (traffic, prober, timeouts, out).

A hop that failed leaves the lab as the fault left it, so that the test can look at
both QEMUs; before the next hop the failed target goes, and the guest is reused only
if its source still runs and answers both ways (Session.recover). A test that breaks the
guest on purpose calls spend(). Either way the next test gets a fresh boot, never a
guest in doubt. A test may also start QEMUs of its own on the guest's lab
(own_qemus()): they go when it ends, and the guest is then in doubt too. What the
guest holds is registered with the leak check as kept.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from harness.guest.spec import Guest
from harness.qemu import accel
from harness.qemu.capabilities import Capabilities
from harness.record import RunRecord
from harness.run.assemble import Context, assemble, with_artifacts
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Observer
from harness.run.session import Session, now
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
RESUME_WITHIN_S = 5.0  # for a source whose migration failed to run again (QEMU resumes it)


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
    """One boot: the guest's session and the context of its hops' records."""

    def __init__(self, cfg: Config, setup: Setup, ident: str,
                 observers: Sequence[Observer[Lab]] = ()) -> None:
        self.stack = ExitStack()
        self.session = self.stack.enter_context(Session(cfg, setup, print))
        try:
            # Its echo servers for as many flows, and a TCP echo, as any hop may ask for.
            boot_s = self.session.boot(replace(cfg, flows=MAX_FLOWS, tcp="sparse"), observers)
        except BaseException:
            self.close()
            raise
        self.ctx = Context(cfg, setup, now(), boot_s=boot_s, chain=ident)
        self.doubt = False  # a hop failed, or something other than a hop touched the source

    def holding(self) -> tuple[set[str], set[int]]:
        """What the leak check must not blame on the test that is running."""
        lab = self.session.lab
        names = {f"netns {lab.ns.name}", f"shm {lab.shm}", f"rundir {lab.rundir}"}
        pids = {vm.pid for vm, _ in lab.qemus}
        return names, {p for p in pids if p is not None}

    def close(self) -> None:
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
        return self.booted.session.lab

    def hop(self, observers: Sequence[Observer[Lab]] = (), **changes: Any) -> RunRecord:
        """One measured migration of the guest, with this Config's changes; its record,
        failed or not. With out=DIR, its probe logs and timeline are kept in DIR."""
        if fixed := sorted(BOOT_FIELDS & set(changes)):
            raise AssertionError(f"{fixed} are fixed at boot: use another Key")
        b = self._ready()
        cfg = replace(self.base, **changes)
        try:
            result = b.session.hop(cfg, observers)
        except BaseException:
            self.spend()
            raise
        if isinstance(result.error, KeyboardInterrupt):
            self.spend()
            raise result.error
        rec = assemble(replace(b.ctx, cfg=cfg), result, result.error, result.duration_s)
        if cfg.out is not None:
            rec = with_artifacts(rec, b.session.keep(result, rec, cfg.out))
        b.doubt = b.doubt or result.error is not None
        return rec

    def boot(self, observers: Sequence[Observer[Lab]] = ()) -> Lab:
        """A fresh boot, watched from its start (the phase "booted") by the observers;
        a test that needs it is marked fresh_guest, so that it runs first of its Key's."""
        self.spend()
        return self._ready(observers).session.lab

    @contextmanager
    def own_qemus(self) -> Iterator[Lab]:
        """The booted lab, with every QEMU the test starts on it (lab.launch) shut when
        the block ends; the guest is then in doubt."""
        b = self._ready()
        b.doubt = True
        with b.session.own_qemus() as lab:
            yield lab

    def spend(self) -> None:
        """This guest is not to be used again: the next hop boots a fresh one."""
        if self.booted is not None:
            self.kept.remove(self.booted.holding)
            booted, self.booted = self.booted, None
            booted.close()

    close = spend

    def _ready(self, observers: Sequence[Observer[Lab]] = ()) -> Booted:
        """The guest, booted anew if it is gone or, after a failed hop, no longer serves."""
        if self.booted is not None and self.booted.doubt:
            self.booted.doubt = False
            if not self.booted.session.recover(RESUME_WITHIN_S):
                self.spend()
        if self.booted is None:
            ident = f"shared-{self.key}-{secrets.token_hex(3)}"
            self.booted = Booted(self.base, self.setup, ident, observers)
            self.boots += 1
            self.kept.add(self.booted.holding)
        return self.booted


def setup_for(caps: Capabilities, guest: Guest, requested: AccelChoice, cache: Path) -> Setup:
    """The Setup every shared guest of one QEMU starts from, the accelerator chosen
    (its KVM probe cached) as a run chooses it."""
    name, reason = accel.choose(requested, caps.qemu, guest, cache, log=lambda _m: None)
    return Setup.of(Config(caps.qemu), caps, guest, name, reason)
