"""A process's TUN files, and whether two processes hold the same open file, as the kernel says.

`/proc/PID/fd` names each fd's file and `/proc/PID/fdinfo/FD` prints, for a TUN fd, the
TAP it is attached to (`iff:`). Whether an fd of one process and an fd of another are the
very same open file description is what kcmp(2)'s KCMP_FILE answers, as CRIU uses it to
find files shared between the processes it dumps. Both need root or ptrace access to the
processes, which tapmig has over the QEMUs it starts.

Stdlib only.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from harness.errors import HostError

TUN_DEVICE = "/dev/net/tun"
SYS_KCMP = 312  # x86_64 (arch/x86/entry/syscalls/syscall_64.tbl)
KCMP_FILE = 0


@dataclass(frozen=True)
class TunFile:
    """One TUN fd of a process, and the TAP it is attached to (None: detached)."""

    fd: int
    tap: str | None


def fd_targets(pid: int | str) -> dict[int, str]:
    """fd number -> what it points at; an fd closed between listdir and readlink is skipped."""
    base = Path(f"/proc/{pid}/fd")
    out = {}
    for name in os.listdir(base):
        try:
            out[int(name)] = os.readlink(base / name)
        except OSError:
            continue
    return out


def tun_iff(pid: int | str, fd: int) -> str | None:
    """The TAP a TUN fd is attached to (None if detached, or the fd is gone)."""
    try:
        text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "iff":
            return value.strip()
    return None


def tun_files(pid: int | str) -> list[TunFile]:
    """Every TUN fd of the process, in fd order, with its TAP."""
    return [TunFile(fd, tun_iff(pid, fd)) for fd, target in sorted(fd_targets(pid).items())
            if target == TUN_DEVICE]


@functools.cache
def _syscall() -> Callable[..., int]:
    fn = ctypes.CDLL(None, use_errno=True).syscall
    fn.restype = ctypes.c_long
    return cast(Callable[..., int], fn)


def same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """Whether fd1 of pid1 and fd2 of pid2 are one open file description (kcmp KCMP_FILE).

    A HostError where the kernel cannot answer (no kcmp, no ptrace access to a process)."""
    # Every argument as a full long: syscall(2) reads each register whole.
    ret = _syscall()(*(ctypes.c_long(v) for v in (SYS_KCMP, pid1, pid2, KCMP_FILE, fd1, fd2)))
    if ret == 0:
        return True
    if ret in (1, 2):  # ordered, not equal
        return False
    err = ctypes.get_errno()
    raise HostError(f"kcmp(KCMP_FILE) on pids {pid1}/{pid2} fds {fd1}/{fd2} failed: "
                    f"{errno.errorcode.get(err, err)} {os.strerror(err)}; tapmig needs "
                    "root (or CAP_SYS_PTRACE) and a kernel with CONFIG_KCMP")
