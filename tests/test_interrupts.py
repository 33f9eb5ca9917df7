"""Ctrl-C, SIGTERM and SIGKILL sent to a real `tapmig run`, at each phase of the run,
and the spot where Python itself can lose an interrupt.

An interrupted run must unwind everything it started and exit 130 promptly; a
killed one cannot, so its QEMUs must die with it (PR_SET_PDEATHSIG) and the
next run must reap what it left. The autouse leak check sees only pytest's own
resources, so these tests check the child's by its PID: tapmig-<pid>-* names,
and every process it ever had as a child, remembered with its start time so
that a recycled PID is not mistaken for a survivor.

The signal handling is tapmig's, whatever the QEMU: these run on the first --qemu
only, with one queue and ICMP alone (the traffic probes are children like the
prober, which is there).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from harness.host import reaper
from harness.host.rundir import ShmFile
from harness.proc import signals_deferred
from harness.vocabulary import AccelChoice
from tests.support import REPO, children, cmdline, interruptible, stat_fields

INTERRUPTED = "tapmig: interrupted; everything it started was cleaned up"
# The bound is the point here: an interrupted run must exit promptly. Teardown takes
# well under a second; a QEMU that is never told to quit costs VM.shutdown's 10 s
# wait before SIGTERM (a bug once), so allow as much as a loaded host needs, but
# less than that.
EXIT_WITHIN_S = 8.0
LIGHT = ("--queues", "1", "--flows", "0", "--tcp", "off")
PHASE_TIMEOUT_S = 120.0  # to reach a phase: a TCG boot takes 5-10 s, more under load

Proc = tuple[int, str, str]  # pid, start time (clock ticks since boot), command name


def children_since_boot(ppid: int) -> set[Proc]:
    """The children of ppid (zombies too: a child that just exited was still started),
    each with its start time."""
    found = set()
    for pid, comm in children(ppid):
        if (stat := stat_fields(pid)) is not None:
            found.add((pid, stat[1][19], comm))
    return found


def alive(procs: set[Proc]) -> set[Proc]:
    """Those still running, matched by PID and start time; a zombie is not running."""
    left = set()
    for pid, start, comm in procs:
        stat = stat_fields(pid)
        if stat is not None and stat[1][19] == start and stat[1][0] != "Z":
            left.add((pid, start, comm))
    return left


def ignore_sigint() -> None:
    """preexec_fn: SIGINT ignored, as a shell without job control starts `tapmig run &`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class TapmigRun:
    """`tapmig run` as a subprocess: its stderr read line by line, its children tracked."""

    def __init__(self, qemu: str, accel: str, out: Path, own_group: bool = False,
                 sigint_ignored: bool = False) -> None:
        self.qemu = qemu
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli.main", "run", "--qemu", qemu, "--accel", accel,
             "--out", str(out), *LIGHT],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, process_group=0 if own_group else None,
            preexec_fn=ignore_sigint if sigint_ignored else interruptible)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.kids: set[Proc] = set()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _pump(self, wait: float) -> bool:
        """Take in stderr lines and note children; False once stderr has ended."""
        self.kids |= children_since_boot(self.pid)
        try:
            line = self._queue.get(timeout=wait)
        except queue.Empty:
            return True
        if line is None:
            self._queue.put(None)
            return False
        self.lines.append(line)
        return True

    def until(self, done: Callable[[], bool], what: str,
              timeout: float = PHASE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if not self._pump(0.05):
                pytest.fail(f"tapmig exited before {what}:\n" + "\n".join(self.lines))
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f}s:\n" + "\n".join(self.lines))
        self.kids |= children_since_boot(self.pid)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def has_child(self, *words: str) -> bool:
        """A child whose command line holds every one of `words`."""
        seen = children_since_boot(self.pid)
        self.kids |= seen  # what made a phase's condition true was started by the run
        for pid, _start, _comm in alive(seen):
            line = cmdline(pid)
            if all(word in line for word in words):
                return True
        return False

    def finish(self, timeout: float) -> int:
        """Wait for exit, reading the rest of stderr."""
        deadline = time.monotonic() + timeout
        while self._pump(0.05) and time.monotonic() < deadline:
            pass
        try:
            return self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"tapmig still running {timeout:.0f}s after the signal:\n"
                        + "\n".join(self.lines))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)


