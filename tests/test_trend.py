"""Leak and drift statistics (harness.analysis.trend): Theil-Sen with Sen's interval, and the rules
that turn a chain's per-hop series into flags. Pure logic, on synthetic series whose
true slope is known."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from harness.analysis.trend import MIN_TREND, RSS_LEAK_KIB, findings, theil_sen
from harness.campaign.outcome import Outcome
from harness.errors import EXIT_FAILED
from harness.record import RunRecord
from harness.report.chain_summary import chain_summaries
from harness.report.summary import build_report


def test_exact_line_has_its_slope_and_a_zero_width_interval() -> None:
    xs = list(range(1, 21))
    s = theil_sen(xs, [2.5 * x + 7 for x in xs])
    assert s is not None and s.per_hop == pytest.approx(2.5)
    assert s.ci == pytest.approx((2.5, 2.5))


def test_flat_series_is_zero_with_zero_interval() -> None:
    s = theil_sen(range(1, 50), [28.0] * 49)
    assert s is not None and (s.per_hop, s.ci) == (0.0, (0.0, 0.0))


def test_too_few_points() -> None:
    assert theil_sen([1], [3.0]) is None
    two = theil_sen([1, 2], [3.0, 5.0])
    assert two is not None and two.per_hop == 2.0 and two.ci is None


def test_a_few_wild_hops_do_not_move_the_slope() -> None:
    """TCG throws the odd 10x slow hop; least squares would follow it, Theil-Sen not."""
    xs = list(range(1, 101))
    ys = [40.0 + 0.1 * x for x in xs]
    for k in (10, 50, 90):
        ys[k] = 900.0
    s = theil_sen(xs, ys)
    assert s is not None and s.per_hop == pytest.approx(0.1, abs=0.01)


def test_interval_covers_the_true_slope_about_95_percent_of_the_time() -> None:
    """Sen's interval on noisy lines: its coverage is what makes a flag trustworthy."""
    rng = random.Random(7)
    trials, covered, width = 300, 0, 0.0
    for _ in range(trials):
        xs = list(range(1, 41))
        ys = [30 + 0.2 * x + rng.gauss(0, 3) for x in xs]
        s = theil_sen(xs, ys)
        assert s is not None and s.ci is not None
        covered += s.ci[0] <= 0.2 <= s.ci[1]
        width += s.ci[1] - s.ci[0]
    assert 0.91 <= covered / trials <= 0.99
    assert width / trials < 0.3  # informative, not [-inf, inf]


def test_long_series_are_thinned_but_keep_their_slope() -> None:
    xs = list(range(1, 6001))
    s = theil_sen(xs, [0.5 * x for x in xs])
    assert s is not None and s.per_hop == pytest.approx(0.5) and s.n == 2000


def hop_records(n: int, **series: Sequence[float]) -> list[RunRecord]:
    """A chain's ok hops, each with a footprint and figures taken from `series`."""
    recs = []
    for i in range(n):
        def val(name: str, default: float, i: int = i) -> float:
            return series[name][i] if name in series else default

        recs.append(RunRecord(
            mode="local", qemu="/q", qemu_version="10.2.2", accel="tcg", guest="g",
            chain="c1", hop=i + 1, blackout_ms=val("blackout_ms", 30.0), downtime_ms=2.0,
            footprint={"qemu_fds": int(val("qemu_fds", 28)), "qemu_tun_fds": 4,
                       "tun_iff": {"tap0": 4}, "tap_queues": {"tap0": [1, 3]},
                       "qemu_rss_kib": 300000, "qemu_anon_kib": int(val("anon", 40000)),
                       "tapmig_rss_kib": int(val("tapmig", 48000)), "tapmig_fds": 15,
                       "interfaces": ["lo", "tap0"]}))
    return recs


def flagged(recs: list[RunRecord]) -> dict[str, bool]:
    return {f.metric: f.flagged for f in findings(recs)}


