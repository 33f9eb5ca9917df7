"""harness.analysis.noise on real captured runs: quiet, loaded, and too noisy to judge.

tests/data/noise/README.md says how each run was captured (command, CPU hogs, load
average) and trimmed. Each capture is a `tapmig run` or chain hop of the built QEMU
under TCG with the default traffic: its ping and flow logs, its record.json, and
marks.json with when `migrate` was sent (the cut-off). No QEMU runs here.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from harness.analysis import flows, ping
from harness.analysis.noise import (
    MAX_EPSILON_MS,
    MIN_ICMP_REPLIES,
    NOISE_FACTOR,
    Calibration,
    Noise,
    calibrate,
    measure,
    min_settle_s,
    percentile,
)
from harness.errors import UsageError
from harness.probes.driver import INTERVALS
from harness.run.chain import SETTLE_S
from harness.run.config import EPSILON_MS

DATA = Path(__file__).parent / "data" / "noise"
TCG = EPSILON_MS["tcg"]
CAPTURES = ["quiet", "loaded-2hogs", "loaded-4hogs", "loaded-4hogs-chain", "noisy-nice10"]
LOADED = ["loaded-2hogs", "loaded-4hogs", "loaded-4hogs-chain"]


@dataclass(frozen=True)
class Capture:
    icmp: ping.PingLog
    flows: flows.FlowLog
    record: dict[str, Any]
    marks: dict[str, Any]

    @property
    def cutoff(self) -> float:
        return float(self.marks["migrate_sent"])

    @property
    def late_ms(self) -> float:
        """How long after RESUME the network came back: blackout end minus RESUME."""
        return 1000 * (float(self.record["blackout_end"]) - float(self.record["resume_ts"]))

    def noise(self) -> Noise:
        return measure(self.icmp, self.cutoff, self.flows)


@cache
def load(name: str) -> Capture:
    def text(kind: str) -> str:
        with gzip.open(DATA / f"{name}.{kind}.log.gz", "rt") as f:
            return f.read()

    return Capture(ping.parse(text("ping")), flows.parse(text("flows")),
                   json.loads((DATA / f"{name}.record.json").read_text()),
                   json.loads((DATA / f"{name}.marks.json").read_text()))


def figure(n: Noise) -> float:
    named = n.figure()
    assert named is not None
    return named[1]


@pytest.mark.parametrize("name", CAPTURES)
def test_trimmed_logs_still_show_the_recorded_outage(name: str) -> None:
    """The logs were cut 50 ms after the outage: the blackout is still the run's."""
    c = load(name)
    result = ping.analyze(c.icmp, (c.record["stop_ts"], c.record["resume_ts"]))
    assert result.blackout_end == c.record["blackout_end"]
    assert result.blackout_start == c.record["blackout_start"]
    assert c.record["accel"] == "tcg" and c.record["epsilon_ms"] == TCG


def test_quiet_figures_match_an_independent_count() -> None:
    """Counted from the quiet log with awk and sort -g (README.md), not with this code."""
    n = load("quiet").noise()
    assert (n.icmp_replies, n.icmp_rtt_max_ms, n.icmp_hole_ms) == (580, 28.292, 25.765)
    assert (n.flow_replies, n.flow_rtt_p99_ms, n.flow_rtt_max_ms) == (132, 36.36, 40.896)
    assert n.settle_ms == pytest.approx(664.268)


def test_quiet_host_keeps_the_floor() -> None:
    c = load("quiet")
    cal = calibrate(c.noise(), TCG)
    assert cal.used == "floor" and cal.epsilon_ms == TCG
    assert cal.judgeable and cal.reason is None
    assert cal.noise_ms is not None and cal.noise_ms < TCG
    assert c.late_ms < cal.epsilon_ms and c.record["status"] == "ok"


