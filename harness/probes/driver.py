"""The host's side of the probers: start one inside the namespace, stop it, keep its log.

iputils ping is checked for (busybox ping has no -D timestamps); tapmig's own
probers run as `python -m harness.probes.<name>` with this clone on PYTHONPATH,
and are stopped with SIGINT so that each prints its summary.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from harness.errors import HostError, ProbeFailed
from harness.proc import die_with_parent
from harness.vocabulary import Prober, TcpPattern, as_prober

# About 1 kHz: fine enough for millisecond figures, and a bounded log (~130 KiB
# per run); an interval of 0 would flood the guest and write megabytes per second.
# tapmig's prober runs at 0.9 ms so that scheduling jitter still leaves the edge
# resolution under 1 ms; iputils gets 1 ms, its finest paced interval (below it,
# it degenerates into a flood).
INTERVALS: dict[Prober, float] = {"tapmig": 0.0009, "iputils": 0.001}
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def require_iputils() -> str:
    """iputils ping, since busybox ping has no -D timestamps."""
    path = shutil.which("ping")
    if path is None:
        raise HostError("ping not found; install iputils-ping (apt-get install iputils-ping)")
    res = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10)
    if "iputils" not in res.stdout + res.stderr:
        raise HostError(f"{path} is not iputils ping (no -D/-O support); "
                          "install iputils-ping")
    return path


def ping_once(prefix: Sequence[str], target: str, timeout_s: int = 2) -> bool:
    res = subprocess.run([*prefix, require_iputils(), "-n", "-c", "1", "-W", str(timeout_s),
                          target], capture_output=True, timeout=timeout_s + 10)
    return res.returncode == 0


def last_line(log: str) -> str:
    """A prober's last word, usually why it stopped; "" for an empty log."""
    lines = log.strip().splitlines()
    return lines[-1] if lines else ""


class ProbeProcess:
    """A probe process (in the namespace, through the argv's prefix) writing a log;
    stopped with SIGINT so that it prints its summary."""

    name = "probe"

    def __init__(self, argv: list[str], log: Path, stop_timeout: float = 5.0) -> None:
        self.argv, self.log, self.stop_timeout = argv, log, stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.interrupted = False  # SIGINT sent (or it had ended): finish() only waits
        self.died: int | None = None  # its exit status if it ended before the SIGINT

    def __enter__(self) -> Self:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
                                         env={**os.environ, "PYTHONPATH": PACKAGE_ROOT})
        return self

    def interrupt(self) -> None:
        """SIGINT now, so that several probes drain at once; finish() then waits. Whether
        it had ended on its own before is kept for finish() to report."""
        if self.proc is None or self.interrupted:
            return
        self.died = self.proc.poll()
        if self.died is None:
            self.proc.send_signal(signal.SIGINT)
        self.interrupted = True

    def wait(self, timeout: float) -> None:
        """Until a probe with a fixed count ends by itself; subprocess.TimeoutExpired
        after `timeout` seconds."""
        if self.proc is not None:
            self.proc.wait(timeout=timeout)

    def finish(self) -> tuple[str, int | None]:
        """Stop it; its log, and its exit status if it had ended before we stopped it."""
        if self.proc is None:
            return self.log.read_text(errors="replace"), None
        self.interrupt()
        died = self.died
        if died is None:
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        return self.log.read_text(errors="replace"), died

    def stop(self) -> str:
        """Stop and return the log; ProbeFailed if the probe had ended on its own, since
        its log then has a hole that would read as an outage."""
        text, died = self.finish()
        if died is not None:
            raise ProbeFailed(self.name, died, last_line(text), early=True)
        return text

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None


class Pinger(ProbeProcess):
    """A continuous ICMP prober writing `ping -D -O` lines to a log.

    prober="tapmig" (harness.probes.icmp) keeps its 0.9 ms pace through the outage;
    prober="iputils" is `ping -D -O -i`, which samples an outage only every 10 ms.
    """

    name = "ping"

    def __init__(self, target: str, log: Path, prefix: Sequence[str] = (),
                 interval: float | None = None, prober: Prober = "tapmig") -> None:
        prober = as_prober(prober)  # from a caller without mypy, or a JSON file
        interval = interval or INTERVALS[prober]
        self.interval = interval  # seconds between requests
        if prober == "iputils":
            argv = [*prefix, require_iputils(), "-D", "-O", "-n", "-i", f"{interval:g}", target]
        else:
            argv = [*prefix, sys.executable, "-m", "harness.probes.icmp",
                    "-i", f"{interval:g}", target]
        super().__init__(argv, log)


TCP_INTERVALS: dict[TcpPattern, float] = {"continuous": 0.001, "sparse": 0.05}
TCP_PORT = 5000  # the guest's `nc -ll -p 5000 -e cat`
DRAIN_S = 10.0  # how long the stream may take to catch up once stopped


class TcpStream(ProbeProcess):
    """The tcp_probe process for one pattern, inside the namespace."""

    name = "tcp probe"

    def __init__(self, target: str, log: Path, prefix: list[str], pattern: TcpPattern) -> None:
        argv = [*prefix, sys.executable, "-m", "harness.probes.tcp", "-i",
                f"{TCP_INTERVALS[pattern]:g}", "--drain", f"{DRAIN_S:g}", target, str(TCP_PORT)]
        super().__init__(argv, log, stop_timeout=DRAIN_S + 5)
