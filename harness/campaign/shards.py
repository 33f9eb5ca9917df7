"""A campaign split over CI runners, and the merge of what the shards recorded.

A shard `i/n` takes the iterations i, i+n, i+2n ... of the plan, with every mode and
build in each: so the same index always gets the same work, and every comparison the
report makes (local against new-TAP, build against build) is still made on one machine,
interleaved, never across runners. `tapmig report DIR...` merges the record directories;
shards from unlike hosts are refused, since their figures would be mixed as if one
population, unless the user says they know (--allow-mismatch).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import atomic
from harness.errors import UsageError
from harness.record import RunRecord

MANIFEST = "shard.json"
# What must be alike for shards to be one population; each a RunRecord attribute.
HOST_KEYS = {"accel": "accelerator", "host_kernel": "host kernel", "cpu_model": "CPU model",
             "guest": "guest", "qemu_version": "QEMU"}


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    def takes(self, iteration: int) -> bool:
        return (iteration - 1) % self.count == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Shard(1, 1)


def parse_shard(text: str) -> Shard:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UsageError(f"--shard {text!r}: give i/n with 1 <= i <= n, e.g. --shard 2/4 "
                         "(CI: --shard $CI_NODE_INDEX/$CI_NODE_TOTAL)")
    return Shard(int(m.group(1)), int(m.group(2)))


def check_shard(shard: Shard, iterations: int | None) -> None:
    """A shard with no iteration of its own is a mistake in the CI matrix, not a pass."""
    if iterations is not None and shard.index > iterations:
        raise UsageError(f"--shard {shard} gets no work: {iterations} iterations cannot be "
                         f"split {shard.count} ways; give at least {shard.count} iterations "
                         "or fewer shards")


def write_manifest(out: Path, shard: Shard, plan: dict[str, Any]) -> None:
    """What this shard was asked to do, so the merge can tell shards of one campaign."""
    atomic.write_text(out / MANIFEST, json.dumps({"shard": str(shard), "plan": plan},
                                                 indent=2) + "\n")


def record_files(directory: Path) -> list[Path]:
    """The records of a measure output directory (DIR/records) or of a records directory."""
    sub = directory / "records"
    where = sub if sub.is_dir() else directory
    if not where.is_dir():
        raise UsageError(f"{directory}: no such directory; give measure output directories")
    files = sorted(where.glob("*.json"))
    if not files:
        raise UsageError(f"{directory}: holds no run records (*.json in it or in its "
                         "records/); give measure output directories")
    return files


def host_profile(records: list[RunRecord]) -> dict[str, list[str]]:
    """What each HOST_KEYS attribute was in these records (runs that ran, not unsupported)."""
    ran = [r for r in records if r.status != "unsupported"] or records
    return {key: sorted({str(getattr(r, key)) for r in ran}) for key in HOST_KEYS}


def mismatches(profiles: dict[Path, dict[str, list[str]]]) -> list[str]:
    """One line per attribute on which some shard differs from the first."""
    (first, base), *rest = profiles.items()
    out = []
    for key, what in HOST_KEYS.items():
        odd = [(d, p[key]) for d, p in rest if p[key] != base[key]]
        if odd:
            shown = "; ".join(f"{d}: {', '.join(v) or '?'}" for d, v in odd)
            out.append(f"{what} {', '.join(base[key]) or '?'} in {first}, but {shown}")
    return out


def _manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the shard manifest: {exc}") from exc
    return data if isinstance(data, dict) else None


def shard_notes(manifests: dict[Path, dict[str, Any] | None],
                allow_mismatch: bool) -> list[str]:
    """Shards of different campaigns are refused unless allowed; missing or repeated
    ones are noted."""
    known = {d: m for d, m in manifests.items() if m is not None}
    plans = {json.dumps(m.get("plan"), sort_keys=True) for m in known.values()}
    notes = []
    if len(plans) > 1:
        if not allow_mismatch:
            raise UsageError("the directories are shards of different campaigns (their plans "
                             "differ beyond --shard); merge shards of one `tapmig measure` "
                             "only, or pass --allow-mismatch")
        notes.append("merged despite a mismatch (--allow-mismatch): the directories come "
                     "from different campaigns (their plans differ)")
    given = [str(m.get("shard")) for m in known.values()]
    notes += [f"shard {s} given {given.count(s)} times" for s in sorted(set(given))
              if given.count(s) > 1]
    counts = {int(s.split("/")[1]) for s in given if "/" in s}
    for total in counts:
        missing = [f"{i}/{total}" for i in range(1, total + 1) if f"{i}/{total}" not in given]
        if missing:
            notes.append(f"shards missing from the merge: {', '.join(missing)}")
    return notes


def merge(dirs: list[Path], allow_mismatch: bool) -> tuple[list[RunRecord], list[str]]:
    """All records of the given directories, and notes for the report (missing shards...)."""
    if not dirs:
        raise UsageError("give at least one record directory to report on")
    resolved = [d.resolve() for d in dirs]
    if len(set(resolved)) < len(resolved):
        raise UsageError("a directory is given twice; give each shard's directory once")
    per_dir = {d: [RunRecord.read(f) for f in record_files(d)] for d in dirs}
    notes = shard_notes({d: _manifest(d) for d in dirs}, allow_mismatch)
    if len(dirs) > 1 and (diff := mismatches({d: host_profile(r) for d, r in per_dir.items()})):
        if not allow_mismatch:
            raise UsageError("shards ran on unlike hosts: " + " | ".join(diff)
                             + "; merge like shards only, or pass --allow-mismatch")
        notes += [f"merged despite a mismatch (--allow-mismatch): {d}" for d in diff]
    return [r for recs in per_dir.values() for r in recs], notes
