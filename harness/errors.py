"""The one tree of errors tapmig raises, in the manner of qemu.qmp's error.py.

    class                    exit  fields: what it is
    TapmigError                 1  (message): every failure a user can act on
     +-- UsageError             2  (message): bad input, an option, a path, a file
     |    +-- BuildInputError   2  path: a QEMU source or patch is missing or not QEMU's
     |    +-- NotComparable     2  differences: `compare` of reports from unlike runs
     +-- HostError              2  (message): this host cannot run it (no root, no ping ...)
     +-- Unsupported            2  reason: this QEMU or host lacks what the variant needs
     |    +-- RamBlockMismatch  2  block, source_size, target_size, and Unsupported's: the
     |                             two sides' RAM blocks differ; refused before migrating
     +-- QEMUError              1  side, argv, command_line, exit_status, stderr_tail,
     |    |                        console_tail: a QEMU process failed
     |    +-- QMPCommandError   1  command, error_class, desc, and QEMUError's: QEMU refused
     +-- MigrationError         1  side, status, error_desc, cause, check: a migration
     |                             ended badly; cause is that side's own stderr since it began
     +-- CheckFailed            1  check: the migration completed, a network check failed
     |    +-- HandoverFailed    1  queue, found, tap, and CheckFailed's: a queue's TUN
     |                             file is not what the mode promises
     +-- ProbeFailed            1  probe, status, last_line, early, timeout_s: a prober failed
     +-- BuildFailed            1  step, status, error_line, log, log_tail: configure or
     |                             ninja failed building QEMU
     +-- GuestBuildFailed       1  step, argv, command_line, status, last_line, timeout_s:
     |                             a command building the embedded guest failed
     +-- DownloadFailed         1  url, status, reason, attempts, target: an asset did not
     |                             download
     +-- AssetCorrupt           1  asset, origin, expected, actual, quarantine: an asset's
     |                             sha256 is not the pinned one
     +-- NetnsFailed            1  op, namespace, ifname, errno: an operation on a tapmig
     |                             namespace or one of its interfaces failed
     +-- Inconclusive           3  figure, figure_ms, epsilon_ms, fix: the host was too noisy
     |                             (or too sparsely probed) to judge the outage at all
     +-- InternalError         70  invariant: a bug in tapmig, an invariant of its own broke

Exit codes: 1 a failure, 2 bad input (nothing was started), 3 inconclusive (the run
could not be judged: never ok, never failed), 70 a bug in tapmig (EX_SOFTWARE of
sysexits.h, so that a broken invariant is never mistaken for bad input or for a failed
run). 130 is an interrupt, which is no error class.

Each class carries the exit code the CLI returns for it, so `tapmig` and `ci/build-qemu`
never decide an exit code from a message. The first line of every message says what
happened (and, for exit 2, what to do); later lines are detail. The message is made for
people: tests assert on the fields, never on the text, where the error has fields.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class TapmigError(Exception):
    """A failure with a one-line, actionable first line; later lines are detail."""

    exit_code = EXIT_FAILED


class UsageError(TapmigError):
    """The user asked for something malformed or impossible; nothing was started."""

    exit_code = EXIT_USAGE


class BuildInputError(UsageError):
    """A QEMU source or patch given to the builder is missing or is not QEMU's: nothing
    was built. path is the one at fault, as given."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class HostError(TapmigError):
    """The host lacks something a run needs; the message names the fix."""

    exit_code = EXIT_USAGE


class Unsupported(TapmigError):
    """This QEMU or host cannot run the requested variant: a skip, not a failure."""

    exit_code = EXIT_USAGE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RamBlockMismatch(Unsupported):
    """The two sides of a live update have RAM blocks of other names or sizes (a firmware
    or ROM of another size): refused while the guest still runs on the source."""

    exit_code = EXIT_USAGE

    def __init__(self, reason: str, block: str, source_size: int | None,
                 target_size: int | None) -> None:
        super().__init__(reason)
        self.block = block
        self.source_size = source_size
        self.target_size = target_size


class QEMUError(TapmigError):
    """A QEMU process failed: died, hung, or its monitor went away.

    argv is the exact command line that started it (the namespace prefix included), and
    command_line the same as one shell-quoted string, which the run record keeps: the
    failure can be reproduced from the record alone.
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str, side: str, argv: Sequence[str],
                 exit_status: int | None = None, stderr_tail: str = "",
                 console_tail: str = "") -> None:
        super().__init__(message)
        self.side = side
        self.argv = tuple(argv)
        self.command_line = shlex.join(self.argv)
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail
        self.console_tail = console_tail


class QMPCommandError(QEMUError):
    """QEMU refused a QMP command; error_class and desc are QEMU's own words."""

    exit_code = EXIT_FAILED

    def __init__(self, side: str, command: str, error_class: str, desc: str,
                 argv: Sequence[str]) -> None:
        super().__init__(f"{side}: {command} failed: {error_class}: {desc}", side, argv)
        self.command = command
        self.error_class = error_class
        self.desc = desc


class MigrationError(TapmigError):
    """A migration did not complete, or left the VMs in the wrong run states."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, side: str, status: str, error_desc: str = "",
                 cause: str = "") -> None:
        super().__init__(message)
        self.side = side
        self.status = status
        self.error_desc = error_desc
        self.cause = cause
        self.check = "migration"


class CheckFailed(TapmigError):
    """The migration completed, but the network did not behave as promised."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, check: str) -> None:
        super().__init__(message)
        self.check = check


