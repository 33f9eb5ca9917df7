"""Report statistics, rendering and the regression verdict, on fixed data (no QEMU)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from harness.errors import NotComparable, TapmigError
from harness.record import RunRecord
from harness.report.compare import compare, parse_threshold
from harness.report.model import SCHEMA, Combination, Report
from harness.report.render import render_html, render_markdown
from harness.report.summary import (
    build_report,
    cpu_model,
    load_report,
    median_ci,
    percentile,
    ratio_ci,
    write_report,
)
from harness.vocabulary import Mode
from tests.support.records import record

QEMU_A = "/opt/a/build/qemu-system-x86_64"
QEMU_B = "/opt/b/build/qemu-system-x86_64"


def rec(mode: Mode = "local", qemu: str = QEMU_A, version: str = "9.0.0", **kw: Any) -> RunRecord:
    """tests.support.records.record, with this module's guest and kernel."""
    return record(**{"mode": mode, "qemu": qemu, "qemu_version": version, "guest": "debian-12",
                     "host_kernel": "6.1.0-21", **kw})


def runs(blackouts: list[float], mode: Mode = "local", qemu: str = QEMU_A,
         version: str = "9.0.0", downtime: list[float] | None = None) -> list[RunRecord]:
    downs = downtime or [b / 2 for b in blackouts]
    return [rec(mode, qemu, version, blackout_ms=b, downtime_ms=d, stop_resume_ms=b - 1,
                lost=i % 3, iteration=i, started=f"2024-06-01T10:{i:02d}:00Z")
            for i, (b, d) in enumerate(zip(blackouts, downs, strict=True), 1)]


def combo(report: Report, mode: Mode, qemu: str = QEMU_A) -> Combination:
    found = [c for c in report.combinations if c.mode == mode and c.qemu == qemu]
    assert len(found) == 1
    return found[0]


# --- statistics -------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert percentile([float(x) for x in range(1, 21)], 0.95) == 19.0
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.95) == 5.0  # few runs: p95 is the worst
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_summary_known_answers() -> None:
    records = runs([12, 10, 50, 30, 20], downtime=[6, 5, 25, 15, 10])
    records[0].downtime_ms = None
    m = combo(build_report(records, {}, partial=False), "local").metrics
    b = m["blackout_ms"]
    assert (b.n, b.min, b.median, b.p95, b.max) == (5, 10, 20, 50, 50)
    d = m["downtime_ms"]
    assert (d.n, d.missing, d.median, d.p95) == (4, 1, 12.5, 25)
    assert m["stop_resume_ms"].median == 19
    assert m["lost"].median == 1  # lost = i % 3 -> 1, 2, 0, 1, 2


def test_median_ci_is_deterministic_and_contains_the_median() -> None:
    values = [10.0, 12.0, 11.0, 15.0, 9.0, 30.0, 11.5, 10.5, 12.5, 13.0]
    ci = median_ci(values)
    assert ci is not None and ci == median_ci(list(values))
    assert min(values) <= ci[0] <= statistics.median(values) <= ci[1] <= max(values)
    assert median_ci([1.0, 2.0]) is None
    assert median_ci([4.0, 4.0, 4.0]) == [4.0, 4.0]


def test_ratio_ci() -> None:
    assert ratio_ci([40.0] * 3, [20.0] * 4) == [2.0, 2.0]
    num, den = [38.0, 41.0, 40.0, 44.0, 39.0], [19.0, 20.0, 22.0, 21.0, 20.0]
    ci = ratio_ci(num, den)
    assert ci is not None and ci == ratio_ci(num, den)
    assert ci[0] <= 40 / 20 <= ci[1]
    assert ratio_ci([1.0, 2.0], den) is None
    assert ratio_ci(num, [0.0, 1.0, 2.0]) is None


def test_ratios_between_builds_and_between_modes() -> None:
    records = (runs([20, 20, 20]) + runs([40, 40, 40], "new-tap")
               + runs([30, 30, 30], qemu=QEMU_B, version="9.1.0"))
    report = build_report(records, {}, partial=False)
    got = {(r.metric, r.label): (r.ratio, r.ci) for r in report.ratios}
    assert got == {
        ("blackout_ms", "local / new-tap, 9.0.0 (a/build/qemu-system-x86_64)"): (0.5, [0.5, 0.5]),
        ("downtime_ms", "local / new-tap, 9.0.0 (a/build/qemu-system-x86_64)"): (0.5, [0.5, 0.5]),
        ("blackout_ms", "9.1.0 (b/build/qemu-system-x86_64) / 9.0.0 "
         "(a/build/qemu-system-x86_64), local"): (1.5, [1.5, 1.5]),
        ("downtime_ms", "9.1.0 (b/build/qemu-system-x86_64) / 9.0.0 "
         "(a/build/qemu-system-x86_64), local"): (1.5, [1.5, 1.5]),
    }


