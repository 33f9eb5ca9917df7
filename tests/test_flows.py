"""The traffic checks' pure logic, on small hand-made logs: flows, TCP, queues, timeline.

Each log is built the way the probes write it (harness.probes.flow,
harness.probes.tcp, tapmig-guest queues), so the parsers read what the probes
print; the probes themselves run against real guests in tests/test_traffic.py.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.analysis import flows, tcp_stream
from harness.analysis.ping import parse as parse_ping
from harness.analysis.queues import QueueCounts, check_every_queue
from harness.errors import CheckFailed, UsageError
from harness.probes import flow as flow_probe
from harness.probes import tcp as tcp_probe
from harness.record import RunRecord
from harness.report import timeline
from harness.report.compare import compare
from harness.report.model import Report
from harness.report.render import render_html, render_markdown
from harness.report.summary import build_report
from harness.report.table import traffic_rows
from harness.run.config import Config
from harness.run.setup import check_traffic
from harness.vocabulary import Mode

STOP, RESUME = 1000.0, 1000.1
WINDOW = (STOP, RESUME)


def flow_log(flows_n: int, interval: float, start: float, end: float,
             silent: dict[int, tuple[float, float]], rtt: float = 0.001,
             cpus: int = 1) -> str:
    """Requests every `interval` per flow; flow f gets no reply to requests sent in
    silent[f] (from, to), and CPU f % cpus answers it."""
    lines = [f"FLOWS {flows_n} to 10.0.0.2 ports 7000-{7000 + flows_n - 1} interval 8 ms"]
    for seq in range(1, round((end - start) / interval) + 1):
        t = start + (seq - 1) * interval
        for f in range(flows_n):
            ts = t + f * interval / flows_n
            lines.append(f"[{ts:.6f}] sent flow={f} seq={seq}")
            hole = silent.get(f)
            if hole is None or not hole[0] <= ts < hole[1]:
                lines.append(f"[{ts + rtt:.6f}] reply flow={f} seq={seq} cpu={f % cpus} "
                             f"time={1000 * rtt:.3f} ms")
    return "\n".join(lines) + "\n"


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


# --- queues ---------------------------------------------------------------------------


def test_queue_counts_parse_and_difference() -> None:
    before = QueueCounts.parse("x TAPMIG-QUEUES live=4 max=4 rx=1,2,3,4 tx=5,6,7,8 "
                               "xps=1,2,4,8\r")
    after = QueueCounts.parse("TAPMIG-QUEUES live=4 max=4 rx=11,2,13,14 tx=15,16,7,18 "
                              "xps=1,2,4,8")
    delta = after.since(before)
    assert (delta.rx, delta.tx) == ([10, 0, 10, 10], [10, 10, 0, 10])
    assert delta.silent() == ["rx 1", "tx 2"]
    assert [delta.queue_of_cpu(c) for c in range(5)] == [0, 1, 2, 3, None]
    with pytest.raises(CheckFailed) as err:
        check_every_queue(delta, "on the target")
    assert err.value.check == "queues"
    assert str(err.value).startswith("queue rx 1, tx 2 of the 4 live queue pairs carried no "
                                     "packets on the target")


def test_one_live_queue_pair_is_all_that_must_carry() -> None:
    one = QueueCounts.parse("TAPMIG-QUEUES live=1 max=4 rx=7 tx=7 xps=1")
    assert one.silent() == [] and one.to_json() == {"live": 1, "max": 4, "rx": [7], "tx": [7]}
    check_every_queue(one, "on the target")
    with pytest.raises(UsageError):
        QueueCounts.parse("TAPMIG-QUEUES-FAILED eth0: Operation not supported")


# --- TCP ------------------------------------------------------------------------------


def tcp_log(msgs: int, interval: float, start: float, held: tuple[float, float],
            rtt: float = 0.001, retrans_at: float | None = None) -> str:
    """Messages every interval; echoes of those sent inside `held` come at its end."""
    lines = [f"[{start - 0.01:.6f}] connected 10.0.0.1:40000 -> 10.0.0.2:5000"]
    for seq in range(msgs):
        ts = start + seq * interval
        lines.append(f"[{ts:.6f}] tx seq={seq}")
        back = held[1] if held[0] <= ts < held[1] else ts + rtt
        lines.append(f"[{max(back, ts + rtt):.6f}] rx seq={seq}")
        if retrans_at is not None and ts <= retrans_at < ts + interval:
            acked = 1 + tcp_probe.MSG * 42
            lines.append(f"[{retrans_at:.6f}] tcpinfo ca_state=4 total_retrans=1 "
                         f"acked={acked}")
    lines.sort(key=lambda line: float(line[1:line.index("]")]))
    summary = {"messages": msgs, "echoed": msgs, "tcp_info": {"total_retrans": 1},
               "counters": {"TCPTimeouts": 1, "RetransSegs": 1}}
    return "\n".join([*lines, "summary " + json.dumps(summary)]) + "\n"


def test_tcp_stall_is_the_longest_wait_overlapping_the_migration() -> None:
    text = tcp_log(400, 0.005, 999.0, (999.95, 1000.25), retrans_at=1000.2)
    result = tcp_stream.analyze(tcp_stream.parse(text), (STOP, RESUME + 0.15))
    assert result.error is None and result.messages == result.echoed == 400
    assert result.stall_ms == pytest.approx(300, abs=1)
    assert result.stall_from_ms == pytest.approx(-50, abs=1)
    assert result.backlog_at_stop == 11  # those sent in [999.95, 1000.0], held
    assert result.retrans == 1 and result.rto is True
    # The retransmission resent message 42, the first one unacknowledged then.
    (r,) = result.retransmitted
    assert r["message"] == 42 and r["sent_ms"] == pytest.approx(1000 * (999.21 - STOP))
    assert r["at_ms"] == pytest.approx(200, abs=0.01)


def test_tcp_sparse_stall_counts_from_the_send() -> None:
    # One message every 50 ms; the one sent at 1000.0 waits until 1000.2.
    text = tcp_log(40, 0.05, 999.0, (999.99, 1000.2))
    result = tcp_stream.analyze(tcp_stream.parse(text), (STOP, RESUME + 0.15))
    assert result.stall_ms == pytest.approx(200, abs=1)


@pytest.mark.parametrize(("line", "kind"), [
    ("error reset: Connection reset by peer after 10 of 12 messages came back", "reset"),
    ("error closed: the guest closed the connection after 3 of 5 messages came back",
     "closed"),
    ("error data: message 7 arrived where message 6 was due", "data"),
])
def test_a_broken_connection_fails_the_run_naming_it(line: str, kind: str) -> None:
    text = tcp_log(10, 0.01, 999.9, (0, 0)).replace("summary", f"[1000.050000] {line}\nsummary")
    result = tcp_stream.analyze(tcp_stream.parse(text), (STOP, RESUME))
    assert result.error is not None and result.error.startswith(f"{kind}: ")
    assert "(at STOP+50 ms)" in result.error
    with pytest.raises(CheckFailed) as err:
        tcp_stream.check(result, "continuous")
    assert err.value.check == "tcp"
    assert str(err.value).startswith("TCP connection 10.0.0.1:40000 -> 10.0.0.2:5000 "
                                     f"(continuous) failed: {kind}: ")


def test_a_tcp_probe_killed_without_summary_fails() -> None:
    text = tcp_log(10, 0.01, 999.9, (0, 0)).split("summary")[0]
    with pytest.raises(CheckFailed, match="ended without a summary"):
        tcp_stream.check(tcp_stream.analyze(tcp_stream.parse(text), WINDOW), "sparse")


def test_tcp_messages_differ_and_counters_parse(tmp_path: Path) -> None:
    assert tcp_probe.message(1) != tcp_probe.message(2)
    assert len(tcp_probe.message(0)) == tcp_probe.MSG
    (tmp_path / "snmp").write_text("Ip: Forwarding\nIp: 1\nTcp: RtoMin RetransSegs\n"
                                   "Tcp: 200 7\n")
    (tmp_path / "netstat").write_text("TcpExt: SyncookiesSent TCPTimeouts TCPLossProbes\n"
                                      "TcpExt: 0 2 3\nIpExt: InNoRoutes\nIpExt: 0\n")
    assert tcp_probe.counters(tmp_path) == {"RetransSegs": 7, "TCPTimeouts": 2,
                                            "TCPLossProbes": 3}


# --- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"vcpus": 0}, "--vcpus 0"), ({"flows": 65}, "--flows 65"),
    ({"flows": 8, "flow_interval": 0.0001}, "flow interval"),
])
def test_bad_traffic_options_are_refused(kwargs: dict[str, float], word: str) -> None:
    with pytest.raises(UsageError, match=re.escape(word)):
        check_traffic(Config("qemu", **kwargs))  # type: ignore[arg-type]


# --- the timeline ---------------------------------------------------------------------


def test_timeline_draws_every_reply_lost_request_and_the_tcp_stall() -> None:
    # Everything lies within 200 ms of the outage, so all of it is in the picture.
    ping_text = "".join(f"[{999.8 + i * 0.001:.6f}] sent icmp_seq={i}\n" + (
        "" if 190 <= i < 260 else f"[{999.8 + i * 0.001 + 0.0003:.6f}] 64 bytes from "
        f"10.0.0.2: icmp_seq={i} ttl=64 time=0.300 ms\n") for i in range(1, 500))
    icmp = parse_ping(ping_text)
    flow_text = flow_log(2, 0.01, 999.8, 1000.3, {1: (999.99, 1000.07)})
    tcp_text = tcp_log(50, 0.01, 999.8, (999.99, 1000.2), retrans_at=1000.15)
    rec = RunRecord(mode="local", qemu="q", qemu_version="10.2.2", accel="tcg", guest="g",
                    stop_ts=STOP, resume_ts=RESUME, blackout_ms=70.0, lost=70,
                    blackout_start=999.989, blackout_end=1000.06, flows=2, tcp="continuous")
    log = flows.parse(flow_text)
    rec.flow_detail = [r.to_json() for r in flows.analyze(log, WINDOW, RESUME).flows]
    rec.tcp_detail = tcp_stream.analyze(tcp_stream.parse(tcp_text), WINDOW).to_json()
    page = timeline.draw(rec, icmp, log, tcp_stream.parse(tcp_text))
    assert "<script" not in page and "href" not in page  # self-contained
    svg = ET.fromstring(page[page.index("<svg"):page.index("</svg>") + 6])
    ns = "{http://www.w3.org/2000/svg}"
    texts = {t.text for t in svg.iter(f"{ns}text")}
    assert {"STOP", "RESUME", "ICMP", "flow 0", "flow 1", "▲ RTO"} <= texts
    replies = sum(1 for p in icmp.lines if p.rtt_ms is not None) + len(log.replies)
    assert len(list(svg.iter(f"{ns}circle"))) == replies  # a dot per reply
    lost_ticks = [e for e in svg.iter(f"{ns}line") if e.get("stroke") == timeline.COLORS["lost"]]
    assert len(lost_ticks) == 70 + len(log.sent) - len(log.replies)
    assert len(list(svg.iter(f"{ns}polyline"))) == 2  # TCP sent and echoed


# --- the measure report and compare ---------------------------------------------------


def traffic_records(worsts: list[float], mode: Mode = "local",
                    stalls: list[float] | None = None) -> list[RunRecord]:
    recs = []
    for i, worst in enumerate(worsts, 1):
        r = RunRecord(mode=mode, qemu="/q", qemu_version="10.2.2", accel="tcg", guest="g",
                      iteration=i, blackout_ms=worst / 2, downtime_ms=2.0, lost=0,
                      stop_resume_ms=7.0, vcpus=4, flows=8, tcp="sparse",
                      flow_blackout_ms=worst, flow_spread_ms=5.0, flow_lost=1,
                      tcp_stall_ms=(stalls or worsts)[i - 1], tcp_retrans=1)
        r.artifacts["timeline"] = f"runs/{i}/timeline.html"
        recs.append(r)
    return recs


def test_report_has_the_traffic_figures_and_links_the_timelines() -> None:
    rep = build_report(traffic_records([40.0, 60.0, 50.0, 90.0, 70.0]), {}, partial=False)
    (c,) = rep.combinations
    assert c.metrics["flow_blackout_ms"].median == 60.0
    assert c.metrics["tcp_retrans"].median == 1.0
    # By ICMP blackout: the median run is the one of 60 ms, the worst the one of 90 ms.
    assert c.timelines == {"median run": "runs/2/timeline.html",
                           "worst run": "runs/4/timeline.html"}
    assert rep.meta.queues == "4 queues, vhost off, 4 vCPUs, 8 flows, TCP sparse"
    md = render_markdown(rep)
    assert "Traffic across the migration" in md and "| 60.0 [" in md
    assert "- [local 10.2.2 (/q): median run](runs/2/timeline.html)" in md
    page = render_html(rep)
    assert '<a href="runs/4/timeline.html">' in page
    assert page.count('data-metric="flow_blackout_ms"') == 5  # a point per run, plotted
    assert Report.from_json(rep.to_json()).combinations[0].timelines == c.timelines


def test_a_report_without_traffic_says_nothing_of_it() -> None:
    plain = [RunRecord(mode="local", qemu="/q", qemu_version="1", accel="tcg", guest="g",
                       blackout_ms=30.0, downtime_ms=2.0, lost=0, stop_resume_ms=7.0)]
    rep = build_report(plain, {}, partial=False)
    assert set(rep.combinations[0].metrics) == {"blackout_ms", "downtime_ms",
                                                "stop_resume_ms", "lost"}
    assert rep.meta.queues == "4 queues, vhost off"  # as reports before traffic said
    md = render_markdown(rep)
    assert "Traffic across" not in md and "Timelines" not in md and "runs without" not in md


def test_compare_judges_the_traffic_figures_both_reports_have() -> None:
    base = build_report(traffic_records([50.0] * 5, stalls=[100.0] * 5), {}, partial=False)
    worse = build_report(traffic_records([50.0] * 5, stalls=[300.0] * 5), {}, partial=False)
    verdict = compare(base, worse, threshold=0.1)
    assert verdict.regressed
    assert [j.metric for j in verdict.judgements if j.regressed] == ["tcp_stall_ms"]
    assert any(line.endswith("TCP stall: REGRESSED: median 100.0 -> 300.0 ms (+200.0%), "
                              "above threshold +10.0% and CI [300.0, 300.0] vs baseline "
                              "[100.0, 100.0] do not overlap (n=5 vs 5: an interval is just "
                              "[min, max])") for line in verdict.lines), verdict.lines


def test_run_table_has_a_line_per_traffic_check_that_ran() -> None:
    rec = traffic_records([60.0])[0]
    rec.queues, rec.queues_live, rec.queues_all_carried, rec.tcp_rto = 4, 4, True, False
    assert dict(traffic_rows(rec)) == {
        "queues live": "4 of 4 (4 vCPUs); all carried traffic on the target: yes",
        "8 UDP flows": "worst blackout 60 ms, best - (spread 5 ms); lost 1",
        "TCP (sparse)": "stall 60 ms, retransmissions 1, RTO no"}
    quiet = RunRecord(mode="local", qemu="/q", qemu_version="1", accel="tcg", guest="g")
    assert traffic_rows(quiet) == []  # a record from before, or --flows 0 --tcp off
