"""One QEMU process: its QMP monitor, its serial console and its teardown.

The VM knows nothing of namespaces: the caller hands it a command prefix
(``nsenter --net=...``) and the full argument list. Every wait takes a
timeout, and every failure message carries QEMU's stderr and the console tail,
because "it timed out" alone never helps anyone debug a migration.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from qemu.qmp import ExecuteError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.errors import QEMUError, QMPCommandError
from harness.proc import die_with_parent, tail


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
        self.console_log = rundir / f"{name}-console.log"
        self.stderr_log = rundir / f"{name}-stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._qmp: QEMUMonitorProtocol | None = None
        self._console: socket.socket | None = None
        self._console_buf = ""
        self._console_cond = threading.Condition()
        self._console_pos = 0
        self._reader: threading.Thread | None = None
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

    def launch(self, timeout: float = 15.0) -> VM:
        with open(self.stderr_log, "wb") as err:
            self.proc = subprocess.Popen(
                self.command_line(),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        try:
            self._connect(timeout)
        except BaseException:
            # __exit__ never runs for a failed __enter__: reap QEMU here, after a
            # timeout or a Ctrl-C as much as after an error.
            self.shutdown()
            raise
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        return self

    def _connect(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not (self.qmp_path.exists() and self.console_path.exists()):
            if self.proc.poll() is not None:
                raise self._error(f"{self.name}: QEMU exited with status {self.proc.returncode} "
                              f"at start:\n{tail(self.stderr())}")
            if time.monotonic() > deadline:
                raise self._error(f"{self.name}: QMP socket did not appear within {timeout:.0f}s:\n"
                              f"{tail(self.stderr())}")
            time.sleep(0.01)
        self._qmp = QEMUMonitorProtocol(str(self.qmp_path), nickname=self.name)
        self._console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._qmp.connect()
            self._console.connect(str(self.console_path))
        except (QMPError, OSError) as exc:
            # QEMU creates its sockets before it parses -device and -kernel, so it can
            # exit in between: reap it first, for its exit status and stderr.
            self.shutdown()
            raise self._error(f"{self.name}: QEMU failed at start ({type(exc).__name__}: {exc}):\n"
                          f"{self.diagnostics()}") from exc
        self._qmp.settimeout(self.qmp_timeout)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def shutdown(self, timeout: float = 10.0) -> None:
        """quit, then wait, then SIGTERM, then SIGKILL: by PID, only our own process."""
        if os.getpid() != self._owner:
            return  # a forked child unwinding must not shut down its parent's QEMU
        told = False
        if self.proc is not None and self.proc.poll() is None and self._qmp is not None:
            try:
                self._qmp.cmd_obj({"execute": "quit"})
                told = True
            except Exception:  # teardown must go on to the signals below
                pass
        self._close_qmp()
        if self.proc is not None:
            # A QEMU that never got the quit (QMP broken, e.g. by a Ctrl-C mid-command)
            # is not going to exit on its own: no point waiting for it before SIGTERM.
            first = (None,) if told else ()
            for sig in (*first, signal.SIGTERM, signal.SIGKILL):
                if sig is not None and self.proc.poll() is None:
                    self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._console is not None:
            try:
                self._console.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._console.close()
            self._console = None
        if self._reader is not None:
            self._reader.join(timeout=2)
        for path in (self.qmp_path, self.console_path):
            path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, for fault tests that need QEMU to die mid-flight."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def _close_qmp(self) -> None:
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception:  # a dead peer or an interrupted loop
                pass
            self._qmp = None

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

    def console_text(self) -> str:
        with self._console_cond:
            return self._console_buf

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
        return QEMUError(message, side=self.name, argv=self.command_line(), exit_status=status,
                         stderr_tail=tail(self.stderr(), 8),
                         console_tail=tail(self.console_text(), 10))

    # -- QMP -----------------------------------------------------------------

    def cmd(self, command: str, args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Run a QMP command; a refusal raises QMPCommandError with QEMU's class and text."""
        if self._qmp is None:
            raise self._error(f"{self.name}: {command}: QMP is not connected\n{self.diagnostics()}")
        arguments = {**(args or {}), **kwargs}
        try:
            ret = self._qmp.cmd(command, **arguments)
        except ExecuteError as exc:
            desc = exc.error.error.desc
            raise QMPCommandError(self.name, command, exc.error_class, desc,
                                  self.command_line()) from exc
        except TimeoutError as exc:  # QEMU is alive but its monitor does not answer
            raise self._error(f"{self.name}: {command}: no QMP reply within {self.qmp_timeout:g}s "
                          f"(QEMU hung or stopped?)\n{self.diagnostics()}") from exc
        except (QMPError, OSError, EOFError) as exc:
            raise self._error(f"{self.name}: {command}: QMP failed ({type(exc).__name__}: {exc})\n"
                          f"{self.diagnostics()}") from exc
        self._drain_events()
        return ret

    def _drain_events(self, wait: float = 0.0) -> None:
        assert self._qmp is not None
        try:
            new = self._qmp.get_events(wait=wait) if wait else self._qmp.get_events()
        except TimeoutError:
            return
        self.events.extend(new)
        self._pending.extend(new)

    def wait_event(self, name: str, data: dict[str, Any] | None = None,
                   timeout: float = 60.0) -> dict[str, Any]:
        """The first unconsumed event that matches; earlier ones stay queued."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._pending):
                if ev.get("event") == name and all(
                        ev.get("data", {}).get(k) == v for k, v in (data or {}).items()):
                    return self._pending.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                what = f"{name} {data}" if data else name
                raise self._error(f"{self.name}: no {what} event within {timeout:.0f}s\n"
                              f"{self.diagnostics()}")
            if self._qmp is None:
                raise self._error(f"{self.name}: QMP is not connected\n{self.diagnostics()}")
            if not self.is_running():
                if self._drain_after_exit():
                    continue
                raise self._error(f"{self.name}: QEMU died while waiting for {name}\n"
                                  f"{self.diagnostics()}")
            try:
                self._drain_events(wait=min(left, 0.5))
            except (QMPError, OSError, EOFError) as exc:
                raise self._error(f"{self.name}: QMP connection lost waiting for {name}: {exc}\n"
                              f"{self.diagnostics()}") from exc

    def _drain_after_exit(self) -> bool:
        """Read what QEMU sent just before it exited (a MIGRATION failed, say); True if
        there was anything, so that a death is reported only after QEMU's last words."""
        before = len(self.events)
        try:
            self._drain_events(wait=0.1)
        except (QMPError, OSError, EOFError):
            return False
        return len(self.events) > before

    # -- console -------------------------------------------------------------

    def _read_console(self) -> None:
        assert self._console is not None
        while True:
            try:
                chunk = self._console.recv(65536)
            except OSError:
                chunk = b""
            with self._console_cond:
                if not chunk:
                    self._console_cond.notify_all()
                    return
                self._console_buf += chunk.decode(errors="replace")
                self._console_cond.notify_all()

    def wait_console(self, pattern: str, timeout: float = 30.0,
                     failure: str | None = None) -> re.Match[str]:
        """Wait for a regex in console output produced since the last match."""
        regex = re.compile(pattern)
        bad = re.compile(failure) if failure else None
        deadline = time.monotonic() + timeout
        with self._console_cond:
            while True:
                text = self._console_buf[self._console_pos:]
                if bad and (m := bad.search(text)):
                    raise self._error(f"{self.name}: console showed {m.group(0)!r} while waiting "
                                  f"for {pattern!r}\n{self.diagnostics()}")
                if m := regex.search(text):
                    self._console_pos += m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or not self.is_running():
                    why = f"within {timeout:.0f}s" if left <= 0 else "before QEMU exited"
                    raise self._error(f"{self.name}: console never showed {pattern!r} {why}\n"
                                  f"{self.diagnostics()}")
                self._console_cond.wait(timeout=min(left, 0.2))

    def type(self, text: str) -> None:
        if self._console is None:
            raise self._error(f"{self.name}: console is not connected")
        self._console.sendall(text.encode())

    def run_console(self, command: str, expect: str, timeout: float = 20.0,
                    failure: str | None = None) -> re.Match[str]:
        """Type a shell command into the guest and wait for its expected output."""
        self.type(command + "\n")
        return self.wait_console(expect, timeout=timeout, failure=failure)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None
