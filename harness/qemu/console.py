"""A QEMU serial console over its UNIX socket, for harness.qemu.vm.

A reader thread keeps everything QEMU writes, so QEMU never blocks on a full socket
and a failure can show the console's tail; a wait looks for a regex in what came
since the last match.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable

LOG = logging.getLogger(__name__)


class Console:
    """The console of one QEMU; `fail` makes the error a wait raises, from its reason."""

    def __init__(self, name: str, fail: Callable[[str], Exception]) -> None:
        self.name = name
        self._fail = fail
        self._sock: socket.socket | None = None
        self._buf = ""
        self._cond = threading.Condition()  # reentrant: fail() may read text()
        self._pos = 0
        self._reader: threading.Thread | None = None

    def connect(self, path: str) -> None:
        """Connect (OSError if QEMU is not listening) and start reading."""
        self._sock = sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        self._reader = threading.Thread(target=self._read, args=(sock,), daemon=True,
                                        name=f"console-{self.name}")
        self._reader.start()

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""  # closed under us at teardown: the end of the console
            with self._cond:
                if not chunk:
                    self._cond.notify_all()
                    return
                self._buf += chunk.decode(errors="replace")
                self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return self._buf

    def wait(self, pattern: str, timeout: float, failure: str | None,
             alive: Callable[[], bool]) -> re.Match[str]:
        """The first match of `pattern` since the last match; raises if `failure` matches
        first, if `timeout` passes, or if QEMU exits (`alive` says) without it."""
        regex = re.compile(pattern)
        bad = re.compile(failure) if failure else None
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = self._buf[self._pos:]
                if bad and (m := bad.search(text)):
                    raise self._fail(f"console showed {m.group(0)!r} while waiting "
                                     f"for {pattern!r}")
                if m := regex.search(text):
                    self._pos += m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or not alive():
                    why = f"within {timeout:.0f}s" if left <= 0 else "before QEMU exited"
                    raise self._fail(f"console never showed {pattern!r} {why}; "
                                     f"{self._last_line()}")
                self._cond.wait(timeout=min(left, 0.2))

    def _last_line(self) -> str:
        """Where a guest that never got there stopped: the console's last line."""
        lines = self._buf.rstrip().splitlines()
        return f"its last line: {lines[-1].strip()[:160]!r}" if lines else "it printed nothing"

    def type(self, text: str) -> None:
        if self._sock is None:
            raise self._fail("console is not connected")
        self._sock.sendall(text.encode())

    def close(self) -> None:
        """Close the socket and join the reader; logged, not raised, if either balks."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError as exc:  # ENOTCONN once QEMU has gone: nothing is lost
                LOG.debug("%s: console socket: %s", self.name, exc)
            sock.close()
        if self._reader is not None:
            self._reader.join(timeout=2)
            if self._reader.is_alive():
                LOG.warning("%s: the console reader did not stop within 2s", self.name)
