"""harness.analysis.downtime and harness.qemu.trace on real captured trace logs.

tests/data/trace/README.md says how each file was captured. No QEMU runs here: the
holes and marks are the real ones each capture recorded in its marks.json.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.analysis import downtime as dt
from harness.qemu import trace

DATA = Path(__file__).parent / "data" / "trace"
QEMU_PHASES = ("src_stop", "ram", "devices_saved", "transfer_and_load", "dst_complete")


def capture(name: str) -> tuple[dict[str, Any], dt.HopMarks, dt.TraceLog, dt.TraceLog]:
    d = DATA / name
    meta = json.loads((d / "marks.json").read_text())
    return (meta, dt.HopMarks.from_json(meta), dt.load_trace(d / "source.trace"),
            dt.load_trace(d / "target.trace"))


def hop(name: str, hole_key: str = "hole") -> tuple[dict[str, Any], dt.Breakdown]:
    meta, marks, src, dst = capture(name)
    hole = (meta[hole_key][0], meta[hole_key][1])
    return meta, dt.breakdown(hole, marks, src, dst, meta["qemu_version"])


def names(b: dt.Breakdown) -> list[str]:
    return [p.name for p in b.phases]


def assert_adds_up(b: dt.Breakdown) -> None:
    """Consecutive, none negative, and exactly the blackout, to the µs."""
    assert all(p.us >= 0 for p in b.phases)
    assert b.phases[0].start_us == round(b.hole[0] * 1e6)
    assert b.phases[-1].end_us == round(b.hole[1] * 1e6)
    assert all(a.end_us == c.start_us for a, c in itertools.pairwise(b.phases))
    assert sum(p.us for p in b.phases) == round(b.blackout_ms * 1000)


# -- the trace files ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["built-local", "built-newtap", "debian-newtap"])
def test_every_line_of_a_real_trace_parses(name: str) -> None:
    _, _, src, dst = capture(name)
    for log in (src, dst):
        raw = Path(log.path).read_text().splitlines()
        assert log.problems == () and len(log.lines) == len(raw)


def test_both_timestamp_formats_are_wall_clock_microseconds() -> None:
    _, _, built, _ = capture("built-newtap")
    first = built.lines[0]  # 2026-12-03T14:24:22.262087Z vmstate_downtime_checkpoint ...
    assert (first.ts_us, first.name, first.args, first.tid) == (
        1796307862262087, "vmstate_downtime_checkpoint", "src-downtime-start", None)
    _, _, debian, _ = capture("debian-newtap")
    first = debian.lines[0]  # 15380@1796307879.360317:savevm_state_setup
    assert (first.ts_us, first.name, first.tid) == (1796307879360317, "savevm_state_setup",
                                                    15380)
    # glib leaves the fraction out when the µs are 0; an offset is honoured
    assert trace.parse_line("2026-12-03T14:24:22Z x a") == trace.TraceLine(
        1796307862000000, "x", "a", None)
    assert trace.parse_line("2026-12-03T15:24:22.5+01:00 x") == trace.TraceLine(
        1796307862500000, "x", "", None)


def test_the_checkpoints_and_devices_of_both_sides() -> None:
    _, _, src, dst = capture("built-newtap")
    source, target = dt.source_side(src), dt.target_side(dst)
    assert list(source.checkpoints) == ["src-downtime-start", "src-vm-stopped",
                                        "src-iterable-saved", "src-non-iterable-saved",
                                        "src-downtime-end"]
    assert list(target.checkpoints) == ["dst-precopy-loadvm-completed", "dst-precopy-bh-enter",
                                        "dst-precopy-bh-announced", "dst-precopy-bh-vm-started"]
    ram = next(d for d in source.devices if d.idstr == "ram" and d.type == "iterable")
    assert (ram.instance_id, ram.us) == (0, 65)
    vnet = [d for d in target.devices if d.virtio_net]
    assert [(d.idstr, d.instance_id, d.us) for d in vnet] == [
        ("0000:00:01.0:00.0/virtio-net", 0, 1504)]


def test_a_cut_short_file_is_a_named_problem() -> None:
    log = dt.load_trace(DATA / "cut-short" / "source.trace")
    assert [p.kind for p in log.problems] == ["cut-short"]  # the partial last line
    assert "vmstate_downtime_save ty" in log.problems[0].detail
    side = dt.source_side(log)
    assert [p.kind for p in side.problems] == ["cut-short", "cut-short"]
    assert "no src-downtime-end" in side.problems[1].detail
    assert "src-non-iterable-saved" not in side.checkpoints


def test_an_empty_missing_or_untimestamped_file_is_a_named_problem(tmp_path: Path) -> None:
    empty = tmp_path / "empty.trace"
    empty.write_text("")
    bare = tmp_path / "bare.trace"  # what 10.2.2 writes without -msg timestamp=on
    bare.write_text("".join(ln.split(" ", 1)[1] + "\n" for ln in
                            (DATA / "built-local" / "source.trace").read_text().splitlines()))
    kinds = {f: [p.kind for p in dt.load_trace(tmp_path / f).problems]
             for f in ("empty.trace", "nowhere.trace", "bare.trace")}
    assert kinds == {"empty.trace": ["empty"], "nowhere.trace": ["missing"],
                     "bare.trace": ["unparsed"]}
    assert dt.load_trace(bare).lines == ()


# -- the breakdown -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["built-local", "built-newtap", "debian-newtap"])
def test_phases_add_up_to_the_blackout(name: str) -> None:
    meta, b = hop(name)
    assert_adds_up(b)
    assert b.blackout_ms == meta["blackout_ms"]
    assert b.residual_ms == 0 and dt.RESIDUAL not in names(b)


def test_new_tap_has_a_host_switch_and_local_has_none() -> None:
    meta, newtap = hop("built-newtap")
    _, local = hop("built-local")
    switch = next(p for p in newtap.phases if p.name == "host_switch")
    assert switch.us == round(meta["switch_end"] * 1e6) - round(meta["switch_start"] * 1e6)
    assert names(local) == ["pre_stop", *QEMU_PHASES, "src_complete", "harness_qmp",
                            "cont_to_resume", "guest_warmup"]
    assert names(newtap) == ["pre_stop", *QEMU_PHASES, "src_complete", "harness_qmp",
                             "host_switch", "harness_cont", "cont_to_resume", "guest_warmup"]
    assert local.phases[-3].end_by == "cont sent"


def test_virtio_net_is_named_among_the_devices_on_both_sides() -> None:
    _, b = hop("built-local")
    by_name = {p.name: p for p in b.phases}
    for phase in ("devices_saved", "transfer_and_load"):
        assert any(d.virtio_net for d in by_name[phase].devices)
        assert len(by_name[phase].devices) >= dt.TOP_DEVICES
    # v12's fd handover is in virtio-net's load: the largest load of this local hop
    assert by_name["transfer_and_load"].devices[0].virtio_net
    assert (b.virtio_net_save_ms, b.virtio_net_load_ms) == (4.361, 2.515)
    assert b.qemu_downtime_ms == 6.571 and b.events == "vmstate_downtime"
    assert b.available and b.missing is None and b.problems == ()


def test_the_worst_flow_gets_the_same_boundaries() -> None:
    meta, icmp = hop("built-newtap")
    _, flow = hop("built-newtap", "worst_flow_hole")
    assert_adds_up(flow)
    assert names(flow) == names(icmp)
    same = [p.name for p in icmp.phases if p.name not in ("pre_stop", "guest_warmup")]
    assert [icmp.phase_ms()[n] for n in same] == [flow.phase_ms()[n] for n in same]
    earlier = round(meta["hole"][0] * 1e6) - round(meta["worst_flow_hole"][0] * 1e6)
    assert flow.phases[0].us - icmp.phases[0].us == earlier


def test_debian_72_gets_what_its_events_allow_and_says_what_is_missing() -> None:
    meta, b = hop("debian-newtap")
    assert b.available and b.events == "savevm_state"
    assert b.missing is not None
    assert b.missing.startswith(f"{meta['qemu_version']} has no vmstate_downtime trace events")
    assert b.phases[0].end_by == "STOP" and b.phases[1].end_by == "migration_completion_vm_stop"
    assert b.qemu_downtime_ms is None  # no src-downtime-end to measure it by
    load = next(p for p in b.phases if p.name == "transfer_and_load")
    assert load.end_by == "process_incoming_migration_co_end"
    assert any(d.virtio_net for d in load.devices)


def test_without_traces_the_qemu_part_is_residual_never_zeros() -> None:
    meta, marks, _, _ = capture("debian-newtap")
    b = dt.breakdown((meta["hole"][0], meta["hole"][1]), marks, None, None, "qemu-7.2")
    assert not b.available and b.missing == "qemu-7.2 has no vmstate_downtime trace events"
    assert_adds_up(b)
    residual = next(p for p in b.phases if p.name == dt.RESIDUAL)
    assert residual.covers == QEMU_PHASES
    assert (residual.start_by, residual.end_by) == ("STOP", "MIGRATION completed (target)")
    assert not set(QEMU_PHASES) & set(names(b))


def test_a_cut_short_source_leaves_a_residual_and_names_the_problem() -> None:
    meta, marks, _, dst = capture("built-newtap")
    cut = dt.load_trace(DATA / "cut-short" / "source.trace")
    b = dt.breakdown((meta["hole"][0], meta["hole"][1]), marks, cut, dst, "built")
    assert_adds_up(b)
    residual = next(p for p in b.phases if p.name == dt.RESIDUAL)
    assert residual.covers == ("devices_saved", "transfer_and_load")
    assert residual.why == "no src-non-iterable-saved"
    assert len(b.problems) == 2 and all("cut-short" in p for p in b.problems)
    assert b.qemu_downtime_ms is None


def test_an_out_of_order_boundary_goes_to_the_residual() -> None:
    meta, marks, src, dst = capture("built-newtap")
    early = replace(marks, switch_start=marks.stop - 0.001)  # a clock that jumped back
    b = dt.breakdown((meta["hole"][0], meta["hole"][1]), early, src, dst, "built")
    assert_adds_up(b)
    residual = next(p for p in b.phases if p.name == dt.RESIDUAL)
    assert residual.covers == ("harness_qmp", "host_switch")
    assert residual.why.startswith("host switch start is ")
    assert residual.end_by == "host switch end" and "harness_qmp" not in names(b)


def test_a_hole_that_starts_late_or_ends_early_clips_the_phases() -> None:
    _, marks, src, dst = capture("built-newtap")
    cps = dt.source_side(src).checkpoints
    start = (cps["src-iterable-saved"] - 100) / 1e6  # the last reply came after the stop
    end = marks.cont_sent + 0.0001  # and the first before RESUME
    b = dt.breakdown((start, end), marks, src, dst, "built")
    assert_adds_up(b)
    ms = b.phase_ms()
    assert (ms["pre_stop"], ms["src_stop"], ms["ram"]) == (0.0, 0.0, 0.1)
    assert (ms["cont_to_resume"], ms["guest_warmup"]) == (0.1, 0.0)
    assert [p.name for p in b.phases if p.clipped] == ["pre_stop", "src_stop", "ram",
                                                       "cont_to_resume", "guest_warmup"]


def test_a_hole_that_ends_before_it_starts_is_not_split() -> None:
    _, marks, src, dst = capture("built-local")
    b = dt.breakdown((2.0, 1.0), marks, src, dst, "built")
    assert b.phases == () and not b.available and b.missing is not None


def test_json_round_trip_and_old_records() -> None:
    _, b = hop("built-newtap")
    data = json.loads(json.dumps(b.to_json()))
    assert data["blackout_ms"] == 92.484 and data["residual_ms"] == 0
    assert all(round(p["ms"], 3) == p["ms"] for p in data["phases"])
    again = dt.Breakdown.from_json(data)
    assert again is not None and again.to_json() == data
    assert again.phase_ms() == b.phase_ms()
    assert dt.Breakdown.from_json(None) is None
    marks = capture("built-local")[1]
    assert dt.HopMarks.from_json(json.loads(json.dumps(marks.to_json()))) == marks


def test_compare_phases_median_per_phase() -> None:
    _, local = hop("built-local")
    _, newtap = hop("built-newtap")
    rows = {r.name: r for r in dt.compare_phases([newtap], [local, local])}
    assert rows["host_switch"] == dt.PhaseMedian("host_switch", 7.698, None, None, 1, 0)
    pre = rows["pre_stop"]
    assert (pre.n_baseline, pre.n_current) == (1, 2)
    assert pre.delta_ms == round(local.phase_ms()["pre_stop"] - newtap.phase_ms()["pre_stop"], 3)
    assert rows[dt.RESIDUAL].delta_ms == 0


# -- the QEMU side -----------------------------------------------------------------


def test_trace_args() -> None:
    log = Path("/run/x/source.trace")
    assert trace.trace_args(log, trace.DOWNTIME_PATTERNS) == [
        "-trace", "enable=vmstate_downtime_*", "-D", str(log), "-msg", "timestamp=on"]
    assert trace.trace_args(log, ()) == []


def test_trace_patterns_follow_what_the_binary_has() -> None:
    built = frozenset({*trace.DOWNTIME_EVENTS, *trace.LEGACY_EVENTS, "other"})
    assert trace.trace_patterns(built) == trace.DOWNTIME_PATTERNS
    meta = json.loads((DATA / "debian-newtap" / "marks.json").read_text())
    assert trace.trace_patterns(frozenset(trace.LEGACY_EVENTS)) == tuple(meta["patterns"])
    assert trace.trace_patterns(frozenset({"savevm_state_setup", "x"})) == (
        "savevm_state_setup",)
    assert trace.trace_patterns(frozenset()) == ()


def test_untimestamped_stderr() -> None:
    # -msg timestamp=on's prefix, as 10.2.2 wrote it on stderr here
    line = ("2026-12-03T13:49:28.929646Z qemu-system-x86_64: -device virtio-net-pci,id=nic0: "
            'failed to find romfile "efi-virtio.rom"')
    assert trace.untimestamped(line).startswith("qemu-system-x86_64: -device")
    assert trace.untimestamped("qemu: could not load PC BIOS") == "qemu: could not load PC BIOS"
