"""One guest from its boot to its last hop: the only place that drives a hop.

A Session owns the Lab (namespace, TAPs, RAM file, run dir) and every QEMU started on
it; leaving it tears them down, whatever happened. `tapmig run`, a chain, the benches
and the suite's shared guests all boot and hop through it:

    with Session(cfg, setup, log, observers) as session:
        session.boot()
        result = session.hop()          # a frozen HopResult, failed or not
        rec = assemble(ctx, result, ...)
        session.keep(result, rec, out)  # the hop's files, under one set of names

A hop is a straight line of values (harness.run.results): plan, observe
(harness.run.steps), analyse (harness.run.analyse: each log parsed once), judge
(harness.run.judge); the caller assembles the record (harness.run.assemble). Before
each hop the QEMUs the last one left go (all but the one serving) and the run dir is
trimmed to the serving QEMU's files, so a 1000-hop chain holds one hop's worth.
"""

from __future__ import annotations

import datetime
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from harness.errors import Inconclusive, QEMUError, TapmigError
from harness.host.rundir import SHM_DIR
from harness.qemu.vm import VM, logs_of
from harness.record import RunRecord
from harness.report import timeline
from harness.run import analyse, footprint, guest_traffic, hop_probes, judge, steps
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Observer, StepClock
from harness.run.results import Analysed, HopResult, Observed, Verified
from harness.run.setup import Setup
from harness.run.timings import step_seconds
from harness.vocabulary import Log

