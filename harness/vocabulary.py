"""The closed sets of words tapmig uses, as Literal types, so that mypy catches a typo.

Each tuple is the runtime list of the same words, for argparse choices and for
checking what a JSON file says.
"""

from __future__ import annotations

from typing import Literal, get_args

from harness.errors import UsageError

Mode = Literal["new-tap", "local"]
Status = Literal["ok", "failed", "unsupported"]
Accel = Literal["kvm", "tcg"]
AccelChoice = Literal["auto", "kvm", "tcg"]
Prober = Literal["tapmig", "iputils"]
# Which interface of the live-TAP series a QEMU speaks (see harness.capabilities).
Interface = Literal["v12", "final", "none"]
# The TCP connection kept open across the migration: a message every 1 ms, a
# request/response every 50 ms, or none.
TcpPattern = Literal["continuous", "sparse", "off"]

MODES: tuple[Mode, ...] = get_args(Mode)
STATUSES: tuple[Status, ...] = get_args(Status)
ACCELS: tuple[Accel, ...] = get_args(Accel)
ACCEL_CHOICES: tuple[AccelChoice, ...] = get_args(AccelChoice)
PROBERS: tuple[Prober, ...] = get_args(Prober)
TCP_PATTERNS: tuple[TcpPattern, ...] = get_args(TcpPattern)


def as_mode(text: str) -> Mode:
    """A mode from user input, or a one-line error naming the valid ones."""
    for mode in MODES:
        if text == mode:
            return mode
    raise UsageError(f"unknown mode {text!r}; use one or more of {', '.join(MODES)}")


def as_accel_choice(text: str) -> AccelChoice:
    for choice in ACCEL_CHOICES:
        if text == choice:
            return choice
    raise UsageError(f"unknown accelerator {text!r}; use one of {', '.join(ACCEL_CHOICES)}")


def as_prober(text: str) -> Prober:
    for prober in PROBERS:
        if text == prober:
            return prober
    raise UsageError(f"unknown prober {text!r}; use one of {', '.join(PROBERS)}")


def as_tcp_pattern(text: str) -> TcpPattern:
    for pattern in TCP_PATTERNS:
        if text == pattern:
            return pattern
    raise UsageError(f"unknown TCP pattern {text!r}; use one of {', '.join(TCP_PATTERNS)}")
