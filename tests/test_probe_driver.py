"""The host's side of the probers (harness.probes.driver): a prober that ended on its own
is a ProbeFailed with its status and last line, never a log read as a measurement."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.errors import ProbeFailed
from harness.probes.driver import Pinger, last_line


def test_a_prober_that_died_on_its_own_is_probe_failed(tmp_path: Path) -> None:
    # 0.1 ms is below the prober's bound, so it exits at once with argparse's status 2;
    # no root needed since it dies before opening its raw socket.
    with Pinger("127.0.0.1", tmp_path / "ping.log", interval=0.0001) as pinger:
        assert pinger.proc is not None
        deadline = time.monotonic() + 30
        while pinger.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ProbeFailed) as failed:
            pinger.stop()
    assert (failed.value.probe, failed.value.status, failed.value.early) == ("ping", 2, True)
    assert "interval must be between" in failed.value.last_line  # the prober's own reason
    log = (tmp_path / "ping.log").read_text()
    assert failed.value.last_line == log.strip().splitlines()[-1]


@pytest.mark.parametrize(("log", "line"), [("", ""), ("\n\n", ""), ("a\nb\n", "b"),
                                           ("only", "only")])
def test_last_line(log: str, line: str) -> None:
    assert last_line(log) == line