def test_failed_and_unsupported_are_counted_with_reasons() -> None:
    records = [*runs([20, 21]),
               rec(status="failed", error="guest stopped answering"),
               rec(status="failed", error="guest stopped answering"),
               rec("new-tap", status="unsupported", error="QEMU lacks local migration")]
    report = build_report(records, {}, partial=False)
    local, newtap = combo(report, "local"), combo(report, "new-tap")
    assert (local.runs, local.ok) == (4, 2)
    assert (local.failed.count, local.failed.reasons) == (2, {"guest stopped answering": 2})
    assert newtap.unsupported.reasons == {"QEMU lacks local migration": 1}
    assert newtap.metrics["blackout_ms"].median is None
    assert local.metrics["blackout_ms"].ci is None  # n < 3
    md = render_markdown(report)
    assert "failed: local 9.0.0 (build/qemu-system-x86_64): 2 of 4 runs: guest stopped" in md
    assert "not supported: new-tap 9.0.0 (build/qemu-system-x86_64): 1 of 1 runs: QEMU lacks" in md


def test_meta_prefers_records_and_fills_the_rest() -> None:
    records = runs([20, 21], version="9.0.0") + runs([5], "new-tap", QEMU_B, "9.1.0")
    records[1].host_kernel = ""
    meta = build_report(records, {"host": "ci-7", "guest": "ignored"}, partial=False).meta
    assert meta.qemu_versions == f"9.0.0 ({QEMU_A}); 9.1.0 ({QEMU_B})"
    assert (meta.accel, meta.guest, meta.host_kernel) == ("kvm", "debian-12", "6.1.0-21")
    assert (meta.date, meta.extra) == ("2024-06-01T10:01:00Z", {"host": "ci-7"})
    assert (meta.prober, meta.queues) == ("tapmig", "4 queues, vhost off")
    bare = build_report([rec(started="", host_kernel="", status="failed")], {"host_kernel": "6.9"},
                        partial=True).meta
    assert bare.host_kernel == "6.9" and re.match(r"\d{4}-\d\d-\d\dT", bare.date)


# --- rendering ----------------------------------------------------------------------------


def four_combinations(partial: bool = False) -> Report:
    records = (runs([20, 22, 21, 25, 19]) + runs([80, 82, 79, 90, 81], "new-tap")
               + runs([30, 31, 29, 33, 30], qemu=QEMU_B, version="9.1.0")
               + runs([85, 84, 86, 83, 88], "new-tap", QEMU_B, "9.1.0"))
    records[3].downtime_ms = None
    return build_report(records, {}, partial=partial)


def test_markdown_table_has_the_numbers() -> None:
    md = render_markdown(four_combinations())
    rows = [line for line in md.splitlines() if line.startswith("| 9.")]
    ci = combo(four_combinations(), "local").metrics["blackout_ms"].ci
    assert ci is not None
    assert rows[0] == (f"| 9.0.0 (a/build/qemu-system-x86_64) | local | 5 | 21.0 "
                       f"[{ci[0]:.1f}, {ci[1]:.1f}] | 25.0 | 10.2 | 20.0 | 1 | — |")
    assert rows[3].startswith("| 9.1.0 (b/build/qemu-system-x86_64) | new-tap | 5 | 85.0 [")
    assert rows[3].endswith("| 88.0 | 42.5 | 84.0 | 1 | — |")
    assert md.startswith("# tapmig report\n")
    assert "QEMU 9.0.0 (/opt/a/build/qemu-system-x86_64); 9.1.0" in md
    assert "accel kvm; guest debian-12; host kernel 6.1.0-21; date 2024-06-01T10:01:00Z" in md
    assert "- blackout local / new-tap, 9.0.0 (a/build/qemu-system-x86_64): 0.26x [" in md
    assert "missing: local 9.0.0 (a/build/qemu-system-x86_64): 1 ok runs without downtime_ms" in md


