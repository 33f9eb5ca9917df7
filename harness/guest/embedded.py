"""The embedded guest, built offline from Debian packages, and guests resolved from assets.

The embedded default is Debian's current kernel plus a busybox initramfs, so
tapmig needs no image download; an ISO (upstream's Alpine) or a kernel (Fedora's
pxeboot files, or the user's own) come from assets.toml.

The embedded kernel is resolved through apt at build time (``linux-image-amd64``
points at the current ABI), and the result is cached under a key made of every
input, so a kernel security update produces a new guest instead of a stale one.
The initramfs also carries tapmig-guest (harness/guest/helper.c, compiled static
here): the UDP echo of the multi-flow probe and the per-queue counters, which
busybox lacks.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from harness import atomic
from harness.cache import default_cache
from harness.errors import GuestBuildFailed, HostError
from harness.guest.assets import GuestSpec, Manifest, cache_dir, fetch
from harness.guest.spec import HELPER, PROMPT, READY, Guest
from harness.vocabulary import Log

RECIPE = "tapmig-guest/3"
KERNEL_META = "linux-image-amd64"
BUSYBOX_PKG = "busybox-static"
HELPER_SOURCE = Path(__file__).with_name("helper.c")
# virtio_pci finds the NIC, virtio_net drives it; their dependencies come from modules.dep.
MODULES = ("virtio_pci", "virtio_net")
# What apt resolves a candidate from: a change to any (apt-get update, a pin, a source)
# may change the answer.
APT_STATE = (Path("/var/lib/apt/lists"), Path("/etc/apt"), Path("/var/lib/dpkg/status"))
STEP_TIMEOUT_S = 600.0  # for each command; a download of the kernel package is the longest

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m || echo "insmod $m failed"; done
ip link set lo up
addr=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in tapmig.ip=*) addr="${{arg#tapmig.ip=}}" ;; esac
done
if [ -n "$addr" ]; then
  ip addr add "$addr" dev eth0 && ip link set eth0 up || echo "eth0 setup failed"
fi
echo "{READY} $(cat /sys/class/net/eth0/address 2>/dev/null)"
export PS1='{PROMPT}'
exec setsid cttyhack sh -i
"""


def resolve(spec: GuestSpec, manifest: Manifest, cache: Path,
            log: Log = print) -> Guest:
    """The Guest a parsed --guest names: built, fetched and verified, or the user's own files."""
    if spec.kind == "embedded":
        return build_embedded(cache, log)
    files = dict(spec.paths)
    for role, asset in spec.assets.items():
        files[role] = fetch(manifest.asset(asset), cache_dir(cache))
    if spec.kind == "iso":
        return Guest(spec.name, iso=files["iso"], console_login=True)
    name = spec.name if spec.assets else f"{spec.name}:{files['kernel']}"
    return Guest(name, kernel=files["kernel"], initrd=files.get("initrd"), console_login=True)


def _apt_candidate(pkg: str) -> str:
    out = _run("resolve", ["apt-cache", "policy", pkg]).splitlines()
    for line in out:
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                return version
    raise HostError(f"apt knows no candidate for {pkg}; run 'apt-get update' and retry")


def _kernel_package() -> str:
    """The ABI package that linux-image-amd64 currently depends on."""
    for line in _run("resolve", ["apt-cache", "depends", KERNEL_META]).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "Depends:" and parts[1].startswith("linux-image-"):
            return parts[1]
    raise HostError(f"cannot resolve {KERNEL_META}; run 'apt-get update' and retry")


def apt_state(paths: tuple[Path, ...] = APT_STATE) -> str:
    """A digest of the files apt resolves from: the path, size and mtime of each."""
    digest = hashlib.sha256()
    for top in paths:
        for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def resolve_packages(cache: Path) -> tuple[str, str, str]:
    """The kernel package, and the kernel and busybox as package=version.

    Kept per apt state: with no pkgcache.bin, each apt-cache call rebuilds apt's cache
    in memory (0.4 s), and every tapmig process asks three times. A file of a state
    that is gone is removed."""
    memo = cache / f"apt-{apt_state()}.json"
    try:
        kpkg, kernel, busybox = (str(v) for v in json.loads(memo.read_text()))
        return kpkg, kernel, busybox
    except (FileNotFoundError, ValueError, TypeError):  # none yet, or not ours
        pass
    kpkg = _kernel_package()
    found = (kpkg, f"{kpkg}={_apt_candidate(kpkg)}",
             f"{BUSYBOX_PKG}={_apt_candidate(BUSYBOX_PKG)}")
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("apt-*.json"):
        old.unlink(missing_ok=True)
    atomic.write_text(memo, json.dumps(found))
    return found


def _last_line(*outputs: str | bytes | None) -> str:
    """The last line of the first output that has one (stderr before stdout)."""
    for out in outputs:
        text = out.decode(errors="replace") if isinstance(out, bytes) else out or ""
        if lines := text.strip().splitlines():
            return lines[-1]
    return ""


