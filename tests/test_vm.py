"""The VM's lifecycle and events against a real QEMU, started with -S and no guest (no
machine, nothing to boot), so no guest lock is needed: how each shutdown went, events
that came before a wait, and the errors' fields.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from harness.errors import InternalError, QEMUError
from harness.qemu.vm import VM, event_matches

EMPTY = ["-machine", "none", "-nodefaults", "-display", "none", "-S"]


def empty_vm(qemu: str, tmp_path: Path, *extra: str) -> VM:
    return VM("empty", qemu, [*EMPTY, *extra], tmp_path)


def vm_records(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The levels of what harness.qemu.vm logged at INFO and above."""
    return [r.levelno for r in caplog.records
            if r.name == "harness.qemu.vm" and r.levelno >= logging.INFO]


def test_quit_is_honoured(tapmig_qemu: str, tmp_path: Path,
                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="harness.qemu.vm")
    vm = empty_vm(tapmig_qemu, tmp_path)
    with vm:
        assert vm.cmd("query-status")["status"] == "prelaunch"
        running_how = vm.shutdown_how
    assert running_how is None
    assert vm.proc is not None
    assert (vm.shutdown_how, vm.proc.returncode) == ("quit", 0)
    assert vm_records(caplog) == [logging.INFO]
    assert not vm.qmp_path.exists() and not vm.console_path.exists()
    vm.shutdown()  # once only: a second shutdown changes nothing
    assert vm.shutdown_how == "quit"


def test_events_before_the_wait_are_seen_and_passed_over_ones_stay(
        tapmig_qemu: str, tmp_path: Path) -> None:
    with empty_vm(tapmig_qemu, tmp_path) as vm:
        vm.cmd("cont")
        vm.cmd("stop")
        # Both are in by now; the wait for STOP passes over RESUME, which stays.
        stop = vm.wait_event("STOP", timeout=5)
        resume = vm.wait_event("RESUME", timeout=5, match={"event": "RESUME"})
        assert (stop["event"], resume["event"]) == ("STOP", "RESUME")
        assert resume["timestamp"]["seconds"] <= stop["timestamp"]["seconds"]
        with pytest.raises(QEMUError) as again:  # each event is returned once
            vm.wait_event("RESUME", timeout=0.3)
        assert (again.value.side, again.value.argv, again.value.exit_status) == (
            "empty", vm.argv, None)
    # The record of every event outlives the QEMU; quit adds SHUTDOWN.
    assert [e["event"] for e in vm.events] == ["RESUME", "STOP", "SHUTDOWN"]


def test_event_matches_takes_a_sub_dict() -> None:
    event = {"event": "MIGRATION", "data": {"status": "completed"}, "timestamp": {}}
    assert event_matches(event, None)
    assert event_matches(event, {"data": {"status": "completed"}})
    assert event_matches(event, {"data": {"status": None}})
    assert not event_matches(event, {"data": {"status": "failed"}})
    assert not event_matches(event, {"data": {"id": "x"}})
    assert not event_matches(event, {"event": {"nested": 1}})


def test_kill_then_shutdown_says_sigkill(tapmig_qemu: str, tmp_path: Path) -> None:
    with empty_vm(tapmig_qemu, tmp_path) as vm:
        vm.kill()
        assert vm.shutdown_how == "sigkill"
        with pytest.raises(QEMUError) as died:  # the monitor stays: QEMU met as dead
            vm.wait_event("STOP", timeout=5)
        assert (died.value.exit_status, died.value.argv) == (-signal.SIGKILL, vm.argv)
    assert vm.shutdown_how == "sigkill"


def test_a_qemu_killed_by_someone_else_is_a_warning(
        tapmig_qemu: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="harness.qemu.vm")
    with empty_vm(tapmig_qemu, tmp_path) as vm:
        assert vm.proc is not None
        os.kill(vm.proc.pid, signal.SIGKILL)
        vm.proc.wait(timeout=10)
    assert vm.shutdown_how == "exited"
    assert vm_records(caplog) == [logging.WARNING]


