"""The error tree: every class documented with its exit code, and its fields set.

Pure: no QEMU, no host. The CLI and ci/build-qemu return `exc.exit_code`, so what
these tests pin is what a user's script sees.
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex

import pytest

import harness.errors as errors
from harness.errors import (
    EXIT_FAILED,
    EXIT_INCONCLUSIVE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    AssetCorrupt,
    BuildFailed,
    BuildInputError,
    CheckFailed,
    DownloadFailed,
    GuestBuildFailed,
    Inconclusive,
    InternalError,
    MigrationError,
    NetnsFailed,
    ProbeFailed,
    QEMUError,
    QMPCommandError,
    TapmigError,
    Unsupported,
    UsageError,
)

CLASSES = sorted((c for _, c in inspect.getmembers(errors, inspect.isclass)
                  if issubclass(c, TapmigError)), key=lambda c: c.__name__)
# A row of the module docstring's tree: the class, then its exit code.
ROW = re.compile(r"^[ |+-]*(?P<name>[A-Z]\w+)\s+(?P<code>\d+)\s", re.MULTILINE)


def documented() -> dict[str, int]:
    return {m["name"]: int(m["code"]) for m in ROW.finditer(errors.__doc__ or "")}


def documented_fields() -> dict[str, tuple[set[str], str]]:
    """Each row's own fields (the words before its first colon, over its continuation
    lines; "(message)" is none) and the class whose fields "and X's" adds, else ""."""
    doc = errors.__doc__ or ""
    end = doc.index("\n\n", doc.index("    class "))  # the tree is the first paragraph
    rows = list(ROW.finditer(doc, 0, end))
    out = {}
    for row, after in zip(rows, [*rows[1:], None], strict=True):
        text = " ".join(re.sub(r"^[ |]+", "", line)
                        for line in doc[row.end():after.start() if after else end].splitlines())
        words = [w.strip() for w in text.split(":", 1)[0].split(",")]
        inherited = [w.removeprefix("and ").removesuffix("'s") for w in words
                     if w.startswith("and ")]
        out[row["name"]] = ({w for w in words if w != "(message)" and not w.startswith("and ")},
                            "".join(inherited))
    return out


def own_fields(cls: type) -> set[str]:
    """The attributes cls's own __init__ assigns on self."""
    init = next((node for node in ast.walk(ast.parse(inspect.getsource(cls)))
                 if isinstance(node, ast.FunctionDef) and node.name == "__init__"), None)
    if init is None:
        return set()
    return {target.attr for node in ast.walk(init) if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
            and target.value.id == "self"}


def test_every_class_is_in_the_documented_tree_with_its_exit_code() -> None:
    assert {c.__name__: c.exit_code for c in CLASSES} == documented()


def test_every_class_documents_exactly_the_fields_it_sets() -> None:
    """The tree is what a tool reads to find a failure's fields: none missing, none stale."""
    fields = documented_fields()
    assert {c.__name__: own_fields(c) for c in CLASSES} == {k: v for k, (v, _) in fields.items()}
    for cls in CLASSES:  # "and X's": X is the parent whose __init__ sets the rest
        if inherited := fields[cls.__name__][1]:
            assert cls.__mro__[1].__name__ == inherited, cls.__name__


def test_every_class_states_its_exit_code_itself() -> None:
    """Not inherited by accident: a new subclass says which code it means."""
    for cls in CLASSES:
        assert "exit_code" in vars(cls), cls.__name__


def test_exit_codes_keep_their_meanings_apart() -> None:
    assert (EXIT_FAILED, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_INTERNAL, EXIT_INTERRUPTED) == \
        (1, 2, 3, 70, 130)
    used = {c.exit_code for c in CLASSES}
    assert used == {EXIT_FAILED, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_INTERNAL}
    assert Inconclusive.exit_code == EXIT_INCONCLUSIVE  # never ok, never failed
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


NEW_CLASSES = [
    (BuildInputError("QEMU source /src does not exist; pass a tarball or tree", "/src"),
     UsageError, EXIT_USAGE, {"path": "/src"}),
    (BuildFailed("ninja failed (x.o); see /c/k.failed.log", "ninja", 1, "x.o", "/c/k.failed.log",
                 "FAILED: x.o\nninja: build stopped\n"),
     TapmigError, EXIT_FAILED, {"step": "ninja", "status": 1, "error_line": "x.o",
                                "log": "/c/k.failed.log"}),
    (GuestBuildFailed("download", ["apt-get", "download", "busybox-static=1"], 100,
                      "E: Unable to locate package", 600),
     TapmigError, EXIT_FAILED, {"step": "download", "status": 100,
                                "command_line": "apt-get download busybox-static=1"}),
    (GuestBuildFailed("compile", ["gcc", "-static"], None, "", 600),
     TapmigError, EXIT_FAILED, {"status": None, "timeout_s": 600}),
    (DownloadFailed("could not download u in 4 attempts (Read timed out); ...", "u", None,
                    "Read timed out", 4, "/c/a"),
     TapmigError, EXIT_FAILED, {"url": "u", "status": None, "attempts": 4, "target": "/c/a"}),
    (AssetCorrupt("alpine-iso", "cached", "a" * 64, "b" * 64, "/c/quarantine/x"),
     TapmigError, EXIT_FAILED, {"asset": "alpine-iso", "origin": "cached", "expected": "a" * 64,
                                "actual": "b" * 64, "quarantine": "/c/quarantine/x"}),
    (NetnsFailed("cannot remove network namespace tapmig-1-x: [Errno 16] busy", "remove",
                 "tapmig-1-x", errno=16),
     TapmigError, EXIT_FAILED, {"op": "remove", "namespace": "tapmig-1-x", "ifname": "",
                                "errno": 16}),
]


@pytest.mark.parametrize(("exc", "parent", "code", "fields"), NEW_CLASSES,
                         ids=["build-input", "build", "guest-build", "guest-build-timeout",
                              "download", "asset-corrupt", "netns"])
def test_build_asset_and_host_failures_carry_their_fields(
        exc: TapmigError, parent: type[TapmigError], code: int, fields: dict[str, object]) -> None:
    assert isinstance(exc, parent) and exc.exit_code == code
    assert {k: getattr(exc, k) for k in fields} == fields
    assert str(exc).count("\n") == 0  # one line: a run's reason, build-qemu's error line
    # What the run record keeps (plain attributes) holds every field but a missing one.
    plain = {k for k, v in vars(exc).items() if isinstance(v, (str, int, float))}
    assert plain >= {k for k, v in fields.items() if v is not None}
