"""Which interface of the live-TAP series a QEMU speaks, decided from its schema alone.

Two kinds of evidence:
- the real `query-qmp-schema` of every QEMU under test, whose verdict must agree
  with what that QEMU then does with the v12 option on real QMP;
- for the final interface, which no reachable build has, a schema FRAGMENT
  WRITTEN BY HAND from the names of the series' newest test
  (`x-local-migration-supported`, v17's `local-migration-supported`, `local`).
  It proves the decision logic only: the final path has not run against a real build.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from harness.errors import QMPCommandError
from harness.host.netns import Namespace
from harness.proc import PREFIX
from harness.qemu.capabilities import (
    FINAL_UNTESTED,
    TAP_LOCAL_OPTIONS,
    Capabilities,
    query_capabilities,
    schema_facts,
)
from harness.qemu.vm import VM


def fragment(migration_params: list[str], tap_options: list[str]) -> list[dict[str, Any]]:
    """A minimal introspection answer in QEMU's shape: masked type names, reached from
    the commands, as `query-qmp-schema` really gives them. Hand-written, not from a build."""
    return [
        {"name": "query-migrate-parameters", "meta-type": "command", "arg-type": "0",
         "ret-type": "144"},
        {"name": "144", "meta-type": "object",
         "members": [{"name": n, "type": "bool"} for n in migration_params]},
        {"name": "netdev_add", "meta-type": "command", "arg-type": "100", "ret-type": "0"},
        {"name": "100", "meta-type": "object", "tag": "type",
         "members": [{"name": "id", "type": "str"}, {"name": "type", "type": "347"}],
         "variants": [{"case": "user", "type": "349"}, {"case": "tap", "type": "350"}]},
        {"name": "349", "meta-type": "object", "members": [{"name": "hostfwd", "type": "str"}]},
        {"name": "350", "meta-type": "object",
         "members": [{"name": n, "type": "str"} for n in ["ifname", "script", *tap_options]]},
    ]


def caps_from(entries: list[dict[str, Any]], device_local_migration: bool) -> Capabilities:
    facts = schema_facts(entries)
    return Capabilities(qemu="q", version="v", local=facts.local,
                        incoming_fds=facts.incoming_fds,
                        local_migration=device_local_migration,
                        tap_local_option=facts.tap_local_option, x_ignore_shared=True,
                        vhost_problem=None)


@pytest.mark.parametrize("option", ["x-local-migration-supported", "local-migration-supported"])
def test_final_interface_fragment(option: str) -> None:
    caps = caps_from(fragment(["announce-max", "local"], ["vnet_hdr", option]),
                     device_local_migration=False)
    assert caps.interface == "final"
    assert caps.tap_local_option == option
    assert caps.missing_for_local() == []
    assert FINAL_UNTESTED in caps.verdict()


def test_v12_fragment() -> None:
    caps = caps_from(fragment(["local"], ["incoming-fds"]), device_local_migration=True)
    assert (caps.interface, caps.tap_local_option) == ("v12", None)
    assert "v12" in caps.verdict()


@pytest.mark.parametrize(("params", "tap", "device", "missing"), [
    ([], [], False, ["'local'", "'incoming-fds'", "'local-migration'"]),
    (["local"], ["incoming-fds"], False, ["'local-migration'"]),
    ([], ["x-local-migration-supported"], False, ["'local'"]),
], ids=["nothing", "v12-without-device-property", "final-without-local"])
def test_incomplete_series_names_what_is_missing(params: list[str], tap: list[str],
                                                 device: bool, missing: list[str]) -> None:
    caps = caps_from(fragment(params, tap), device_local_migration=device)
    assert caps.interface == "none"
    said = " ".join(caps.missing_for_local())
    assert all(m in said for m in missing), said
    assert len(caps.missing_for_local()) == len(missing)


def test_a_tap_option_elsewhere_does_not_count() -> None:
    """The option must sit on the TAP netdev, not on any other netdev type."""
    entries = fragment(["local"], [])
    entries[4]["members"].append({"name": "x-local-migration-supported", "type": "bool"})
    assert schema_facts(entries).tap_local_option is None


def _netdev_add_takes(qemu: str, option: str) -> bool:
    """What the QEMU does, not what its schema says: does netdev_add know the option?
    Inside a namespace of our own, so a TAP it may open never touches the root one."""
    with Namespace() as ns, tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-") as tmp:
        with VM("caps", qemu, ["-machine", "none", "-nodefaults", "-display", "none", "-S"],
                Path(tmp), prefix=ns.exec_prefix()) as vm:
            try:
                vm.cmd("netdev_add", {"type": "tap", "id": "n0", option: True,
                                      "script": "no", "downscript": "no"})
            except QMPCommandError as exc:
                if exc.desc == f"Parameter '{option}' is unexpected":
                    return False
                raise
            return True


@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_real_schema_verdict_agrees_with_qemu(tapmig_qemu: str) -> None:
    """The verdict from the real schema of each QEMU under test matches its behaviour:
    each TAP option the schema reports is one netdev_add really takes, and one it does
    not report is refused, on every QEMU (Debian's refuses both interfaces' options); a
    QEMU called none then speaks neither interface by what it does."""
    caps = query_capabilities(tapmig_qemu)
    print(f"{caps.qemu} ({caps.version}): {caps.verdict()}")
    v12 = _netdev_add_takes(caps.qemu, "incoming-fds")
    final = any(_netdev_add_takes(caps.qemu, o) for o in TAP_LOCAL_OPTIONS)
    assert v12 == caps.incoming_fds
    assert final == (caps.tap_local_option is not None)
    if caps.interface == "v12":
        assert v12 and caps.local_migration
    elif caps.interface == "final":
        assert final
    else:  # v12 needs `local`, incoming-fds and the device property; final `local` and its option
        assert not (caps.local and v12 and caps.local_migration)
        assert not (caps.local and final)
        assert caps.missing_for_local()