def svg(page: str, ident: str) -> str:
    match = re.search(rf'<svg id="{ident}".*?</svg>', page, re.S)
    assert match, f"no <svg id={ident}>"
    return match.group(0)


def test_html_is_self_contained_with_both_plots() -> None:
    page = render_html(four_combinations())
    for external in ("http://", "https://", "src=", "<script", "@import", "url("):
        assert external not in page
    # 20 blackouts + 19 downtimes (one missing) in one plot, 20 blackouts in the other.
    assert svg(page, "plot-iterations").count('<circle class="pt"') == 39
    assert svg(page, "plot-distribution").count('<circle class="pt"') == 20
    assert "9.1.0 (b/build/qemu-system-x86_64) QMP downtime" in page  # legend
    assert "host kernel 6.1.0-21" in page


def test_html_escapes_text() -> None:
    records = [*runs([1, 2, 3]), rec(status="failed", error="<script>alert(1)</script> & co")]
    page = render_html(build_report(records, {}, partial=False))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page


def test_partial_shows_in_every_output(tmp_path: Path) -> None:
    paths = write_report(four_combinations(partial=True), tmp_path)
    assert json.loads(paths["json"].read_text())["partial"] is True
    assert paths["md"].read_text().splitlines()[0].startswith("# tapmig report — PARTIAL")
    assert "PARTIAL report" in paths["html"].read_text()
    complete = write_report(four_combinations(), tmp_path / "complete")
    assert not any("PARTIAL" in p.read_text() for p in complete.values())


def test_write_report_round_trips_and_leaves_no_temp_files(tmp_path: Path) -> None:
    report = four_combinations()
    paths = write_report(report, tmp_path / "new" / "dir")
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == [
        "report.html", "report.json", "report.md"]
    assert load_report(paths["json"]) == report


@pytest.mark.parametrize("records", [
    [], runs([0.0]), runs([0.0, 0.0, 0.0]), [rec(status="unsupported", error="no local")]])
def test_renders_degenerate_data(tmp_path: Path, records: list[RunRecord]) -> None:
    paths = write_report(build_report(records, {}, partial=True), tmp_path)
    assert "PARTIAL" in paths["md"].read_text() and "plot-iterations" in paths["html"].read_text()
    if not records:
        assert "(no runs recorded)" in paths["md"].read_text()


def test_unwritable_out_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(TapmigError, match=r"cannot write the report to .*file/out.*writable"):
        write_report(four_combinations(), tmp_path / "file" / "out")


# --- loading and comparing -------------------------------------------------------------------


@pytest.mark.parametrize(("content", "why"), [
    ("", "file is empty"),
    ("{not json", "not JSON"),
    ('{"foo": 1}', "found schema None"),
    ("[1, 2]", "found schema 'list'"),
    ('{"schema": "tapmig.run/1", "mode": "local"}', "found schema 'tapmig.run/1'"),
    (f'{{"schema": "{SCHEMA}", "combinations": [{{"mode": "local"}}]}}', "incomplete"),
])
def test_load_report_rejects_bad_files(tmp_path: Path, content: str, why: str) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(content)
    with pytest.raises(TapmigError, match=re.escape(why)) as exc:
        load_report(path)
    assert str(path) in str(exc.value) and SCHEMA in str(exc.value)
    with pytest.raises(TapmigError, match="cannot read"):
        load_report(tmp_path / "absent.json")


@pytest.mark.parametrize(("text", "value"), [
    ("10%", 0.10), ("0.1", 0.1), (" 5.5% ", 0.055), ("0", 0.0), ("150%", 1.5)])
def test_parse_threshold(text: str, value: float) -> None:
    assert parse_threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-10%", "-0.1", "abc", "", "%", "nan", "inf", "10", "1e400%"])
def test_parse_threshold_rejects(text: str) -> None:
    with pytest.raises(TapmigError, match="like '10%'"):
        parse_threshold(text)


BASE = [20.0, 21.0, 19.0, 20.5, 20.0, 21.5, 19.5]


def verdict(current: list[float], base: list[float] = BASE, threshold: float = 0.10,
            current_downtime: list[float] | None = None) -> tuple[bool, str]:
    before = build_report(runs(base), {}, partial=False)
    after = build_report(runs(current, version="9.1.0", downtime=current_downtime), {},
                         partial=False)
    result = compare(before, after, threshold)
    return result.regressed, "\n".join(result.lines)