class HandoverFailed(CheckFailed):
    """A queue of the netdev was not handed over as the mode promises: found is
    "reopened", "swapped", "missing", "shared" or "extra" (harness.analysis.handover)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, queue: int, found: str, tap: str) -> None:
        super().__init__(message, check="handover")
        self.queue = queue
        self.found = found
        self.tap = tap


class ProbeFailed(TapmigError):
    """A prober failed, so its log cannot be trusted as a measurement.

    status is its exit status, or None when it had not finished after timeout_s seconds;
    early says it exited before tapmig stopped it (a log with a hole in it); last_line is
    the last line it wrote, usually its own reason.
    """

    exit_code = EXIT_FAILED

    def __init__(self, probe: str, status: int | None, last_line: str, *,
                 early: bool = False, timeout_s: float | None = None) -> None:
        if status is None:  # still running: its log so far may not say why
            what = f"did not finish within {timeout_s:g} s" if timeout_s else "did not finish"
            said = f": {last_line}" if last_line else ""
        else:
            what = f"{'exited early' if early else 'failed'} with status {status}"
            said = f": {last_line or 'no output'}"
        super().__init__(f"{probe} {what}{said}")
        self.probe = probe
        self.status = status
        self.last_line = last_line
        self.early = early
        self.timeout_s = timeout_s


class BuildFailed(TapmigError):
    """Building QEMU failed at a step ("configure" or "ninja") that exited with status.

    error_line is the line of the build log that says what failed (configure's last
    ERROR, ninja's first FAILED: target), "" when there is none; log is the path of the
    kept build log, log_tail its last lines, so a CI job that keeps no cache can show why.
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str, step: str, status: int, error_line: str, log: str,
                 log_tail: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.status = status
        self.error_line = error_line
        self.log = log
        self.log_tail = log_tail


class GuestBuildFailed(TapmigError):
    """A command building the embedded guest failed, at step "resolve" (apt-cache, gcc's
    version for the cache key), "download", "extract", "depmod" or "compile".

    status is its exit status, or None when it had not finished after timeout_s seconds;
    last_line is the last line it wrote (stderr, else stdout), usually its own reason.
    """

    exit_code = EXIT_FAILED

    def __init__(self, step: str, argv: Sequence[str], status: int | None, last_line: str,
                 timeout_s: float) -> None:
        what = (f"did not finish within {timeout_s:g} s" if status is None
                else f"failed: {last_line or 'no output'}")
        super().__init__(f"{' '.join(argv)} {what}")
        self.step = step
        self.argv = tuple(argv)
        self.command_line = shlex.join(self.argv)
        self.status = status
        self.last_line = last_line
        self.timeout_s = timeout_s


class DownloadFailed(TapmigError):
    """An asset could not be downloaded from url; target is where to put it by hand.

    status is the HTTP error status of the last attempt, or None when it failed without
    one (a timeout, a dropped connection, a short transfer); reason is what went wrong;
    attempts counts the tries made (an HTTP 4xx is not retried).
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str, url: str, status: int | None, reason: str,
                 attempts: int, target: str) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.reason = reason
        self.attempts = attempts
        self.target = target


class AssetCorrupt(TapmigError):
    """A downloaded or cached asset's sha256 is not the pinned one; the file was moved to
    quarantine (out of the cache, never booted) for the user to inspect.

    origin says which it was: "downloaded" or "cached".
    """

    exit_code = EXIT_FAILED

    def __init__(self, asset: str, origin: str, expected: str, actual: str,
                 quarantine: str) -> None:
        super().__init__(
            f"{origin} {asset} has sha256 {actual}, expected {expected}; moved it to "
            f"{quarantine}; fetch again, and if it recurs the upstream file changed: "
            "fix assets.toml")
        self.asset = asset
        self.origin = origin
        self.expected = expected
        self.actual = actual
        self.quarantine = quarantine


class NetnsFailed(TapmigError):
    """An operation (op: "lookup" of an interface, "remove" of the namespace) on a tapmig
    network namespace failed.

    ifname is the interface, "" for an operation on the namespace itself; errno is the
    OS error number, or None when no call failed (a lookup that found nothing).
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str, op: str, namespace: str, ifname: str = "",
                 errno: int | None = None) -> None:
        super().__init__(message)
        self.op = op
        self.namespace = namespace
        self.ifname = ifname
        self.errno = errno


class InternalError(TapmigError):
    """An invariant of tapmig's own code broke: a bug to report, not the user's doing.

    invariant says what should have held, e.g. "a VM is launched at most once".
    """

    exit_code = EXIT_INTERNAL

    def __init__(self, invariant: str) -> None:
        super().__init__(f"internal error (a bug in tapmig): {invariant}")
        self.invariant = invariant


class NotComparable(UsageError):
    """The two reports come from unlike runs; differences names each one."""

    exit_code = EXIT_USAGE

    def __init__(self, differences: list[str]) -> None:
        super().__init__(f"reports are not comparable: {'; '.join(differences)}; compare runs "
                         "of the same kind of runner and settings, or pass --allow-mismatch")
        self.differences = differences


class Inconclusive(TapmigError):
    """The migration ran, but the host's noise before it was too large (or too sparsely
    sampled) to judge the outage: reported apart, never as ok and never as failed.

    figure names the noise figure that decided it (e.g. "ICMP hole"), figure_ms its
    value, epsilon_ms the slack it called for, fix what would make the run judgeable.
    """

    exit_code = EXIT_INCONCLUSIVE

    def __init__(self, reason: str, figure: str, figure_ms: float, epsilon_ms: float,
                 fix: str) -> None:
        super().__init__(reason)
        self.figure = figure
        self.figure_ms = figure_ms
        self.epsilon_ms = epsilon_ms
        self.fix = fix
