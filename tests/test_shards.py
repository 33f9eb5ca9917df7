"""Shards (harness.campaign.shards): which work a shard takes, and the merge of record directories.
Pure logic on records written to disk, and the CLI's refusals through its entry point
in-process; the merge of real shards is in test_chain.py."""

from __future__ import annotations

import itertools
import json
from functools import partial
from pathlib import Path

import pytest

from harness.campaign.plan import Plan, shape
from harness.campaign.shards import Shard, merge, parse_shard, write_manifest
from harness.campaign.store import write_record
from harness.errors import UsageError
from harness.record import RunRecord
from tests.support import call_tapmig, one_line_error
from tests.support.records import QEMU_A as A
from tests.support.records import QEMU_B as B
from tests.support.records import record


@pytest.mark.parametrize("text, expect", [("1/1", (1, 1)), ("2/4", (2, 4)), (" 4 / 4 ", (4, 4))])
def test_parse_shard(text: str, expect: tuple[int, int]) -> None:
    s = parse_shard(text)
    assert (s.index, s.count) == expect


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "a/b", "3", "-1/2", "1/2/3"])
def test_parse_shard_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="give i/n with 1 <= i <= n"):
        parse_shard(text)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_partition_the_iterations(count: int) -> None:
    """Every iteration goes to exactly one shard."""
    taken = {i: [Shard(i, count).takes(it) for it in range(1, 31)] for i in range(1, count + 1)}
    for it in range(30):
        assert sum(taken[i][it] for i in taken) == 1


def test_shard_i_of_n_takes_chains_i_i_plus_n_and_so_on() -> None:
    """As ci/README.md promises the CI's shards: shard I of N runs chains I, I+N, ...
    (so a shard's share is fixed by its index alone, whichever machine runs it)."""
    assert [it for it in range(1, 13) if Shard(2, 3).takes(it)] == [2, 5, 8, 11]
    assert [it for it in range(1, 13) if Shard(4, 4).takes(it)] == [4, 8, 12]


def plan(shard: str | None, iterations: int | None = 7, chain: int | None = None,
         duration: str | None = None) -> Plan:
    sh = shape(iterations, chain, duration, shard)
    return Plan(builds={"A": A, "B": B}, modes=("new-tap", "local"), iterations=sh.iterations,
                out=Path("/nonexistent"), shard=sh.shard, hops=sh.hops,
                duration_s=sh.duration_s)


def test_a_shard_runs_whole_iterations_with_every_mode_and_build() -> None:
    """So local vs new-TAP and build vs build are compared on one machine, interleaved."""
    order = list(plan("2/3").order())
    assert [i for i, _, _ in order[::4]] == [2, 5]
    assert order[:4] == [(2, "new-tap", "A"), (2, "new-tap", "B"), (2, "local", "A"),
                         (2, "local", "B")]
    assert plan("2/3").total == 8 and plan("1/3").total == 12 and plan(None).total == 28
    assert plan("1/3").left_after(4) == 1


def test_duration_without_iterations_keeps_going() -> None:
    p = plan("1/2", iterations=None, chain=100, duration="30m")
    assert p.total is None and p.duration_s == 1800
    first = list(itertools.islice(p.order(), 12))
    assert [i for i, _, _ in first][::4] == [1, 3, 5]


@pytest.mark.parametrize("args, needle", [
    ((5, None, None, "6/6"), "--shard 6/6 gets no work: 5 iterations"),
    ((None, None, "1h", None), "--duration keeps chaining"),
    ((None, None, None, None), "give --iterations N"),
    ((2, 0, None, None), "--chain 0"),
    ((None, 10, "soon", None), "--duration 'soon'"),
])
def test_shape_refuses(args: tuple[int | None, int | None, str | None, str | None],
                       needle: str) -> None:
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        shape(*args)


def test_a_chain_alone_is_one_chain_per_combination() -> None:
    assert shape(None, 100).iterations == 1
    assert shape(None, 100, "2h").iterations is None


# A record of the merged shards: what test_merge_refuses_unlike_hosts changes one field of.
rec = partial(record, mode="local", qemu_version="10.2.2", accel="tcg", host_kernel="6.1",
              cpu_model="AMD EPYC", blackout_ms=30.0)


def shard_dir(root: Path, name: str, shard: str, *recs: RunRecord,
              plan_json: dict[str, object] | None = None) -> Path:
    d = root / name
    for r in recs:
        write_record(r, d / "records")
    write_manifest(d, parse_shard(shard), plan_json or {"modes": ["local"], "hops": 10})
    return d


