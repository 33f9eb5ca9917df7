"""Chains of real migrations of one booted guest (harness.run.chain).

Every hop is a fresh incoming QEMU on the same RAM file. What repetition breaks is
QEMU's (fds, TAP queues, the same tap0), so that runs on each --qemu, as ten hops
of the shared guest (tests/support/shared.py: the hop of harness.run.chain): ten
is what the trend needs (harness.analysis.trend.MIN_TREND). The checks use what
the kernel says, not what the harness computed: the ifindex of tap0 through the
chain in local mode, which TAP the serving QEMU's TUN fds are attached to (fdinfo)
in new-TAP mode, and the QEMU's fd count from /proc.

How a chain ends (a failing hop, a Ctrl-C, --duration) and real shards, run at
the same time on one host and merged by `tapmig report`, are tapmig's: they run
once, on the first --qemu, with no traffic beyond ICMP and one queue. The autouse
leak check proves every path leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.analysis.trend import MIN_TREND
from harness.guest.spec import Guest
from harness.host import reaper
from harness.qemu.capabilities import Capabilities
from harness.record import RunRecord
from harness.report.chain_summary import chain_summaries
from harness.run import timings
from harness.run.chain import SETTLE_S, TAIL_S, Chain, ChainRun
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Moment, Observer
from harness.vocabulary import AccelChoice, Mode
from tests.support import REPO, call_tapmig, interruptible
from tests.support.shared import Hopper, Key, SharedGuest, on

pytestmark = [pytest.mark.kvm, pytest.mark.usefixtures("tapmig_root_with_tun")]
HOPS = MIN_TREND
# What these tests judge is what repetition breaks: the guest answering both ways
# after every hop, the same tap0, no fd, queue or interface left over. Whether the
# outage lies within [STOP - 150 ms, RESUME + 150 ms] under TCG is judged per run in
# test_tap_migration.py; on a busy 2-core host a fresh TCG target can need 300 ms
# after RESUME, and a chain makes ten such checks, so here the slack is 1 s: still
# far below an outage anyone would call working.
EPSILON_MS = 1000.0


def run_chain(caps: Capabilities, guest: Guest, accel: AccelChoice, out: Path, mode: Mode,
              hops: int, fault: Observer[Lab] | None = None, **cfg: object) -> list[RunRecord]:
    recs: list[RunRecord] = []
    config = Config(qemu=caps.qemu, mode=mode, accel=accel, guest=guest, out=out,
                    epsilon_ms=EPSILON_MS, **cfg)  # type: ignore[arg-type]
    ChainRun(Chain.new(config, hops, f"test-{mode}"), recs.append, print,
             observers=[fault] if fault is not None else []).run()
    return recs


@on(Key("new-tap"), Key("local"))
def test_a_chain_of_hops_keeps_the_guest_and_leaks_nothing(booted: SharedGuest,
                                                           hop: Hopper) -> None:
    recs = [hop(epsilon_ms=EPSILON_MS, settle_s=SETTLE_S, tail_s=TAIL_S)
            for _ in range(HOPS)]
    assert [(r.status, r.error) for r in recs] == [("ok", None)] * HOPS
    # Every step of every hop, timed on the clock of its duration_s (rounded to 1 ms).
    assert all(tuple(r.step_s) == timings.NAMES for r in recs), recs[0].step_s
    assert all(sum(r.step_s.values()) <= (r.duration_s or 0) + 0.001 for r in recs), \
        [(r.step_s, r.duration_s) for r in recs]
    fds = [(r.footprint or {})["qemu_fds"] for r in recs]
    assert fds[-1] == fds[0], fds
    summary = chain_summaries(recs)[0]
    assert not [f for f in summary["findings"] if f["kind"] == "leak" and f["flagged"]], \
        summary["flags"]
    iffs = [(r.footprint or {})["tun_iff"] for r in recs]
    if booted.key.mode == "local":
        index = recs[0].checks["tap0_ifindex"][0]
        assert all(r.checks["tap0_ifindex"] == [index, index] for r in recs)
        assert all(i == {"tap0": 4} for i in iffs), iffs
    else:  # the guest's QEMU sits on tap1, tap0, tap1 ... as the host side moved
        first = next(iter(iffs[0]))
        other = "tap0" if first == "tap1" else "tap1"
        assert iffs == [{(first if n % 2 else other): 4} for n in range(1, HOPS + 1)]


@pytest.mark.qemu_independent
def test_a_failing_hop_ends_the_chain_and_keeps_the_finished_ones(
        tapmig_capabilities: Capabilities, tapmig_guest: Guest, tapmig_accel: AccelChoice,
        tmp_path: Path) -> None:
    """The target of hop 3 is killed at switchover: hops 1-2 stay recorded, hop 3 says
    why, and the source it left serving (the target of hop 2) is shut down cleanly."""
    def kill_third_target(phase: Moment, lab: Lab, _result: object) -> None:
        if phase == "switchover" and lab.migrations == 2:
            assert lab.target is not None
            lab.target.kill()

    recs = run_chain(tapmig_capabilities, tapmig_guest, tapmig_accel, tmp_path, "new-tap", HOPS,
                     queues=1, pause_before_switchover=True, fault=kill_third_target)
    assert [(r.hop, r.status) for r in recs] == [(1, "ok"), (2, "ok"), (3, "failed")]
    failed = recs[-1]
    assert failed.failure is not None
    assert (failed.failure["kind"], failed.failure["side"], failed.failure["status"]) == (
        "MigrationError", "source", "failed")
    assert failed.checks["last_good_qemu"] == {"qemu": "target-2", "exit_status": 0}
    # Where its time went, as far as it got: the migration never completed.
    assert list(failed.step_s) == ["settle"] and failed.step_s["settle"] > 0, failed.step_s
    assert (tmp_path / failed.artifacts["ping"]).stat().st_size > 0
    assert chain_summaries(recs)[0]["end"].startswith(
        "ended at hop 3 after 2 ok: MigrationError: migration failed on the source")


def read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process is gone
        return b""


def measure_args(qemu: str, accel: AccelChoice, out: Path, *extra: str) -> list[str]:
    """A chain of `tapmig measure` with one queue and ICMP only: how a chain ends is
    the subject, not the traffic (tests/test_traffic.py)."""
    return [sys.executable, "-m", "harness.cli.main", "measure", "--qemu", qemu, "--mode",
            "new-tap", "--accel", accel, "--out", str(out), "--queues", "1",
            "--flows", "0", "--tcp", "off", "--epsilon-ms", str(EPSILON_MS), *extra]


@pytest.mark.qemu_independent
def test_ctrl_c_keeps_every_finished_hop_and_names_the_interruption(
        tapmig_qemu: str, tapmig_accel: AccelChoice, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(measure_args(tapmig_qemu, tapmig_accel, out, "--chain", "50"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    try:
        deadline = time.monotonic() + 180
        while len(list((out / "records").glob("*.json"))) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert reaper.leftovers(proc.pid) == []
    mark = f"tapmig-{proc.pid}-".encode()  # in every QEMU's command line (its run dir)
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if mark in read(p)]
    report = json.loads((out / "report.json").read_text())
    assert report["partial"] and "PARTIAL" in stdout
    (chain,) = report["chains"]
    recs = sorted((RunRecord.read(p) for p in (out / "records").glob("*.json")),
                  key=lambda r: r.hop or 0)
    assert all(r.status == "ok" for r in recs[:-1]) and len(recs) >= 4
    last = recs[-1]
    assert (last.status, (last.failure or {}).get("kind")) == ("failed", "Interrupted")
    assert tuple(last.step_s) == timings.NAMES[:len(last.step_s)], last.step_s  # as far as it got
    assert last.checks["last_good_qemu"]["exit_status"] == 0
    assert chain["ok"] == len(recs) - 1 and "Interrupted" in chain["end"]


def run_at_once(commands: list[list[str]], outs: list[Path]) -> list[set[str]]:
    """The commands as processes at the same time; each must succeed. What tapmig
    resources (reaper.leftovers) each had while it ran, all gone once it ended."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for argv, out in zip(commands, outs, strict=True):
            out.mkdir(parents=True)
            with open(out.parent / f"{out.name}.stderr", "wb") as err:
                procs.append(subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=err))
        seen: dict[int, set[str]] = {p.pid: set() for p in procs}
        deadline = time.monotonic() + 300
        while any(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, "still running after 300 s"
            for p in procs:
                seen[p.pid] |= set(reaper.leftovers(p.pid))
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        reaper.reap_orphans()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, (out.parent / f"{out.name}.stderr").read_text()
        assert reaper.leftovers(p.pid) == []
    return [seen[p.pid] for p in procs]


@pytest.mark.qemu_independent
def test_real_shards_run_at_once_and_merge_into_one_report(
        tapmig_qemu: str, tapmig_accel: AccelChoice, tmp_path: Path) -> None:
    """Two shards of `measure --chain 2 --iterations 2`, run at the same time on this
    host: both succeed, each with its own namespace, RAM file and run dir (every name
    carries its PID), and neither sees the other's; under TCG the two slow each other
    down, which the 1 s window slack allows. Shard i runs chain i; `tapmig report`
    merges them, and refuses a shard from an unlike host."""
    shards = [tmp_path / "s1", tmp_path / "s2"]
    seen = run_at_once([measure_args(tapmig_qemu, tapmig_accel, out, "--chain", "2",
                                     "--iterations", "2", "--shard", f"{i}/2")
                        for i, out in enumerate(shards, 1)], shards)
    assert [{entry.split()[0] for entry in s} for s in seen] == [{"netns", "shm", "rundir"}] * 2
    assert seen[0].isdisjoint(seen[1])
    iterations = [sorted(RunRecord.read(p).iteration or 0 for p in (d / "records").glob("*"))
                  for d in shards]
    assert iterations == [[1, 2], [3, 4]]
    merged = call_tapmig("report", str(shards[0]), str(shards[1]), "--out",
                         str(tmp_path / "m"))
    assert merged.returncode == 0, merged.stderr
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    (combo,) = report["combinations"]
    assert combo["metrics"]["blackout_ms"]["n"] == 4 and len(report["chains"]) == 2
    assert {c["shard"] for c in report["chains"]} == {"1/2", "2/2"}
    assert report["notes"] == [] and not report["partial"]
    alien = tmp_path / "alien"
    shutil.copytree(shards[1], alien)
    for path in (alien / "records").glob("*.json"):
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "host_kernel": "5.10.0-other"}))
    refused = call_tapmig("report", str(shards[0]), str(alien), "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "host kernel" in refused.stderr
    assert "--allow-mismatch" in refused.stderr
    allowed = call_tapmig("report", str(shards[0]), str(alien), "--out", str(tmp_path / "y"),
                          "--allow-mismatch")
    assert allowed.returncode == 0 and "merged despite a mismatch" in allowed.stdout


@pytest.mark.qemu_independent
def test_duration_ends_the_chain_when_the_time_is_up(tapmig_qemu: str,
                                                     tapmig_accel: AccelChoice,
                                                     tmp_path: Path) -> None:
    """A soak: no hop starts after --duration; the chain so far is a whole, ok report.
    The time is up a few hops in (the boot counts), far from the 500 asked for."""
    out = tmp_path / "out"
    done = subprocess.run(measure_args(tapmig_qemu, tapmig_accel, out, "--chain", "500",
                                       "--duration", "6s"),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    (chain,) = report["chains"]
    assert 1 <= chain["hops"] < 500 and chain["ok"] == chain["hops"], chain
    assert chain["end"] == f"{chain['hops']} hops, all ok" and not report["partial"]
