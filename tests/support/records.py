"""Run records and reports made from fixed figures, for the tests of what reads them.

One factory, so that a field a record gains is given a default once: record() is a
run that names a QEMU, a version, an accelerator and a guest, and takes any other
field; report_file() writes the report of runs with given blackouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.record import RunRecord
from harness.report.summary import build_report, write_report

QEMU_A = "/opt/a/qemu-system-x86_64"
QEMU_B = "/opt/b/qemu-system-x86_64"
BASE: dict[str, Any] = {"mode": "new-tap", "qemu": QEMU_A, "qemu_version": "9.0.0",
                        "accel": "kvm", "guest": "g"}


def record(**fields: Any) -> RunRecord:
    """A run record: BASE, with `fields` over it."""
    return RunRecord(**{**BASE, **fields})


def report_file(path: Path, blackouts: list[float], **fields: Any) -> Path:
    """report.json (and its .md, .html) in `path`, of one run per blackout, numbered
    from 1, started a minute apart, QMP downtime half the blackout."""
    recs = [record(**{"blackout_ms": b, "downtime_ms": b / 2, "iteration": i,
                      "started": f"2024-06-01T10:{i:02d}:00+00:00", **fields})
            for i, b in enumerate(blackouts, 1)]
    return write_report(build_report(recs, {}, partial=False), path)["json"]
