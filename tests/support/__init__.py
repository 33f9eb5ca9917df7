"""What tapmig's own tests share: the repo root, the CLI runners (a subprocess, or the
same entry point called in this process) and the one-line-error check, the skip of a
local-mode case on a QEMU without the series, and the /proc scanner for child
processes (children() is the plugin's, which its leak check uses).

The pytest fixtures live in harness.testing.plugin (for any project) and the repo's
conftest.py (for this suite only); this module holds plain functions.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.qemu.capabilities import Capabilities
from harness.testing.plugin import children, stat_fields
from harness.vocabulary import Mode

__all__ = ["REPO", "call_tapmig", "children", "cmdline", "interruptible", "one_line_error",
           "run_tapmig", "skip_unless_local", "stat_fields"]

REPO = Path(__file__).resolve().parent.parent.parent
ERROR_PREFIX = "tapmig: error: "


def interruptible() -> None:
    """preexec_fn for a tapmig that a test will Ctrl-C: SIGINT at its default, so that
    Python in the child raises KeyboardInterrupt on it.

    A shell without job control starts a background job (`ci/test &`, a runner's
    detached script) with SIGINT ignored; every child inherits that, and Python keeps an
    inherited SIG_IGN, as a background job should. tapmig is right to ignore it then,
    but a test of what it does on Ctrl-C would be testing its parent's shell instead."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_tapmig(*args: str, timeout: float = 60, cwd: Path = REPO,
               env: dict[str, str] | None = None,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`tapmig ARGS` as a real subprocess of this interpreter; `env` is laid over
    the current environment."""
    return subprocess.run([sys.executable, "-m", "harness.cli.main", *args], cwd=cwd,
                          env={**os.environ, **env} if env is not None else None,
                          input=input, capture_output=True, text=True, timeout=timeout,
                          check=False)


@contextmanager
def _environ(env: dict[str, str] | None) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def call_tapmig(*args: str, env: dict[str, str] | None = None,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`tapmig ARGS` through the same entry point (harness.cli.main.main), called in this
    process: the exit code and both streams a subprocess would give, without the second
    it takes to start one. For input that tapmig must refuse or a command that starts no
    guest; what only a process shows (signals, a closed pipe, `python -m`) stays with
    run_tapmig. The handlers main() installs are put back."""
    out, err = io.StringIO(), io.StringIO()
    handler, hook, stdin = signal.getsignal(signal.SIGTERM), sys.unraisablehook, sys.stdin
    try:
        with _environ(env), redirect_stdout(out), redirect_stderr(err):
            sys.stdin = io.StringIO(input or "")
            try:
                code = cli.main(list(args))
            except SystemExit as exc:  # argparse: --help, --version, a bad option
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        signal.signal(signal.SIGTERM, handler)
        sys.unraisablehook, sys.stdin = hook, stdin
    return subprocess.CompletedProcess(["tapmig", *args], code, out.getvalue(), err.getvalue())


def one_line_error(done: subprocess.CompletedProcess[str], *needles: str,
                   code: int | None = None) -> str:
    """The project's rule for bad input: a non-zero exit (exactly `code` if given),
    stderr opening with one 'tapmig: error: ' line that names the problem (every
    needle), and no traceback. Returns that line."""
    report = (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert done.returncode != 0, report
    if code is not None:
        assert done.returncode == code, report
    first = done.stderr.splitlines()[0] if done.stderr else ""
    assert first.startswith(ERROR_PREFIX), report
    assert "Traceback" not in done.stderr, report
    for needle in needles:
        assert needle in first, (needle, first)
    return first


def cmdline(pid: int) -> str:
    """The command line, arguments joined by spaces; empty once the process is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def skip_unless_local(caps: Capabilities, mode: Mode) -> None:
    """A local-mode case on a QEMU without the series skips, naming what it lacks: that
    QEMU really cannot do it (the required `series` is about the run having one that can)."""
    if mode == "local" and (missing := caps.missing_for_local()):
        pytest.skip(f"{caps.qemu} ({caps.version}) cannot do local migration: "
                    f"missing {', '.join(missing)}")
