"""The VM: one QEMU process under QMP control, and what a user needs to start one.

A VM runs the command line it is given (plus its own monitor and console) in a run
directory, behind an optional prefix such as `nsenter --net=...`; it knows nothing of
namespaces. As a context manager it is always reaped: `quit`, then SIGTERM, then
SIGKILL. query_capabilities says what a binary can do before its command line is
chosen; QEMUError and QMPCommandError are what a failed process or command raises,
with QEMU's command line, stderr and console tail as fields; event_matches is the
sub-dict match that VM.wait_event's `match` uses.

    args = ["-machine", "none", "-nodefaults", "-display", "none", "-S"]
    with VM("demo", "qemu-system-x86_64", args, Path(tmp)) as vm:
        vm.cmd("query-status")

Exposes: VM, event_matches, Capabilities, query_capabilities, QEMUError,
QMPCommandError

This is the public face of harness.qemu; harness's own code imports harness.qemu.
"""

from __future__ import annotations

from harness.errors import QEMUError, QMPCommandError
from harness.qemu.capabilities import Capabilities, query_capabilities
from harness.qemu.vm import VM, event_matches

__all__ = ["VM", "Capabilities", "QEMUError", "QMPCommandError", "event_matches",
           "query_capabilities"]
