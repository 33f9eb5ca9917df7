"""tapmig catches what it claims to catch, on real QEMU code: each QEMU variant of
qemu-variants/ (one small patch on the series, built by ci/build-qemu --variants and
given with --variant NAME=PATH) runs the hop that must catch it.

A variant that breaks the target's side is the target of one hop from the shared local
guest of the series' build; one that changes the stream or the source runs on both
sides, as a whole run; a slowdown is a chain that `compare` judges against a chain of
the base. The improvement (quiet-stopped-source) is the target of every other hop of
the shared 4-vCPU local guest, so that the hops alternate the build that stops: `compare`
judges the hops each build stopped against the other's, and calls the UDP requests lost
between STOP and RESUME IMPROVED (the base loses the first one each queue gets after
STOP, about 3 a hop; the variant about none: qemu-variants/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.guest.spec import Guest
from harness.qemu.capabilities import Capabilities
from harness.record import RunRecord
from harness.report.model import COUNTED
from harness.report.summary import build_report, write_report
from harness.run.config import Config
from harness.testing.plugin import RunFactory
from harness.vocabulary import AccelChoice
from tests.support import call_tapmig
from tests.support.shared import Hopper, Key, SharedGuest, on

pytestmark = [pytest.mark.kvm, pytest.mark.usefixtures("tapmig_root_with_tun")]

Variant = Callable[[str], str]
# Chains of ICMP alone, each hop about a second: the base's blackout against the slow
# load's, whose 30 ms sit in the target's device load.
CHAIN = ("--mode", "local", "--flows", "0", "--tcp", "off", "--no-all-queues")
BASE_HOPS, SLOW_HOPS = 8, 4
# A stopped source that reads the TAP loses the first packet each live queue gets after
# STOP. 8 UDP flows, 50 requests/s each, give each queue of a 4-vCPU guest a packet every
# 10 ms, about the time from STOP to RESUME here, and ICMP goes every 10 ms too. Faster
# hides the variant: a packet read while QEMU pauses the vCPUs (runstate already
# stopped) is flushed or purged when the VM stops, which turns the variant's reading
# back on (qemu-variants/README.md).
LOSS_TRAFFIC: dict[str, Any] = {"flows": 8, "flow_interval": 0.02, "ping_interval": 0.01,
                                "tcp": "off"}
LOSS_HOPS = 12  # the source alternates: 6 hops from each build


def failure(rec: RunRecord) -> dict[str, Any]:
    assert rec.status == "failed", f"the variant passed: {rec.status} {rec.error}"
    assert isinstance(rec.failure, dict)
    return rec.failure


@pytest.mark.spends_guest
@on(Key("local", queues=4))
def test_a_target_that_reopens_the_tap_fails_the_handover(
        booted: SharedGuest, hop: Hopper, qemu_variant: Variant) -> None:
    """reopen-tap: the target opens tap0's queues by name and closes the received fds.
    The same TAP, its ifindex and traffic: only the files' identity (kcmp) tells."""
    rec = hop(target_qemu=qemu_variant("reopen-tap"))
    f = failure(rec)
    assert (f["kind"], f["check"], f["found"], f["queue"], f["tap"]) == (
        "HandoverFailed", "handover", "reopened", 0, "tap0")
    queues = rec.checks["handover"]["queues"]
    assert [q["found"] for q in queues] == ["reopened"] * 4
    assert rec.target_qemu == qemu_variant("reopen-tap")
    assert rec.blackout_ms is not None  # the network itself came back
    booted.spend()  # a variant serves it now


@pytest.mark.spends_guest
@on(Key("local", queues=4))
def test_a_target_whose_rx_stays_dead_fails_a_flow(
        booted: SharedGuest, hop: Hopper, qemu_variant: Variant) -> None:
    """dead-rx: the target never polls the received fds, so nothing reaches the guest."""
    rec = hop(target_qemu=qemu_variant("dead-rx"), flows=8, recover_timeout=2.0)
    f = failure(rec)
    assert (f["kind"], f["check"]) == ("CheckFailed", "flows")
    # The files were handed over: what broke is after them.
    assert [q["found"] for q in rec.checks["handover"]["queues"]] == ["handed"] * 4