def test_a_quiet_chain_flags_nothing() -> None:
    rng = random.Random(3)
    recs = hop_records(50, blackout_ms=[rng.uniform(25, 45) for _ in range(50)],
                       tapmig=[48000 + rng.randint(-300, 300) for _ in range(50)])
    assert not any(flagged(recs).values())
    assert chain_summaries(recs)[0]["flags"] == []


def test_one_fd_per_hop_is_a_leak() -> None:
    recs = hop_records(20, qemu_fds=[28 + i for i in range(20)])
    assert flagged(recs)["qemu_fds"] and not flagged(recs)["qemu_tun_fds"]
    (line,) = chain_summaries(recs)[0]["flags"]
    assert line.startswith("LEAK: c1: qemu_fds 28 -> 47 over 20 hops, +1/hop")


def test_a_leak_fails_the_campaign_and_drift_does_not() -> None:
    """Decided from each finding's kind, never from its flag line, which is for people."""
    leak = hop_records(20, qemu_fds=[28 + i for i in range(20)])
    drift = hop_records(20, blackout_ms=[30.0 + 2 * i for i in range(20)])
    for recs, code in ((leak, EXIT_FAILED), (drift, 0)):
        rep = build_report(recs, {}, partial=False)
        assert [len(c["flags"]) for c in rep.chains] == [1]
        assert Outcome(recs, rep, {}, interrupted=False).exit_code == code
    rep = build_report(leak, {}, partial=False)
    rep.chains[0]["flags"] = ["reworded"]
    assert Outcome(leak, rep, {}, interrupted=False).exit_code == EXIT_FAILED


def test_memory_growth_is_flagged_only_when_it_adds_up() -> None:
    """Judged on the second half: 25 hops of 10 KiB is noise, of 100 KiB a leak."""
    small = hop_records(50, tapmig=[48000 + 10 * i for i in range(50)])
    big = hop_records(50, anon=[40000 + 100 * i for i in range(50)])
    assert 10 * 24 < RSS_LEAK_KIB < 100 * 24
    assert not flagged(small)["tapmig_rss_kib"]
    assert flagged(big)["qemu_anon_kib"]


def test_memory_warm_up_is_not_a_leak() -> None:
    """tapmig's RSS climbs ~8 MiB over its first tens of hops, then levels off."""
    rng = random.Random(11)
    warm = [49000 + min(i, 30) * 300 + rng.randint(-200, 200) for i in range(100)]
    assert not flagged(hop_records(100, tapmig=warm))["tapmig_rss_kib"]
    leak = [49000 + i * 60 for i in range(100)]  # 60 KiB a hop, all along
    assert flagged(hop_records(100, tapmig=leak))["tapmig_rss_kib"]


def test_downtime_drift_is_flagged() -> None:
    rng = random.Random(5)
    recs = hop_records(60, blackout_ms=[30 + 0.5 * i + rng.uniform(-3, 3) for i in range(60)])
    drift = next(f for f in findings(recs) if f.metric == "blackout_ms")
    assert drift.flagged and drift.ci is not None and drift.ci[0] > 0
    assert drift.note.endswith(": drifts up")
    assert drift.per_hop == pytest.approx(0.5, abs=0.1)


def test_too_few_hops_say_so() -> None:
    recs = hop_records(MIN_TREND - 5, qemu_fds=[28, 28, 29, 29, 29])
    fds = next(f for f in findings(recs) if f.metric == "qemu_fds")
    assert "too small a sample" in fds.note
    two = next(f for f in findings(hop_records(2, qemu_fds=[28, 29])) if f.metric == "qemu_fds")
    assert two.flagged and "too few hops to tell a leak" in two.note


def test_a_failed_hop_ends_the_summary_with_its_reason() -> None:
    recs = hop_records(3)
    recs[-1].status, recs[-1].error = "failed", "migration cancelled on the source: x"
    recs[-1].failure = {"kind": "MigrationError", "status": "cancelled"}
    summary = chain_summaries(recs)[0]
    assert summary["ok"] == 2 and summary["hops"] == 3
    assert summary["end"] == ("ended at hop 3 after 2 ok: MigrationError: migration "
                              "cancelled on the source: x")
