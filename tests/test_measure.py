"""`tapmig measure` and `tapmig compare`: input checks through the CLI's entry point (called
in-process: nothing starts before they are refused), the run loop's order, skip and
interrupt logic with a stand-in runner, and one real measurement."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.campaign.loop import run_campaign
from harness.campaign.plan import Plan, config, parse_modes
from harness.campaign.store import prepare_out, write_record
from harness.errors import EXIT_USAGE, TapmigError, Unsupported
from harness.host.rundir import RUN_PARENT, SHM_DIR
from harness.proc import PREFIX
from harness.record import RunRecord
from harness.report.model import Combination, Report
from harness.report.summary import load_report
from harness.run import setup
from harness.run.config import Config
from harness.run.setup import Setup
from harness.vocabulary import AccelChoice, Log, Mode
from tests.support import REPO, call_tapmig, one_line_error, run_tapmig
from tests.support.calls import count_calls
from tests.support.counting import CountingQemu
from tests.support.records import QEMU_A as A
from tests.support.records import QEMU_B as B
from tests.support.records import record, report_file

SYSTEM_QEMU = Path("/usr/bin/qemu-system-x86_64")


# --- measure: bad input ------------------------------------------------------------------


def measure_args(out: Path, qemu: str = "/nonexistent/qemu-system-x86_64",
                 mode: str = "new-tap", iterations: str = "2") -> list[str]:
    return ["measure", "--qemu", qemu, "--mode", mode, "--iterations", iterations,
            "--out", str(out)]


@pytest.mark.parametrize("iterations", ["0", "-3"])
def test_measure_refuses_too_few_iterations(tmp_path: Path, iterations: str) -> None:
    one_line_error(call_tapmig(*measure_args(tmp_path / "o", iterations=iterations)),
                   f"--iterations {iterations}", code=EXIT_USAGE)
    assert not (tmp_path / "o").exists()


def test_measure_refuses_unknown_mode(tmp_path: Path) -> None:
    one_line_error(call_tapmig(*measure_args(tmp_path / "o", mode="new-tap,lcoal")),
                   "unknown mode 'lcoal'", "new-tap, local", code=EXIT_USAGE)


def test_measure_refuses_unwritable_out(tmp_path: Path) -> None:
    """A path under a regular file: unwritable even for root, where chmod would not stop us."""
    (tmp_path / "file").write_text("not a directory\n")
    one_line_error(call_tapmig(*measure_args(tmp_path / "file" / "out")),
                   f"{tmp_path / 'file' / 'out'} is not writable", code=EXIT_USAGE)


def test_measure_refuses_an_earlier_measurements_dir(tmp_path: Path) -> None:
    """Mixing two sessions' records would make the report describe neither."""
    write_record(record(mode="local"), tmp_path / "records")
    one_line_error(call_tapmig(*measure_args(tmp_path)), "already holds an earlier measurement",
                   code=EXIT_USAGE)


@pytest.mark.parametrize("binary, needle", [("/nonexistent/qemu-system-x86_64", "not found"),
                                            ("/bin/true", "is not a QEMU system emulator")])
def test_measure_refuses_missing_or_foreign_qemu(tmp_path: Path, binary: str,
                                                 needle: str) -> None:
    one_line_error(call_tapmig(*measure_args(tmp_path / "o", qemu=binary)), needle, code=EXIT_USAGE)
    assert not any((tmp_path / "o" / "records").iterdir())


@pytest.mark.skipif(not SYSTEM_QEMU.exists(), reason=f"{SYSTEM_QEMU} absent")
def test_measure_checks_every_qemu_before_any_run(tmp_path: Path) -> None:
    args = measure_args(tmp_path / "o", qemu=str(SYSTEM_QEMU))
    one_line_error(call_tapmig(*args, "--qemu", "/nonexistent/qemu"),
                   "'/nonexistent/qemu' not found", code=EXIT_USAGE)
    one_line_error(call_tapmig(*args, "--qemu", str(SYSTEM_QEMU)), "given twice", code=EXIT_USAGE)
    assert not any((tmp_path / "o" / "runs").iterdir())


def test_parse_modes_accepts_commas_and_repeats() -> None:
    assert parse_modes(["new-tap,local"]) == ("new-tap", "local")
    assert parse_modes(["local", " new-tap , local"]) == ("local", "new-tap")
    with pytest.raises(TapmigError, match="no mode given"):
        parse_modes([","])


