"""What a QEMU binary can do, read from QMP introspection rather than its version.

The series is out of tree, and its interface changed after v12, so a version
number says nothing: the schema and the device properties do. They tell which
interface a QEMU speaks: v12 (tap `incoming-fds`, virtio-net `local-migration`),
final (TAP `x-local-migration-supported`, v17's `local-migration-supported`), or
none. Tests and `tapmig run` skip or refuse with the exact
item this reports missing.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.host.devices import vhost_net_problem
from harness.proc import PREFIX
from harness.qemu.trace import trace_patterns
from harness.qemu.vm import VM
from harness.vocabulary import Interface

# The TAP netdev option of the final interface: v17 spelled it without the x-.
TAP_LOCAL_OPTIONS = ("x-local-migration-supported", "local-migration-supported")
FINAL_UNTESTED = ("the final-interface path has not yet run against a real QEMU build: "
                  "it follows the series' own test, and no build with it was reachable")


@dataclass(frozen=True)
class Capabilities:
    qemu: str
    version: str
    local: bool  # MigrationParameters has `local`
    incoming_fds: bool  # NetdevTapOptions has `incoming-fds` (v12 to v16)
    local_migration: bool  # virtio-net-pci has the `local-migration` property (v12 to v16)
    tap_local_option: str | None  # the TAP netdev's local-migration option (v17 on), if any
    x_ignore_shared: bool  # the migration capability
    vhost_problem: str | None  # why vhost-net is unusable here, None when it is usable
    # The trace events tapmig asks for to split the downtime (harness.qemu.trace): the
    # vmstate_downtime ones where this QEMU has them, else its older savevm ones.
    trace: tuple[str, ...] = ()
    # The q35 machine types it offers by version (pc-q35-X.Y, oldest first), the one its
    # `q35` alias resolves to, and those it calls deprecated (query-machines).
    q35_types: tuple[str, ...] = ()
    q35_alias: str = ""
    deprecated: tuple[str, ...] = ()

    @property
    def interface(self) -> Interface:
        """Which interface of the series this QEMU speaks, from its schema alone."""
        if self.local and self.tap_local_option is not None:
            return "final"
        if self.local and self.incoming_fds and self.local_migration:
            return "v12"
        return "none"

    def missing_for_local(self) -> list[str]:
        """What a QEMU lacks for local migration, named as QEMU names it; [] if it has it."""
        if self.interface != "none":
            return []
        missing = []
        if not self.local:
            missing.append("migration parameter 'local' (MigrationParameters)")
        if self.tap_local_option is None:
            if not self.incoming_fds:
                missing.append("tap option 'incoming-fds' (NetdevTapOptions) of v12, or "
                               "'x-local-migration-supported' of the final interface")
            if not self.local_migration:
                missing.append("virtio-net-pci property 'local-migration'")
        return missing

    def verdict(self) -> str:
        """One line for people: which interface, and how far tapmig has proven it."""
        if self.interface == "final":
            return (f"final interface (TAP option '{self.tap_local_option}'); "
                    f"{FINAL_UNTESTED}")
        if self.interface == "v12":
            return "v12 interface (tap 'incoming-fds', virtio-net 'local-migration')"
        return f"no local migration: missing {', '.join(self.missing_for_local())}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "interface": self.interface, "verdict": self.verdict()}


def resolve_qemu(qemu: str) -> str:
    """The binary's path, or a one-line error if it is missing or not a QEMU."""
    path = shutil.which(qemu) if os.sep not in qemu else qemu
    if path is None or not os.path.isfile(path):
        raise UsageError(f"QEMU binary {qemu!r} not found; pass --qemu PATH to a "
                          "qemu-system-x86_64 (apt-get install qemu-system-x86, or ci/build-qemu)")
    try:
        res = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=20)
    except OSError as exc:
        raise UsageError(f"{path} cannot be run ({exc.strerror}); pass --qemu PATH to a "
                          "qemu-system-x86_64") from exc
    if "QEMU emulator version" not in res.stdout:
        raise UsageError(f"{path} is not a QEMU system emulator (-version said "
                          f"{(res.stdout or res.stderr).strip()[:60]!r}); pass --qemu PATH to a "
                          "qemu-system-x86_64")
    return os.path.abspath(path)


