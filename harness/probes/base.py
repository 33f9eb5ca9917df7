"""What the prober programs share, written once: kernel receive times, the fixed
schedule and the loop that keeps it, SCHED_FIFO, the timestamped line, and stopping
on SIGINT or SIGTERM.

Stdlib only, like the probers that import it: they start in a bare interpreter
inside a namespace (tests/test_architecture.py proves it).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType

# Linux's values, for a Python whose socket module lacks the names.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = getattr(socket, "SCM_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("qq")  # struct timespec: seconds, nanoseconds
TIMESTAMP_SPACE = socket.CMSG_SPACE(TIMESPEC.size)  # recvmsg's room for one timestamp
FIFO_PRIORITY = 10


def kernel_timestamps(sock: socket.socket) -> None:
    """Have the kernel stamp each datagram on arrival (SO_TIMESTAMPNS): the prober's
    own wake-up latency then does not blur the edges it measures."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def kernel_time(ancillary: Iterable[tuple[int, int, bytes]], default: float) -> float:
    """The receive time in recvmsg's ancillary data, or default if it holds none."""
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
            sec, nsec = TIMESPEC.unpack(raw[:TIMESPEC.size])
            return float(sec + nsec / 1e9)
    return default


def realtime() -> None:
    """SCHED_FIFO: the guests under test are busy TCG threads on few cores, and a 1 kHz
    prober that waits behind them samples the outage coarsely. It needs microseconds
    of CPU, on time. Unprivileged, it keeps the normal policy; resolution_ms shows the
    cost."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))
    except OSError:
        pass


def emit(line: str) -> None:
    """One line of output; the prober flushes once per loop, not per line."""
    sys.stdout.write(line + "\n")


def emit_at(ts: float, text: str) -> None:
    """An event line as `ping -D` writes it: the wall-clock time, then the event."""
    emit(f"[{ts:.6f}] {text}")


def emit_now(text: str) -> None:
    emit_at(time.time(), text)


def readable(socks: Sequence[socket.socket], timeout: float,
             writing: Sequence[socket.socket] = ()) -> list[socket.socket]:
    """The sockets of socks with data, after waiting at most timeout for one (or for
    one of writing to take data)."""
    try:
        ready, _, _ = select.select(socks, writing, [], timeout)
    except InterruptedError:
        return []
    return ready


class Schedule:
    """Slots every interval on the monotonic clock, from start (default: now).

    A prober descheduled past a slot takes it late and never bursts to make up the
    slots it missed: the next slot is a whole interval after the late one, or, with
    catch_up, at once (one extra send, then the schedule again).
    """

    def __init__(self, interval: float, start: float | None = None,
                 catch_up: bool = False) -> None:
        self.interval, self.catch_up = interval, catch_up
        self.next = time.monotonic() if start is None else start

    def due(self) -> bool:
        """Whether a slot has come; if so, it is taken and the next one set."""
        now = time.monotonic()
        if now < self.next:
            return False
        self.next += self.interval
        if self.next < now:
            self.next = now if self.catch_up else now + self.interval
        return True

    def wait(self) -> float:
        """Seconds until the next slot, 0 if it has come."""
        return max(0.0, self.next - time.monotonic())


class Program:
    """A prober's frame: the stop flag that SIGINT and SIGTERM set, and the paced loop
    that honours it. A signal ends the loop, not the process, so that the prober
    still drains and prints its summary."""

    stopping: bool = False

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def stop_on_signals(self) -> None:
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)

    def paced(self, schedule: Schedule, send: Callable[[], None],
              poll: Callable[[float], None], more: Callable[[], bool] = lambda: True) -> None:
        """send() once per slot, poll(seconds to the next slot) in between, until
        stopped or more() is false."""
        while not self.stopping and more():
            if schedule.due():
                send()
            poll(schedule.wait())
