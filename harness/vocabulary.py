"""The closed sets of words tapmig uses, as Literal types, so that mypy catches a typo,
and Log, the one type of the progress sink that every layer is handed.

Each tuple is the runtime list of the same words, for argparse choices and for
checking what a JSON file says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar, get_args

from harness.errors import UsageError

Mode = Literal["new-tap", "local"]
Status = Literal["ok", "failed", "unsupported", "inconclusive"]
Accel = Literal["kvm", "tcg"]
AccelChoice = Literal["auto", "kvm", "tcg"]
Prober = Literal["tapmig", "iputils"]
# Which interface of the live-TAP series a QEMU speaks (see harness.qemu.capabilities).
Interface = Literal["v12", "final", "none"]
# The TCP connection kept open across the migration: a message every 1 ms, a
# request/response every 50 ms, or none.
TcpPattern = Literal["continuous", "sparse", "off"]
# How a QEMU process ended at teardown (harness.qemu.vm): it honoured `quit` over QMP, it
# needed SIGTERM or SIGKILL, or it had already exited (died, or quit on its own).
ShutdownHow = Literal["quit", "sigterm", "sigkill", "exited"]
# Where a long step says what it is doing, one line per call: print, stderr, a test's list.
Log = Callable[[str], None]

MODES: tuple[Mode, ...] = get_args(Mode)
STATUSES: tuple[Status, ...] = get_args(Status)
ACCEL_CHOICES: tuple[AccelChoice, ...] = get_args(AccelChoice)
PROBERS: tuple[Prober, ...] = get_args(Prober)
TCP_PATTERNS: tuple[TcpPattern, ...] = get_args(TcpPattern)

W = TypeVar("W", bound=str)


def _one_of(text: str, words: tuple[W, ...], what: str) -> W:
    """`text` as one of `words`, typed as such, or a one-line error naming them all."""
    for word in words:
        if text == word:
            return word
    raise UsageError(f"unknown {what} {text!r}; use one of {', '.join(words)}")


def as_mode(text: str) -> Mode:
    return _one_of(text, MODES, "mode")


def as_accel_choice(text: str) -> AccelChoice:
    return _one_of(text, ACCEL_CHOICES, "accelerator")


def as_prober(text: str) -> Prober:
    return _one_of(text, PROBERS, "prober")
