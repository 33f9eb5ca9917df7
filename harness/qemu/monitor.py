"""A synchronous QMP session: qemu.qmp's QMPClient on an event loop of its own, and every
event QEMU sends heard by qemu.qmp's EventListener.

The loop runs only inside a call (a command, a wait), as in qemu.qmp's legacy shim; an
event QEMU sends in between waits in the socket and is read at the next call, with
QEMU's own timestamp. The listener's history is the record of every event; take()
returns the first event in it that matches and that no earlier take() returned, so an
event that came before a wait is seen, and one a wait passed over stays for a later one.

qemu.qmp logs a named client to logging.getLogger("qemu.qmp.protocol.<name>"), which
logging's manager keeps for the life of the process: one logger per VM, and a chain
names every target anew (target-N). So the client is unnamed, and its logger is an
_Unlisted one of the same name that the manager does not keep: it goes with the Monitor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from qemu.qmp import EventListener, QMPClient, Runstate

T = TypeVar("T")
Event = dict[str, Any]
# The logger qemu.qmp gives a named connection the child of; see _Unlisted.
QMP_LOGGER = "qemu.qmp.protocol"


class _Unlisted(logging.Logger):
    """A child of `parent` by name and by propagation, but not in logging's manager, so
    that it is freed with its client. Its level, handlers and disabling come through
    `parent` as a listed child's would; what is enabled is not cached, because the
    manager clears the caches of only the loggers it keeps."""

    def __init__(self, parent: logging.Logger, name: str) -> None:
        super().__init__(f"{parent.name}.{name}")
        self.parent = parent

    def isEnabledFor(self, level: int) -> bool:
        if self.disabled or self.manager.disable >= level:
            return False
        return level >= self.getEffectiveLevel()


class Monitor:
    """One QMP connection; close() it, even after a failed connect, to free its loop."""

    def __init__(self, nickname: str, timeout: float) -> None:
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient()
        self._client.logger = _Unlisted(logging.getLogger(QMP_LOGGER), nickname)
        # The client's default listener hears every event; nothing else reads its queue.
        self._listener: EventListener = self._client.events
        self._next = 0  # every event before this index in the history has been taken
        self._taken: set[int] = set()  # taken events at or after _next

    def _sync(self, aw: Awaitable[T], timeout: float | None) -> T:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(aw, timeout))
        except (KeyboardInterrupt, SystemExit):
            # A Ctrl-C or SIGTERM can land after the call's result came and before the loop
            # ran the callback that stops it. Run that callback now, one turn of the loop,
            # so that it does not stop the next call (the teardown's `quit`) mid-way.
            if not self._loop.is_closed():
                self._loop.stop()
                self._loop.run_forever()
            raise

    def connect(self, path: str) -> None:
        """Connect and negotiate; ConnectError (a QMPError) or TimeoutError if QEMU does not."""
        self._sync(self._client.connect(path), self.timeout)

    @property
    def connected(self) -> bool:
        return not self._loop.is_closed() and self._client.runstate == Runstate.RUNNING

    def execute(self, command: str, args: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """QEMU's return value; ExecuteError when QEMU refuses, TimeoutError when it does
        not answer within `timeout` (default: the monitor's)."""
        try:
            return self._sync(self._client.execute(command, args), timeout or self.timeout)
        finally:
            self._listener.clear()  # the history holds them; the queue is only a wake-up

    def history(self) -> list[Event]:
        """Every event received so far, in order, taken or not."""
        return [dict(ev) for ev in self._listener.history]

    def take(self, match: Callable[[Event], bool]) -> Event | None:
        """The first event not taken yet that matches, now taken; None if there is none."""
        history = self._listener.history
        for i in range(self._next, len(history)):
            event = dict(history[i])
            if i not in self._taken and match(event):
                self._taken.add(i)
                while self._next in self._taken:
                    self._taken.remove(self._next)
                    self._next += 1
                return event
        return None

    def await_event(self, timeout: float) -> bool:
        """Run the loop until QEMU sends an event or `timeout` passes; True if one came."""
        try:
            self._sync(self._listener.get(), timeout)
        except TimeoutError:
            return False
        finally:
            self._listener.clear()
        return True

    def drain(self, seconds: float) -> bool:
        """Let the loop read what is in the socket for a moment (QEMU's last events before
        it exited); True if any event came in."""
        if self._loop.is_closed():
            return False
        before = len(self._listener.history)
        self._sync(asyncio.sleep(seconds), None)
        return len(self._listener.history) > before

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect and close the loop, whatever happens; then raise what ended the session
        (EOFError when QEMU hung up, as it does after `quit`), for the caller to judge."""
        if self._loop.is_closed():
            return
        try:
            self._sync(self._client.disconnect(), timeout)
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        """Cancel what an interrupted call left pending (a Ctrl-C mid-command), then close."""
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()
