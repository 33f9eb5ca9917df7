"""Where the blackout goes, in every report, on real records (no QEMU): the
run's table, the timeline, the measure report with local - new-TAP per phase, compare
naming the phase that moved, and the chains' per-phase drift.

The records are tests/data/breakdown's: a real `tapmig measure --chain 8` of the built
QEMU in both modes, and one `tapmig run` of Debian's 7.2 (see its README). A delay is put
into a phase by moving every later boundary, the hole's end and the blackout with it.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import statistics
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from harness.analysis import flows, ping, tcp_stream
from harness.analysis.downtime import PHASES, RESIDUAL, Breakdown, HopMarks, breakdown
from harness.record import RunRecord
from harness.report import chain_summary, phases, timeline
from harness.report.compare import compare
from harness.report.model import Report
from harness.report.phase_render import cell
from harness.report.render import render_html, render_markdown
from harness.report.summary import build_report, load_report, write_report
from harness.report.table import format_record

DATA = Path(__file__).parent / "data" / "breakdown"
OLD_REPORT = Path(__file__).parent / "data" / "report" / "report-before-meta-checks.json"


def capture() -> list[RunRecord]:
    with gzip.open(DATA / "capture-10.2.2.records.json.gz", "rt") as f:
        return [RunRecord.from_json(r) for r in json.load(f)]


def debian() -> RunRecord:
    return RunRecord.read(DATA / "debian-7.2.record.json")


def bd(rec: RunRecord) -> Breakdown:
    found = phases.icmp(rec)
    assert found is not None
    return found


def delay(rec: RunRecord, phase: str, ms: float) -> RunRecord:
    """The record as if `phase` of its ICMP hole had taken `ms` longer."""
    out = copy.deepcopy(rec)
    data, s, later = out.downtime_breakdown, ms / 1000, False
    assert data is not None
    for p in data["phases"]:
        p["start"] += s if later else 0
        if p["name"] == phase:
            later, p["ms"] = True, round(p["ms"] + ms, 3)
        p["end"] += s if later else 0
    data["hole"][1] += s
    data["blackout_ms"] = round(data["blackout_ms"] + ms, 3)
    assert out.blackout_ms is not None and out.blackout_end is not None
    out.blackout_ms, out.blackout_end = round(out.blackout_ms + ms, 3), out.blackout_end + s
    return out


def untraced(rec: RunRecord) -> RunRecord:
    """The same hop as a run without tracing would record it: the harness's marks (read
    back from the real breakdown's boundaries) and no QEMU trace."""
    real = bd(rec)
    end = {p.name: p.end_us / 1e6 for p in real.phases}
    assert rec.stop_ts is not None
    marks = HopMarks(rec.stop_ts, end["harness_cont"], end["cont_to_resume"],
                     end["src_complete"], end["dst_complete"], end["harness_qmp"],
                     end["host_switch"])
    out = copy.deepcopy(rec)
    out.downtime_breakdown = breakdown(real.hole, marks, None, None, "QEMU 10.2.2", untraced=(
        "tracing was off for this run (Config.trace)")).to_json()
    out.flow_breakdown = None
    return out


# --- the run's table ------------------------------------------------------------------


@pytest.mark.parametrize("rec", capture(), ids=lambda r: f"{r.mode}-hop{r.hop}")
def test_the_table_shows_every_phase_and_the_residual(rec: RunRecord) -> None:
    text = format_record(rec)
    block = text[text.index("where the blackout goes"):]
    b = bd(rec)
    stretches = block.split("\n", 1)[1].split("residual in all")[0]
    shown = re.findall(r"([a-z_]+) (\d+(?:\.\d+)?)(?= ·| ms)", stretches)
    assert [(n, float(v)) for n, v in shown] == [(p.name, p.ms) for p in b.phases]
    assert [p.name for p in b.phases][:8] == list(PHASES[:8])  # in order, none missing
    assert ("host_switch" in block) == (rec.mode == "new-tap")
    assert "residual in all  0 ms (every boundary was found)" in block
    assert re.search(r"\n  harness time +[\d.]+ ms = src_complete", block)
    assert (f"virtio-net       save {b.virtio_net_save_ms:g} ms, "
            f"load {b.virtio_net_load_ms:g} ms") in block
    assert "not available" not in block
    assert re.search(r"worst flow +[\d.]+ ms: before STOP", block)


def test_debian_72_says_what_is_not_available() -> None:
    block = format_record(debian()).split("where the blackout goes")[1]
    assert "savevm_state trace events" in block
    assert re.search(r"not available +QEMU 7\.2\.22 .* has no vmstate_downtime trace events",
                     block)
    assert "QEMU's downtime  not available" in block  # not "0 ms"
    assert "host_switch 13.84" in block  # what its events allow is still shown


