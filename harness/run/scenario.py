"""One migration of a live guest, new-TAP or local, measured: `tapmig run`.

A session boots the source and runs one hop (harness.run.session); its result becomes
one RunRecord (harness.run.assemble), whatever happened, and with Config.out the
record, the probe logs, the timeline and both QEMUs' consoles are kept there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from harness.errors import TapmigError
from harness.host.rundir import SHM_DIR
from harness.record import RunRecord
from harness.run.assemble import Context, assemble, with_artifacts
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Observer
from harness.run.session import Session, now
from harness.run.setup import Setup, run_setup
from harness.vocabulary import Log


def run(cfg: Config, log: Log = print, setup: Setup | None = None,
        observers: Sequence[Observer[Lab]] = (), shm_dir: Path = SHM_DIR) -> RunRecord:
    """One migration; failures become a record with status failed or unsupported.
    Pass the Setup a campaign settled once, or run() settles it itself. An interrupt
    during the hop is recorded too, then raised once everything the run started is
    gone."""
    started, t0 = now(), time.monotonic()
    try:
        setup = run_setup(cfg, log, setup)
    except TapmigError as exc:
        return _kept(cfg, assemble(Context(cfg, None, started), None, exc,
                                   round(time.monotonic() - t0, 3)))
    log(f"accelerator: {setup.accel_reason}")
    log(f"machine: {setup.machine.type}, CPU {setup.machine.cpu}")
    for note in setup.machine.notes:
        log(f"note: {note}")
    ctx = Context(cfg, setup, started)
    result, error = None, None
    try:
        with Session(cfg, setup, log, observers, shm_dir) as session:
            try:
                ctx = Context(cfg, setup, started, boot_s=session.boot())
                result = session.hop()
                error = result.error
                session.shut_down()  # every QEMU's logs complete before they are kept
            except TapmigError as exc:
                error = exc
            rec = assemble(ctx, result, error, round(time.monotonic() - t0, 3))
            if cfg.out is not None:
                rec = with_artifacts(rec, session.keep(result, rec, cfg.out))
    except TapmigError as exc:  # the lab could not be made, or could not be torn down
        error = exc
        rec = assemble(ctx, result, exc, round(time.monotonic() - t0, 3))
    _kept(cfg, rec)
    if isinstance(error, KeyboardInterrupt):
        raise error
    if error is None:
        log(f"done: blackout {rec.blackout_ms} ms, QMP downtime {rec.downtime_ms} ms")
    return rec


def _kept(cfg: Config, rec: RunRecord) -> RunRecord:
    """The record, written to Config.out as record.json."""
    if cfg.out is not None:
        rec.write(cfg.out / "record.json")
    return rec
