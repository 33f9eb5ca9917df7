"""Bad input and unusable hosts: one line that says what to do, and exit 2, before any run.

Each case runs the real `tapmig` command in a subprocess; nothing is mocked.
The host conditions are made real too: a PATH without ping, and a private
mount namespace where /dev/net/tun is hidden. (Unprivileged users are in
test_rootless.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import accel
from harness.cache import default_cache
from harness.cli import format_record
from harness.guest import build_embedded
from harness.record import RunRecord

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges "
                                "or to make a mount namespace")


def tapmig(*args: str, env: dict[str, str] | None = None,
           prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "harness.cli", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})},
                          cwd=Path(__file__).resolve().parent.parent)


def one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tapmig: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0]
    assert res.stdout == ""


def test_missing_qemu() -> None:
    one_line_error(tapmig("run", "--qemu", "/nonexistent/qemu"), "not found", "--qemu")


def test_not_a_qemu() -> None:
    one_line_error(tapmig("run", "--qemu", "/bin/true"), "not a QEMU", "--qemu")


@needs_qemu
def test_local_mode_on_a_qemu_without_the_series() -> None:
    assert QEMU is not None
    res = tapmig("run", "--qemu", QEMU, "--mode", "local")
    one_line_error(res, "cannot do local migration", "incoming-fds")


@needs_qemu
def test_queues_out_of_range() -> None:
    assert QEMU is not None
    one_line_error(tapmig("run", "--qemu", QEMU, "--queues", "0"), "--queues 0")


@needs_qemu
@needs_root
def test_ping_missing(tmp_path: Path) -> None:
    assert QEMU is not None
    bare = tmp_path / "bin"
    bare.mkdir()  # a PATH with no ping on it
    one_line_error(tapmig("run", "--qemu", QEMU, env={"PATH": str(bare)}), "ping not found")


@needs_qemu
@needs_root
def test_no_dev_net_tun(tmp_path: Path) -> None:
    """Hide /dev/net/tun under a tmpfs, in a private mount namespace of this command only."""
    assert QEMU is not None
    script = ("mount --make-rprivate / && mount -t tmpfs none /dev/net && "
              f"exec {sys.executable} -m harness.cli run --qemu {QEMU}")
    res = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    one_line_error(res, "/dev/net/tun is missing")


def test_analyze_rejects_a_file_that_is_no_ping_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("hello\n")
    one_line_error(tapmig("analyze", str(log)), "no `ping -D -O` lines")


def test_analyze_bad_window(tmp_path: Path) -> None:
    log = tmp_path / "ping.log"
    log.write_text("[1.000000] 64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.1 ms\n")
    one_line_error(tapmig("analyze", str(log), "--window", "x"), "--window")


def test_format_record_shows_the_four_numbers() -> None:
    rec = RunRecord(mode="local", qemu="/q", qemu_version="10.2.2", accel="tcg", guest="g",
                    blackout_ms=12.5, lost=3, downtime_ms=2.0, stop_resume_ms=8.25,
                    resolution_ms=1.1, interval_ms=1.0)
    text = format_record(rec)
    for needle in ("12.5 ms", "lost packets    3", "QMP downtime    2 ms", "8.25 ms"):
        assert needle in text


def test_bad_accelerator_from_the_environment() -> None:
    one_line_error(tapmig("run", env={"TAPMIG_ACCEL": "bogus"}), "unknown accelerator 'bogus'")


@needs_qemu
@needs_root
def test_kvm_required_where_kvm_cannot_boot_the_guest() -> None:
    """--accel kvm must refuse, in one line, a host where auto would fall back to TCG."""
    assert QEMU is not None
    chosen, _ = accel.choose("auto", QEMU, build_embedded(default_cache(), log=print),
                             default_cache(), log=print)
    if chosen == "kvm":
        pytest.skip("KVM boots the guest on this host, so --accel kvm is not refused")
    one_line_error(tapmig("run", "--qemu", QEMU, "--accel", "kvm"), "--accel kvm, but",
                   "use --accel auto or tcg")