def test_clear_regression() -> None:
    regressed, why = verdict([30.0, 31.0, 29.0, 30.5, 30.0, 31.5, 29.5])
    assert regressed
    assert "local 9.0.0 (build/qemu-system-x86_64) -> 9.1.0 (build/" in why
    assert "blackout: REGRESSED: median 20.0 -> 30.0 ms (+50.0%), above threshold +10.0%" in why
    assert "do not overlap" in why


def test_within_noise_is_not_a_regression() -> None:
    regressed, why = verdict([21.0, 20.0, 19.5, 21.0, 20.5, 20.0, 21.5])
    assert not regressed and "REGRESSED" not in why and "within threshold" in why


def test_over_threshold_but_overlapping_intervals_is_noise() -> None:
    regressed, why = verdict([23.0, 25.0, 12.0, 40.0, 24.0, 9.0, 30.0],
                             base=[20.0, 35.0, 8.0, 21.0, 19.0, 30.0, 11.0])
    assert not regressed and "overlap: noise" in why


def test_improvement_is_not_a_regression() -> None:
    regressed, why = verdict([10.0, 10.5, 9.5, 10.0, 11.0, 10.0, 9.0])
    assert not regressed and "(-50.0%)" in why


def test_downtime_regresses_on_its_own() -> None:
    regressed, why = verdict(BASE, current_downtime=[b * 2 for b in BASE])
    assert regressed
    assert "blackout: ok" in why and "QMP downtime: REGRESSED" in why


def test_undefined_intervals_fall_back_to_threshold() -> None:
    regressed, why = verdict([30.0, 30.0], base=[20.0, 20.0])
    assert regressed and "CI undefined (n<3), threshold alone used" in why
    regressed, why = verdict([21.0, 21.0], base=[20.0, 20.0])
    assert not regressed and "threshold alone" in why


def test_no_successful_current_run_is_a_regression() -> None:
    before = build_report(runs(BASE), {}, partial=False)
    after = build_report([rec(status="failed", error="boom")], {}, partial=True)
    result = compare(before, after, 0.1)
    assert result.regressed and result.judgements[0].why.startswith(
        "REGRESSED: no successful measurement now")
    assert result.lines[0] == "note: current report is PARTIAL"
    # No ok run, so no achieved probe interval to check: said, not guessed.
    assert result.unchecked == ["probe interval"]


def test_matching_by_version_among_several_builds(tmp_path: Path) -> None:
    before = build_report(runs(BASE, version="9.0.0") + runs(BASE, qemu=QEMU_B, version="9.1.0"),
                          {}, partial=False)
    after = build_report(runs(BASE, qemu="/elsewhere/qemu", version="9.1.0"), {}, partial=False)
    path = write_report(before, tmp_path)["json"]
    result = compare(load_report(path), after, 0.1)
    assert not result.regressed
    assert any(line.startswith("local 9.1.0 (b/build/qemu-system-x86_64) -> 9.1.0")
               for line in result.lines)
    assert "not compared: baseline local 9.0.0 (a/build/qemu-system-x86_64) has no counterpart" \
        in result.lines


def test_each_current_combination_is_matched_once() -> None:
    before = build_report(runs(BASE, version="9.1.50") + runs(BASE, qemu=QEMU_B, version="9.1.50"),
                          {}, partial=False)
    after = build_report(runs(BASE, qemu="/ci/qemu", version="9.1.50"), {}, partial=False)
    result = compare(before, after, 0.1)
    assert sum(" -> 9.1.50 (ci/qemu): blackout" in line for line in result.lines) == 1
    assert sum(line.startswith("not compared: baseline local") for line in result.lines) == 1


def test_mismatched_reports() -> None:
    before = build_report(runs(BASE, "local"), {}, partial=False)
    after = build_report(runs(BASE, "new-tap"), {}, partial=False)
    with pytest.raises(TapmigError, match=re.escape(
            "no combination in common: baseline has local 9.0.0, current has new-tap 9.0.0")):
        compare(before, after, 0.1)


# --- unlike runs -------------------------------------------------------------------------

OLD_REPORT = Path(__file__).parent / "data" / "report" / "report-before-meta-checks.json"


def test_cpu_model_is_the_model_name_of_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                    "model name\t: Intel(R) Xeon(R)  Gold 6338 CPU @ 2.00GHz\n\nprocessor\t: 1\n")
    assert cpu_model(info) == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    # build_report runs where the runs ran: it records this host's CPU.
    assert build_report(runs([1.0]), {}, partial=False).meta.cpu_model == cpu_model()


