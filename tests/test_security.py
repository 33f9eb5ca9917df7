"""What tapmig must never do to the host it runs on, as root.

No shell ever parses a command (paths and QEMU options come from users); the
sockets that control QEMU and the logs sit in a directory only root can enter;
and the guest network (192.168.100.0/24) exists only inside the run's private
namespace, so a run never adds an address or a route to the host's own.
"""

from __future__ import annotations

import ast
import os
import socket
import stat
from typing import Any, get_args

import pytest
from pyroute2 import IPRoute

from harness.run.config import GUEST_IP
from harness.run.lab import Lab
from harness.run.observer import Moment
from tests.support import REPO
from tests.support.shared import Hopper, Key, SharedGuest, on

SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
GUEST_NET = GUEST_IP.rsplit(".", 1)[0] + "."


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def shell_uses(source: str, filename: str = "<source>") -> list[str]:
    """Calls that hand a string to a shell: shell= anything but a literal False, the
    os/subprocess helpers that always use one, and imports of those helpers."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                literal_false = isinstance(kw.value, ast.Constant) and kw.value.value is False
                if kw.arg == "shell" and not literal_false:
                    found.append(f"{where}: shell={ast.unparse(kw.value)}")
            if dotted(node.func) in SHELL_CALLS:
                found.append(f"{where}: {dotted(node.func)}()")
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "subprocess"):
            found += [f"{where}: from {node.module} import {a.name}" for a in node.names
                      if f"{node.module}.{a.name}" in SHELL_CALLS]
    return found


@pytest.mark.parametrize("snippet", [
    "subprocess.run(cmd, shell=True)",
    "subprocess.Popen(cmd, shell=flag)",
    "os.system('ls')",
    "os.popen('ls')",
    "from os import system",
    "subprocess.getoutput('ls')",
])
def test_scanner_catches(snippet: str) -> None:
    """The scan below is only worth something if it sees each form."""
    assert shell_uses(snippet)


def test_scanner_allows_explicit_no_shell() -> None:
    assert shell_uses("subprocess.run(['ls'], shell=False, check=True)") == []


def test_harness_never_uses_a_shell() -> None:
    sources = sorted((REPO / "harness").rglob("*.py"))  # every package, not the floor only
    assert sources
    found = [hit for path in sources
             for hit in shell_uses(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []


Net = tuple[frozenset[tuple[Any, ...]], ...]


def root_net() -> Net:
    """The root namespace's links, addresses and routes (every table), read-only."""
    with IPRoute() as ipr:
        links = frozenset((ln["index"], ln.get_attr("IFLA_IFNAME")) for ln in ipr.get_links())
        addrs = frozenset((a["index"], a["family"], a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                          for a in ipr.get_addr())
        routes = frozenset(
            (r["family"], r.get_attr("RTA_TABLE"), r.get_attr("RTA_DST"), r["dst_len"],
             r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF"), r["type"])
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.get_routes(family=family))
    return links, addrs, routes


def guest_net_in_root(net: Net) -> list[tuple[Any, ...]]:
    _links, addrs, routes = net
    return [entry for entry in (*addrs, *routes)
            if any(str(v).startswith(GUEST_NET) for v in entry)]


@pytest.mark.kvm
@pytest.mark.qemu_independent
@pytest.mark.fresh_guest
@on(Key("new-tap"))
def test_private_rundir_and_untouched_root_namespace(booted: SharedGuest, hop: Hopper) -> None:
    """A boot and a new-TAP hop (which moves the host address between TAPs) looked at
    from an observer at every moment, then compared with the host as it was. The
    guest is then shared by the tests that follow: it is booted afresh for this one.
    The observer is also handed each moment's result."""
    seen: dict[str, Any] = {}
    results: dict[str, str] = {}

    def look(phase: Moment, m: Lab, result: object) -> None:
        results[phase] = type(result).__name__
        vms = [vm for vm in (m.source, m.target) if vm is not None]
        seen[phase] = {
            "guest net in root": guest_net_in_root(root_net()),
            "rundir": os.stat(m.rundir),
            "shm mode": stat.S_IMODE(os.stat(m.shm).st_mode),
            "files": {str(p): (p.parent == m.rundir, stat.S_ISSOCK(os.stat(p).st_mode))
                      for vm in vms for p in (vm.qmp_path, vm.console_path)},
            "logs": [p.parent == m.rundir for vm in vms for p in (vm.stderr_log, vm.console_log)],
        }
        if phase == "switchover":
            [sock] = m.rundir.glob("migration-*.sock")
            seen["migration socket"] = (sock.parent == m.rundir, os.stat(sock).st_mode)

    before = root_net()
    booted.boot([look])
    rec = hop([look], pause_before_switchover=True)
    after = root_net()
    assert rec.status == "ok", rec.error
    socket_mode = seen.pop("migration socket")
    assert list(seen) == list(get_args(Moment))  # every moment, in the order a run goes
    assert results == {
        "booted": "float", "started": "HopPlan", "probing": "NoneType",
        "migrating": "NoneType", "switchover": "NoneType", "migrated": "Migration",
        "resuming": "Switch", "resumed": "Resumed", "analysed": "Analysed",
        "verified": "Verified", "sampled": "Footprint"}
    for phase, at in seen.items():
        assert at["guest net in root"] == [], phase
        assert stat.S_IMODE(at["rundir"].st_mode) == 0o700, phase
        assert at["rundir"].st_uid == os.geteuid()
        assert at["shm mode"] == 0o600
        # Every QMP and console socket is a socket inside the private run dir.
        assert set(at["files"].values()) == {(True, True)}, at["files"]
        assert all(at["logs"])
    assert len(seen["switchover"]["files"]) == 4  # source and target
    in_rundir, mode = socket_mode
    assert in_rundir and stat.S_ISSOCK(mode)
    assert after == before
