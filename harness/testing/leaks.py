"""What a test leaves behind: tapmig resources and child processes of this pytest.

A session-scoped fixture may keep some on purpose (a booted guest that many tests
migrate in turn: its namespace, RAM file, run dir and QEMU). It registers what it
holds in `Kept`, so that the leak check does not blame the test that happened to
start it, while anything else a test leaves still fails that test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.host import reaper

# What a keeper holds right now: reaper.leftovers() entries, and child PIDs.
Holding = Callable[[], tuple[set[str], set[int]]]


@dataclass
class Kept:
    """Every keeper of the session, asked at each check what it holds then."""

    keepers: list[Holding] = field(default_factory=list)

    def add(self, holding: Holding) -> None:
        self.keepers.append(holding)

    def remove(self, holding: Holding) -> None:
        self.keepers.remove(holding)

    def now(self) -> tuple[set[str], set[int]]:
        names: set[str] = set()
        pids: set[int] = set()
        for holding in self.keepers:
            held_names, held_pids = holding()
            names |= held_names
            pids |= held_pids
        return names, pids


def stat_fields(pid: int | str) -> tuple[str, list[str]] | None:
    """A process's command name and the fields after it in /proc/PID/stat (the state
    is [0], the parent [1], the start time [19]), or None once it is gone."""
    try:
        head, rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
    except (OSError, ValueError):
        return None
    return head.split("(", 1)[1], rest.split()


def children(ppid: int) -> set[tuple[int, str]]:
    """The direct children of `ppid` (zombies included) as (pid, command name)."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        stat = stat_fields(entry.name)
        if stat is not None and stat[1][1] == str(ppid):
            found.add((int(entry.name), stat[0]))
    return found


@contextmanager
def watch(kept: Kept) -> Iterator[list[str]]:
    """Around one test: afterwards, the list holds what it left that it did not find
    (only what this process owns, so parallel workers do not blame each other)."""
    me = os.getpid()
    before = set(reaper.leftovers(me))
    kids_before = children(me)
    found: list[str] = []
    yield found
    names, pids = kept.now()
    found += sorted(set(reaper.leftovers(me)) - before - names)
    found += [f"process {pid} ({comm})" for pid, comm in sorted(children(me) - kids_before)
              if pid not in pids]