@pytest.fixture
def start_run(tapmig_qemu: str, tapmig_accel: AccelChoice, tmp_path: Path
              ) -> Iterator[Callable[..., TapmigRun]]:
    """Start `tapmig run`s; whatever a failed test leaves running is SIGKILLed and reaped."""
    started: list[TapmigRun] = []

    def start(own_group: bool = False, sigint_ignored: bool = False) -> TapmigRun:
        started.append(TapmigRun(tapmig_qemu, tapmig_accel, tmp_path / f"out{len(started)}",
                                 own_group, sigint_ignored))
        return started[-1]

    yield start
    for r in started:
        r.kill()
        reaper.reap_orphans()


def starting(r: TapmigRun) -> None:
    """The first QEMU: `-version` or the capability query's, started and connected to
    within milliseconds, so the signal often lands mid-launch."""
    r.until(lambda: r.has_child(Path(r.qemu).name), "a QEMU child")


def booting(r: TapmigRun) -> None:
    """The source QEMU (its paths are in the run's tapmig-<pid>- dir) is up, the guest
    not ready yet."""
    r.until(lambda: r.has_child(Path(r.qemu).name, f"tapmig-{r.pid}-"), "the source QEMU")
    assert not r.saw("source guest ready"), "the guest booted before the signal"


def probing(r: TapmigRun) -> None:
    """The 1 kHz prober runs; the migration has not started."""
    r.until(lambda: r.has_child("harness.probes.icmp"), "the prober")
    assert not r.saw("migrating"), "the migration began before the signal"


def migrating(r: TapmigRun) -> None:
    r.until(lambda: r.saw("migrating"), "the migrating line")


PHASES = {"startup": starting, "boot": booting, "probing": probing, "migration": migrating}


