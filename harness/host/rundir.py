"""Run-scoped files: the private 0700 runtime directory and the shared RAM file.

Both are named tapmig-<pid>-..., so a later run can reap what a run that was
killed outright (SIGKILL, OOM) left behind, without touching anyone else's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from harness.errors import HostError
from harness.proc import PREFIX, unique_name

SHM_DIR = Path("/dev/shm")
RUN_PARENT = Path(tempfile.gettempdir())


class RunDir:
    """A private directory for sockets and logs, removed on exit."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-",
                                          dir=RUN_PARENT))
        os.chmod(self.path, 0o700)
        self._owner = os.getpid()

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if os.getpid() == self._owner:  # not in a forked child that is unwinding
            shutil.rmtree(self.path, ignore_errors=True)


class ShmFile:
    """Guest RAM in /dev/shm, shared by source and target (x-ignore-shared).

    Created sparse with ftruncate, never by writing zeros: a 1 GiB file then
    costs nothing until the guest touches its pages.
    """

    def __init__(self, size_mib: int, directory: Path = SHM_DIR) -> None:
        self.size = size_mib * 1024 * 1024
        self.path = directory / f"{unique_name()}.ram"
        self._owner = os.getpid()

    def __enter__(self) -> Path:
        st = os.statvfs(self.path.parent)
        free = st.f_bavail * st.f_frsize
        if free < self.size:
            raise HostError(f"{self.path.parent} has {free // 2**20} MiB free but the guest "
                              f"needs {self.size // 2**20} MiB; free some space or use a "
                              "smaller --ram")
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, self.size)
        finally:
            os.close(fd)
        return self.path

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if os.getpid() == self._owner:  # not in a forked child that is unwinding
            self.path.unlink(missing_ok=True)
