"""Loss between STOP and RESUME as a count: its exact interval, the test between two
reports, and compare's IMPROVED verdict (harness.report.stats, harness.report.compare)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.record import RunRecord
from harness.report.compare import compare
from harness.report.model import Report
from harness.report.render import render_markdown
from harness.report.stats import rate_ci, rate_test
from harness.report.summary import build_report, write_report
from tests.support.records import record


def test_rate_interval_is_garwoods() -> None:
    """The exact Poisson interval's published values (Garwood 1936; e.g. the table of
    Ulm 1990): 0 -> [0, 3.689], 5 -> [1.623, 11.668], 10 -> [4.795, 18.390]."""
    assert rate_ci(0, 1) == pytest.approx([0.0, 3.689], abs=1e-3)
    assert rate_ci(5, 1) == pytest.approx([1.623, 11.668], abs=1e-3)
    assert rate_ci(10, 10) == pytest.approx([0.4795, 1.839], abs=1e-3)


def test_the_count_test_is_exact_and_symmetric() -> None:
    """Five lost in ten hops against none in ten: under equal rates each of the five
    falls on either side with probability 1/2, so p = 2^-5."""
    assert rate_test(5, 10, 0, 10) == pytest.approx((1.0, 0.5 ** 5))
    assert rate_test(0, 10, 5, 10) == pytest.approx((0.5 ** 5, 1.0))
    more, less = rate_test(3, 10, 3, 10)
    assert more > 0.5 and less > 0.5


def hops(lost: list[int], flow_lost: list[int] | None = None, blackout: float = 20.0
         ) -> list[RunRecord]:
    return [record(mode="local", lost=n, lost_in_window=n, blackout_ms=blackout + i % 3,
                   downtime_ms=2.0, flow_lost_in_window=(flow_lost or [])[i]
                   if flow_lost else None, iteration=i)
            for i, n in enumerate(lost)]


def test_a_report_counts_the_loss_per_run() -> None:
    rep = build_report(hops([1, 0, 2, 0, 1], [0, 0, 1, 0, 0]), {}, partial=False)
    counts = rep.combinations[0].counts
    assert (counts["lost_in_window"].total, counts["lost_in_window"].runs) == (4, 5)
    assert counts["lost_in_window"].rate == 0.8
    assert counts["flow_lost_in_window"].total == 1


def test_compare_says_improved_when_the_loss_falls_beyond_its_test(tmp_path: Path) -> None:
    """The stopped source that stops reading the TAP: 1 lost per hop -> none."""
    base = build_report(hops([1, 0, 1, 1, 0, 1, 0, 1, 1, 0]), {}, partial=False)
    cur = build_report(hops([0] * 10), {}, partial=False)
    verdict = compare(base, cur, threshold=0.1)
    assert (verdict.regressed, verdict.improved, verdict.word) == (False, True, "IMPROVED")
    [loss] = [j for j in verdict.judgements if j.metric == "lost_in_window"]
    assert loss.improved and loss.why.startswith("IMPROVED: 6 in 10 runs -> 0 in 10")
    paths = [write_report(r, tmp_path / n)["json"] for r, n in ((base, "b"), (cur, "c"))]
    assert main(["compare", "--baseline", str(paths[0]), "--current", str(paths[1])]) == 0
    assert json.loads(paths[1].read_text())["combinations"][0]["counts"]["lost_in_window"]


def test_compare_says_regressed_when_the_loss_rises() -> None:
    base = build_report(hops([0, 1, 0, 0, 0, 1, 0, 0, 0, 0]), {}, partial=False)
    cur = build_report(hops([4, 3, 5, 6, 2, 4, 3, 4, 5, 3]), {}, partial=False)
    verdict = compare(base, cur, threshold=0.1)
    assert verdict.regressed and verdict.word == "REGRESSED"
    assert {j.metric for j in verdict.judgements if j.regressed} == {"lost_in_window", "lost"}


def test_a_few_lost_either_way_is_no_verdict() -> None:
    base = build_report(hops([1, 0, 0, 1, 0]), {}, partial=False)
    cur = build_report(hops([0, 1, 0, 0, 0]), {}, partial=False)
    verdict = compare(base, cur, threshold=0.1)
    assert verdict.word == "no regression"


def test_a_blackout_that_shrank_beyond_its_interval_is_improved() -> None:
    base = build_report(hops([0] * 6, blackout=60.0), {}, partial=False)
    cur = build_report(hops([0] * 6, blackout=20.0), {}, partial=False)
    verdict = compare(base, cur, threshold=0.1)
    [blackout] = [j for j in verdict.judgements if j.metric == "blackout_ms"]
    assert blackout.improved and verdict.word == "IMPROVED"
    assert blackout.why.startswith("IMPROVED: median 61.0 -> 21.0 ms")


def test_an_older_report_without_counts_is_judged_on_the_rest() -> None:
    base = build_report(hops([1] * 5), {}, partial=False)
    data = json.loads(json.dumps(base.to_json()))
    for c in data["combinations"]:
        del c["counts"]
    old = Report.from_json(data)
    verdict = compare(old, base, threshold=0.1)
    assert "lost_in_window" not in [j.metric for j in verdict.judgements]


def test_the_report_shows_the_loss_and_an_update_matrix() -> None:
    """The loss per run with its interval in the main table, and a live update's pairs in
    a table of their own."""
    plain = hops([1, 0, 1, 0])
    update = [replace(r, target_qemu="/opt/b/qemu-system-x86_64", target_qemu_version="10.2.3",
                      machine="pc-q35-9.2") for r in hops([0, 0, 1, 0])]
    md = render_markdown(build_report(plain + update, {}, partial=False))
    assert "| 0.5 [0.06, 1.81] |" in md
    [row] = [line for line in md.splitlines() if line.startswith("| 9.0.0 (a/qemu") and
             " -> 10.2.3 " in line and "pc-q35-9.2" in line]
    assert "| local | 4 |" in row and "0.25 [0.01, 1.39]" in row
