"""Inconclusive runs are counted apart: never ok, never failed. Pure, no QEMU.

A run the host was too noisy to judge has status "inconclusive" and exit 3; a report
counts it beside failed and unsupported runs and keeps it out of the figures;
compare says so; a campaign with over a fifth of its runs inconclusive gives no
verdict.
"""

from __future__ import annotations

from pathlib import Path

from harness.campaign.outcome import MAX_INCONCLUSIVE, Outcome
from harness.errors import EXIT_INCONCLUSIVE, Inconclusive
from harness.record import RunRecord
from harness.report.chain_summary import chain_summaries
from harness.report.compare import compare
from harness.report.render import render_markdown
from harness.report.summary import build_report
from harness.run.assemble import _outcome
from tests.support.records import record

REASON = ("inconclusive: the host is too noisy to judge the outage: flow RTT p99 348.332 ms "
          "before the migration calls for epsilon 1045 ms, over the 1000 ms bound")


def runs(ok: int, inconclusive: int) -> list[RunRecord]:
    good = [record(blackout_ms=40.0 + i, downtime_ms=3.0, iteration=i) for i in range(ok)]
    noisy = [record(status="inconclusive", error=REASON, iteration=ok + i,
                    failure={"kind": "Inconclusive", "figure": "flow RTT p99"})
             for i in range(inconclusive)]
    return good + noisy


def test_an_inconclusive_error_becomes_status_inconclusive_with_its_fields() -> None:
    exc = Inconclusive(REASON, "flow RTT p99", 348.332, 1045.0, "fewer CPU hogs")
    out = _outcome(exc, 1)
    assert out["status"] == "inconclusive" and exc.exit_code == EXIT_INCONCLUSIVE == 3
    assert out["failure"] == {"kind": "Inconclusive", "figure": "flow RTT p99",
                              "figure_ms": 348.332, "epsilon_ms": 1045.0,
                              "fix": "fewer CPU hogs"}


def test_a_report_counts_inconclusive_runs_apart_and_keeps_them_out_of_the_figures() -> None:
    rep = build_report(runs(ok=9, inconclusive=1), {}, partial=False)
    (c,) = rep.combinations
    assert (c.runs, c.ok, c.failed.count, c.inconclusive.count) == (10, 9, 0, 1)
    assert c.metrics["blackout_ms"].n == 9
    assert "inconclusive (host too noisy to judge): new-tap" in render_markdown(rep)


def test_compare_names_the_inconclusive_runs_it_left_out() -> None:
    base = build_report(runs(ok=10, inconclusive=0), {}, partial=False)
    cur = build_report(runs(ok=9, inconclusive=1), {}, partial=False)
    verdict = compare(base, cur, threshold=0.1)
    assert any("1 of 10 runs inconclusive" in line for line in verdict.lines), verdict.lines


def test_a_campaign_with_too_many_inconclusive_runs_gives_no_verdict(tmp_path: Path) -> None:
    few = runs(ok=9, inconclusive=1)
    many = runs(ok=7, inconclusive=3)
    assert 1 / 10 <= MAX_INCONCLUSIVE < 3 / 10
    for recs, code in ((few, 0), (many, EXIT_INCONCLUSIVE)):
        outcome = Outcome(recs, build_report(recs, {}, partial=False), {}, interrupted=False)
        assert outcome.exit_code == code
        assert (outcome.inconclusive is None) == (code == 0)


def test_a_chain_counts_its_inconclusive_hops_apart() -> None:
    hops = [record(chain="c1", hop=n, status="inconclusive" if n == 3 else "ok",
                   error=REASON if n == 3 else None) for n in range(1, 6)]
    (summary,) = chain_summaries(hops)
    assert summary["end"] == "5 hops: 4 ok, 1 inconclusive (host too noisy)"
    assert summary["ok"] == 4