def gone(r: TapmigRun) -> None:
    """Nothing of the run is left: no resource named with its PID, no process it started.

    A child forked in the very instant of the signal, before Popen returned it, is
    unknown to tapmig's teardown; PR_SET_PDEATHSIG kills it as tapmig exits, so allow
    the kernel a moment for that."""
    assert reaper.leftovers(r.pid) == []
    deadline = time.monotonic() + 2
    while alive(r.kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(r.kids) == set()
    stray = [p.name for p in Path("/proc").glob("[0-9]*")
             if f"tapmig-{r.pid}-" in cmdline(int(p.name))]
    assert stray == [], f"processes still naming tapmig-{r.pid}-*: {stray}"


# Each phase once, each signal at two of them (and SIGINT again, to the whole process
# group, in the migration below): tapmig's SIGTERM handler raises the very
# KeyboardInterrupt that SIGINT raises (harness.cli.main._terminate), so what differs
# by signal is only whether its handler is in place, which the earliest phase
# (startup) checks for SIGTERM and Python's own handler guarantees for SIGINT.
SIGNAL_AT = [("startup", signal.SIGTERM), ("boot", signal.SIGINT),
             ("probing", signal.SIGTERM), ("migration", signal.SIGINT)]
assert {phase for phase, _ in SIGNAL_AT} == set(PHASES)


@pytest.mark.parametrize(("phase", "sig"), SIGNAL_AT,
                         ids=[f"{phase}-{sig.name}" for phase, sig in SIGNAL_AT])
@pytest.mark.kvm
@pytest.mark.qemu_independent
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_interrupt_cleans_up(start_run: Callable[..., TapmigRun], phase: str,
                             sig: signal.Signals) -> None:
    r = start_run()
    PHASES[phase](r)
    assert r.kids, "the run had started no process yet"
    t0 = time.monotonic()
    os.kill(r.pid, sig)
    code = r.finish(EXIT_WITHIN_S)
    took = time.monotonic() - t0
    print(f"interrupt {phase} {sig.name}: exit {code} after {took:.2f}s")
    assert code == 130, "\n".join(r.lines)
    assert INTERRUPTED in r.lines, "\n".join(r.lines)
    assert not r.saw("tapmig: error"), "\n".join(r.lines)
    gone(r)


@pytest.mark.kvm
@pytest.mark.qemu_independent
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_ctrl_c_to_the_process_group(start_run: Callable[..., TapmigRun]) -> None:
    """A terminal's Ctrl-C reaches every process of the foreground group at once: QEMU and
    the prober get SIGINT too and quit under tapmig's feet; its teardown must cope."""
    r = start_run(own_group=True)
    migrating(r)
    t0 = time.monotonic()
    os.killpg(r.pid, signal.SIGINT)
    code = r.finish(EXIT_WITHIN_S)
    print(f"interrupt migration SIGINT to the group: exit {code} after "
          f"{time.monotonic() - t0:.2f}s")
    assert code == 130, "\n".join(r.lines)
    assert INTERRUPTED in r.lines, "\n".join(r.lines)
    assert not r.saw("tapmig: error"), "\n".join(r.lines)
    gone(r)


@pytest.mark.kvm
@pytest.mark.qemu_independent
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_started_with_sigint_ignored_it_ignores_sigint_and_stops_on_sigterm(
        start_run: Callable[..., TapmigRun]) -> None:
    """A script's `tapmig run ... &` starts it with SIGINT ignored: not the user's to stop
    with Ctrl-C. tapmig keeps it ignored (Python does, and so does signals_deferred), so
    a SIGINT while the guest boots changes nothing and the run goes on to probe; SIGTERM
    still stops it, cleaned up, with 130."""
    r = start_run(sigint_ignored=True)
    booting(r)
    os.kill(r.pid, signal.SIGINT)
    probing(r)
    assert r.proc.poll() is None and INTERRUPTED not in r.lines, "\n".join(r.lines)
    os.kill(r.pid, signal.SIGTERM)
    code = r.finish(EXIT_WITHIN_S)
    assert code == 130, "\n".join(r.lines)
    assert INTERRUPTED in r.lines, "\n".join(r.lines)
    gone(r)


def in_capability_query(r: TapmigRun) -> None:
    """The QEMU that tapmig asks what it can do (the only one with no machine) runs, in
    its own temporary run dir."""
    r.until(lambda: r.has_child(Path(r.qemu).name, "-machine none"), "the capability query")


@pytest.mark.parametrize(("phase", "orphans"), [
    (in_capability_query, {"rundir"}),
    (probing, {"netns", "shm", "rundir"}),
], ids=["capability-query", "probing"])
@pytest.mark.kvm
@pytest.mark.qemu_independent
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_sigkill_leaves_orphans_that_the_next_run_reaps(
        start_run: Callable[..., TapmigRun], phase: Callable[[TapmigRun], None],
        orphans: set[str]) -> None:
    """Nothing runs after SIGKILL: QEMU and the prober die with tapmig (PR_SET_PDEATHSIG),
    and what it created stays until reap_orphans, which every run calls first, removes
    it because its owner PID is dead. That needs every name to carry the PID, the
    capability query's temporary dir too: a name without it is never reaped."""
    r = start_run()
    phase(r)
    r.kill()
    kinds = {entry.split()[0] for entry in reaper.leftovers(r.pid)}
    assert kinds == orphans
    deadline = time.monotonic() + 10
    while alive(r.kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(r.kids) == set()
    reaper.reap_orphans()
    gone(r)


SWALLOWED_AT_FORK = """
import os, signal, subprocess, sys, time
from harness.cli import main
signal.signal(signal.SIGTERM, main._terminate)  # as main.main() sets them up
sys.unraisablehook = main._redeliver
def interrupt() -> None:  # what a SIGINT or SIGTERM handled inside the callback does
    raise KeyboardInterrupt
os.register_at_fork(after_in_parent=interrupt)
try:
    subprocess.run(["true"], preexec_fn=lambda: None)
    time.sleep(20)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_interrupt_swallowed_in_an_at_fork_callback_is_delivered_again() -> None:
    """Python only prints what an at-fork callback raises; logging runs one around each
    fork with a preexec_fn, and tapmig forks like that for every QEMU and the prober.
    A signal landing there was lost (the run went on to exit 0); tapmig raises it again,
    promptly even when the main thread then blocks (here in a 20 s sleep): only an
    interrupt inside that sleep prints "interrupted", so no clock is needed."""
    res = subprocess.run([sys.executable, "-c", SWALLOWED_AT_FORK], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.stdout == "interrupted\n", res.stderr


@pytest.fixture
def sigint_at(request: pytest.FixtureRequest) -> Iterator[None]:
    """SIGINT's disposition for one test (the parameter: Python's KeyboardInterrupt, or
    ignored), whatever this pytest started with: a background job of a shell without job
    control starts with SIGINT ignored, a terminal's with Python's handler."""
    before = signal.signal(signal.SIGINT, request.param)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("sigint_at", [signal.default_int_handler], indirect=True,
                         ids=["interruptible"])
@pytest.mark.usefixtures("sigint_at")
def test_a_signal_while_a_resource_is_made_waits_until_its_removal_is_registered(
        tmp_path: Path) -> None:
    """The Lab creates its run dir, namespace and shm file inside signals_deferred. A
    SIGINT sent between creating the shm file and the stack registering its removal
    (here: before the file is even made) would leave the file behind on a loaded
    host; held until the block ends, it unwinds a stack that removes it. Under
    pytest-xdist the worker has other threads, which a process-directed signal may go
    to: it is held all the same."""
    registered = False
    usual = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), ExitStack() as stack:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            ram = stack.enter_context(ShmFile(1, tmp_path))
            registered = True
        pytest.fail("the SIGINT was not delivered when the block ended")
    assert registered
    assert not ram.exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == usual


@pytest.mark.parametrize("sigint_at", [signal.SIG_IGN], indirect=True, ids=["ignored"])
@pytest.mark.usefixtures("sigint_at")
def test_an_ignored_sigint_stays_ignored_while_a_resource_is_made(tmp_path: Path) -> None:
    """A process started with SIGINT ignored (`tapmig run ... &` in a script) keeps
    ignoring it, inside signals_deferred too: the block ends as usual, its resource is
    made and registered, and SIGINT is still ignored afterwards. SIGTERM is still held."""
    usual_term = signal.getsignal(signal.SIGTERM)
    with ExitStack() as stack:
        with signals_deferred():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not usual_term
            os.kill(os.getpid(), signal.SIGINT)
            ram = stack.enter_context(ShmFile(1, tmp_path))
        assert ram.exists()
    assert not ram.exists()
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


# Each a simple command of its own: bash gives the commands inside a backgrounded group
# their original dispositions back.
BACKGROUND_JOB = """
"$0" -c 'import signal; print("SIGINT", signal.getsignal(signal.SIGINT).name)' & wait $!
"$0" -m pytest -p no:cacheprovider -q -m "not kvm" -k "not background_job" "$1" & wait $!
"""


def test_these_tests_pass_started_as_a_background_job() -> None:
    """A shell without job control starts a background job with SIGINT ignored (POSIX),
    and so does whatever a script or a runner starts with `cmd &`: this module's tests
    that boot no guest pass started that way, as they do from a terminal. (The guest
    tests give the tapmig they interrupt the disposition each needs.)"""
    done = subprocess.run(["bash", "-c", BACKGROUND_JOB, sys.executable, __file__], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.stdout.startswith("SIGINT SIG_IGN\n"), done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^\d+ passed", done.stdout, re.M), done.stdout