def test_report_records_what_compare_checks() -> None:
    records = runs([20, 21, 22])
    for r, interval in zip(records, (0.9, 0.92, 0.91), strict=True):
        r.interval_ms, r.queues, r.vhost, r.prober = interval, 1, True, "iputils"
    meta = build_report(records, {}, partial=False).meta
    assert (meta.probe_interval_ms, meta.queues, meta.prober) == (0.91, "1 queues, vhost on",
                                                                  "iputils")


def test_a_report_written_before_the_checks_still_loads_and_compares() -> None:
    old = load_report(OLD_REPORT)
    assert (old.meta.accel, old.meta.cpu_model, old.meta.probe_interval_ms) == (
        "tcg", "unknown", None)
    new = build_report(runs([40.0, 41.0, 39.0], "new-tap", "/usr/bin/qemu-system-x86_64",
                            "7.2.22"), {}, partial=False)
    new.meta.accel, new.meta.guest, new.meta.host_kernel = "tcg", old.meta.guest, \
        old.meta.host_kernel
    result = compare(old, new, 0.1)
    assert result.unchecked == ["CPU model", "prober", "queue layout", "probe interval"]
    assert ("note: not checked, a report does not record it: CPU model, prober, queue layout, "
            "probe interval") in result.lines


def unlike(**changes: Any) -> tuple[Report, Report]:
    """Two reports of the same runs, the current one's context changed as given."""
    base = build_report(runs(BASE), {}, partial=False)
    cur = build_report(runs(BASE), {}, partial=False)
    for key, value in changes.items():
        setattr(cur.meta, key, value)
    return base, cur


@pytest.mark.parametrize(("changes", "named"), [
    ({"accel": "tcg"}, ["accelerator kvm vs tcg"]),
    ({"cpu_model": "Other CPU"}, ["CPU model "]),
    ({"host_kernel": "6.12.0", "guest": "alpine"}, ["host kernel 6.1.0-21 vs 6.12.0",
                                                    "guest debian-12 vs alpine"]),
    ({"prober": "iputils"}, ["prober tapmig vs iputils"]),
    ({"queues": "1 queues, vhost off"}, ["queue layout 4 queues, vhost off vs 1 queues"]),
], ids=["accel", "cpu", "kernel-and-guest", "prober", "queues"])
def test_unlike_runs_are_refused_naming_each_difference(changes: dict[str, Any],
                                                        named: list[str]) -> None:
    base, cur = unlike(**changes)
    with pytest.raises(NotComparable) as err:
        compare(base, cur, 0.1)
    assert err.value.exit_code == 2 and len(err.value.differences) == len(named)
    for needle, difference in zip(named, err.value.differences, strict=True):
        assert difference.startswith(needle)
    assert "--allow-mismatch" in str(err.value) and "\n" not in str(err.value)


def test_probe_interval_may_jitter_but_not_change() -> None:
    base, cur = unlike()
    base.meta.probe_interval_ms, cur.meta.probe_interval_ms = 0.9, 0.93
    assert not compare(base, cur, 0.1).regressed
    cur.meta.probe_interval_ms = 1.0
    with pytest.raises(NotComparable, match=r"probe interval 0\.9 ms vs 1 ms"):
        compare(base, cur, 0.1)


def test_allow_mismatch_compares_and_says_what_differs() -> None:
    base, cur = unlike(accel="tcg")
    result = compare(base, cur, 0.1, allow_mismatch=True)
    assert result.differences == ["accelerator kvm vs tcg"]
    assert "note: compared despite different accelerator kvm vs tcg (--allow-mismatch)" \
        in result.lines
    assert not result.regressed


def test_a_verdict_on_min_max_intervals_says_so() -> None:
    """Three runs: the bootstrap interval of the median cannot be narrower than the data."""
    regressed, why = verdict([30.0, 31.0, 32.0], base=[20.0, 21.0, 22.0])
    assert regressed
    assert "(n=3 vs 3: an interval is just [min, max])" in why
    assert why.splitlines()[-1].startswith("note: 2 of 2 verdicts rest on intervals that are "
                                           "just [min, max]")
    _, firm = verdict([30.0, 31.0, 29.0, 30.5, 30.0, 31.5, 29.5])
    assert "just [min, max]" not in firm
