"""Where a campaign's results are kept: `<out>/records/` (one JSON record per run or hop),
`<out>/runs/` (each run's logs), the shard's manifest and the report beside them.

Each record is on disk as soon as its run ends, so an interrupted session still
yields a partial report of everything finished.
"""

from __future__ import annotations

import json
import platform
import uuid
from datetime import UTC, datetime
from pathlib import Path

from harness.campaign.outcome import Outcome
from harness.campaign.plan import Plan
from harness.campaign.shards import WHOLE, merge, write_manifest
from harness.errors import UsageError
from harness.record import RunRecord
from harness.report.summary import build_report, cpu_model, write_report
from harness.run.assemble import placed


def _stamp(started: str) -> str:
    """The run's start in UTC, compact, so record names sort in the order runs began."""
    try:
        when = datetime.fromisoformat(started)
    except ValueError:
        when = datetime.now(UTC)
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def write_record(rec: RunRecord, directory: Path) -> Path:
    """Write `<directory>/<timestamp>-<mode>-<n>.json` whole or not at all, never over another.

    n is the first number that makes the name free; a hard link claims the name
    atomically, so parallel writers (pytest-xdist workers) cannot clobber each other.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(rec.to_json(), indent=2) + "\n", encoding="utf-8")
    try:
        n = 1
        while True:
            path = directory / f"{_stamp(rec.started)}-{rec.mode}-{n}.json"
            try:
                path.hardlink_to(tmp)
            except FileExistsError:
                n += 1
                continue
            return path
    finally:
        tmp.unlink()


def prepare_out(out: Path) -> None:
    """Fail before any run, not after the first 20 s one, if results cannot be kept.

    An earlier session's records are refused rather than mixed into this report.
    """
    try:
        for sub in ("records", "runs"):
            d = out / sub
            d.mkdir(parents=True, exist_ok=True)
            if any(d.iterdir()):
                raise UsageError(f"{out} already holds an earlier measurement ({d} is not "
                                  "empty); pass a new --out directory")
        probe_file = out / f".tapmig-probe-{uuid.uuid4().hex}"
        probe_file.write_text("probe\n")
        probe_file.unlink()
    except OSError as exc:
        raise UsageError(f"output directory {out} is not writable: {exc.strerror or exc}; "
                          "pass a writable --out directory") from exc


def begin(plan: Plan) -> str:
    """The shard's manifest, so `tapmig report` can tell shards of one campaign; the start."""
    write_manifest(plan.out, plan.shard, plan.manifest())
    return datetime.now(UTC).isoformat(timespec="seconds")


def keep(rec: RunRecord, plan: Plan, iteration: int, run_dir: str) -> RunRecord:
    """The finished record, stamped with where in the campaign it ran, on disk at once."""
    rec = placed(rec, iteration, None if plan.shard == WHOLE else str(plan.shard),
                 rec.cpu_model or cpu_model(), f"runs/{run_dir}/")
    write_record(rec, plan.out / "records")
    return rec


def merge_report(dirs: list[Path], out: Path, allow_mismatch: bool) -> Outcome:
    """`tapmig report`: the records of several measure directories (shards), one report."""
    records, notes = merge(dirs, allow_mismatch)
    partial = any(n.startswith("shards missing") for n in notes)
    cpus = ", ".join(sorted({r.cpu_model for r in records if r.cpu_model}))
    rep = build_report(records, {"cpu_model": cpus} if cpus else {}, partial, notes)
    return Outcome(records, rep, write_report(rep, out), interrupted=False)


def finish(plan: Plan, records: list[RunRecord], started: str, interrupted: bool) -> Outcome:
    """The campaign's report from its records, written beside them (partial if cut short)."""
    meta = {"host_kernel": platform.release(), "date": started, "accel": plan.accel}
    rep = build_report(records, meta, partial=interrupted)
    return Outcome(records, rep, write_report(rep, plan.out), interrupted)
