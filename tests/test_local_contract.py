"""The error contract of the live-TAP local-migration series, against a real QEMU.

Each case drives real QMP on a QEMU built with the series and asserts what QEMU
does: its error class and text, or how the migration ends. Where a source VM
exists, the test also asserts what happens to its guest afterwards. The README's
table is the summary of this file, with a column per interface of the series:

- v12: the tap option `incoming-fds` and the virtio-net property `local-migration`;
  seen on the QEMU built from ../shared/qemu.
- final (v17 on, queued for 11.2): the TAP option `x-local-migration-supported`.
  Written from the series' own test; no build with it was reachable, so those cases
  skip here, and run with no code change on a QEMU that speaks it.

The cases that need a running guest take the shared local guest
(tests/support/shared.py) and start their own QEMUs on its lab; the one that leaves
its source stopped spends it. Only a source booted with the device opted out boots
a guest of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from harness.cache import default_cache
from harness.errors import QMPCommandError, TapmigError
from harness.guest.spec import Guest
from harness.probes import driver
from harness.qemu import accel
from harness.qemu.capabilities import Capabilities
from harness.qemu.vm import VM
from harness.run import steps
from harness.run.config import GUEST_IP, Config
from harness.run.lab import Lab
from harness.run.setup import Setup
from harness.vocabulary import AccelChoice, Interface, Mode
from tests.support.shared import Key, SharedGuest, on

pytestmark = [pytest.mark.kvm, pytest.mark.usefixtures("tapmig_root_with_tun")]
UNIX_ONLY = "local migration requires a UNIX domain socket channel"
LOCAL = on(Key("local", queues=4))


@pytest.fixture
def lab(tapmig_capabilities: Capabilities, tapmig_guest: Guest,
        tapmig_accel: AccelChoice) -> Iterator[Lab]:
    """A namespace with tap0, a run dir and a RAM file, for a QEMU that has the series."""
    caps = tapmig_capabilities
    if caps.interface == "none":
        pytest.skip(f"{caps.qemu} ({caps.version}) lacks the series: missing "
                    f"{', '.join(caps.missing_for_local())}")
    accel_name, reason = accel.choose(tapmig_accel, caps.qemu, tapmig_guest, default_cache(),
                                      log=lambda _m: None)
    with ExitStack() as stack:
        cfg = Config(qemu=caps.qemu, mode="local", queues=4)
        lab = Lab(cfg, Setup.of(cfg, caps, tapmig_guest, accel_name, reason), stack, log=print)
        lab.add_taps()
        yield lab


def speaks(caps: Capabilities, interface: Interface) -> None:
    """Skip a case of one interface on a QEMU that speaks the other, saying so."""
    if caps.interface != interface:
        pytest.skip(f"a case of the {interface} interface; {caps.qemu} speaks "
                    f"{caps.interface} ({caps.verdict()})")


def refused(vm: VM, command: str, args: dict[str, Any]) -> QMPCommandError:
    with pytest.raises(QMPCommandError) as info:
        vm.cmd(command, args)
    return info.value


@pytest.mark.parametrize("option", ["script", "downscript"])
def test_incoming_fds_requires_script_no(lab: Lab, option: str) -> None:
    speaks(lab.caps, "v12")
    target = lab.launch("target", incoming=True)
    err = refused(target, "netdev_add", {**lab.netdev(incoming=True), option: "/bin/true"})
    assert (err.error_class, err.desc) == (
        "GenericError", "incoming-fds requires script=no and downscript=no")


@pytest.mark.parametrize("extra", [{"fd": "3"}, {"fds": "3:4"},
                                   {"helper": "/usr/lib/qemu/qemu-bridge-helper"}],
                         ids=["fd", "fds", "helper"])
def test_incoming_fds_rejects_fd_fds_helper(lab: Lab, extra: dict[str, str]) -> None:
    speaks(lab.caps, "v12")
    target = lab.launch("target", incoming=True)
    err = refused(target, "netdev_add", {**lab.netdev(incoming=True), **extra})
    assert (err.error_class, err.desc) == (
        "GenericError", "incoming-fds is incompatible with fd=, fds=, helper=")


def test_device_on_incoming_fds_netdev_needs_incoming_qemu(lab: Lab) -> None:
    speaks(lab.caps, "v12")
    vm = lab.launch("plain", incoming=False)
    vm.cmd("netdev_add", lab.netdev(incoming=True))  # accepted: only the device checks
    err = refused(vm, "device_add", lab.nic())
    assert (err.error_class, err.desc) == (
        "GenericError", "Peers wait for incoming, but it's not an incoming migration.")


def start_target(lab: Lab, netdev: dict[str, Any],
                 nic: dict[str, Any] | None = None) -> VM:
    """An incoming QEMU with local=true, then the given netdev and the NIC."""
    dst = lab.launch("target", incoming=True)
    lab.prepare_migration(dst)
    dst.cmd("netdev_add", netdev)
    dst.cmd("device_add", {**lab.nic(), **(nic or {})})
    return dst


def booted_source(lab: Lab, mode: Mode | None = None) -> VM:
    steps.boot_source(lab, mode)
    assert lab.source is not None
    return lab.source


def serving(lab: Lab) -> VM:
    """The shared guest's QEMU, with `local` set for the migration the test starts."""
    src = lab.serving()
    lab.prepare_migration(src)
    return src


