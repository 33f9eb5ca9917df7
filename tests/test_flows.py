"""The flows check's pure logic (harness.analysis.flows), on small hand-made logs written
as the flow prober writes them (tests/support/logs.py); the prober itself runs against
real guests in tests/test_traffic.py.
"""

from __future__ import annotations

import pytest

from harness.analysis import flows
from harness.analysis.queues import QueueCounts
from harness.errors import CheckFailed
from harness.probes import flow as flow_probe
from tests.support.logs import RESUME, WINDOW, flow_log

# --- flows ----------------------------------------------------------------------------


def test_each_flow_has_its_own_blackout_and_the_worst_is_reported() -> None:
    text = flow_log(2, 0.01, 999.0, 1001.0, {0: (999.985, 1000.045), 1: (999.985, 1000.145)})
    summary = flows.analyze(flows.parse(text), WINDOW, RESUME + 0.15)
    a, b = summary.flows
    assert a.blackout_ms is not None and b.blackout_ms is not None
    assert 60 <= a.blackout_ms <= 80 and 160 <= b.blackout_ms <= 180
    assert summary.worst_ms == b.blackout_ms and summary.best_ms == a.blackout_ms
    assert summary.spread_ms == pytest.approx(b.blackout_ms - a.blackout_ms)
    assert a.lost == 6 and b.lost == 16 and summary.lost == 22
    # The lost requests, by when they were sent: from 10 ms before STOP.
    assert a.lost_when == {"before_stop": 1, "stop_to_resume": 5, "after_resume": 0,
                           "first_ms": pytest.approx(-10, abs=0.01),
                           "last_ms": pytest.approx(40, abs=0.01)}
    assert sum(b.lost_when[k] for k in ("before_stop", "stop_to_resume", "after_resume")) == 16
    assert a.recovered and b.recovered


def test_a_hole_away_from_the_migration_is_not_its_blackout() -> None:
    text = flow_log(1, 0.01, 999.0, 1001.0, {0: (999.3, 999.6)})
    (r,) = flows.analyze(flows.parse(text), WINDOW, RESUME + 0.15).flows
    assert r.blackout_ms is not None and r.blackout_ms < 15  # the window saw no hole
    assert r.lost == 30


def test_a_flow_that_never_answers_again_fails_naming_its_queue() -> None:
    text = flow_log(4, 0.01, 999.0, 1001.0, {3: (999.99, 2000.0)}, cpus=2)
    queues = QueueCounts(2, 2, [10, 10], [10, 10], [1, 2])
    summary = flows.analyze(flows.parse(text), WINDOW, RESUME + 0.15, queues)
    assert [r.recovered for r in summary.flows] == [True, True, True, False]
    assert summary.flows[3].back_ms is None and summary.flows[3].answered_after == 0.0
    assert summary.flows[0].back_ms == pytest.approx(101, abs=0.5)
    with pytest.raises(CheckFailed) as err:
        flows.check_recovered(summary, vcpus=2)
    assert err.value.check == "flows"
    assert str(err.value) == ("flow 3 (UDP port 7003, queue 1 (guest CPU 1)) did not recover: "
                              "no reply after RESUME (101 of 200 lost)")


def after_resume(lines: list[str], flow: int, answer_every: int) -> None:
    """100 requests after RESUME, one in `answer_every` answered."""
    for seq in range(1, 101):
        ts = 1000.2 + seq * 0.01 + flow * 0.001
        lines.append(f"[{ts:.6f}] sent flow={flow} seq={1000 + seq}")
        if seq % answer_every == 0:
            lines.append(f"[{ts + 0.001:.6f}] reply flow={flow} seq={1000 + seq} cpu=0 "
                         "time=1.0 ms")


def test_a_flow_that_answers_far_less_than_the_others_has_not_recovered() -> None:
    lines = flow_log(3, 0.01, 999.0, 1000.0, {}).splitlines()
    for flow, every in ((0, 1), (1, 1), (2, 4)):
        after_resume(lines, flow, every)
    summary = flows.analyze(flows.parse("\n".join(lines)), WINDOW, RESUME + 0.15)
    assert [r.answered_after for r in summary.flows] == [1.0, 1.0, 0.25]
    assert [r.recovered for r in summary.flows] == [True, True, False]
    with pytest.raises(CheckFailed, match=r"flow 2 .* did not recover: answered 25% of its "
                       r"requests once the flows were back, where most flows answered 100%"):
        flows.check_recovered(summary, vcpus=1)


def test_half_the_flows_gone_astray_do_not_lower_the_bar() -> None:
    lines = flow_log(4, 0.01, 999.0, 1000.0, {}).splitlines()
    for flow, every in ((0, 1), (1, 3), (2, 1), (3, 3)):
        after_resume(lines, flow, every)
    summary = flows.analyze(flows.parse("\n".join(lines)), WINDOW, RESUME + 0.15)
    assert [r.recovered for r in summary.flows] == [True, False, True, False]


def test_flows_slowed_alike_by_a_busy_host_have_recovered() -> None:
    lines = flow_log(3, 0.01, 999.0, 1000.0, {}).splitlines()
    for flow in range(3):
        after_resume(lines, flow, 4)
    summary = flows.analyze(flows.parse("\n".join(lines)), WINDOW, RESUME + 0.15)
    assert all(r.recovered and r.answered_after == 0.25 for r in summary.flows)
    flows.check_recovered(summary, vcpus=1)


def test_a_flow_never_answered_is_named_by_the_cpu_that_serves_it() -> None:
    text = flow_log(3, 0.01, 999.0, 1001.0, {2: (0.0, 2000.0)})
    summary = flows.analyze(flows.parse(text), WINDOW, RESUME + 0.15)
    assert summary.flows[2].cpu is None and summary.flows[2].queue is None
    with pytest.raises(CheckFailed, match=r"flow 2 \(UDP port 7002, guest CPU 0's queue\)"):
        flows.check_recovered(summary, vcpus=2)


def test_late_replies_are_counted_per_flow() -> None:
    lines = flow_log(1, 0.01, 999.0, 1000.0, {}).splitlines()
    lines += ["[1000.500000] sent flow=0 seq=900", "[1000.600000] reply flow=0 seq=900 cpu=0 "
              "time=100.000 ms"]
    (r,) = flows.analyze(flows.parse("\n".join(lines)), WINDOW, RESUME).flows
    assert r.late == 1


def test_prober_request_and_reply_round_trip() -> None:
    req = flow_probe.request(5, 123456)
    assert len(req) == flow_probe.PAYLOAD
    assert flow_probe.parse_reply(req + (3).to_bytes(4, "big")) == (5, 123456, 3)
    assert flow_probe.parse_reply(req) is None  # no CPU tag: not from tapmig-guest
    assert flow_probe.parse_reply(b"XXXX" + req[4:] + bytes(4)) is None