@pytest.mark.parametrize("name", LOADED)
def test_loaded_host_widens_epsilon_to_cover_its_outage(name: str) -> None:
    c = load(name)
    cal = calibrate(c.noise(), TCG)
    assert cal.used == "noise" and cal.epsilon_ms > TCG
    assert cal.judgeable, cal.reason
    assert cal.epsilon_ms == cal.noise_ms == round(NOISE_FACTOR * figure(cal.noise), 1)
    assert c.late_ms <= cal.epsilon_ms


@pytest.mark.parametrize("name", ["loaded-4hogs", "loaded-4hogs-chain"])
def test_false_window_failures_under_load_pass_calibrated(name: str) -> None:
    """These two failed `check: window` at the fixed 150 ms: a slow host, nothing broken."""
    c = load(name)
    assert c.record["status"] == "failed" and c.record["failure"]["check"] == "window"
    assert TCG < c.late_ms <= calibrate(c.noise(), TCG).epsilon_ms


def test_too_noisy_host_is_not_judgeable() -> None:
    """A hog at nice -10 beside the run: the flows answer 665 ms late before migrating."""
    cal = calibrate(load("noisy-nice10").noise(), TCG)
    assert not cal.judgeable
    assert cal.figure == "flow RTT p99" and cal.figure_ms == 665.331
    assert cal.epsilon_ms > MAX_EPSILON_MS
    assert cal.reason is not None and "\n" not in cal.reason
    assert "flow RTT p99 665.331 ms" in cal.reason and "fewer CPU hogs" in cal.reason


def test_a_short_settle_is_not_judgeable() -> None:
    """The quiet log cut 50 ms after the first send: too few replies for a p99."""
    c = load("quiet")
    start = min(ping.send_times(c.icmp).values())
    cal = calibrate(measure(c.icmp, start + 0.05, c.flows), TCG)
    assert cal.noise.icmp_replies < MIN_ICMP_REPLIES
    assert not cal.judgeable and cal.reason is not None
    assert "too few ICMP replies" in cal.reason and "longer settle time" in cal.reason


def test_the_least_settle_time_holds_enough_replies_at_the_probers_interval() -> None:
    """At 10 ms a chain's 0.25 s (or a run's 0.5 s) of settle time holds some 25 (50)
    replies: every such hop would be inconclusive, so the settle time is stretched to
    what the interval needs. The probers' own intervals need less than a chain's."""
    assert min_settle_s(0.01) * 0.95 / 0.01 >= MIN_ICMP_REPLIES  # even at 5 % fewer replies
    assert all(min_settle_s(i) <= SETTLE_S for i in INTERVALS.values())
    c = load("quiet")  # a real settle time, cut to what the least one holds at 0.9 ms
    start = min(ping.send_times(c.icmp).values())
    cal = calibrate(measure(c.icmp, start + min_settle_s(INTERVALS["tapmig"]), c.flows), TCG)
    assert cal.noise.icmp_replies >= MIN_ICMP_REPLIES and cal.judgeable


def test_no_reply_in_the_settle_time_is_not_judgeable() -> None:
    c = load("quiet")
    start = min(ping.send_times(c.icmp).values())
    n = measure(c.icmp, start - 1.0, c.flows)
    assert (n.icmp_replies, n.settle_ms, n.icmp_hole_ms, n.figure()) == (0, 0.0, None, None)
    cal = calibrate(n, TCG)
    assert not cal.judgeable and cal.epsilon_ms == TCG and cal.used == "floor"


def test_replies_after_the_cutoff_do_not_count() -> None:
    """The migration's own delays come after the cut-off: a log that ends there gives
    the same figures as the whole one."""
    c = load("loaded-4hogs")
    cut = ping.PingLog([p for p in c.icmp.lines if p.ts <= c.cutoff], None,
                       {s: t for s, t in c.icmp.sent.items() if t <= c.cutoff})
    assert measure(cut, c.cutoff, c.flows) == c.noise()


