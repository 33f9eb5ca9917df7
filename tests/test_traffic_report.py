"""The traffic figures in what tapmig reports: the measure report, its comparison and
the run's table (harness.report), on records made from fixed figures."""

from __future__ import annotations

from harness.record import RunRecord
from harness.report.compare import compare
from harness.report.model import Report
from harness.report.render import render_html, render_markdown
from harness.report.summary import build_report
from harness.report.table import traffic_rows
from harness.vocabulary import Mode
from tests.support.records import record

# --- the measure report and compare ---------------------------------------------------


def traffic_records(worsts: list[float], mode: Mode = "local",
                    stalls: list[float] | None = None) -> list[RunRecord]:
    recs = []
    for i, worst in enumerate(worsts, 1):
        r = record(mode=mode, qemu="/q", qemu_version="10.2.2", accel="tcg", guest="g",
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
    plain = [record(mode="local", qemu="/q", qemu_version="1", accel="tcg", guest="g",
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
    quiet = record(mode="local", qemu="/q", qemu_version="1", accel="tcg", guest="g")
    assert traffic_rows(quiet) == []  # a record from before, or --flows 0 --tcp off