def test_prepare_out_creates_the_layout(tmp_path: Path) -> None:
    prepare_out(tmp_path / "new" / "dir")
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == ["records", "runs"]


# --- write_record ------------------------------------------------------------------------


def test_write_record_names_by_start_and_never_overwrites(tmp_path: Path) -> None:
    rec = record(started="2024-06-01T10:02:03.456789+00:00", blackout_ms=12.5)
    first, second = write_record(rec, tmp_path / "r"), write_record(rec, tmp_path / "r")
    assert (first.name, second.name) == ("20240601T100203Z-new-tap-1.json",
                                         "20240601T100203Z-new-tap-2.json")
    assert RunRecord.read(first) == rec
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [first.name, second.name]


def test_write_record_parallel_writers_keep_every_record(tmp_path: Path) -> None:
    recs = [record(mode="local", started="2024-06-01T10:00:00+00:00", iteration=i)
            for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda r: write_record(r, tmp_path), recs))
    assert len(set(paths)) == 40
    assert sorted(RunRecord.read(p).iteration or 0 for p in paths) == list(range(40))
    assert not list(tmp_path.glob(".*"))


# --- the run loop, with a stand-in runner -------------------------------------------------


class Runner:
    """Answers like scenario.run: a record per Config, with a ping.log in the run directory."""

    def __init__(self, unsupported: tuple[tuple[str, str], ...] = (),
                 fail_calls: tuple[int, ...] = (), interrupt_call: int | None = None) -> None:
        self.unsupported, self.fail_calls = unsupported, fail_calls
        self.interrupt_call = interrupt_call
        self.calls: list[tuple[str, str]] = []

    def __call__(self, cfg: Config, log: Log, setup: Setup | None) -> RunRecord:
        self.calls.append((cfg.qemu, cfg.mode))
        n = len(self.calls)
        if n == self.interrupt_call:
            raise KeyboardInterrupt
        rec = record(mode=cfg.mode, qemu=cfg.qemu, started=f"2024-06-01T10:00:{n:02d}+00:00",
                     queues=cfg.queues)
        if (cfg.qemu, cfg.mode) in self.unsupported:
            rec.status, rec.error = "unsupported", f"{cfg.qemu} cannot do {cfg.mode} migration"
        elif n in self.fail_calls:
            rec.status, rec.error = "failed", "the host could not ping the guest\nsecond line"
        else:
            rec.blackout_ms, rec.downtime_ms = 10.0 * n, 5.0 * n
        assert cfg.out is not None
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "ping.log").write_text(f"run {n}\n")
        rec.artifacts = {"ping": "ping.log"}
        return rec


def plan(out: Path, iterations: int = 3, modes: tuple[Mode, ...] = ("new-tap", "local")) -> Plan:
    prepare_out(out)
    return Plan(builds={"A": A, "B": B}, modes=modes, iterations=iterations, out=out,
                run=Config(qemu="", queues=2, cache=out / "cache"))


def run_loop(p: Plan, runner: Runner) -> tuple[Any, list[str]]:
    lines: list[str] = []
    return run_campaign(p, {}, lines.append, runner), lines


def saved(out: Path) -> list[RunRecord]:
    return sorted((RunRecord.read(p) for p in (out / "records").glob("*.json")),
                  key=lambda r: r.started)


def combo(report: Report, mode: str, qemu: str) -> Combination:
    found = [c for c in report.combinations if (c.mode, c.qemu) == (mode, qemu)]
    assert len(found) == 1
    return found[0]


