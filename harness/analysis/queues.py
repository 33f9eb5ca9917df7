"""Per-queue packet counts as the guest's virtio-net driver sees them.

A series that lost or mis-attached one of a multiqueue TAP's fds would leave one
queue pair silent while the others carry everything, and no single-flow probe
notices. The guest's own per-queue counters (ethtool -S, read by tapmig-guest
over the serial console) show which queue pairs carried traffic, and how many of
the device's queue pairs the driver uses: min(queue pairs, online CPUs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import CheckFailed, UsageError
from harness.guest.spec import HELPER

LINE = re.compile(r"TAPMIG-QUEUES live=(?P<live>\d+) max=(?P<max>\d+) rx=(?P<rx>[\d,]*) "
                  r"tx=(?P<tx>[\d,]*) xps=(?P<xps>[\d,]*)")
# On the console, up to the line's end: output arrives piecemeal, and a match on half
# a line would read "rx=12" of "rx=123".
WHOLE_LINE = LINE.pattern + r"\r?\n"
FAILED = rf"TAPMIG-QUEUES-FAILED[^\r\n]*\r?\n|{HELPER}: [^\r\n]*\r?\n"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")] if text else []


@dataclass(frozen=True)
class QueueCounts:
    """One reading: queue pairs in use (live) of those the device has (max), the
    packets each queue pair received (rx) and sent (tx), and the CPUs that send on
    each TX queue (xps, as bit masks)."""

    live: int
    max: int
    rx: list[int]
    tx: list[int]
    xps: list[int]

    @classmethod
    def parse(cls, line: str) -> QueueCounts:
        m = LINE.search(line)
        if m is None:
            raise UsageError(f"not a tapmig-guest queues line: {line!r}")
        return cls(int(m["live"]), int(m["max"]), _ints(m["rx"]), _ints(m["tx"]),
                   _ints(m["xps"]))

    def since(self, earlier: QueueCounts) -> QueueCounts:
        """The packets counted between an earlier reading and this one."""
        def minus(now: list[int], then: list[int]) -> list[int]:
            return [v - (then[i] if i < len(then) else 0) for i, v in enumerate(now)]
        return QueueCounts(self.live, self.max, minus(self.rx, earlier.rx),
                           minus(self.tx, earlier.tx), self.xps)

    def queue_of_cpu(self, cpu: int) -> int | None:
        """The TX queue a guest CPU sends on (virtio-net sets XPS so), if any."""
        return next((q for q, mask in enumerate(self.xps) if mask >> cpu & 1), None)

    def silent(self) -> list[str]:
        """The live queues that carried nothing in one direction, e.g. ["rx 2", "tx 2"]."""
        return [f"{name} {q}" for name, counts in (("rx", self.rx), ("tx", self.tx))
                for q in range(self.live) if q >= len(counts) or counts[q] <= 0]

    def to_json(self) -> dict[str, object]:
        return {"live": self.live, "max": self.max, "rx": self.rx, "tx": self.tx}


def check_every_queue(delta: QueueCounts, where: str) -> None:
    """Every live queue pair carried traffic both ways: a CheckFailed naming the rest."""
    if silent := delta.silent():
        raise CheckFailed(f"queue {', '.join(silent)} of the {delta.live} live queue pairs "
                          f"carried no packets {where} (rx {delta.rx}, tx {delta.tx})",
                          check="queues")
