"""Processes tapmig owns: how children die with it, and how its resources carry its PID.

Every namespace, shm file and run directory is named tapmig-<pid>-<token>, so that
a later run can reap what a killed run left behind without touching anyone else's.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

PREFIX = "tapmig-"
PR_SET_PDEATHSIG = 1
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value
# What a user or a CI runner sends to stop a run; both end as KeyboardInterrupt.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def die_with_parent() -> None:
    """preexec_fn: a child we start dies if tapmig is killed outright."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def fix_mmap_threshold() -> None:
    """Keep glibc's mmap threshold where it starts, so that every block of 128 KiB or more
    is mapped on its own and gone from RSS once freed.

    glibc raises the threshold to the size of each mapped block freed (up to 32 MiB),
    and a block under it comes from the heap. Over a chain, a hop's large passing
    blocks (probe logs, records) then land in the heap between blocks that live on,
    and tapmig's RSS grows by the free pages the heap cannot give back, a few KiB a
    hop. Setting the threshold turns that adjustment off. Nothing where the libc has
    no mallopt."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def owner_pid(name: str) -> int | None:
    """The PID encoded in a tapmig resource name (tapmig-<pid>-<token>), if any."""
    if not name.startswith(PREFIX):
        return None
    pid = name[len(PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def unique_name(kind: str = "") -> str:
    return f"{PREFIX}{os.getpid()}-{kind}{secrets.token_hex(3)}"


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then take them as usual.

    Creating a resource and registering its removal must happen as one step: a Ctrl-C
    in between (after the file exists, before the ExitStack knows of it) would leave
    it behind. Inside the block a stop signal is only noted; when it ends, the usual
    handlers are back and the first signal noted is raised again for them. A handler,
    not a signal mask: a process-directed signal goes to any thread that does not block
    it, and Python then runs the handler in the main thread all the same. Off the main
    thread nothing is held, as no handler runs there. A signal the process ignores
    (SIGINT, in a background job of a shell without job control) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    owner = os.getpid()

    def note(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a child forked inside (pyroute2's) is stopped as usual
            os._exit(128 + signum)
        noted.append(signum)

    held = [signum for signum in STOP_SIGNALS if signal.getsignal(signum) != signal.SIG_IGN]
    usual = {signum: signal.signal(signum, note) for signum in held}
    try:
        yield
    finally:
        for signum, handler in usual.items():
            signal.signal(signum, handler)
        if noted:
            signal.raise_signal(noted[0])