def test_runs_interleave_iteration_then_mode_then_build(tmp_path: Path) -> None:
    runner = Runner()
    outcome, lines = run_loop(plan(tmp_path), runner)
    assert runner.calls == [(A, "new-tap"), (B, "new-tap"), (A, "local"), (B, "local")] * 3
    records = saved(tmp_path)
    assert [r.iteration for r in records] == [1] * 4 + [2] * 4 + [3] * 4
    assert all(r.queues == 2 for r in records)
    # Each record points at its own artifacts, relative to the output directory.
    first = records[0].artifacts["ping"]
    assert first == "runs/1-new-tap-A/ping.log" and (tmp_path / first).read_text() == "run 1\n"
    assert outcome.exit_code == 0 and not outcome.interrupted
    rep = load_report(tmp_path / "report.json")
    assert not rep.partial
    assert [c.runs for c in rep.combinations] == [3, 3, 3, 3]
    assert combo(rep, "local", B).metrics["blackout_ms"].median == 80.0  # runs 4, 8, 12
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.html").exists()
    assert re.fullmatch(r"\[1/12\] #1 A new-tap: blackout 10\.0 ms, QMP downtime 5\.0 ms "
                        r"\(\d+s\); ETA \d+s", lines[0]), lines[0]
    assert lines[-1].startswith("[12/12] #3 B local: ") and lines[-1].endswith("ETA 0s")


def test_each_run_is_the_plans_options_with_its_own_build_and_mode(tmp_path: Path) -> None:
    """Plan.run holds the options once: a run's Config differs only in its binaries, its
    mode and its out, and the manifest names the options as it always has."""
    options = Config(qemu="", machine="pc-q35-9.0", accel="tcg", queues=2, vcpus=2, flows=3,
                     flow_interval=0.05, tcp="continuous", all_queues=True, epsilon_ms=70.0,
                     cache=tmp_path / "cache")
    p = Plan(builds={"A": A, "B->A": B}, targets={"B->A": A}, modes=("local",), iterations=2,
             out=tmp_path, run=options)
    assert config(p, "local", "B->A", "1-local-B->A") == replace(
        options, qemu=B, target_qemu=A, mode="local", out=tmp_path / "runs" / "1-local-B->A")
    assert config(p, "local", "A", "1-local-A").target_qemu is None
    assert p.accel == "tcg"
    assert p.manifest() == {
        "builds": ["A", "B->A"], "modes": ["local"], "queues": 2, "iterations": 2, "hops": None,
        "duration_s": None, "accel": "tcg", "epsilon_ms": 70.0, "shards": 1, "vcpus": 2,
        "flows": 3, "flow_interval": 0.05, "tcp": "continuous", "all_queues": True,
        "targets": {"B->A": A}, "machine": "pc-q35-9.0"}


def test_unsupported_combination_is_reported_once_and_skipped(tmp_path: Path) -> None:
    runner = Runner(unsupported=((B, "local"),))
    outcome, lines = run_loop(plan(tmp_path), runner)
    assert runner.calls.count((B, "local")) == 1
    assert runner.calls.count((A, "local")) == runner.calls.count((B, "new-tap")) == 3
    skips = [line for line in lines if "not supported" in line]
    assert skips == [f"[4/12] #1 B local: not supported, skipping its 2 remaining runs: "
                     f"{B} cannot do local migration"]
    assert lines[-1].startswith("[10/10] ")  # the plan shrank by the two skipped runs
    assert outcome.exit_code == 0
    c = combo(outcome.report, "local", B)
    assert (c.runs, c.unsupported.count) == (1, 1)


def test_failed_runs_are_kept_counted_and_the_rest_still_run(tmp_path: Path) -> None:
    runner = Runner(fail_calls=(2,))
    outcome, lines = run_loop(plan(tmp_path, iterations=2, modes=("new-tap",)), runner)
    assert len(runner.calls) == 4 and len(saved(tmp_path)) == 4
    assert lines[1].startswith("[2/4] #1 B new-tap: FAILED: the host could not ping the guest (")
    c = combo(outcome.report, "new-tap", B)
    assert (c.runs, c.ok, c.failed.count) == (2, 1, 1)
    assert outcome.exit_code == 1


def test_nothing_supported_is_not_success(tmp_path: Path) -> None:
    runner = Runner(unsupported=((A, "local"), (B, "local")))
    outcome, _ = run_loop(plan(tmp_path, modes=("local",)), runner)
    assert len(runner.calls) == 2 and outcome.exit_code == 2


def test_interrupt_writes_a_partial_report_of_the_finished_runs(tmp_path: Path) -> None:
    runner = Runner(interrupt_call=3)
    outcome, lines = run_loop(plan(tmp_path), runner)
    assert outcome.interrupted and outcome.exit_code == 130
    assert lines[-1] == "interrupted after 2 of 12 runs; writing a partial report"
    assert [(r.qemu, r.mode) for r in saved(tmp_path)] == [(A, "new-tap"), (B, "new-tap")]
    rep = load_report(tmp_path / "report.json")
    assert rep.partial is True
    assert [(c.qemu, c.mode, c.runs) for c in rep.combinations] == [
        (A, "new-tap", 1), (B, "new-tap", 1)]
    assert "PARTIAL" in (tmp_path / "report.md").read_text()