def _run(step: str, argv: list[str], cwd: Path | None = None,
         timeout: float = STEP_TIMEOUT_S) -> str:
    """stdout of argv, one command of a build step; a failure is a GuestBuildFailed."""
    try:
        res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise HostError(f"{argv[0]} not found; the embedded guest is built with apt on "
                          "Debian (install apt, dpkg and kmod)") from exc
    except subprocess.TimeoutExpired as exc:
        raise GuestBuildFailed(step, argv, None, _last_line(exc.stderr, exc.stdout),
                               timeout) from None
    if res.returncode != 0:
        raise GuestBuildFailed(step, argv, res.returncode, _last_line(res.stderr, res.stdout),
                               timeout)
    return res.stdout


def _compiler() -> str:
    """The C compiler's identity, for the cache key: tapmig-guest is built with it."""
    if shutil.which("gcc") is None:
        raise HostError("gcc not found; the embedded guest's tapmig-guest helper is compiled "
                        "static at build time (apt-get install gcc libc6-dev)")
    return _run("resolve", ["gcc", "--version"]).splitlines()[0]


def module_order(modules_dep: str, wanted: tuple[str, ...]) -> list[str]:
    """Module paths to insmod, each after everything it depends on."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[name] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise HostError(f"kernel has no module {name}; is it built in? "
                              "check the kernel package")
        visit(by_name[name])
    return order


def cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """An initramfs archive, written here so that no cpio tool or root-owned tree is needed."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        raw = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        )
        out.write(header.encode() + raw)
        out.write(b"\0" * (-(110 + len(raw)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


def _initramfs(busybox: bytes, helper: bytes, root: Path, release: str,
               modules: list[str]) -> bytes:
    dirs = ["bin", "dev", "etc", "proc", "sys", "lib", "lib/modules"]
    entries: list[tuple[str, int, bytes]] = [(d, stat.S_IFDIR | 0o755, b"") for d in dirs]
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b""))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox))
    entries.append((f"bin/{HELPER}", stat.S_IFREG | 0o755, helper))
    entries.append(("init", stat.S_IFREG | 0o755, INIT.encode()))
    names = []
    for path in modules:
        name = Path(path).name
        names.append(name)
        data = (root / "lib/modules" / release / path).read_bytes()
        entries.append((f"lib/modules/{name}", stat.S_IFREG | 0o644, data))
    entries.append(("etc/modules.order", stat.S_IFREG | 0o644, ("\n".join(names) + "\n").encode()))
    return gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0)


def build_embedded(cache: Path | None = None, log: Log = print) -> Guest:
    """Resolve, download and assemble the guest, or return the cached one."""
    cache = cache or default_cache()
    kpkg, kernel, busybox = resolve_packages(cache / "guest")
    inputs = {
        "recipe": RECIPE,
        "kernel": kernel,
        "busybox": busybox,
        "modules": list(MODULES),
        "init": INIT,
        "helper": hashlib.sha256(HELPER_SOURCE.read_bytes()).hexdigest(),
        "cc": _compiler(),
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    out = cache / "guest" / key
    guest = Guest(name=f"embedded:{kpkg}", kernel=out / "vmlinuz", initrd=out / "initrd.gz")
    if (out / "inputs.json").exists():
        return guest
    out.parent.mkdir(parents=True, exist_ok=True)
    # Parallel runs (pytest -n 2, two tapmig runs) on an empty cache: one builds, the
    # other waits for it and then finds the result.
    with open(out.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "inputs.json").exists():
            _assemble(inputs, kpkg, key, out, log)
    return guest


def _assemble(inputs: dict[str, Any], kpkg: str, key: str, out: Path,
              log: Log) -> None:
    log(f"building the embedded guest from {inputs['kernel']} and {inputs['busybox']}")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{key}.") as tmpname:
        tmp = Path(tmpname)
        root = tmp / "root"
        _run("download", ["apt-get", "download", str(inputs["kernel"]),
                          str(inputs["busybox"])], cwd=tmp)
        for deb in sorted(tmp.glob("*.deb")):
            _run("extract", ["dpkg-deb", "-x", str(deb), str(root)])
        release = kpkg.removeprefix("linux-image-")
        # Debian's package leaves modules.dep to the postinst; generate it in our tree.
        _run("depmod", ["depmod", "-b", str(root), release])
        modules = module_order((root / "lib/modules" / release / "modules.dep").read_text(),
                               MODULES)
        busybox = (root / "bin/busybox").read_bytes()
        _run("compile", ["gcc", "-static", "-O2", "-s", "-Wall", "-o", str(tmp / HELPER),
                         str(HELPER_SOURCE)])
        helper = (tmp / HELPER).read_bytes()
        stage = tmp / "stage"
        stage.mkdir()
        shutil.copyfile(root / "boot" / f"vmlinuz-{release}", stage / "vmlinuz")
        (stage / "initrd.gz").write_bytes(_initramfs(busybox, helper, root, release, modules))
        (stage / "inputs.json").write_text(json.dumps({**inputs, "insmod": modules}, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        stage.rename(out)
    log(f"embedded guest cached in {out}")