def test_a_stopped_qemu_takes_sigkill(tapmig_qemu: str, tmp_path: Path) -> None:
    """SIGSTOPped: it answers no quit, and SIGTERM waits for a SIGCONT that never comes."""
    vm = empty_vm(tapmig_qemu, tmp_path).launch()
    assert vm.proc is not None
    os.kill(vm.proc.pid, signal.SIGSTOP)
    vm.shutdown(timeout=1)
    assert (vm.shutdown_how, vm.proc.returncode) == ("sigkill", -signal.SIGKILL)


def test_a_qemu_that_ignores_quit_takes_sigterm(tapmig_qemu: str, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Stopped through the quit's whole timeout (2 s), resumed a second into the
    SIGTERM phase (2 s), it exits on the SIGTERM."""
    caplog.set_level(logging.INFO, logger="harness.qemu.vm")
    vm = empty_vm(tapmig_qemu, tmp_path).launch()
    assert vm.proc is not None
    os.kill(vm.proc.pid, signal.SIGSTOP)
    resume = threading.Timer(3.0, os.kill, (vm.proc.pid, signal.SIGCONT))
    resume.start()
    t0 = time.monotonic()
    try:
        vm.shutdown(timeout=2)
    finally:
        resume.join()
    assert vm.shutdown_how == "sigterm"
    assert 2.5 < time.monotonic() - t0 < 4.5
    assert vm_records(caplog) == [logging.WARNING, logging.WARNING]  # quit failed, SIGTERM


def test_a_qemu_that_refuses_its_arguments(tapmig_qemu: str, tmp_path: Path) -> None:
    vm = empty_vm(tapmig_qemu, tmp_path, "-no-such-option")
    with pytest.raises(QEMUError) as failed:
        vm.launch()
    assert (failed.value.side, failed.value.exit_status) == ("empty", 1)
    assert "-no-such-option" in failed.value.argv
    assert failed.value.argv == vm.argv and failed.value.argv[0] == tapmig_qemu
    assert vm.shutdown_how == "exited"


def test_a_vm_launches_once(tapmig_qemu: str, tmp_path: Path) -> None:
    with empty_vm(tapmig_qemu, tmp_path) as vm, pytest.raises(InternalError) as twice:
        vm.launch()
    assert twice.value.invariant


def test_a_console_wait_that_times_out_names_the_last_line(tapmig_qemu: str,
                                                           tmp_path: Path) -> None:
    """A guest that never gets to its line leaves a maintainer asking where it stopped:
    the error's first line says, and console_tail holds more. QEMU's own monitor on the
    console chardev gives it real text to print, with no guest."""
    vm = empty_vm(tapmig_qemu, tmp_path, "-mon", "chardev=con,mode=readline")
    with vm, pytest.raises(QEMUError) as caught:
        vm.wait_console("NEVER-SHOWN", timeout=1.0)
    first = str(caught.value).splitlines()[0]
    assert first == "empty: console never showed 'NEVER-SHOWN' within 1s; its last line: '(qemu)'"
    assert caught.value.console_tail.endswith("monitor - type 'help' for more information\n(qemu)")


def test_an_interrupt_after_an_answer_spares_the_next_command(tapmig_qemu: str,
                                                             tmp_path: Path) -> None:
    """A Ctrl-C can land after a QMP call's answer came and before the event loop ran the
    callback that stops it (here: raised by a callback that waits for the call to be
    done). Left queued, that callback stopped the next call, the teardown's `quit`,
    before QEMU answered ("Event loop stopped before Future completed"); the next
    command and the quit are answered as usual."""

    async def answered_then_interrupted() -> str:
        loop = asyncio.get_running_loop()
        call = {asyncio.current_task()} | {t for t in asyncio.all_tasks(loop)
                                            if getattr(t.get_coro(), "__name__", "") == "wait_for"}

        def interrupt_once_done() -> None:
            if all(task is not None and task.done() for task in call):
                raise KeyboardInterrupt
            loop.call_soon(interrupt_once_done)

        loop.call_soon(interrupt_once_done)
        return "answered"

    vm = empty_vm(tapmig_qemu, tmp_path)
    with vm:
        monitor = vm._monitor  # the VM API has no way to interrupt it mid-call
        assert monitor is not None
        with pytest.raises(KeyboardInterrupt):
            monitor._sync(answered_then_interrupted(), 5)
        assert vm.cmd("query-status")["status"] == "prelaunch"
    assert vm.shutdown_how == "quit"