def test_noise_ranks_the_captures_by_load() -> None:
    names = ["quiet", "loaded-2hogs", "loaded-4hogs", "noisy-nice10"]
    eps = [calibrate(load(n).noise(), TCG).epsilon_ms for n in names]
    assert [figure(load(n).noise()) for n in names] == sorted(
        figure(load(n).noise()) for n in names)
    assert eps == sorted(eps) and eps[0] == TCG


FIGURES = ["icmp_hole_ms", "icmp_rtt_p99_ms", "flow_rtt_p99_ms"]


@pytest.mark.parametrize("name", CAPTURES)
@pytest.mark.parametrize("field", FIGURES)
def test_calibrate_is_monotone_in_each_figure(name: str, field: str) -> None:
    """More noise never narrows epsilon, nor makes a run judgeable again."""
    base = load(name).noise()
    last: Calibration | None = None
    for scale in (0.0, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0):
        value = getattr(base, field)
        cal = calibrate(dataclasses.replace(base, **{field: value * scale}), TCG)
        assert cal.epsilon_ms >= TCG
        if last is not None:
            assert cal.epsilon_ms >= last.epsilon_ms
            assert last.judgeable or not cal.judgeable
        last = cal


def test_calibrate_is_monotone_in_replies() -> None:
    base = load("quiet").noise()
    verdicts = [calibrate(dataclasses.replace(base, icmp_replies=k), TCG).judgeable
                for k in (0, 1, MIN_ICMP_REPLIES - 1, MIN_ICMP_REPLIES, 1000)]
    assert verdicts == [False, False, False, True, True]


@pytest.mark.parametrize("name", CAPTURES)
def test_json_round_trip(name: str) -> None:
    cal = calibrate(load(name).noise(), TCG)
    text = json.dumps(cal.to_json())
    assert Calibration.from_json(json.loads(text)) == cal
    assert Noise.from_json(json.loads(json.dumps(cal.noise.to_json()))) == cal.noise
    assert set(cal.to_json()) == {"epsilon_ms", "noise_ms", "floor_ms", "used", "judgeable",
                                  "figure", "figure_ms", "reason", "noise"}


def test_a_run_without_flows_is_measured_on_icmp_alone() -> None:
    c = load("loaded-2hogs")
    n = measure(c.icmp, c.cutoff)
    assert n.flow_replies is None and n.flow_rtt_p99_ms is None
    assert json.loads(json.dumps(n.to_json()))["flow_replies"] is None
    assert Noise.from_json(n.to_json()) == n


@pytest.mark.parametrize("change, field", [
    ({"icmp_replies": True}, "icmp_replies"),
    ({"icmp_replies": 3.5}, "icmp_replies"),
    ({"settle_ms": None}, "settle_ms"),
    ({"icmp_hole_ms": "12"}, "icmp_hole_ms"),
])
def test_noise_from_json_refuses_a_bad_field(change: dict[str, Any], field: str) -> None:
    data = {**load("quiet").noise().to_json(), **change}
    with pytest.raises(UsageError, match=field):
        Noise.from_json(data)


def test_from_json_refuses_what_is_not_a_calibration() -> None:
    good = calibrate(load("quiet").noise(), TCG).to_json()
    with pytest.raises(UsageError, match="icmp_hole_ms"):
        Noise.from_json({k: v for k, v in good["noise"].items() if k != "icmp_hole_ms"})
    with pytest.raises(UsageError, match="used"):
        Calibration.from_json({**good, "used": "guess"})
    with pytest.raises(UsageError, match="JSON object"):
        Calibration.from_json([good])


def test_calibrate_refuses_a_nonsense_floor() -> None:
    n = load("quiet").noise()
    for floor, factor, bound in ((0.0, 3.0, 1000.0), (TCG, 0.0, 1000.0), (TCG, 3.0, 100.0)):
        with pytest.raises(UsageError):
            calibrate(n, floor, factor, bound)


def test_percentile_is_a_measured_value() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0 and percentile(values, 50) == 50.0
    assert percentile([7.0], 99) == 7.0 and percentile([], 99) is None