def test_sigterm_to_a_forked_helper_does_not_unwind_the_parent_stack() -> None:
    """pyroute2 stops its forked netns helpers with SIGTERM; the CLI's SIGTERM-as-Ctrl-C
    handler must not make a helper unwind (and tear down) the measurement it was forked from."""
    script = """if True:
        import os, signal, time
        from harness.cli import main
        signal.signal(signal.SIGTERM, main._terminate)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(w, b"x")
                time.sleep(30)
            except KeyboardInterrupt:
                print("child unwound", flush=True)
            os._exit(0)
        os.read(r, 1)
        os.kill(pid, signal.SIGTERM)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout == "143\n"

# --- compare -------------------------------------------------------------------------------


BASELINE = [100.0, 101.0, 99.0, 100.0, 102.0, 98.0, 100.5]  # median 100


def test_compare_flags_a_clear_regression(tmp_path: Path) -> None:
    base = report_file(tmp_path / "old", BASELINE)
    cur = report_file(tmp_path / "new", [150.0, 151.0, 149.0, 150.0, 152.0, 148.0, 150.5])
    done = call_tapmig("compare", "--baseline", str(base), "--current", str(cur))
    assert done.returncode == 1, done.stderr
    assert "blackout: REGRESSED: median 100.0 -> 150.0 ms (+50.0%)" in done.stdout
    assert "QMP downtime: REGRESSED: median 50.0 -> 75.0 ms" in done.stdout
    assert done.stdout.endswith("verdict: REGRESSED\n")


def test_compare_within_noise_passes(tmp_path: Path) -> None:
    base = report_file(tmp_path / "old", BASELINE)
    cur = report_file(tmp_path / "new", [103.0, 99.0, 101.0, 104.0, 100.0, 102.0, 98.5])
    done = call_tapmig("compare", "--baseline", str(base), "--current", str(cur),
                      "--threshold", "10%")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "blackout: ok: median 100.0 -> 101.0 ms (+1.0%), within threshold +10.0%" in done.stdout
    assert done.stdout.endswith("verdict: no regression\n")


CompareInput = Callable[[Path], tuple[Path, Path, str]]


def _empty(tmp: Path) -> tuple[Path, Path, str]:
    (tmp / "empty.json").write_text("")
    return report_file(tmp / "old", BASELINE), tmp / "empty.json", "10%"


def _foreign(tmp: Path) -> tuple[Path, Path, str]:
    (tmp / "package.json").write_text(json.dumps({"name": "left-pad", "version": "1.3.0"}))
    return tmp / "package.json", report_file(tmp / "new", BASELINE), "10%"


def _threshold(tmp: Path) -> tuple[Path, Path, str]:
    return report_file(tmp / "old", BASELINE), report_file(tmp / "new", BASELINE), "ten"


def _mismatched(tmp: Path) -> tuple[Path, Path, str]:
    return (report_file(tmp / "old", BASELINE),
            report_file(tmp / "new", BASELINE, mode="local"), "10%")


@pytest.mark.parametrize("make, needle", [
    (_empty, "empty.json: file is empty"),
    (_foreign, "package.json: not a tapmig report"),
    (_threshold, "bad threshold 'ten'"),
    (_mismatched, "no combination in common"),
], ids=["empty", "foreign", "threshold", "mismatched-modes"])
def test_compare_bad_input(tmp_path: Path, make: CompareInput, needle: str) -> None:
    base, cur, threshold = make(tmp_path)
    done = call_tapmig("compare", "--baseline", str(base), "--current", str(cur),
                      "--threshold", threshold)
    one_line_error(done, needle, code=EXIT_USAGE)
    assert done.stdout == ""


# --- measure's preflight, the one `tapmig run` has ------------------------------------


def measure_unsupported(out: Path) -> subprocess.CompletedProcess[str]:
    """`measure --mode local` on Debian's QEMU, which lacks the series: the preflight
    runs in full, the first run records the mode as not supported, and no guest boots."""
    return call_tapmig(*measure_args(out, qemu=str(SYSTEM_QEMU), mode="local"),
                       "--accel", "tcg")


def dead_pid() -> int:
    """The PID of a process that has exited and been waited for."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(not SYSTEM_QEMU.exists(), reason=f"{SYSTEM_QEMU} absent")
