"""One QEMU process: its QMP monitor, its serial console and its teardown.

The lifecycle is that of QEMUMachine (QEMU's python/qemu/machine): launch() is
_pre_launch (what the process needs before it starts: its command line, its monitor),
the start, and _post_launch (monitor and console connected); shutdown() is soft (`quit`
over QMP), then hard (SIGTERM, then SIGKILL), then _post_shutdown (all that was set up,
torn down). `shutdown_how` says which way QEMU went, and this module's logger says it too.

The VM knows nothing of namespaces: the caller hands it a command prefix (``nsenter
--net=...``) and the full argument list. Every wait takes a timeout, and every failure
carries QEMU's command line, stderr and console tail: "it timed out" alone never helps.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from qemu.qmp import ExecInterruptedError, ExecuteError, QMPError

from harness.errors import InternalError, QEMUError, QMPCommandError
from harness.proc import die_with_parent, tail
from harness.qemu.console import Console
from harness.qemu.monitor import Event, Monitor
from harness.vocabulary import ShutdownHow

LOG = logging.getLogger(__name__)
# What a QMP session can fail with: qemu.qmp's errors, and those of the socket under it.
SESSION_ERRORS = (QMPError, OSError, EOFError)


def event_matches(event: Any, match: Any) -> bool:
    """Whether `match` is a sub-dict of `event`, recursively; None matches any value.
    E.g. {"data": {"status": "completed"}} matches that MIGRATION event."""
    if match is None:
        return True
    if isinstance(match, Mapping):
        return isinstance(event, Mapping) and all(
            key in event and event_matches(event[key], want) for key, want in match.items())
    return bool(event == match)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# "-msg timestamp=on" puts an ISO time before the program's name, as in
# "2026-12-07T07:41:02.123456Z qemu-system-x86_64: error while loading state ...".
STDERR_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\dT[\d:.]+Z )?(?:\S*qemu-system-\S+?: )?"
                         r"(?P<text>.*\S)?\s*$")


def logs_of(rundir: Path, name: str) -> tuple[Path, Path]:
    """The console log and the stderr log of the VM called `name`, which outlive it."""
    return rundir / f"{name}-console.log", rundir / f"{name}-stderr.log"


class VM:
    """A QEMU process under QMP control; a context manager that always reaps it."""

    def __init__(
        self,
        name: str,
        binary: str,
        args: Sequence[str],
        rundir: Path,
        prefix: Sequence[str] = (),
        qmp_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.binary = binary
        self.args = list(args)
        self.rundir = rundir
        self.prefix = list(prefix)
        self.qmp_timeout = qmp_timeout
        self.qmp_path = rundir / f"{name}.qmp"
        self.console_path = rundir / f"{name}.console"
        self.console_log, self.stderr_log = logs_of(rundir, name)
        self.proc: subprocess.Popen[bytes] | None = None
        self.shutdown_how: ShutdownHow | None = None  # set by shutdown() or kill()
        self._argv: tuple[str, ...] = ()
        self._monitor: Monitor | None = None
        self._console = Console(name, self._console_error)
        self._launched = self._torn_down = False
        self._owner = os.getpid()

    # -- lifecycle -----------------------------------------------------------

    def command_line(self) -> list[str]:
        return [
            *self.prefix,
            self.binary,
            "-chardev", f"socket,id=qmp,path={self.qmp_path},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
            "-chardev",
            f"socket,id=con,path={self.console_path},server=on,wait=off,logfile={self.console_log}",
            "-serial", "chardev:con",
            *self.args,
        ]

    @property
    def argv(self) -> tuple[str, ...]:
        """The command line QEMU was started with (or will be, before launch)."""
        return self._argv or tuple(self.command_line())

    def launch(self, timeout: float = 15.0) -> VM:
        if self._launched:
            raise InternalError(f"VM {self.name!r} is launched at most once")
        self._launched = True
        try:
            monitor = self._pre_launch()
            with open(self.stderr_log, "wb") as err:
                self.proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=err,
                                             stderr=subprocess.STDOUT,
                                             preexec_fn=die_with_parent)
            self._post_launch(self.proc, monitor, timeout)
        except BaseException:
            # __exit__ never runs for a failed __enter__: reap QEMU here, after a
            # timeout or a Ctrl-C as much as after an error.
            self.shutdown()
            raise
        return self

    def _pre_launch(self) -> Monitor:
        """What QEMU needs before it starts: no stale socket file that would pass for
        its own, the command line fixed (errors carry it), a monitor to connect."""
        for path in (self.qmp_path, self.console_path):
            path.unlink(missing_ok=True)
        self._argv = tuple(self.command_line())
        LOG.debug("%s: starting %s", self.name, shlex.join(self._argv))
        self._monitor = Monitor(self.name, self.qmp_timeout)
        return self._monitor

    def _post_launch(self, proc: subprocess.Popen[bytes], monitor: Monitor,
                     timeout: float) -> None:
        """QEMU is up: its monitor connected, its console connected and read."""
        deadline = time.monotonic() + timeout
        while not (self.qmp_path.exists() and self.console_path.exists()):
            if proc.poll() is not None:
                raise self._error(f"{self.name}: QEMU exited with status {proc.returncode} "
                                  f"at start:\n{tail(self.stderr())}")
            if time.monotonic() > deadline:
                raise self._error(f"{self.name}: QMP socket did not appear within "
                                  f"{timeout:.0f}s:\n{tail(self.stderr())}")
            time.sleep(0.01)
        try:
            monitor.connect(str(self.qmp_path))
            self._console.connect(str(self.console_path))
        except (*SESSION_ERRORS, TimeoutError) as exc:
            # QEMU creates its sockets before it parses -device and -kernel, so it can
            # exit in between: reap it first, for its exit status and stderr.
            self.shutdown()
            raise self._error(f"{self.name}: QEMU failed at start ({_why(exc)}):\n"
                              f"{self.diagnostics()}") from exc

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def shutdown(self, timeout: float = 10.0) -> None:
        """Soft, then hard: `quit`, then SIGTERM, then SIGKILL, each given `timeout` to
        take effect, by PID, only our own process; then _post_shutdown. Once only."""
        if os.getpid() != self._owner:
            return  # a forked child unwinding must not shut down its parent's QEMU
        if not self._launched or self._torn_down:
            return
        try:
            if self.proc is not None and self.shutdown_how is None:
                self.shutdown_how = self._stop(self.proc, timeout)
                self._log_stopped(self.proc)
        finally:
            self._post_shutdown()

    def _stop(self, proc: subprocess.Popen[bytes], timeout: float) -> ShutdownHow:
        if proc.poll() is not None:
            return "exited"
        quit_sent = self._soft_shutdown(proc, timeout)
        if proc.poll() is not None:
            return "quit" if quit_sent else "exited"
        return self._hard_shutdown(proc, timeout)

    def _soft_shutdown(self, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        """`quit` over QMP and up to `timeout` for QEMU to exit; False at once if the
        monitor cannot take it: a QEMU that never got the quit (QMP broken, e.g. by a
        Ctrl-C mid-command) will not exit on its own, so there is no point waiting."""
        if self._monitor is None or not self._monitor.connected:
            LOG.warning("%s: no QMP connection to send quit over; QEMU gets SIGTERM", self.name)
            return False
        try:
            self._monitor.execute("quit", timeout=timeout)
        except ExecInterruptedError:  # QEMU hung up as it quit, before its reply got out
            LOG.debug("%s: quit sent; QEMU closed QMP before replying", self.name)
        except (*SESSION_ERRORS, TimeoutError) as exc:
            LOG.warning("%s: quit over QMP failed (%s); QEMU gets SIGTERM", self.name, _why(exc))
            return False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            LOG.warning("%s: QEMU took quit but had not exited %gs later; it gets SIGTERM",
                        self.name, timeout)
        return True

    def _hard_shutdown(self, proc: subprocess.Popen[bytes], timeout: float) -> ShutdownHow:
        how: ShutdownHow
        for sig, how in ((signal.SIGTERM, "sigterm"), (signal.SIGKILL, "sigkill")):
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
                return how
            except subprocess.TimeoutExpired:
                continue
        LOG.error("%s: QEMU (pid %d) survived SIGKILL for %gs (stuck in the kernel?)",
                  self.name, proc.pid, timeout)
        return "sigkill"

    def _log_stopped(self, proc: subprocess.Popen[bytes]) -> None:
        """How QEMU went; a warning when it took a signal, or died of one no one here sent."""
        status = proc.returncode
        by_signal = status is not None and status < 0
        worrying = self.shutdown_how in ("sigterm", "sigkill") or (
            self.shutdown_how == "exited" and by_signal)
        LOG.log(logging.WARNING if worrying else logging.INFO,
                "%s: QEMU (pid %d) stopped: %s, exit status %s%s", self.name, proc.pid,
                self.shutdown_how, status,
                f"; command: {shlex.join(self.argv)}" if worrying else "")

    def kill(self) -> None:
        """SIGKILL now, for fault tests that need QEMU to die mid-flight. The monitor and
        console stay, so what follows meets a dead QEMU as after a crash; shutdown()
        tears down."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.shutdown_how = "sigkill"
            LOG.info("%s: QEMU (pid %d) killed with SIGKILL", self.name, self.proc.pid)

    def _post_shutdown(self) -> None:
        """After QEMU exited, or a launch failed: the monitor and console closed, the
        console reader joined, the socket files gone. Failures are logged, not raised:
        teardown goes on."""
        self._torn_down = True
        try:
            self._close_monitor()
        finally:  # a Ctrl-C in the close still leaves no console reader or socket file
            self._console.close()
            for path in (self.qmp_path, self.console_path):
                path.unlink(missing_ok=True)

    def _close_monitor(self) -> None:
        if self._monitor is None:
            return
        try:
            self._monitor.close()
        except Exception as exc:  # whatever ended the session: it is judged below
            # EOF from a QEMU that has exited is how a session ends (QEMUMachine expects
            # it after quit too): debug. Anything else, or a QEMU still there: a warning.
            hung_up = isinstance(exc, (EOFError, ConnectionResetError))
            LOG.log(logging.DEBUG if hung_up and not self.is_running() else logging.WARNING,
                    "%s: closing QMP: %s", self.name, _why(exc))

    def __enter__(self) -> VM:
        return self.launch()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    # -- diagnostics ---------------------------------------------------------

    def stderr(self) -> str:
        try:
            return self.stderr_log.read_text(errors="replace")
        except OSError:
            return ""

    def stderr_lines(self, since: int = 0) -> list[str]:
        """QEMU's own words from character `since` of its stderr on, one per line, without
        the timestamp and program name that prefix each."""
        return [m["text"] for line in self.stderr()[since:].splitlines()
                if (m := STDERR_LINE.match(line)) and m["text"]]

    def console_text(self) -> str:
        return self._console.text()

    def diagnostics(self) -> str:
        """What a failure message should show about this VM."""
        state = "running" if self.is_running() else (
            f"exited with status {self.proc.returncode}" if self.proc else "not started")
        parts = [f"[{self.name}: QEMU {state}]"]
        if err := tail(self.stderr(), 8):
            parts.append(f"stderr:\n{err}")
        if con := tail(self.console_text(), 10):
            parts.append(f"console tail:\n{con}")
        return "\n".join(parts)

    def _error(self, message: str) -> QEMUError:
        """A QEMUError that carries this VM's side, command line, exit status and tails."""
        status = self.proc.returncode if self.proc is not None else None
        return QEMUError(message, side=self.name, argv=self.argv, exit_status=status,
                         stderr_tail=tail(self.stderr(), 8),
                         console_tail=tail(self.console_text(), 10))

    # -- QMP -----------------------------------------------------------------

    def cmd(self, command: str, args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Run a QMP command; a refusal raises QMPCommandError with QEMU's class and text."""
        monitor = self._monitor
        if monitor is None or not monitor.connected:
            raise self._error(f"{self.name}: {command}: QMP is not connected\n{self.diagnostics()}")
        try:
            return monitor.execute(command, {**(args or {}), **kwargs})
        except ExecuteError as exc:
            raise QMPCommandError(self.name, command, exc.error_class, exc.error.error.desc,
                                  self.argv) from exc
        except TimeoutError as exc:  # QEMU is alive but its monitor does not answer
            raise self._error(f"{self.name}: {command}: no QMP reply within {self.qmp_timeout:g}s "
                              f"(QEMU hung or stopped?)\n{self.diagnostics()}") from exc
        except SESSION_ERRORS as exc:
            raise self._error(f"{self.name}: {command}: QMP failed ({_why(exc)})\n"
                              f"{self.diagnostics()}") from exc

    @property
    def events(self) -> list[Event]:
        """Every event QEMU sent, in order, returned by a wait or not; kept after shutdown."""
        return self._monitor.history() if self._monitor is not None else []

    def wait_event(self, name: str, timeout: float = 60.0,
                   match: dict[str, Any] | None = None) -> Event:
        """The first event `name` that matches `match` (see event_matches) and that no
        earlier wait returned. Events from before this wait count (the scenario waits for
        the source's STOP after the target's RESUME); those it passes over stay."""
        monitor = self._monitor
        if monitor is None:
            raise self._error(f"{self.name}: QMP is not connected\n{self.diagnostics()}")
        deadline = time.monotonic() + timeout
        while (ev := monitor.take(
                lambda e: e.get("event") == name and event_matches(e, match))) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                what = f"{name} {match}" if match else name
                raise self._error(f"{self.name}: no {what} event within {timeout:.0f}s\n"
                                  f"{self.diagnostics()}")
            self._await_event(monitor, name, left)
        return ev

    def _await_event(self, monitor: Monitor, name: str, left: float) -> None:
        """Until QEMU sends an event, or half a second; raises if none can come."""
        if not self.is_running():
            # Read what QEMU sent just before it exited (a MIGRATION failed, say), so
            # that a death is reported only after QEMU's last words.
            if monitor.drain(0.1):
                return
            raise self._error(f"{self.name}: QEMU died while waiting for {name}\n"
                              f"{self.diagnostics()}")
        if not monitor.connected:
            raise self._error(f"{self.name}: QMP connection lost waiting for {name}\n"
                              f"{self.diagnostics()}")
        try:
            monitor.await_event(min(left, 0.5))
        except SESSION_ERRORS as exc:
            raise self._error(f"{self.name}: QMP connection lost waiting for {name}: "
                              f"{_why(exc)}\n{self.diagnostics()}") from exc

    # -- console -------------------------------------------------------------

    def _console_error(self, why: str) -> QEMUError:
        return self._error(f"{self.name}: {why}\n{self.diagnostics()}")

    def wait_console(self, pattern: str, timeout: float = 30.0,
                     failure: str | None = None) -> re.Match[str]:
        """Wait for a regex in console output produced since the last match."""
        return self._console.wait(pattern, timeout, failure, alive=self.is_running)

    def type(self, text: str) -> None:
        self._console.type(text)

    def run_console(self, command: str, expect: str, timeout: float = 20.0,
                    failure: str | None = None) -> re.Match[str]:
        """Type a shell command into the guest and wait for its expected output."""
        self.type(command + "\n")
        return self.wait_console(expect, timeout=timeout, failure=failure)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running_pid(self) -> int:
        """The PID of a QEMU that must still run (its files are read from /proc)."""
        if self.proc is None or self.proc.poll() is not None:
            raise self._error(f"{self.name}: QEMU is not running while its files are read:\n"
                              f"{self.diagnostics()}")
        return self.proc.pid
