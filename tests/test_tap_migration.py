"""Real migrations of a real guest: new-TAP and local, every variant, on each --qemu.

Each test boots a guest under QEMU (KVM where it works, TCG otherwise), keeps
a 1 kHz probe running across the migration and checks the record the
scenario returns: the outage lies inside [STOP - eps, RESUME + eps], the four
numbers are there, and in local mode the very same tap0 kept serving.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.guest import Guest
from harness.probe import Capabilities
from harness.record import RunRecord
from harness.scenario import Config, run

pytestmark = [pytest.mark.kvm, pytest.mark.usefixtures("root_with_tun")]


def skip_unless_supported(caps: Capabilities, mode: str, vhost: bool) -> None:
    if mode == "local" and (missing := caps.missing_for_local()):
        pytest.skip(f"{caps.qemu} ({caps.version}) cannot do local migration: "
                    f"missing {', '.join(missing)}")
    if vhost and caps.vhost_net:
        pytest.skip(f"vhost=on needs vhost-net: {caps.vhost_net}")


def keep(rec: RunRecord, records_dir: Path | None, name: str) -> None:
    if records_dir is not None:
        records_dir.mkdir(parents=True, exist_ok=True)
        rec.write(records_dir / f"{name}.json")


@pytest.mark.parametrize("queues", [1, 4], ids=["q1", "q4"])
@pytest.mark.parametrize("vhost", [False, True], ids=["vhost-off", "vhost-on"])
@pytest.mark.parametrize("mode", ["new-tap", "local"])
def test_migration_keeps_network(qemu: str, caps: Capabilities, guest: Guest, accel_choice: str,
                                 mode: str, vhost: bool, queues: int, tmp_path: Path,
                                 records_dir: Path | None, request: pytest.FixtureRequest
                                 ) -> None:
    skip_unless_supported(caps, mode, vhost)
    rec = run(Config(qemu=qemu, mode=mode, vhost=vhost, queues=queues, accel=accel_choice,
                     guest=guest, out=tmp_path), log=print)
    keep(rec, records_dir, request.node.name.replace("/", "_"))
    assert rec.status == "ok", rec.error
    assert rec.mode == mode and rec.queues == queues and rec.vhost == vhost
    # The four numbers, and the event timestamps they come from.
    assert rec.blackout_ms is not None and rec.blackout_ms > 0
    assert rec.lost is not None and rec.lost >= 0
    assert rec.downtime_ms is not None and rec.downtime_ms >= 0
    assert rec.stop_ts is not None and rec.resume_ts is not None
    assert rec.stop_resume_ms == pytest.approx(1000 * (rec.resume_ts - rec.stop_ts), abs=0.01)
    # The outage is the migration's: inside [STOP - eps, RESUME + eps].
    assert rec.blackout_start is not None and rec.blackout_end is not None
    assert rec.epsilon_ms == (50.0 if rec.accel == "kvm" else 150.0)
    eps = rec.epsilon_ms / 1000
    assert rec.stop_ts - eps <= rec.blackout_start
    assert rec.blackout_end <= rec.resume_ts + eps
    # A bounded, fine probe: its achieved pace is what every figure rests on.
    assert rec.interval_ms is not None and 0.5 <= rec.interval_ms <= 5.0
    assert (tmp_path / "ping.log").stat().st_size > 0
    assert (tmp_path / "target-console.log").exists()
    if mode == "local":
        # Nothing switched on the host: the same tap0, still carrying traffic.
        before, after = rec.checks["tap0_ifindex"]
        assert before == after
        rx, tx = rec.checks["tap0_rx_packets"], rec.checks["tap0_tx_packets"]
        assert rx[1] > rx[0] and tx[1] > tx[0]


def test_guest_that_never_boots_fails_cleanly(qemu: str, guest: Guest, accel_choice: str,
                                              tmp_path: Path) -> None:
    """A garbage initrd makes the kernel panic; the run must say so, fast, and leak nothing
    (the autouse leak check fails this test otherwise)."""
    bad = tmp_path / "garbage-initrd"
    bad.write_bytes(b"not an initramfs" * 1000)
    broken = Guest(name="broken", kernel=guest.kernel, initrd=bad)
    rec = run(Config(qemu=qemu, accel=accel_choice, guest=broken, boot_timeout=60,
                     out=tmp_path / "out"))
    assert rec.status == "failed"
    assert rec.error is not None
    assert "console never showed" in rec.error
    assert "console tail" in rec.error  # the reason is in the message, not only in a log
    assert rec.duration_s is not None and rec.duration_s < 60
