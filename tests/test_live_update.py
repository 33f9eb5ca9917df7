"""Live update: a running guest migrated to another QEMU binary and back, on real QEMUs.

Debian's 7.2 (no series) and the build with the series give the upgrade and the
rollback in new-TAP mode; the build and a variant of it (both speaking v12) give local
migration across two binaries. A chain alternates the binaries hop by hop, so one boot
gives both directions. The pairs tapmig must refuse are refused in one line, before
anything boots, or, for RAM blocks of other sizes, before the guest's state is sent.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.errors import Unsupported
from harness.guest.spec import Guest
from harness.qemu.capabilities import Capabilities, capabilities_of
from harness.qemu.side import check_pair, choose_machine
from harness.record import RunRecord
from harness.report.summary import build_report
from harness.run.config import Config
from harness.testing.plugin import RunFactory, qemus
from harness.testing.require import missing
from harness.vocabulary import AccelChoice
from tests.support import call_tapmig, one_line_error

CHAIN = ("--flows", "0", "--tcp", "off", "--no-all-queues")


@pytest.fixture(scope="module")
def old_and_new(request: pytest.FixtureRequest) -> tuple[Capabilities, Capabilities]:
    """A --qemu without the series (the release a host runs) and one with it."""
    caps = [capabilities_of(q) for q in qemus(request.config)]
    old = next((c for c in caps if c.interface == "none"), None)
    new = next((c for c in caps if c.interface != "none"), None)
    if old is None or new is None:
        missing(request.config, "series", "a live update needs a --qemu without the series "
                "and one with it (ci/test gives Debian's and the build)")
    return old, new


def pair_chain(pair: str, mode: str, hops: int, out: Path) -> tuple[dict[str, Any],
                                                                   list[RunRecord]]:
    """`tapmig measure --pair A:B --chain N` in this process: its report and records."""
    done = call_tapmig("measure", "--pair", pair, "--mode", mode, "--chain", str(hops),
                       *CHAIN, "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    records = [RunRecord.read(p) for p in sorted((out / "records").rglob("*.json"))]
    return json.loads((out / "report.json").read_text()), records


@pytest.mark.kvm
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_upgrade_then_rollback_in_new_tap_mode(
        old_and_new: tuple[Capabilities, Capabilities], tmp_path: Path) -> None:
    old, new = old_and_new
    report, records = pair_chain(f"{old.qemu}:{new.qemu}", "new-tap", 2, tmp_path / "m")
    by_hop = sorted(records, key=lambda r: r.hop or 0)
    assert [r.status for r in by_hop] == ["ok", "ok"], [r.error for r in by_hop]
    # Hop 1 is the upgrade, hop 2 the rollback: each names its own binaries.
    assert [(r.qemu, r.target_qemu) for r in by_hop] == [(old.qemu, new.qemu),
                                                         (new.qemu, old.qemu)]
    assert [(r.interface, r.target_interface) for r in by_hop] == [("none", new.interface),
                                                                   (new.interface, "none")]
    # The newest type both offer is the old release's, and the CPU one with a stable ABI.
    assert {(r.machine, r.guest_cpu) for r in by_hop} == {(old.q35_alias, "qemu64")}
    assert all(q["found"] == "new" for r in by_hop for q in r.checks["handover"]["queues"])
    assert all(r.checks["ram_blocks"]["pc.bios"] == [0x40000, 0x40000] for r in by_hop)
    # The report: upgrade and rollback are two combinations, each labelled with its pair.
    builds = sorted(c["build"] for c in report["combinations"])
    assert len(builds) == 2 and all(" -> " in b for b in builds)
    assert {c["machine"] for c in report["combinations"]} == {old.q35_alias}


@pytest.mark.kvm
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_local_migration_across_two_builds_hands_the_tap_over_both_ways(
        old_and_new: tuple[Capabilities, Capabilities], tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    """A bug-fix update: the series' build and its quiet-stopped-source variant."""
    _, new = old_and_new
    fix = request.getfixturevalue("qemu_variant")("quiet-stopped-source")
    _, records = pair_chain(f"{new.qemu}:{fix}", "local", 2, tmp_path / "m")
    by_hop = sorted(records, key=lambda r: r.hop or 0)
    assert [r.status for r in by_hop] == ["ok", "ok"], [r.error for r in by_hop]
    assert [r.target_qemu for r in by_hop] == [fix, new.qemu]
    assert all([q["found"] for q in r.checks["handover"]["queues"]] == ["handed"] * 4
               for r in by_hop)