def source_still_serves(lab: Lab, src: VM) -> None:
    assert src.cmd("query-status")["status"] == "running"
    lab.guest_pings_host(src)
    assert driver.ping_once(lab.ns.exec_prefix(), GUEST_IP, timeout_s=3)


@LOCAL
def test_local_over_tcp_fails_and_source_keeps_serving(booted: SharedGuest) -> None:
    """TCP cannot carry fds. v12: the source's save of virtio-net fails. Final: the
    migration refuses a channel that is not a UNIX socket. Either way the guest stays."""
    with booted.own_qemus() as lab:
        src = serving(lab)
        dst = start_target(lab, lab.netdev(incoming=True))
        uri = "tcp:127.0.0.1:4444"  # loopback of the private namespace
        dst.cmd("migrate-incoming", uri=uri)
        if lab.caps.interface == "final":
            try:
                src.cmd("migrate", uri=uri)
            except QMPCommandError as exc:  # refused up front, or failed below: both say why
                assert UNIX_ONLY in exc.desc
            else:
                assert steps.migration_end(lab, src) == "failed"
                assert UNIX_ONLY in src.cmd("query-migrate").get("error-desc", "")
        else:
            src.cmd("migrate", uri=uri)
            assert steps.migration_end(lab, src) == "failed"
            assert "virtio-net" in src.cmd("query-migrate").get("error-desc", "")
        source_still_serves(lab, src)


def migrate_over_unix(lab: Lab, src: VM, dst: VM) -> tuple[str, str]:
    uri = f"unix:{lab.rundir / 'migration.sock'}"
    dst.cmd("migrate-incoming", uri=uri)
    src.cmd("migrate", uri=uri)
    return steps.migration_end(lab, src), steps.migration_end(lab, dst)


@LOCAL
@pytest.mark.spends_guest
def test_target_tap_opened_normally_fails_the_target(booted: SharedGuest) -> None:
    """local=true on both sides, but the target opened tap0 itself: it refuses the fds.
    The source has no return path, so it reports completed and stays stopped.

    Then `cont` should bring the source back. On v12 it does not: the source resumes
    but its guest no longer reaches tap0 (likely the target's open reset tap0's
    device-wide vnet header/offload settings). That is an expected failure: the test
    ends xfailed while it lasts, and fails once the source does recover, so that the
    expectation is dropped."""
    speaks(booted.setup.caps, "v12")
    with booted.own_qemus() as lab:
        src = serving(lab)
        dst = start_target(lab, lab.netdev(incoming=False))  # ifname=tap0, opened normally
        assert migrate_over_unix(lab, src, dst) == ("completed", "failed")
        assert src.cmd("query-status")["status"] == "postmigrate"
        assert dst.proc is not None
        dst.proc.wait(timeout=10)
        assert "TAP is already initialized and cannot receive incoming fd" in dst.stderr()
        src.cmd("cont")
        recovered = serves_again(lab, src)
    booted.spend()
    if not recovered:
        pytest.xfail("v12: after the target opened tap0 itself and failed, `cont` resumes "
                     "the source but its guest no longer reaches tap0")
    pytest.fail("the source recovered after the target opened tap0 normally: the v12 "
                "bug is gone, drop the xfail")


def serves_again(lab: Lab, src: VM) -> bool:
    """Whether the source's guest answers again, both ways."""
    try:
        source_still_serves(lab, src)
    except (AssertionError, TapmigError):
        return False
    return True


def test_local_migration_off_with_local_true(lab: Lab) -> None:
    """The device opts out: the TAP is not sent, so a target waiting with incoming-fds
    fails to load; the source completes, stays stopped, and `cont` brings it back."""
    speaks(lab.caps, "v12")  # the final interface has no device property to opt out with
    src = booted_source(lab, mode="new-tap")  # the source device with local-migration=off
    lab.prepare_migration(src, mode="local")
    assert src.cmd("qom-get", path="/machine/peripheral/nic0",
                   property="local-migration") is False
    dst = start_target(lab, lab.netdev(incoming=True), {"local-migration": False})
    assert migrate_over_unix(lab, src, dst) == ("completed", "failed")
    assert src.cmd("query-status")["status"] == "postmigrate"
    src.cmd("cont")
    source_still_serves(lab, src)


def test_final_interface_takes_its_tap_option(lab: Lab) -> None:
    """Final interface: both sides' TAP takes x-local-migration-supported, the target
    without ifname or vnet_hdr, after `local` is set; the device has no property."""
    speaks(lab.caps, "final")
    netdev = lab.netdev(incoming=True)
    assert netdev[str(lab.caps.tap_local_option)] is True
    assert not {"ifname", "vnet_hdr", "incoming-fds"} & set(netdev)
    assert "local-migration" not in lab.nic()
    start_target(lab, netdev)
