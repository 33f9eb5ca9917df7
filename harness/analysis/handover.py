"""The handover, per queue: which TUN file the target holds for each queue of the netdev.

The series' promise for local migration is that the target keeps the very TAP queues the
source had: each queue's open file passes through the UNIX socket, nothing is reopened.
Checked after the migration, while both QEMUs exist: the source's TUN files on its TAP,
in fd order, are queues 0..N-1 (QEMU opens them in queue order, and the target receives
them in that order); queue i of the target must be the source's queue i, the same open
file description (kcmp KCMP_FILE). Any queue of the same TAP would keep its ifindex and
its counters rising; only the file's identity tells a reopened queue from a handed one.

In new-TAP mode the opposite holds: the target's files are new, on the other TAP.

Pure: `match` takes the TUN files both QEMUs hold and a function that answers "same file"
(harness.host.tunfiles.same_file in a run, a table in a test).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from harness.errors import HandoverFailed
from harness.host.tunfiles import TunFile
from harness.vocabulary import Mode

# What the target holds for a queue: the source's own file (local's promise), a new file
# (new-TAP's), another queue's file, or nothing.
Found = Literal["handed", "new", "reopened", "swapped", "missing", "shared"]


@dataclass(frozen=True)
class QueueFile:
    """One queue: the source's fd, the target's fd, whether they are one open file."""

    queue: int
    tap: str | None  # the TAP the target's file is attached to
    source_fd: int | None
    target_fd: int | None
    same_file: bool
    found: Found
    source_queue: int | None = None  # "swapped": the source queue whose file it is

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Handover:
    """Every queue of the netdev, and what the hop expected of them."""

    mode: Mode
    source_tap: str
    target_tap: str
    queues: tuple[QueueFile, ...]

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "source_tap": self.source_tap,
                "target_tap": self.target_tap, "queues": [q.to_json() for q in self.queues]}

    def wrong(self) -> list[QueueFile]:
        """The queues that break the mode's promise."""
        good = "handed" if self.mode == "local" else "new"
        return [q for q in self.queues if q.found != good]


SameFile = Callable[[int, int], bool]  # (source fd, target fd) -> one open file?


def match(mode: Mode, queues: int, source: Sequence[TunFile], target: Sequence[TunFile],
          source_tap: str, target_tap: str, same: SameFile) -> Handover:
    """Queue i of the target against queue i of the source: the source's files on
    source_tap and the target's on target_tap, each in fd order."""
    src = [f.fd for f in source if f.tap == source_tap]
    dst = [f.fd for f in target if f.tap == target_tap]
    out = []
    for q in range(max(queues, len(dst))):
        s = src[q] if q < len(src) else None
        d = dst[q] if q < len(dst) else None
        out.append(_queue(mode, q, s, d, src, target_tap, same))
    return Handover(mode, source_tap, target_tap, tuple(out))


def _queue(mode: Mode, q: int, s: int | None, d: int | None, src: list[int], tap: str,
           same: SameFile) -> QueueFile:
    if d is None:
        return QueueFile(q, None, s, None, False, "missing")
    owner = next((i for i, fd in enumerate(src) if same(fd, d)), None)
    if owner == q:
        found: Found = "handed" if mode == "local" else "shared"
    elif owner is not None:
        found = "swapped" if mode == "local" else "shared"
    else:
        found = "reopened" if mode == "local" else "new"
    return QueueFile(q, tap, s, d, owner == q, found, owner if found == "swapped" else None)


def describe(q: QueueFile, h: Handover) -> str:
    """One queue's breach, in words."""
    fd = f"its TUN fd {q.target_fd} on {q.tap}"
    if q.found == "missing":
        return (f"queue {q.queue}: the target holds no TUN file on {h.target_tap} for it "
                f"(the source's fd {q.source_fd})")
    if q.found == "reopened":
        return (f"queue {q.queue}: {fd} is a new open file, not the source's fd "
                f"{q.source_fd}: the TAP was reopened, not handed over")
    if q.found == "swapped":
        return (f"queue {q.queue}: {fd} is the source's queue {q.source_queue} file, "
                f"not queue {q.queue}'s (fd {q.source_fd})")
    if q.found == "shared":
        return (f"queue {q.queue}: {fd} is the source's own open file (fd {q.source_fd}), "
                "where new-TAP opens a new one")
    return f"queue {q.queue}: {fd} ({q.found})"


def check(h: Handover, queues: int) -> None:
    """A HandoverFailed naming the first wrong queue and every other one."""
    wrong = h.wrong()
    extra = len(h.queues) - queues
    if not wrong and extra <= 0:
        return
    if not wrong:
        raise HandoverFailed(f"the target holds {len(h.queues)} TUN files on {h.target_tap} "
                             f"for a netdev of {queues} queues", queue=queues, found="extra",
                             tap=h.target_tap)
    first = wrong[0]
    others = f" ({len(wrong) - 1} more: queues {', '.join(str(q.queue) for q in wrong[1:])})"
    raise HandoverFailed(describe(first, h) + (others if len(wrong) > 1 else ""),
                         queue=first.queue, found=first.found, tap=h.target_tap)
