"""The orphan reaper: what a run killed outright (SIGKILL, OOM) left behind.

Every run-scoped resource is named tapmig-<pid>-..., so a later run removes only
those whose owner is dead, and never anyone else's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.host import netns
from harness.host.rundir import RUN_PARENT, SHM_DIR
from harness.proc import PREFIX, owner_pid, pid_alive


def leftovers(pid: int | None = None) -> list[str]:
    """tapmig resources on this machine (of one process, if pid is given): what a leak
    check looks at. Scoping by PID keeps parallel runs from blaming each other."""
    found = [("netns", n) for n in netns.list_ours()]
    found += [("shm", str(p)) for p in SHM_DIR.glob(f"{PREFIX}*")]
    found += [("rundir", str(p)) for p in RUN_PARENT.glob(f"{PREFIX}*") if p.is_dir()]
    return [f"{kind} {name}" for kind, name in found
            if pid is None or owner_pid(Path(name).name) == pid]


def reap_orphans() -> list[str]:
    """Remove what tapmig processes that no longer exist left behind."""
    reaped = netns.reap_orphans()
    for pattern, parent in ((f"{PREFIX}*", SHM_DIR), (f"{PREFIX}*", RUN_PARENT)):
        for path in parent.glob(pattern):
            pid = owner_pid(path.name)
            if pid is not None and not pid_alive(pid):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                reaped.append(str(path))
    return reaped
