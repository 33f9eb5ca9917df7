"""One boot, many migrations: the same guest hopping between fresh QEMUs, N times.

A sample of a single run costs a guest boot; a chain boots once and then migrates
back and forth, each hop to a new incoming QEMU on the same shared RAM file, so a
campaign gets 100 samples in the time of 20 boots. Local mode keeps tap0 all the way;
new-TAP alternates tap0 and tap1, moving the host's IP and MAC every hop (the steps
of harness.run.steps do both). Repetition is also where fd passing goes wrong, so after
every hop the serving QEMU's fds, the TAP's queues, memory and the namespace's
interfaces are sampled (harness.run.footprint) for harness.analysis.trend to judge.

Every hop is a full RunRecord, handed to `emit` as soon as it ends. A hop that fails,
or a Ctrl-C, ends the chain: the failing hop is recorded with its reason, the last
QEMU that ran the guest is shut down (its exit status kept), and the session takes
the rest; every finished hop stays recorded. The hops themselves run in a
harness.run.session.Session, like every other hop.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from harness.errors import Inconclusive, TapmigError
from harness.record import RunRecord
from harness.report.summary import cpu_model
from harness.run.assemble import Context, assemble, with_artifacts
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Observer
from harness.run.results import HopResult
from harness.run.session import Session, now
from harness.run.setup import Setup, run_setup
from harness.vocabulary import Log

Emit = Callable[[RunRecord], None]
# Shorter probing before and after the migration than a single run's 0.5 s, so that a
# hop of a 1000-hop soak does not spend most of its time waiting. The tail starts once
# ICMP (and every flow) answered again after RESUME (harness.run.hop_probes waits
# for it), so it only has to show that traffic stays healthy; a quarter second before the
# migration gives ~270 samples to see the outage begin.
SETTLE_S = 0.25
TAIL_S = 0.3


@dataclass(frozen=True)
class Chain:
    """What one chain is asked to do; cfg is every hop's."""

    cfg: Config
    hops: int
    ident: str
    deadline: float | None = None  # time.monotonic() after which no hop starts
    shard: str | None = None

    @classmethod
    def new(cls, cfg: Config, hops: int, name: str, deadline: float | None = None,
            shard: str | None = None) -> Chain:
        return cls(replace(cfg, settle_s=SETTLE_S, tail_s=TAIL_S), hops,
                   f"{name}-{secrets.token_hex(3)}", deadline, shard)


class ChainRun:
    """Runs one Chain, handing each hop's record to emit."""

    def __init__(self, chain: Chain, emit: Emit, log: Log, setup: Setup | None = None,
                 observers: Sequence[Observer[Lab]] = ()) -> None:
        self.chain, self.emit, self.log = chain, emit, log
        self.observers = tuple(observers)
        self.setup = setup
        self.cfg = chain.cfg
        self.ctx = Context(self.cfg, None, now(), chain=chain.ident, shard=chain.shard,
                           cpu_model=cpu_model())

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            setup = run_setup(self.cfg, self.log, self.setup)
        except TapmigError as exc:
            self.emit(assemble(self.ctx, None, exc, None))
            return
        self.ctx = replace(self.ctx, setup=setup)
        try:
            with Session(self.cfg, setup, self.log, self.observers) as session:
                self._boot_and_hop(session, t0)
        except TapmigError as exc:  # the lab could not be made, or could not be torn down
            self.emit(assemble(self.ctx, None, exc, round(time.monotonic() - t0, 3)))

    def _boot_and_hop(self, session: Session, t0: float) -> None:
        try:
            self.ctx = replace(self.ctx, boot_s=session.boot())
        except (TapmigError, KeyboardInterrupt) as exc:
            self._ended(session, None, exc, round(time.monotonic() - t0, 3))
            return
        try:
            self._hops(session)
        except KeyboardInterrupt:
            session.shut_down()  # between hops: every hop so far is recorded
            raise

    def _hops(self, session: Session) -> None:
        out = self.cfg.out
        for n in range(1, self.chain.hops + 1):
            try:
                result = session.hop()
            except TapmigError as exc:  # the serving QEMU failed before the hop began
                self._ended(session, None, exc, None)
                return
            error = result.error
            if error is not None and not isinstance(error, Inconclusive):
                self._ended(session, result, error, result.duration_s)
                return
            rec = assemble(self.ctx, result, error, result.duration_s)
            if n == 1 and out is not None:  # the first hop's files, as an example
                rec = with_artifacts(rec, session.keep(result, rec, out, "hop1-"))
            self.emit(rec)
            if self.chain.deadline is not None and time.monotonic() >= self.chain.deadline:
                break
        session.shut_down()

    def _ended(self, session: Session, result: HopResult | None, error: BaseException,
               duration_s: float | None) -> None:
        """Name what ended the chain, keep its evidence, and quit the last good QEMU; an
        interrupt is raised again once recorded."""
        last_good = session.shut_down()
        if result is not None:
            result = replace(result, last_good_qemu=last_good)
        rec = assemble(self.ctx, result, error, duration_s)
        if self.cfg.out is not None:
            number = result.plan.number if result is not None else 1
            rec = with_artifacts(rec, session.keep(result, rec, self.cfg.out,
                                                   f"hop{number}-"))
        self.emit(rec)
        if isinstance(error, KeyboardInterrupt):
            raise error
