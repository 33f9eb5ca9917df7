"""iputils `ping -D -O`: run it inside the namespace, parse its log, find the blackout.

The outage is measured as the longest hole between consecutive replies, not
from "no answer yet" lines: while a link is down the kernel may queue echo
requests and answer them late, so a real outage can show 0% loss and no
"no answer" line at all. The probe interval actually achieved (not the one
asked for) is the resolution of every figure, and is reported with it.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.errors import TapmigError
from harness.vm import die_with_parent

# About 1 kHz: fine enough for millisecond figures, and a bounded log (~130 KiB
# per run); an interval of 0 would flood the guest and write megabytes per second.
# tapmig's prober runs at 0.9 ms so that scheduling jitter still leaves the edge
# resolution under 1 ms; iputils gets 1 ms, its finest paced interval (below it,
# it degenerates into a flood).
INTERVALS = {"tapmig": 0.0009, "iputils": 0.001}
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# A reply is late when its RTT exceeds both of these: the kernel queued the request.
LATE_MIN_MS = 5.0
LATE_FACTOR = 10.0

_TS = r"^\[(?P<ts>\d+\.\d+)\] "
REPLY = re.compile(_TS + r"\d+ bytes from .*?icmp_seq=(?P<seq>\d+) .*?time=(?P<rtt>[\d.]+) ms")
NO_ANSWER = re.compile(_TS + r"no answer yet for icmp_seq=(?P<seq>\d+)")
SENT = re.compile(_TS + r"sent icmp_seq=(?P<seq>\d+)$")
ERROR = re.compile(_TS + r"From .*?icmp_seq=(?P<seq>\d+) (?P<what>.*)")
SUMMARY = re.compile(r"^(?P<tx>\d+) packets transmitted, (?P<rx>\d+) (packets )?received")


@dataclass(frozen=True)
class Probe:
    """One line of ping output that concerns one echo request."""

    ts: float
    seq: int
    rtt_ms: float | None  # None: no answer yet, or an error
    duplicate: bool = False
    error: bool = False  # an ICMP error or a failed send, not a "no answer yet" line
    send_failed: bool = False  # the prober could not send it: sampled "down" at ts


@dataclass(frozen=True)
class PingLog:
    probes: list[Probe]
    transmitted: int | None  # from the summary line, when ping was stopped cleanly
    sent: dict[int, float] = field(default_factory=dict)  # from tapmig's prober only


def unwrap(raw: int, last: int | None) -> int:
    """The 16-bit sequence number as the unwrapped value nearest the latest one, so a
    late reply from before a wrap stays before it instead of jumping ahead."""
    if last is None:
        return raw
    return last + ((raw - last + 32768) % 65536) - 32768


def parse(text: str) -> PingLog:
    """Parse a `ping -D -O` log; sequence numbers are unwrapped past 65535."""
    probes: list[Probe] = []
    sent: dict[int, float] = {}
    transmitted = None
    last: int | None = None  # the latest unwrapped sequence number
    for line in text.splitlines():
        if s := SENT.match(line):
            seq = unwrap(int(s.group("seq")), last)
            last = max(seq, last if last is not None else seq)
            sent[seq] = float(s.group("ts"))
            continue
        m = REPLY.match(line) or NO_ANSWER.match(line) or ERROR.match(line)
        if m is None:
            if s := SUMMARY.match(line):
                transmitted = int(s.group("tx"))
            continue
        seq = unwrap(int(m.group("seq")), last)
        last = max(seq, last if last is not None else seq)
        rtt = m.groupdict().get("rtt")
        probes.append(Probe(float(m.group("ts")), seq,
                            float(rtt) if rtt is not None else None, "(DUP!)" in line,
                            m.re is ERROR, "send failed" in line))
    return PingLog(probes, transmitted, sent)


@dataclass(frozen=True)
class Analysis:
    replies: int
    transmitted: int
    lost: int
    blackout_ms: float | None
    blackout_start: float | None  # the last reply before the hole
    blackout_end: float | None  # the first reply after it
    resolution_ms: float | None  # the probe spacing at the hole's edges
    interval_ms: float | None  # the achieved probe interval over the whole log
    late_replies: int
    late_max_rtt_ms: float | None
    median_rtt_ms: float | None
    no_answer_lines: int
    first_unanswered: float | None
    last_unanswered: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def send_times(log: PingLog) -> dict[int, float]:
    """When each request left, where the log tells: a reply's timestamp minus its RTT,
    or a "no answer yet for N" line, which ping prints just before it sends N+1."""
    sends: dict[int, float] = dict(log.sent)
    for p in log.probes:
        if p.rtt_ms is not None:
            sends.setdefault(p.seq, p.ts - p.rtt_ms / 1000)
        elif p.send_failed:
            sends.setdefault(p.seq, p.ts)
        elif not p.error:
            sends.setdefault(p.seq + 1, p.ts)
    return sends


def analyze(log: PingLog, window: tuple[float, float] | None = None) -> Analysis:
    """Find the blackout: the longest hole between replies (overlapping `window` if given).

    With a window (STOP and RESUME), a stray slow reply elsewhere in the log
    cannot be mistaken for the migration's outage.
    """
    replies = [p for p in log.probes if p.rtt_ms is not None and not p.duplicate]
    unanswered = [p for p in log.probes if p.rtt_ms is None and not p.error]
    seqs = [p.seq for p in log.probes]
    transmitted = log.transmitted if log.transmitted is not None else (
        max(seqs) - min(seqs) + 1 if seqs else 0)
    answered = {p.seq for p in replies}
    lost = max(transmitted - len(answered), 0)

    best: tuple[float, float] | None = None
    for a, b in itertools.pairwise(replies):
        if window and not (a.ts <= window[1] and b.ts >= window[0]):
            continue
        if best is None or b.ts - a.ts > best[1] - best[0]:
            best = (a.ts, b.ts)

    sends = send_times(log)
    interval = None
    if len(sends) >= 2:
        seqs_sorted = sorted(sends)
        span = sends[seqs_sorted[-1]] - sends[seqs_sorted[0]]
        interval = 1000 * span / (seqs_sorted[-1] - seqs_sorted[0])
    resolution = None
    if best is not None:
        # The edges are only as sharp as the probes around them: the outage began
        # between the last answered request and the next one sent, and ended no
        # earlier than the request before the first answered one after the hole.
        after = next(p for p in replies if p.ts == best[1])
        times = sorted(sends.values())
        lo = sends.get(next(p for p in replies if p.ts == best[0]).seq, best[0])
        hi = sends.get(after.seq, best[1])
        gap_start = min((t - lo for t in times if t > lo), default=best[1] - lo)
        gap_end = min((hi - t for t in times if t < hi), default=hi - lo)
        resolution = 1000 * max(gap_start, gap_end)

    rtts = [p.rtt_ms for p in replies if p.rtt_ms is not None]
    median_rtt = statistics.median(rtts) if rtts else None
    late = [r for r in rtts if median_rtt is not None
            and r > max(LATE_MIN_MS, LATE_FACTOR * median_rtt)]
    return Analysis(
        replies=len(replies),
        transmitted=transmitted,
        lost=lost,
        blackout_ms=round(1000 * (best[1] - best[0]), 3) if best else None,
        blackout_start=best[0] if best else None,
        blackout_end=best[1] if best else None,
        resolution_ms=round(resolution, 3) if resolution is not None else None,
        interval_ms=round(interval, 3) if interval is not None else None,
        late_replies=len(late),
        late_max_rtt_ms=max(late) if late else None,
        median_rtt_ms=median_rtt,
        no_answer_lines=len(unanswered),
        first_unanswered=unanswered[0].ts if unanswered else None,
        last_unanswered=unanswered[-1].ts if unanswered else None,
    )


def require_iputils() -> str:
    """iputils ping, since busybox ping has no -D timestamps."""
    path = shutil.which("ping")
    if path is None:
        raise TapmigError("ping not found; install iputils-ping (apt-get install iputils-ping)")
    res = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10)
    if "iputils" not in res.stdout + res.stderr:
        raise TapmigError(f"{path} is not iputils ping (no -D/-O support); "
                          "install iputils-ping")
    return path


def ping_once(prefix: Sequence[str], target: str, timeout_s: int = 2) -> bool:
    res = subprocess.run([*prefix, require_iputils(), "-n", "-c", "1", "-W", str(timeout_s),
                          target], capture_output=True, timeout=timeout_s + 10)
    return res.returncode == 0


PROBES = ("tapmig", "iputils")


class Pinger:
    """A continuous prober writing `ping -D -O` lines to a log; stopped with SIGINT
    so that it prints its summary.

    probe="tapmig" (harness.icmp_probe) keeps its 0.9 ms pace through the outage;
    probe="iputils" is `ping -D -O -i`, which samples an outage only every 10 ms.
    """

    def __init__(self, target: str, log: Path, prefix: Sequence[str] = (),
                 interval: float | None = None, probe: str = "tapmig") -> None:
        if probe not in PROBES:
            raise TapmigError(f"unknown probe {probe!r}; use one of {', '.join(PROBES)}")
        interval = interval or INTERVALS[probe]
        if probe == "iputils":
            self.argv = [*prefix, require_iputils(), "-D", "-O", "-n", "-i", f"{interval:g}",
                         target]
        else:
            self.argv = [*prefix, sys.executable, "-m", "harness.icmp_probe",
                         "-i", f"{interval:g}", target]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Pinger:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
                                         env={**os.environ, "PYTHONPATH": PACKAGE_ROOT})
        return self

    def stop(self) -> str:
        """Stop and return the log; raises if ping died on its own before we stopped it."""
        if self.proc is None:
            return self.log.read_text(errors="replace")
        died = self.proc.poll()
        if died is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        text = self.log.read_text(errors="replace")
        if died is not None:
            last_line = (text.strip().splitlines() or ["no output"])[-1]
            raise TapmigError(f"ping exited early with status {died}: {last_line}")
        return text

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None


def analyze_file(path: Path, window: tuple[float, float] | None = None) -> Analysis:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise TapmigError(f"cannot read ping log {path}: {exc.strerror}") from exc
    log = parse(text)
    if not log.probes:
        raise TapmigError(f"{path}: no `ping -D -O` lines found; pass a log written by "
                          "`ping -D -O` (e.g. ping.log from a tapmig run)")
    return analyze(log, window)
