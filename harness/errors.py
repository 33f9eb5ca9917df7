"""The one tree of errors tapmig raises, in the manner of qemu.qmp's error.py.

    TapmigError            every failure a user can act on; its first line says what to do
     +-- UsageError        bad input: an option, a path, a file that is not what it should be
     +-- HostError         this host cannot run it (no root, no /dev/net/tun, no ping ...)
     +-- Unsupported       this QEMU or host lacks what the variant needs; .reason names it
     +-- QEMUError         a QEMU process failed: .side, .exit_status, .stderr_tail, .console_tail
     |    +-- QMPCommandError   QEMU refused a command: .command, .error_class, .desc
     +-- MigrationError    a migration ended badly: .side, .status, .error_desc
     +-- CheckFailed       the migration completed but a check of the network failed

Each class carries the exit code the CLI returns for it, so `tapmig` and `ci/build-qemu`
never decide an exit code from a message. Tests assert on the attributes, not the text.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class TapmigError(Exception):
    """A failure with a one-line, actionable first line; later lines are detail."""

    exit_code = EXIT_FAILED


class UsageError(TapmigError):
    """The user asked for something malformed or impossible; nothing was started."""

    exit_code = EXIT_USAGE


class HostError(TapmigError):
    """The host lacks something a run needs; the message names the fix."""

    exit_code = EXIT_USAGE


class Unsupported(TapmigError):
    """This QEMU or host cannot run the requested variant: a skip, not a failure."""

    exit_code = EXIT_USAGE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QEMUError(TapmigError):
    """A QEMU process failed: died, hung, or its monitor went away."""

    def __init__(self, message: str, side: str, exit_status: int | None = None,
                 stderr_tail: str = "", console_tail: str = "") -> None:
        super().__init__(message)
        self.side = side
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail
        self.console_tail = console_tail


class QMPCommandError(QEMUError):
    """QEMU refused a QMP command; error_class and desc are QEMU's own words."""

    def __init__(self, side: str, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{side}: {command} failed: {error_class}: {desc}", side)
        self.command = command
        self.error_class = error_class
        self.desc = desc


class MigrationError(TapmigError):
    """A migration did not complete, or left the VMs in the wrong run states."""

    def __init__(self, message: str, side: str, status: str, error_desc: str = "") -> None:
        super().__init__(message)
        self.side = side
        self.status = status
        self.error_desc = error_desc


class CheckFailed(TapmigError):
    """The migration completed, but the network did not behave as promised."""

    def __init__(self, message: str, check: str) -> None:
        super().__init__(message)
        self.check = check