MIGRATION_EVENTS = ("MIGRATION", "STOP", "RESUME")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class Session:
    """The Lab of one guest and the QEMUs that serve it; boot once, then hop."""

    def __init__(self, cfg: Config, setup: Setup, log: Log,
                 observers: Sequence[Observer[Lab]] = (), shm_dir: Path = SHM_DIR) -> None:
        self.cfg, self.setup, self.log = cfg, setup, log
        self.clock = StepClock()
        self.observers: tuple[Observer[Lab], ...] = (self.clock, *observers)
        self.shm_dir = shm_dir
        self.hops = 0  # hops started
        self._stack = ExitStack()

    def __enter__(self) -> Self:
        with ExitStack() as stack:
            self.lab = Lab(self.cfg, self.setup, stack, self.log, self.observers, self.shm_dir)
            self.tap0 = self.lab.add_taps()
            self._stack = stack.pop_all()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()

    def boot(self, serve: Config | None = None,
             observers: Sequence[Observer[Lab]] = ()) -> float:
        """The source QEMU and its guest, answering both ways, with its echo servers
        started for the traffic `serve` asks for (the session's Config by default; a
        guest that hops with several Configs starts them for the most any will ask),
        watched by these observers besides the session's; seconds the guest took to
        boot."""
        lab = self.lab
        lab.observers = (*self.observers, *observers)
        try:
            boot_s = steps.boot_source(lab)
        finally:
            lab.observers = self.observers
        lab.queue_baseline = guest_traffic.start_servers(lab, lab.serving(), serve or self.cfg)
        return boot_s

    def hop(self, cfg: Config | None = None,
            observers: Sequence[Observer[Lab]] = ()) -> HopResult:
        """One measured migration of the guest with `cfg` (the session's by default) and
        these observers besides the session's; its result, whatever happened. Failures
        and an interrupt end up in the result's error, for the caller to record (and to
        re-raise an interrupt)."""
        lab, cfg = self.lab, cfg or self.cfg
        t0 = time.monotonic()
        self.hops += 1
        self._ready(cfg, observers)
        plan = steps.plan(lab, self.hops, now())
        observed: Observed | None = None
        analysed: Analysed | None = None
        verified: Verified | None = None
        sampled = None
        error: BaseException | None = None
        try:
            lab.notify("started", plan)
            observed = steps.observe(lab, plan)
            analysed = analyse.hop(plan, observed, cfg, self.setup.accel)
            lab.notify("analysed", analysed)
            judge.hop(analysed, cfg)
            verified = steps.on_target(lab, plan, self.tap0)
            judge.target(verified, cfg)
            try:
                judge.window(analysed, observed.resumed)
            except Inconclusive as exc:  # judged no further: the hop still counts
                error = exc
            lab.notify("verified", verified)
            sampled = footprint.sample(lab.serving().running_pid(), lab.ns)
            lab.notify("sampled", sampled)
        except (TapmigError, KeyboardInterrupt) as exc:
            error = exc
        return HopResult(plan, observed, analysed, verified, sampled, error,
                         round(time.monotonic() - t0, 3), step_seconds(self.clock))

    def _ready(self, cfg: Config, observers: Sequence[Observer[Lab]]) -> None:
        """The last hop's leftovers gone and this hop's Config and observers in place."""
        lab = self.lab
        src = lab.serving()
        lab.retire(src)
        self.trim()
        if cfg.pause_before_switchover != lab.cfg.pause_before_switchover:
            src.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "pause-before-switchover",
                 "state": cfg.pause_before_switchover}])
        lab.cfg, lab.observers = cfg, (*self.observers, *observers)
        if not cfg.flows:
            lab.queue_baseline = None
        elif lab.queue_baseline is None:
            lab.queue_baseline = guest_traffic.read_queues(src)

    def trim(self) -> None:
        """The run dir keeps only the serving QEMU's sockets, logs and trace (the next
        hop's breakdown reads its trace from the start)."""
        vm = self.lab.serving()
        keep = {vm.qmp_path, vm.console_path, vm.console_log, vm.stderr_log,
                self.lab.trace_log(vm.name)}
        for path in self.lab.rundir.iterdir():
            if path not in keep and not path.is_dir():
                path.unlink(missing_ok=True)

    def keep(self, result: HopResult | None, rec: RunRecord, out: Path,
             prefix: str = "") -> dict[str, str]:
        """The hop's files (or, without a hop, the boot's) copied to `out` under one set
        of names, `prefix` before each: ping.log, flows.log, tcp.log, fresh-flows.log,
        source-console.log, source-stderr.log, source.trace, the target's likewise, and
        the timeline drawn from the record; their names by stem, for the record."""
        out.mkdir(parents=True, exist_ok=True)
        lab = self.lab
        names: dict[Path, str] = {}  # a run dir file -> its name in out
        roles = [("source", "source")]  # a boot that failed: the source alone
        if result is not None:
            names |= {hop_probes.log_path(lab, result.plan, stem): f"{stem}.log"
                      for stem in ("ping", "flows", "tcp")}
            names[lab.rundir / guest_traffic.FRESH_LOG] = guest_traffic.FRESH_LOG
            roles = list(zip(("source", "target"), result.plan.names, strict=True))
        for role, name in roles:
            console, stderr = logs_of(lab.rundir, name)
            names |= {console: f"{role}-console.log", stderr: f"{role}-stderr.log"}
            if result is not None:
                names[lab.trace_log(name)] = f"{role}.trace"
        kept = {}
        for path, as_name in names.items():
            if path.is_file():
                shutil.copyfile(path, out / f"{prefix}{as_name}")
                kept[Path(as_name).stem] = f"{prefix}{as_name}"
        if result is not None and result.analysed is not None and rec.stop_ts is not None:
            p = result.analysed.parsed
            (out / f"{prefix}timeline.html").write_text(
                timeline.draw(rec, p.ping, p.flows, p.tcp))
            kept["timeline"] = f"{prefix}timeline.html"
        return kept

    def shut_down(self) -> dict[str, Any]:
        """Every QEMU quits, a half-started target first; the one that last ran the
        guest, and its exit status."""
        src = self.lab.source
        self.lab.retire()
        if src is None or src.proc is None:
            return {}
        return {"qemu": src.name, "exit_status": src.proc.returncode}

    def recover(self, within: float = 5.0) -> bool:
        """After a failed hop: whether the source still runs the guest (it may first have
        to resume by itself, as QEMU resumes a source whose migration failed) and the
        guest answers both ways. If so, the hop's leftovers go, with the events of the
        failed migration that no wait took, so that the next hop reads its own."""
        lab = self.lab
        src = lab.source
        if src is None:
            return False
        lab.retire(src)
        try:
            deadline = time.monotonic() + within
            while src.cmd("query-status")["status"] != "running":
                if not src.is_running() or time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
            lab.guest_pings_host(src)
            lab.host_pings_guest()
        except TapmigError:
            return False
        discard_events(src)
        lab.queue_baseline = None
        return True

    @contextmanager
    def own_qemus(self) -> Iterator[Lab]:
        """The Lab, for a caller that starts QEMUs of its own on it (Lab.launch): they go
        when the block ends; the guest's QEMU stays."""
        lab = self.lab
        before = [vm for vm, _ in lab.qemus]
        try:
            yield lab
        finally:
            lab.retire(*before)


def discard_events(vm: VM) -> None:
    """Events of a failed migration that no wait took."""
    for name in MIGRATION_EVENTS:
        while True:
            try:
                vm.wait_event(name, timeout=0)
            except QEMUError:
                break