def test_a_source_that_hands_over_only_live_queues_fails_naming_the_first_missing(
        tapmig_run: RunFactory, series_qemu: Capabilities, qemu_variant: Variant,
        tapmig_guest: Guest, tapmig_accel: AccelChoice) -> None:
    """idle-queue-no-fd: with one vCPU the guest uses queue pair 0 only, and the source
    sends that fd alone (its stream format changed, so it runs on both sides)."""
    variant = qemu_variant("idle-queue-no-fd")
    rec = tapmig_run(Config(qemu=variant, mode="local", queues=4, guest=tapmig_guest,
                            accel=tapmig_accel))
    f = failure(rec)
    assert (f["kind"], f["found"], f["queue"]) == ("HandoverFailed", "missing", 1)
    assert [q["found"] for q in rec.checks["handover"]["queues"]] == [
        "handed", "missing", "missing", "missing"]


def chain(qemu: str, hops: int, out: Path) -> dict[str, Any]:
    """`tapmig measure --chain` in this process: one boot, `hops` local hops."""
    done = call_tapmig("measure", "--qemu", qemu, *CHAIN, "--chain", str(hops),
                       "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert isinstance(report, dict)
    return report


def compare(base: Path, current: Path) -> dict[str, Any]:
    done = call_tapmig("compare", "--baseline", str(base / "report.json"),
                       "--current", str(current / "report.json"), "--json")
    verdict = json.loads(done.stdout)
    assert isinstance(verdict, dict)
    assert done.returncode == (1 if verdict["verdict"] == "REGRESSED" else 0)
    return verdict


@pytest.fixture(scope="module")
def base_chain(series_qemu: Capabilities, tmp_path_factory: pytest.TempPathFactory,
               tapmig_root_with_tun: None) -> Path:
    """The series' build itself: the baseline a judged variant is compared with."""
    out = tmp_path_factory.mktemp("base") / "chain"
    chain(series_qemu.qemu, BASE_HOPS, out)
    return out


def test_a_slow_device_load_regresses_the_blackout_in_its_phase(
        base_chain: Path, qemu_variant: Variant, tmp_path: Path) -> None:
    """slow-load: 30 ms of sleep in virtio-net's load on the target."""
    chain(qemu_variant("slow-load"), SLOW_HOPS, tmp_path / "slow")
    verdict = compare(base_chain, tmp_path / "slow")
    assert verdict["verdict"] == "REGRESSED", verdict["lines"]
    [blackout] = [j for j in verdict["judgements"] if j["metric"] == "blackout_ms"]
    assert blackout["regressed"] and blackout["phase"] == "transfer_and_load"


@pytest.mark.spends_guest
@on(Key("local", queues=4, vcpus=4))
def test_a_source_that_stops_reading_the_tap_improves_the_loss(
        booted: SharedGuest, hop: Hopper, qemu_variant: Variant, tmp_path: Path) -> None:
    """quiet-stopped-source: what arrives after STOP waits in the TAP for the target.

    Every hop names the variant as target_qemu, so the guest goes base -> variant,
    variant -> base and so on (harness.run.lab target_side). Both are updates between
    builds of one version on one machine, which compare pairs as like-for-like; what
    differs is which build stops, the other landing. Each arm's records make a report
    as `tapmig report` makes one."""
    base, variant = booted.setup.caps.qemu, qemu_variant("quiet-stopped-source")
    records = [hop(target_qemu=variant, **LOSS_TRAFFIC) for _ in range(LOSS_HOPS)]
    booted.spend()  # the variant may serve it now
    assert [r.status for r in records] == ["ok"] * LOSS_HOPS, [r.error for r in records]
    assert [(r.qemu, r.target_qemu) for r in records] == [
        (base, variant), (variant, base)] * (LOSS_HOPS // 2)
    for arm, source in (("base", base), ("variant", variant)):
        report = build_report([r for r in records if r.qemu == source], {}, partial=False)
        write_report(report, tmp_path / arm)
    verdict = compare(tmp_path / "base", tmp_path / "variant")
    assert verdict["verdict"] == "IMPROVED", verdict["lines"]
    improved = {j["metric"] for j in verdict["judgements"] if j["improved"]}
    assert improved & COUNTED.keys(), verdict["lines"]