def test_merge_keeps_every_record(tmp_path: Path) -> None:
    d1 = shard_dir(tmp_path, "s1", "1/2", rec(), rec(blackout_ms=31.0))
    d2 = shard_dir(tmp_path, "s2", "2/2", rec(blackout_ms=32.0))
    records, notes = merge([d1, d2], allow_mismatch=False)
    assert sorted(r.blackout_ms or 0 for r in records) == [30.0, 31.0, 32.0]
    assert notes == []


@pytest.mark.parametrize("key, value, what", [
    ("accel", "kvm", "accelerator tcg in"), ("host_kernel", "6.12", "host kernel 6.1 in"),
    ("cpu_model", "Intel Xeon", "CPU model AMD EPYC in"), ("guest", "alpine", "guest g in"),
    ("qemu_version", "10.1.0", "QEMU 10.2.2 in")])
def test_merge_refuses_unlike_hosts(tmp_path: Path, key: str, value: str, what: str) -> None:
    d1 = shard_dir(tmp_path, "s1", "1/2", rec())
    d2 = shard_dir(tmp_path, "s2", "2/2", rec(**{key: value}))
    with pytest.raises(UsageError, match="shards ran on unlike hosts") as err:
        merge([d1, d2], allow_mismatch=False)
    assert what in str(err.value) and "--allow-mismatch" in str(err.value)
    assert "\n" not in str(err.value)
    records, notes = merge([d1, d2], allow_mismatch=True)
    assert len(records) == 2 and notes[0].startswith("merged despite a mismatch")


def test_merge_notes_missing_and_repeated_shards(tmp_path: Path) -> None:
    d1 = shard_dir(tmp_path, "s1", "1/3", rec())
    d3 = shard_dir(tmp_path, "s3", "3/3", rec())
    d3b = shard_dir(tmp_path, "s3b", "3/3", rec())
    _, notes = merge([d1, d3, d3b], allow_mismatch=False)
    assert notes == ["shard 3/3 given 2 times", "shards missing from the merge: 2/3"]


def test_merge_refuses_shards_of_different_campaigns(tmp_path: Path) -> None:
    d1 = shard_dir(tmp_path, "s1", "1/2", rec())
    d2 = shard_dir(tmp_path, "s2", "2/2", rec(), plan_json={"modes": ["local"], "hops": 99})
    with pytest.raises(UsageError, match="shards of different campaigns"):
        merge([d1, d2], allow_mismatch=False)
    records, notes = merge([d1, d2], allow_mismatch=True)
    assert len(records) == 2 and "from different campaigns" in notes[0]


def test_merge_refuses_bad_input(tmp_path: Path) -> None:
    d1 = shard_dir(tmp_path, "s1", "1/1", rec())
    with pytest.raises(UsageError, match="given twice"):
        merge([d1, tmp_path / "s1" / "."], allow_mismatch=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no run records"):
        merge([tmp_path / "empty"], allow_mismatch=False)
    with pytest.raises(UsageError, match="no such directory"):
        merge([tmp_path / "nope"], allow_mismatch=False)
    (d1 / "records" / "junk.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(UsageError, match="not a tapmig run record"):
        merge([d1], allow_mismatch=False)


@pytest.mark.parametrize("args, needle", [
    (["--iterations", "2", "--duration", "1h"], "--duration keeps chaining"),
    (["--chain", "0"], "--chain 0"),
    (["--chain", "5", "--shard", "3/2"], "--shard '3/2'"),
    (["--iterations", "1", "--shard", "2/2"], "--shard 2/2 gets no work"),
    ([], "give --iterations N"),
])
def test_measure_refuses_bad_chain_options_in_one_line(tmp_path: Path, args: list[str],
                                                       needle: str) -> None:
    done = call_tapmig("measure", "--qemu", "/usr/bin/qemu-system-x86_64", "--mode", "local",
                      "--out", str(tmp_path / "o"), *args)
    one_line_error(done, needle, code=2)
    assert not (tmp_path / "o").exists()


def test_report_refuses_bad_directories_in_one_line(tmp_path: Path) -> None:
    one_line_error(call_tapmig("report", str(tmp_path / "nope"), "--out", str(tmp_path / "m")),
                   "no such directory", code=2)
    d1 = shard_dir(tmp_path, "s1", "1/2", rec())
    d2 = shard_dir(tmp_path, "s2", "2/2", rec(accel="kvm"))
    one_line_error(call_tapmig("report", str(d1), str(d2), "--out", str(tmp_path / "m")),
                   "shards ran on unlike hosts", "accelerator", code=2)
    merged = call_tapmig("report", str(d1), str(d2), "--out", str(tmp_path / "m"),
                        "--allow-mismatch")
    assert merged.returncode == 0, merged.stderr
    assert "merged despite a mismatch" in (tmp_path / "m" / "report.md").read_text()
