"""How runs came out, for people and for the exit code: one run's result in a progress
line, and the campaign's verdict (failed, too noisy to judge, nothing supported).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED, Unsupported
from harness.record import RunRecord
from harness.report import chain_summary, units
from harness.report.summary import Report

# A campaign with more of its runs inconclusive than this says so and gives no verdict:
# a few noisy moments are a busy host; a fifth of the runs is a host unfit to judge.
MAX_INCONCLUSIVE = 0.2


def result_text(rec: RunRecord) -> str:
    if rec.status == "ok":
        return (f"blackout {units.ms(rec.blackout_ms, 1)}, "
                f"QMP downtime {units.ms(rec.downtime_ms, 1)}")
    word = "INCONCLUSIVE" if rec.status == "inconclusive" else "FAILED"
    return f"{word}: {(rec.error or 'no reason recorded').splitlines()[0]}"


@dataclass
class Outcome:
    """A campaign's records, their report and where it was written, and whether Ctrl-C
    cut it short: what the verdict and the exit code are read from."""

    records: list[RunRecord]
    report: Report
    paths: dict[str, Path]
    interrupted: bool

    @property
    def inconclusive(self) -> str | None:
        """Why the campaign gives no verdict: too many runs the host was too noisy to
        judge (over MAX_INCONCLUSIVE of those that ran); None when it can give one."""
        ran = [r for r in self.records if r.status != "unsupported"]
        n = sum(r.status == "inconclusive" for r in ran)
        if not ran or n <= MAX_INCONCLUSIVE * len(ran):
            return None
        return (f"{n} of {len(ran)} runs were inconclusive (the host too noisy to judge "
                f"the outage), over {MAX_INCONCLUSIVE:.0%}: no verdict; run on a quieter "
                "host, or with --accel kvm")

    @property
    def exit_code(self) -> int:
        """The first that holds: interrupted; a run failed or a chain leaked; too many
        runs inconclusive for a verdict; no run supported (Unsupported's code: nothing
        could run); else 0."""
        statuses = {r.status for r in self.records}
        if self.interrupted:
            return EXIT_INTERRUPTED
        if "failed" in statuses or chain_summary.leaks(self.report.chains):
            return EXIT_FAILED
        if self.inconclusive is not None:
            return EXIT_INCONCLUSIVE
        return Unsupported.exit_code if statuses == {"unsupported"} else 0
