"""The per-queue handover evidence: harness.analysis.handover on the TUN files two real
QEMUs held (tests/data/handover: a local and a new-TAP hop of the built QEMU with the
series), and on the breaches the project's QEMU variants make; kcmp on real files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.analysis import handover
from harness.errors import HandoverFailed
from harness.host.tunfiles import TunFile, same_file
from harness.qemu.vm import STDERR_LINE
from harness.vocabulary import Mode

DATA = Path(__file__).parent / "data" / "handover"


def captured(name: str) -> dict[str, Any]:
    evidence = json.loads((DATA / name).read_text())["checks"]["handover"]
    assert isinstance(evidence, dict)
    return evidence


def held(evidence: dict[str, Any]) -> tuple[list[TunFile], list[TunFile], set[tuple[int, int]]]:
    """The files both QEMUs held, as the record names them, and the pairs kcmp matched."""
    qs = evidence["queues"]
    source = [TunFile(q["source_fd"], evidence["source_tap"]) for q in qs]
    target = [TunFile(q["target_fd"], q["tap"]) for q in qs]
    return source, target, {(q["source_fd"], q["target_fd"]) for q in qs if q["same_file"]}


def redo(mode: Mode, source: list[TunFile], target: list[TunFile], same: set[tuple[int, int]],
         taps: tuple[str, str] = ("tap0", "tap0"), queues: int = 4) -> handover.Handover:
    return handover.match(mode, queues, source, target, *taps, lambda s, d: (s, d) in same)


def test_a_real_local_hop_hands_every_queue_over() -> None:
    evidence = captured("local-record.json")
    h = redo("local", *held(evidence))
    assert h.to_json()["queues"] == evidence["queues"]
    assert [q.found for q in h.queues] == ["handed"] * 4
    handover.check(h, 4)


def test_a_real_new_tap_hop_opens_new_files_on_the_new_tap() -> None:
    evidence = captured("new-tap-record.json")
    h = redo("new-tap", *held(evidence), taps=("tap0", "tap1"))
    assert h.to_json()["queues"] == evidence["queues"]
    assert [(q.found, q.tap) for q in h.queues] == [("new", "tap1")] * 4
    handover.check(h, 4)


def breach(mode: Mode, target: list[TunFile], same: set[tuple[int, int]],
           taps: tuple[str, str] = ("tap0", "tap0")) -> HandoverFailed:
    source, _, _ = held(captured("local-record.json"))
    with pytest.raises(HandoverFailed) as info:
        handover.check(redo(mode, source, target, same, taps), 4)
    assert info.value.check == "handover"
    return info.value


def test_a_reopened_queue_fails_naming_it() -> None:
    """The target opened tap0's queues by name: same TAP, new open files."""
    target = [TunFile(fd, "tap0") for fd in (30, 31, 32, 33)]
    err = breach("local", target, set())
    assert (err.queue, err.found, err.tap) == (0, "reopened", "tap0")
    assert "queues 1, 2, 3" in str(err)


def test_swapped_queues_fail_naming_the_first() -> None:
    target = [TunFile(fd, "tap0") for fd in (21, 22, 23, 24)]
    err = breach("local", target, {(19, 21), (20, 23), (21, 22), (22, 24)})
    assert (err.queue, err.found) == (1, "swapped")


def test_a_queue_without_a_file_fails_naming_it() -> None:
    """The source handed over the used queue pair's file only."""
    err = breach("local", [TunFile(21, "tap0")], {(19, 21)})
    assert (err.queue, err.found) == (1, "missing")


def test_new_tap_must_not_share_the_source_file() -> None:
    target = [TunFile(fd, "tap1") for fd in (21, 22, 23, 24)]
    err = breach("new-tap", target, {(21, 23)}, taps=("tap0", "tap1"))
    assert (err.queue, err.found, err.tap) == (2, "shared", "tap1")


def test_a_file_on_another_tap_is_no_queue_of_the_netdev() -> None:
    """In local mode a target file on tap1 is not one of tap0's queues: all missing."""
    err = breach("local", [TunFile(fd, "tap1") for fd in (21, 22, 23, 24)], set())
    assert (err.queue, err.found) == (0, "missing")


def test_kcmp_tells_one_open_file_from_another_across_processes() -> None:
    """What the proof asks the kernel, on files of this test's own: a pipe end shared
    with a child is one file, a dup of it too, the other end is another."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.read(r, 1)
        os._exit(0)
    try:
        me, dup = os.getpid(), os.dup(r)
        assert same_file(me, r, child, r)
        assert same_file(me, dup, child, r)
        assert not same_file(me, w, child, r)
        os.close(dup)
    finally:
        os.write(w, b"x")
        os.waitpid(child, 0)
        os.close(r)
        os.close(w)


def test_qemu_stderr_lines_lose_their_timestamp_and_program_name() -> None:
    """A failed load's chain of causes, as the built QEMU wrote it with -msg timestamp=on."""
    lines = ["2026-12-07T07:41:02.123456Z qemu-system-x86_64: post load hook failed for: "
             "net-tap", "qemu-system-x86_64: error while loading state section id 2"
             "(0000:00:01.0/virtio-net)", "   "]
    assert [m["text"] for line in lines if (m := STDERR_LINE.match(line))] == [
        "post load hook failed for: net-tap",
        "error while loading state section id 2(0000:00:01.0/virtio-net)", None]
