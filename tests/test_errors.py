"""The error tree: every class documented with its exit code, and its fields set.

Pure: no QEMU, no host. The CLI and ci/build-qemu return `exc.exit_code`, so what
these tests pin is what a user's script sees.
"""

from __future__ import annotations

import inspect
import re
import shlex

import pytest

import harness.errors as errors
from harness.errors import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CheckFailed,
    InternalError,
    MigrationError,
    ProbeFailed,
    QEMUError,
    QMPCommandError,
    TapmigError,
    Unsupported,
)

CLASSES = sorted((c for _, c in inspect.getmembers(errors, inspect.isclass)
                  if issubclass(c, TapmigError)), key=lambda c: c.__name__)
# A row of the module docstring's tree: the class, then its exit code.
ROW = re.compile(r"^[ |+-]*(?P<name>[A-Z]\w+)\s+(?P<code>\d+)\s", re.MULTILINE)


def documented() -> dict[str, int]:
    return {m["name"]: int(m["code"]) for m in ROW.finditer(errors.__doc__ or "")}


def test_every_class_is_in_the_documented_tree_with_its_exit_code() -> None:
    assert {c.__name__: c.exit_code for c in CLASSES} == documented()


def test_every_class_states_its_exit_code_itself() -> None:
    """Not inherited by accident: a new subclass says which code it means."""
    for cls in CLASSES:
        assert "exit_code" in vars(cls), cls.__name__


def test_exit_codes_keep_their_meanings_apart() -> None:
    assert (EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED) == (1, 2, 70, 130)
    used = {c.exit_code for c in CLASSES}
    assert used == {EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL}
    assert 3 not in used  # kept for an inconclusive outcome
    assert InternalError.exit_code not in (EXIT_FAILED, EXIT_USAGE)
    assert Unsupported.exit_code == EXIT_USAGE


def test_every_class_has_a_docstring() -> None:
    for cls in CLASSES:
        assert vars(cls).get("__doc__"), cls.__name__  # its own, not its parent's


def test_qemu_error_carries_the_command_line() -> None:
    argv = ["nsenter", "--net=/run/netns/tapmig-1-x", "/usr/bin/qemu-system-x86_64",
            "-append", "console=ttyS0 panic=-1"]
    exc = QEMUError("source: QEMU died", "source", argv, exit_status=-9)
    assert (exc.side, exc.argv, exc.exit_status) == ("source", tuple(argv), -9)
    assert shlex.split(exc.command_line) == argv  # pastes back into a shell as it ran
    assert exc.exit_code == EXIT_FAILED


def test_qmp_command_error_is_a_qemu_error_with_qemus_words() -> None:
    exc = QMPCommandError("target", "netdev_add", "GenericError", "in use", ["qemu"])
    assert isinstance(exc, QEMUError)
    assert (exc.side, exc.command, exc.error_class, exc.desc, exc.argv) == (
        "target", "netdev_add", "GenericError", "in use", ("qemu",))


@pytest.mark.parametrize(("args", "kwargs", "fields"), [
    (("ping", -9, "64 bytes from ..."), {"early": True},
     {"probe": "ping", "status": -9, "last_line": "64 bytes from ...", "early": True,
      "timeout_s": None}),
    (("the fresh-flow probe", 1, ""), {},
     {"probe": "the fresh-flow probe", "status": 1, "last_line": "", "early": False}),
    (("the fresh-flow probe", None, ""), {"timeout_s": 30.2},
     {"status": None, "timeout_s": 30.2}),
], ids=["died-early", "failed", "timed-out"])
def test_probe_failed_fields(args: tuple[str, int | None, str], kwargs: dict[str, object],
                             fields: dict[str, object]) -> None:
    exc = ProbeFailed(*args, **kwargs)  # type: ignore[arg-type]
    assert {k: getattr(exc, k) for k in fields} == fields
    assert exc.exit_code == EXIT_FAILED
    assert str(exc).count("\n") == 0  # one line: it is the run's reason


def test_internal_error_names_the_invariant() -> None:
    exc = InternalError("a VM is launched at most once")
    assert exc.invariant == "a VM is launched at most once"
    assert exc.exit_code == EXIT_INTERNAL


def test_the_command_line_is_a_plain_field() -> None:
    """The run record keeps an error's plain (str, int, float) attributes as its failure
    (harness.run.assemble): the command line must be one of them to reach the record."""
    exc = QEMUError("target: QEMU died", "target", ["qemu", "-S"], exit_status=1)
    plain = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float))}
    assert plain["command_line"] == "qemu -S"
    for other in (MigrationError("m", "source", "failed"), CheckFailed("c", "window")):
        assert all(isinstance(v, (str, int, float)) for v in vars(other).values())
