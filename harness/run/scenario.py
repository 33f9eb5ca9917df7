"""One migration of a live guest, new-TAP or local, measured: `tapmig run`.

Boot the source, one measured hop, verify (harness.run.phases); the results become
one RunRecord (harness.run.assemble), whatever happened, and with Config.out the
record, the probe logs, the timeline and both QEMUs' consoles are kept there.
"""

from __future__ import annotations

import datetime
import shutil
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from harness.analysis import flows, ping, tcp_stream
from harness.errors import InternalError, TapmigError
from harness.host.rundir import SHM_DIR
from harness.record import RunRecord
from harness.report import timeline
from harness.run import phases
from harness.run.assemble import Context, assemble, with_artifacts
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Observer, PhaseClock
from harness.run.results import Hop, HopLogs
from harness.run.setup import Setup, settle
from harness.run.timings import hop_timings
from harness.vocabulary import Log

ARTIFACTS = ("ping.log", "flows.log", "fresh-flows.log", "tcp.log", "timeline.html",
             "source-console.log", "target-console.log", "source-stderr.log",
             "target-stderr.log", "source.trace", "target.trace")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def run(cfg: Config, log: Log = print, setup: Setup | None = None,
        observers: Sequence[Observer[Lab]] = (), shm_dir: Path = SHM_DIR) -> RunRecord:
    """One migration; failures become a record with status failed or unsupported.
    Pass the Setup a campaign settled once, or run() settles it itself."""
    started, t0 = now(), time.monotonic()
    ctx = Context(cfg, None, started)
    hop: Hop | None = None
    error: TapmigError | None = None
    try:
        ctx = Context(cfg, settle(cfg, log, setup), started)
        hop = Hop(1, started)
        ctx = _run(ctx, hop, log, observers, shm_dir)
    except TapmigError as exc:
        error = exc
    rec = assemble(ctx, hop, error, round(time.monotonic() - t0, 3))
    if cfg.out is not None:
        rec = with_artifacts(rec, keep_artifacts(cfg.out, rec, hop))
        rec.write(cfg.out / "record.json")
    if error is None:
        log(f"done: blackout {rec.blackout_ms} ms, QMP downtime {rec.downtime_ms} ms")
    return rec


def _run(ctx: Context, hop: Hop, log: Log, observers: Sequence[Observer[Lab]],
         shm_dir: Path) -> Context:
    """The phases on one Lab; the context gains the boot time once the guest is up."""
    if ctx.setup is None:
        raise InternalError("a run started without its setup")
    log(f"accelerator: {ctx.setup.accel_reason}")
    log(f"machine: {ctx.setup.machine.type}, CPU {ctx.setup.machine.cpu}")
    for note in ctx.setup.machine.notes:
        log(f"note: {note}")
    clock = PhaseClock()
    with ExitStack() as stack:
        lab = Lab(ctx.cfg, ctx.setup, stack, log, (clock, *observers), shm_dir)
        try:
            tap0_index = lab.add_taps()
            ctx = Context(ctx.cfg, ctx.setup, ctx.started, boot_s=phases.boot_source(lab))
            clock.start()
            phases.measured_hop(lab, hop)
            clock.mark("analysed")
            phases.verify(lab, hop, tap0_index)
            clock.mark("verified")
            phases.serving(lab).shutdown()
        finally:
            hop.timings = hop_timings(clock)
            if ctx.cfg.out is not None:
                copy_files(lab, ctx.cfg.out)
    return ctx


def copy_files(lab: Lab, out: Path, prefix: str = "") -> dict[str, str]:
    """The run dir's logs and consoles into out; their names by stem."""
    out.mkdir(parents=True, exist_ok=True)
    kept = {}
    for name in ARTIFACTS:
        src = lab.rundir / name
        if src.exists():
            shutil.copyfile(src, out / f"{prefix}{name}")
            kept[Path(name).stem] = f"{prefix}{name}"
    return kept


def write_timeline(path: Path, rec: RunRecord, logs: HopLogs) -> None:
    """The hop's picture, drawn from its record and its probes' logs."""
    if rec.stop_ts is None or rec.resume_ts is None:
        return
    flow_log = flows.parse(logs.flows) if logs.flows is not None else None
    tcp_log = tcp_stream.parse(logs.tcp) if logs.tcp is not None else None
    path.write_text(timeline.draw(rec, ping.parse(logs.ping), flow_log, tcp_log))


def keep_artifacts(out: Path, rec: RunRecord, hop: Hop | None) -> dict[str, str]:
    """What the record names beside it in out: the files copied from the run dir, and
    the timeline drawn from the record."""
    out.mkdir(parents=True, exist_ok=True)
    kept = {Path(n).stem: n for n in ARTIFACTS if (out / n).exists()}
    if hop is not None and hop.logs is not None and rec.stop_ts is not None:
        write_timeline(out / "timeline.html", rec, hop.logs)
        kept["timeline"] = "timeline.html"
    return kept