@pytest.mark.usefixtures("tapmig_root_with_tun", "tapmig_guest")
def test_measure_reaps_the_orphans_of_a_killed_run(tmp_path: Path) -> None:
    """What a run killed outright left behind (its run dir and RAM file, named for a PID
    that is gone) is removed by measure's preflight: no run of it boots a guest."""
    pid = dead_pid()
    rundir, ram = RUN_PARENT / f"{PREFIX}{pid}-killed", SHM_DIR / f"{PREFIX}{pid}-ram"
    rundir.mkdir()
    ram.touch()
    try:
        done = measure_unsupported(tmp_path / "o")
        left = [p for p in (rundir, ram) if p.exists()]
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
        ram.unlink(missing_ok=True)
    assert done.returncode == Unsupported.exit_code, done.stderr
    assert "no combination is supported" in done.stderr
    assert left == []


@pytest.mark.skipif(not SYSTEM_QEMU.exists(), reason=f"{SYSTEM_QEMU} absent")
@pytest.mark.usefixtures("tapmig_root_with_tun", "tapmig_guest")
def test_measure_checks_each_variant_once_not_per_run(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """The preflight checks the host once per build and each variant once per build and
    mode; the run it refuses is recorded from that verdict, without a check of its own
    (and the later iteration is skipped)."""
    calls = count_calls(monkeypatch, setup, "check_variant", "check_host")
    done = measure_unsupported(tmp_path / "o")
    assert done.returncode == Unsupported.exit_code, done.stderr
    [rec] = saved(tmp_path / "o")
    assert rec.status == "unsupported" and "cannot do local migration" in (rec.error or "")
    assert calls == Counter(check_variant=1, check_host=1)


# --- one real measurement ---------------------------------------------------------------


@pytest.mark.kvm
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_measure_end_to_end(counting_qemu: CountingQemu, tapmig_accel: AccelChoice,
                            tmp_path: Path) -> None:
    """Both modes, one iteration each, through the command a user types, with its
    default traffic, on Debian's QEMU behind the start counter: new-TAP is measured,
    local recorded as not supported, and the campaign reads the QEMU's capabilities
    once, not once per run (a version check when the QEMUs are checked up front, and
    one as the capabilities are read), probes KVM only without a cached verdict, and
    starts one source and one target."""
    out = tmp_path / "out"
    counting_qemu.clear()
    probes = 0 if tapmig_accel == "tcg" else counting_qemu.probes_expected()
    t0 = time.monotonic()
    done = run_tapmig("measure", "--qemu", str(counting_qemu.path), "--mode", "new-tap,local",
                      "--iterations", "1", "--accel", tapmig_accel, "--out", str(out),
                      timeout=600, env={"TAPMIG_CACHE": str(counting_qemu.cache)})
    print(f"measure took {time.monotonic() - t0:.1f}s\n{done.stderr}{done.stdout}")
    assert done.returncode == 0, done.stderr
    rep = load_report(out / "report.json")
    assert not rep.partial
    new_tap = combo(rep, "new-tap", str(counting_qemu.path))
    assert (new_tap.runs, new_tap.ok) == (1, 1)
    assert new_tap.metrics["blackout_ms"].n == 1 and new_tap.metrics["downtime_ms"].n == 1
    local = combo(rep, "local", str(counting_qemu.path))
    assert (local.runs, local.unsupported.count) == (1, 1)
    assert (out / "report.md").exists() and (out / "report.html").exists()
    assert len(list((out / "records").glob("*-new-tap-*.json"))) == 1
    assert len(list((out / "runs").glob("*/ping.log"))) == 1
    assert "| build | mode | n |" in done.stdout
    assert re.search(r"^tapmig: \[1/2\] #1 A new-tap: blackout [\d.]+ ms", done.stderr, re.M)
    assert f"report.json: {out / 'report.json'}" in done.stderr
    assert counting_qemu.starts() == Counter(version=2, capabilities=1, source=1, target=1,
                                             **{"kvm-probe": probes})