def test_local_mode_towards_a_qemu_without_the_series_is_refused(
        old_and_new: tuple[Capabilities, Capabilities]) -> None:
    old, new = old_and_new
    done = call_tapmig("run", "--qemu", new.qemu, "--target-qemu", old.qemu, "--mode", "local")
    one_line_error(done, f"the target {old.qemu}", "missing migration parameter 'local'",
                   code=Unsupported.exit_code)


def test_v12_against_the_final_interface_is_refused(
        old_and_new: tuple[Capabilities, Capabilities]) -> None:
    """The final interface cannot be built here: the build's own capabilities, with the
    schema facts of the final interface (harness.qemu.capabilities.schema_facts)."""
    _, v12 = old_and_new
    final = replace(v12, qemu="/opt/final/qemu-system-x86_64", incoming_fds=False,
                    local_migration=False, tap_local_option="x-local-migration-supported")
    assert final.interface == "final"
    with pytest.raises(Unsupported) as info:
        check_pair("local", v12, final)
    assert "the source" in str(info.value) and "speaks v12" in str(info.value)
    check_pair("new-tap", v12, final)  # new-TAP carries none of the series' fields


def test_a_machine_type_one_side_lacks_is_refused(
        old_and_new: tuple[Capabilities, Capabilities]) -> None:
    old, new = old_and_new
    newest = new.q35_types[-1]
    assert newest not in old.q35_types
    done = call_tapmig("run", "--qemu", old.qemu, "--target-qemu", new.qemu,
                       "--machine", newest)
    # Named: the side that lacks it, and the type both offer.
    one_line_error(done, old.qemu, f"no machine type {newest!r}", old.q35_alias,
                   code=Unsupported.exit_code)


@pytest.mark.kvm
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_ram_blocks_of_another_size_are_refused_before_the_state_is_sent(
        old_and_new: tuple[Capabilities, Capabilities], tapmig_run: RunFactory,
        tapmig_guest: Guest, tapmig_accel: AccelChoice, tmp_path: Path) -> None:
    """The target's firmware dir holds a SeaBIOS of 128 KiB under the 256 KiB one's name
    (a firmware update that changed a ROM's size): pc.bios differs."""
    old, new = old_and_new
    small = tmp_path / "firmware"
    small.mkdir()
    shutil.copyfile("/usr/share/seabios/bios.bin", small / "bios-256k.bin")
    rec = tapmig_run(Config(qemu=old.qemu, target_qemu=new.qemu, guest=tapmig_guest,
                            accel=tapmig_accel, target_firmware=(
                                str(small), "/usr/share/seabios", "/usr/share/qemu")))
    assert rec.status == "unsupported", rec.error
    assert rec.failure is not None
    assert (rec.failure["kind"], rec.failure["block"]) == ("RamBlockMismatch", "pc.bios")
    assert (rec.failure["source_size"], rec.failure["target_size"]) == (
        0x40000, (small / "bios-256k.bin").stat().st_size)
    assert rec.stop_ts is None  # refused before the migration: the guest never stopped


def test_an_update_is_never_judged_against_a_binary_migrated_to_itself(
        tmp_path: Path) -> None:
    """On real records: a hop of the series' build to itself, and the same hop made an
    update between two binaries; compare finds nothing like-for-like."""
    same = RunRecord.read(Path(__file__).parent / "data" / "handover" /
                          "new-tap-record.json")
    update = replace(same, target_qemu="/opt/b/qemu-system-x86_64",
                     target_qemu_version="10.2.3", machine="pc-q35-10.2")
    for rec, name in ((same, "same"), (update, "update")):
        (tmp_path / name).mkdir()
        report = build_report([rec], {}, partial=False)
        (tmp_path / name / "report.json").write_text(json.dumps(report.to_json()))
    done = call_tapmig("compare", "--baseline", str(tmp_path / "same" / "report.json"),
                       "--current", str(tmp_path / "update" / "report.json"))
    one_line_error(done, "no combination in common", code=2)


def test_the_common_machine_type_of_two_releases_is_the_older_ones_and_noted(
        old_and_new: tuple[Capabilities, Capabilities]) -> None:
    """From both binaries' own query-machines: the newest pc-q35 both offer, the CPU
    model both keep, and a note where the newer release calls the type deprecated."""
    old, new = old_and_new
    machine = choose_machine(old, new, "tcg")
    assert (machine.type, machine.cpu) == (old.q35_alias, "qemu64")
    assert machine.type in new.q35_types
    deprecated = [n for n in machine.notes if "deprecated" in n]
    assert bool(deprecated) == (machine.type in new.deprecated)
    same = choose_machine(new, new, "tcg")
    assert (same.type, same.cpu) == (new.q35_alias, "max")
