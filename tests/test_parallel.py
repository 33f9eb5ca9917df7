"""Two `tapmig run`s at the same time on one host: both succeed, neither sees the other.

Every resource is named tapmig-<pid>-<token>, so two runs must get disjoint
namespaces, RAM files and run dirs, and the 192.168.100.0/24 each uses lives
in its own namespace. Under TCG on a small host the two slow each other down,
so this asserts success and isolation, never timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.host import reaper
from harness.vocabulary import AccelChoice
from tests.support import REPO

pytestmark = [pytest.mark.kvm, pytest.mark.usefixtures("tapmig_root_with_tun")]

DEADLINE_S = 300.0
# Two TCG guests on two cores stall each other around the switchover: a run's own
# check that the outage hugs [STOP, RESUME] (150 ms slack) was seen to miss by 7 ms.
# Timing is not what this test is about, so give that check a second of slack.
RELAXED_MS = "1000"


def test_two_runs_at_once(tapmig_qemu: str, tapmig_accel: AccelChoice, tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            out = tmp_path / f"run{i}"
            out.mkdir()
            with open(out / "stderr.txt", "wb") as err:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "harness.cli.main", "run", "--qemu", tapmig_qemu,
                     "--accel", tapmig_accel, "--out", str(out), "--epsilon-ms", RELAXED_MS],
                    cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err))
        seen: dict[int, set[str]] = {p.pid: set() for p in procs}
        deadline = time.monotonic() + DEADLINE_S
        while any(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, f"runs still going after {DEADLINE_S:.0f}s"
            for p in procs:
                seen[p.pid] |= set(reaper.leftovers(p.pid))
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        reaper.reap_orphans()

    for i, p in enumerate(procs):
        out = tmp_path / f"run{i}"
        stderr = (out / "stderr.txt").read_text(errors="replace")
        assert p.returncode == 0, stderr
        assert json.loads((out / "record.json").read_text())["status"] == "ok"
        # Each had its own namespace, RAM file and run dir, and removed them all.
        kinds = {entry.split()[0] for entry in seen[p.pid]}
        assert kinds == {"netns", "shm", "rundir"}, seen[p.pid]
        assert reaper.leftovers(p.pid) == []
    first, second = (seen[p.pid] for p in procs)
    assert first.isdisjoint(second)
