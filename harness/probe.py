"""What a QEMU binary can do, read from QMP introspection rather than its version.

The series is out of tree, so a version number says nothing: the schema and
the device properties do. Tests and `tapmig run` skip or refuse with the exact
item this reports missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import TapmigError
from harness.netns import PREFIX
from harness.vm import VM

VHOST_NET = Path("/dev/vhost-net")


@dataclass(frozen=True)
class Capabilities:
    qemu: str
    version: str
    local: bool  # MigrationParameters has `local`
    incoming_fds: bool  # NetdevTapOptions has `incoming-fds`
    local_migration: bool  # virtio-net-pci has the `local-migration` property
    x_ignore_shared: bool  # the migration capability
    vhost_net: str | None  # None when usable, else why not

    def missing_for_local(self) -> list[str]:
        missing = []
        if not self.local:
            missing.append("migration parameter 'local' (MigrationParameters)")
        if not self.incoming_fds:
            missing.append("tap option 'incoming-fds' (NetdevTapOptions)")
        if not self.local_migration:
            missing.append("virtio-net-pci property 'local-migration'")
        return missing

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_qemu(qemu: str) -> str:
    """The binary's path, or a one-line error if it is missing or not a QEMU."""
    path = shutil.which(qemu) if os.sep not in qemu else qemu
    if path is None or not os.path.isfile(path):
        raise TapmigError(f"QEMU binary {qemu!r} not found; pass --qemu PATH to a "
                          "qemu-system-x86_64 (apt-get install qemu-system-x86, or ci/build-qemu)")
    try:
        res = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=20)
    except OSError as exc:
        raise TapmigError(f"{path} cannot be run ({exc.strerror}); pass --qemu PATH to a "
                          "qemu-system-x86_64") from exc
    if "QEMU emulator version" not in res.stdout:
        raise TapmigError(f"{path} is not a QEMU system emulator (-version said "
                          f"{(res.stdout or res.stderr).strip()[:60]!r}); pass --qemu PATH to a "
                          "qemu-system-x86_64")
    return os.path.abspath(path)


def device_problem(path: Path, missing_hint: str = "") -> str | None:
    """Why a device node is unusable (missing, or refusing to open), or None."""
    if not path.exists():
        return f"{path} is missing{missing_hint}"
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        return f"{path} cannot be opened: {exc.strerror}"
    return None


def vhost_net_problem() -> str | None:
    return device_problem(VHOST_NET, " (no vhost-net module or device on this host)")


def _members(schema: dict[str, dict[str, Any]], type_name: str) -> set[str]:
    return {m["name"] for m in schema.get(type_name, {}).get("members", [])}


def _schema_facts(entries: list[dict[str, Any]]) -> tuple[bool, bool]:
    """(local, incoming-fds): type names are masked in introspection, so walk from commands."""
    schema = {e["name"]: e for e in entries}
    params = schema.get("query-migrate-parameters", {}).get("ret-type", "")
    local = "local" in _members(schema, params)
    netdev = schema.get(schema.get("netdev_add", {}).get("arg-type", ""), {})
    tap_type = next((v["type"] for v in netdev.get("variants", []) if v["case"] == "tap"), "")
    return local, "incoming-fds" in _members(schema, tap_type)


def probe(qemu: str) -> Capabilities:
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
            local, incoming_fds = _schema_facts(vm.cmd("query-qmp-schema"))
            props = {p["name"] for p in vm.cmd("device-list-properties", typename="virtio-net-pci")}
            caps = {c["capability"] for c in vm.cmd("query-migrate-capabilities")}
    return Capabilities(
        qemu=binary,
        version=version,
        local=local,
        incoming_fds=incoming_fds,
        local_migration="local-migration" in props,
        x_ignore_shared="x-ignore-shared" in caps,
        vhost_net=vhost_net_problem(),
    )
