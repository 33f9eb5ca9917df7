"""What watches or perturbs a hop from outside: one interface, handed to the session.

Fault injection, step timing, footprint sampling and bench all need the same thing: to
be called when a hop reaches a moment, with the Lab (which holds the QEMUs of that
moment) and the result the hop has just made, if any. They are passed to the Session
beside the Config, never stored in it, so a Config stays what the user asked for.

The moments of a hop, in order, with their results (a step of harness.run.timings runs
from one moment to the next; the blackout's phases are another thing,
harness.analysis.downtime's):
- booted: the source guest is up, once per session (the seconds it took);
- started: a hop begins (its HopPlan);
- probing: the probes run and the target is about to start;
- migrating: the target listens; `migrate` is about to be sent;
- switchover: the migration is held at pre-switchover (only with
  Config.pause_before_switchover): the guest is stopped, device state is left;
- migrated: both sides completed; the host side is about to follow the guest
  (the Migration);
- resuming: the host side is switched; `cont` is about to be sent to the target (the
  Switch, None in local mode);
- resumed: the target runs and the probes still do (the Resumed);
- analysed: the probes stopped and the hop's figures are made (the Analysed);
- verified: the guest's checks on the target ran (the Verified);
- sampled: the serving QEMU's footprint was read (the Footprint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

Moment = Literal["booted", "started", "probing", "migrating", "switchover", "migrated",
                 "resuming", "resumed", "analysed", "verified", "sampled"]


L = TypeVar("L")
# Called at each moment a hop reaches, with the session's Lab (harness.run.lab, which
# holds the observers: Observer[Lab]) and the moment's result (None where it has none);
# what it raises fails the hop like any fault.
Observer = Callable[[Moment, L, object], None]


class StepClock:
    """When each moment of the current hop was reached, before any later observer ran;
    "started" begins a hop's marks afresh. The marks only give durations, so they come
    from time.monotonic(), the clock of the hop's duration_s: the wall clock can step
    mid-hop (2.3 s once in a 1000-hop soak here), and the steps would then add up to
    more than the hop took."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def __call__(self, moment: Moment, lab: object, result: object = None) -> None:
        if moment == "started":  # a new hop: forget the last one's marks
            self.marks = {}
        self.marks[moment] = time.monotonic()