def test_without_a_trace_qemus_part_is_a_named_residual_never_zeros() -> None:
    rec = untraced(capture()[0])
    block = format_record(rec).split("where the blackout goes")[1]
    assert "by the harness's own marks alone (no QEMU trace)" in block
    assert re.search(r"residual +[\d.]+ ms unsplit: src_stop, ram, devices_saved, "
                     "transfer_and_load, dst_complete", block)
    assert "not available    tracing was off for this run" in block
    assert "virtio-net       not available" in block
    assert not re.search(r"(src_stop|ram|devices_saved) 0", block)


def test_a_record_without_a_breakdown_says_so() -> None:
    rec = replace(capture()[0], downtime_breakdown=None, flow_breakdown=None)
    assert format_record(rec).endswith(
        f"where the blackout goes: not available: {phases.NO_BREAKDOWN}")


# --- the measure report ---------------------------------------------------------------


@pytest.fixture(scope="module")
def report() -> Report:
    return build_report(capture(), {}, partial=False)


def test_per_phase_medians_are_the_medians_of_the_records(report: Report) -> None:
    recs = capture()
    for c in report.combinations:
        mine = [bd(r).phase_ms() for r in recs if r.mode == c.mode]
        assert c.breakdowns == len(mine) == 8
        for name in (*PHASES, RESIDUAL):
            values = [ms[name] for ms in mine if name in ms]
            if not values:
                assert name not in c.phases  # a step this mode does not have
                continue
            s = c.phases[name]
            assert (s.n, s.missing) == (len(values), 0)
            assert s.median == pytest.approx(statistics.median(values), abs=1e-9)
            assert s.ci is not None and s.median is not None
            assert s.ci[0] <= s.median <= s.ci[1]
    local = next(c for c in report.combinations if c.mode == "local")
    assert {"host_switch", "harness_cont"}.isdisjoint(local.phases)


def test_local_minus_new_tap_per_phase(report: Report) -> None:
    diffs = {d.phase: d for d in report.phase_diffs}
    by_mode = {c.mode: c for c in report.combinations}
    for name, d in diffs.items():
        a, b = by_mode["local"].phases.get(name), by_mode["new-tap"].phases.get(name)
        if a is None or b is None:
            assert d.delta is None and d.note == "new-tap only: local has no such step"
            continue
        assert a.median is not None and b.median is not None
        assert d.delta == pytest.approx(a.median - b.median, abs=1e-3)
        assert (d.n_num, d.n_den) == (8, 8)
    assert {n for n, d in diffs.items() if d.delta is None} == {"host_switch", "harness_cont"}
    # What this capture says beyond its intervals: local spends less of the harness's
    # time (it makes no new TAP and switches to none), and less of QEMU's.
    for name in ("sum:harness time", "harness_qmp", "sum:QEMU", "cont_to_resume"):
        ci = diffs[name].ci
        assert ci is not None and diffs[name].delta is not None and ci[1] < 0, name
    assert diffs["residual"].delta == 0.0
    again = build_report(capture(), {}, partial=False)
    assert again.phase_diffs == report.phase_diffs  # seeded: the same records, the same report


def test_the_report_shows_where_the_blackout_goes(report: Report, tmp_path: Path) -> None:
    md = render_markdown(report)
    section = md[md.index("## Where the blackout goes"):md.index("Timelines:")]
    assert "| phase | who | new-tap (n=8) | local (n=8) | local - new-tap (n=8 vs 8) |" in section
    assert re.search(r"\| host_switch \| harness time \| [\d.]+ \[[\d.]+, [\d.]+\] \| "
                     r"no such step \| new-tap only: local has no such step \|", section)
    assert re.search(r"\| all harness time \| harness time \| .* \| -[\d.]+ \[-[\d.]+, -", section)
    assert "| residual | residual | 0 [0, 0] | 0 [0, 0] | 0 [0, 0] |" in section
    page = render_html(report)
    assert "<h2>Where the blackout goes</h2>" in page and 'class="kind-harness-time"' in page
    loaded = load_report(write_report(report, tmp_path)["json"])
    assert loaded.phase_diffs == report.phase_diffs
    assert [c.phases for c in loaded.combinations] == [c.phases for c in report.combinations]


def test_phases_a_qemu_lacks_are_not_available_not_zero() -> None:
    rep = build_report([untraced(r) for r in capture() if r.mode == "new-tap"], {}, False)
    combo = rep.combinations[0]
    assert combo.phases["src_stop"].n == 0 and combo.phases["src_stop"].median is None
    assert cell(combo, "src_stop") == "not available"
    assert combo.phases["harness_qmp"].median is not None  # the harness's marks remain
    assert combo.breakdown_notes == ["not available in 8 of 8 runs: tracing was off for this "
                                     "run (Config.trace)"]
    md = render_markdown(build_report([debian()], {}, False))
    assert "- new-tap: not available in 1 of 1 runs: QEMU 7.2.22" in md


# --- compare --------------------------------------------------------------------------