def _members(schema: dict[str, dict[str, Any]], type_name: str) -> set[str]:
    return {m["name"] for m in schema.get(type_name, {}).get("members", [])}


@dataclass(frozen=True)
class SchemaFacts:
    local: bool
    incoming_fds: bool
    tap_local_option: str | None


def schema_facts(entries: list[dict[str, Any]]) -> SchemaFacts:
    """What `query-qmp-schema` says of the series. Type names are masked in
    introspection, so walk from the commands to the types they take."""
    schema = {e["name"]: e for e in entries}
    params = schema.get("query-migrate-parameters", {}).get("ret-type", "")
    netdev = schema.get(schema.get("netdev_add", {}).get("arg-type", ""), {})
    tap_type = next((v["type"] for v in netdev.get("variants", []) if v["case"] == "tap"), "")
    tap = _members(schema, tap_type)
    return SchemaFacts(local="local" in _members(schema, params),
                       incoming_fds="incoming-fds" in tap,
                       tap_local_option=next((o for o in TAP_LOCAL_OPTIONS if o in tap), None))


def query_capabilities(qemu: str) -> Capabilities:
    """Start the binary with no machine and ask it (about a second)."""
    binary = resolve_qemu(qemu)
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-probe-") as tmp:
        # -S: no RESUME at start. QEMU 7.2 can send an event that races our connect ahead
        # of the QMP greeting, and qemu.qmp then refuses the session.
        vm = VM("probe", binary, ["-machine", "none", "-nodefaults", "-display", "none", "-S"],
                Path(tmp))
        with vm:
            v = vm.cmd("query-version")
            version = "{major}.{minor}.{micro}".format(**v["qemu"])
            if v.get("package"):
                version += f" ({v['package'].strip()})"
            facts = schema_facts(vm.cmd("query-qmp-schema"))
            props = {p["name"] for p in vm.cmd("device-list-properties", typename="virtio-net-pci")}
            caps = {c["capability"] for c in vm.cmd("query-migrate-capabilities")}
            machines = vm.cmd("query-machines")
            events = frozenset(e["name"] for e in vm.cmd("trace-event-get-state", name="*"))
    return Capabilities(
        qemu=binary,
        version=version,
        local=facts.local,
        incoming_fds=facts.incoming_fds,
        tap_local_option=facts.tap_local_option,
        local_migration="local-migration" in props,
        x_ignore_shared="x-ignore-shared" in caps,
        vhost_problem=vhost_net_problem(),
        trace=trace_patterns(events),
        q35_types=tuple(sorted((m["name"] for m in machines if Q35.fullmatch(m["name"])),
                               key=q35_version)),
        q35_alias=next((m["name"] for m in machines if m.get("alias") == "q35"), ""),
        deprecated=tuple(sorted(m["name"] for m in machines if m.get("deprecated"))),
    )


Q35 = re.compile(r"pc-q35-(\d+)\.(\d+)")


def q35_version(name: str) -> tuple[int, int]:
    """(major, minor) of a versioned q35 machine type, for ordering."""
    m = Q35.fullmatch(name)
    return (int(m[1]), int(m[2])) if m else (0, 0)


@functools.cache
def _capabilities(binary: str, stamp: tuple[int, int, int]) -> Capabilities:
    return query_capabilities(binary)


def capabilities_of(qemu: str) -> Capabilities:
    """A binary's capabilities, asked once per process for each build of it (its path,
    inode, size and mtime): the two sides of a live update, and every hop of a chain
    that alternates them, share the answer. A path that is no file gets
    query_capabilities' own one-line error."""
    path = shutil.which(qemu) if os.sep not in qemu else qemu
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        st = None
    if path is None or st is None:
        return query_capabilities(qemu)
    return _capabilities(os.path.abspath(path), (st.st_ino, st.st_size, st.st_mtime_ns))
