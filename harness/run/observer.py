"""What watches or perturbs a run from outside: one interface, handed to the run.

Fault injection, phase timing, footprint sampling and bench all need the same
thing: to be called when a hop reaches a phase, with the Lab. They are passed to
`scenario.run` or a chain's Runner as observers, never stored in the Config, so
a Config stays what the user asked for.

The phases of a hop, in order:
- booted: the source guest is up (once per run or chain);
- probing: the probes run and the target is about to start;
- migrating: the target listens; `migrate` is about to be sent;
- switchover: the migration is held at pre-switchover (only with
  Config.pause_before_switchover): the guest is stopped, device state is left;
- migrated: both sides completed; the host side is about to follow the guest;
- resuming: the host side is switched; `cont` is about to be sent to the target;
- resumed: the target runs and the probes still do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

Phase = Literal["booted", "probing", "migrating", "switchover", "migrated", "resuming",
                "resumed"]


L = TypeVar("L")
# Called at each phase a hop reaches, with the run's Lab (harness.run.lab, which
# holds the observers: Observer[Lab]); what it raises fails the run like any fault.
Observer = Callable[[Phase, L], None]


class PhaseClock:
    """When each phase of the current hop was reached, before any later observer ran;
    the run adds its own steps (start, analysed, verified, sampled) with mark(). The
    marks only give durations, so they come from time.monotonic(), the clock of the
    hop's duration_s: the wall clock can step mid-hop (2.3 s once in a 1000-hop soak
    here), and the steps would then add up to more than the hop took."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def start(self) -> None:
        """A new hop: forget the last one's marks."""
        self.marks = {"start": time.monotonic()}

    def mark(self, step: str) -> None:
        self.marks[step] = time.monotonic()

    def __call__(self, phase: Phase, lab: object) -> None:
        self.mark(phase)