def test_compare_names_the_phase_that_moved() -> None:
    before = build_report(capture(), {}, partial=False)
    slower = build_report([delay(r, "harness_qmp", 20) for r in capture()], {}, False)
    verdict = compare(before, slower, 0.1)
    blackout = [j for j in verdict.judgements if j.metric == "blackout_ms"]
    assert [j.phase for j in blackout] == ["harness_qmp", "harness_qmp"]
    moved = {(m.combination.split()[0], m.phase) for m in verdict.phases if m.moved}
    assert moved == {(mode, p) for mode in ("new-tap", "local")
                     for p in ("harness_qmp", "sum:harness time")}
    assert any(re.search(r"^local .*: phase harness_qmp moved: 2\.12 -> 22\.1 ms \(\+20\)", x)
               for x in verdict.lines)
    much = compare(before, build_report([delay(r, "harness_qmp", 40) for r in capture()], {},
                                        False), 0.1)
    assert much.regressed
    assert all("the phase that moved most: harness_qmp +40 ms" in j.why
               for j in much.judgements if j.metric == "blackout_ms" and j.regressed)
    same = compare(before, build_report(capture(), {}, False), 0.1)
    assert not any(m.moved for m in same.phases) and all(j.phase is None
                                                         for j in same.judgements)


def test_an_old_report_without_breakdowns_still_loads_and_compares() -> None:
    old = load_report(OLD_REPORT)
    assert all(c.phases == {} and c.breakdowns == 0 for c in old.combinations)
    assert "Where the blackout goes" not in render_markdown(old)
    new = build_report([debian()] * 3, {}, partial=False)
    new.meta = replace(new.meta, accel="tcg", guest=old.meta.guest,
                       host_kernel=old.meta.host_kernel)
    result = compare(old, new, 0.1)
    assert any(line.startswith("new-tap 7.2.22 (bin/qemu-system-x86_64) -> 7.2.22") and
               line.endswith(": phases not compared: the baseline has no breakdown")
               for line in result.lines)
    back = compare(new, old, 0.1)
    assert any(line.endswith("phases not compared: the current report has no breakdown")
               for line in back.lines)


# --- the timeline ---------------------------------------------------------------------


def test_the_timeline_has_one_band_per_phase() -> None:
    rec = next(r for r in capture() if r.mode == "new-tap" and r.hop == 1)

    def log(name: str) -> str:
        return gzip.decompress((DATA / f"newtap-hop1.{name}.log.gz").read_bytes()).decode()

    page = timeline.draw(rec, ping.parse(log("ping")), flows.parse(log("flows")),
                         tcp_stream.parse(log("tcp")))
    assert "<script" not in page and "href" not in page  # still self-contained
    svg = ET.fromstring(page[page.index("<svg"):page.index("</svg>") + 6])
    rects = [e for e in svg.iter("{http://www.w3.org/2000/svg}rect")
             if e.get("class") == "phase-band"]
    b, fb = bd(rec), phases.flow(rec)
    assert fb is not None
    for band, want in (("icmp", b), ("flow", fb), ("zoom", b)):
        mine = [e for e in rects if e.get("data-band") == band]
        assert [e.get("data-phase") for e in mine] == [p.name for p in want.phases]
        titles = [e.findtext("{http://www.w3.org/2000/svg}title") or "" for e in mine]
        assert all(t.startswith(f"{p.name} {p.ms:g} ms") for t, p in
                   zip(titles, want.phases, strict=True))
    kinds = {e.get("data-phase"): e.get("data-kind") for e in rects}
    assert {p for p, k in kinds.items() if k == "harness time"} == {
        "src_complete", "harness_qmp", "host_switch", "harness_cont"}
    texts = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "ICMP phases" in texts and any(t.startswith("flow ") and t.endswith(" phases")
                                          for t in texts)
    assert all(any(t == f"{p.name} {p.ms:g}" for t in texts) for p in b.phases)  # labelled
    assert "<td>residual</td><td>residual</td><td>0</td><td>0</td>" in page


# --- chains ---------------------------------------------------------------------------


def test_chains_show_the_drift_of_each_phase() -> None:
    chains = chain_summary.chain_summaries(capture())
    for c in chains:
        names = [f["metric"] for f in c["phase_findings"]]
        assert names[0] == "phase:pre_stop" and names[-1] == "phase:residual"
        assert ("phase:host_switch" in names) == (c["mode"] == "new-tap")
        assert all(f["n"] == 8 for f in c["phase_findings"])
    md = "\n".join(chain_summary.markdown(chains))
    assert "Per-phase drift: Theil-Sen slope of each phase" in md
    assert re.search(r"\| host_switch \| [+-][\d.]+ \[.*\] \| no such step \|", md)
    # 1 ms more per hop in the harness's QMP steps: that phase drifts, flagged.
    recs = [delay(r, "harness_qmp", (r.hop or 0) * 1.0) for r in capture()]
    crept = chain_summary.chain_summaries(recs)
    flags = [x for c in crept for x in c["flags"] if "phase:harness_qmp" in x]
    assert len(flags) == 2 and all(x.startswith("DRIFT: ") and "drifts up" in x for x in flags)
    quiet = [x for c in chains for x in c["flags"] if "phase:harness_qmp" in x]
    assert quiet == []
