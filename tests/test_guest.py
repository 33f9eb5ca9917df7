"""--guest: every way tapmig boots a guest, and real migrations of the console-login kinds.

The Alpine ISO and the Fedora kernel cannot be downloaded here, so the real runs
use a stand-in built offline, as the upstream anchor did: the embedded guest's
Debian kernel and busybox, with an init that asks for a login on ttyS0 and then
gives a `# ` root shell. It takes no address from the kernel command line, so
eth0 comes up only if tapmig's console bring-up really works. The same kernel
and initrd are booted twice: inside a BIOS-bootable ISO (grub-mkrescue), found
through a manifest and the verified asset cache exactly as alpine-iso would be,
and directly as a kernel:PATH,initrd:PATH guest.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cache import default_cache
from harness.errors import EXIT_FAILED, GuestBuildFailed, HostError, TapmigError, UsageError
from harness.guest import embedded
from harness.guest.assets import Manifest, load_manifest, parse_guest
from harness.guest.embedded import (
    HELPER_SOURCE,
    apt_state,
    build_embedded,
    cpio_newc,
    resolve,
    resolve_packages,
)
from harness.guest.spec import HELPER, NET_OK, READY, Guest
from harness.run.config import Config
from harness.run.scenario import run
from harness.vocabulary import AccelChoice
from tests.support import call_tapmig

QEMU = shutil.which("qemu-system-x86_64")
LOGIN_PROMPT = "tapmig-standin login: "

# Replaces the embedded /init: no tapmig.ip parsing, a login prompt, then a root shell.
STANDIN_INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m; done
ip link set lo up
until [ "$user" = root ]; do printf '{LOGIN_PROMPT}'; read -r user || exit 1; done
export PS1='# '
exec setsid cttyhack sh -i
"""

GRUB_CFG = """serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "tapmig stand-in" {
  linux /vmlinuz console=ttyS0 quiet panic=-1
  initrd /initrd.gz
}
"""

# The ISO as a manifest asset: .invalid never resolves, so only the cache can serve it.
MANIFEST = """default = "standin"

[assets.standin-iso]
kind = "iso"
url = "https://standin.invalid/standin.iso"
sha256 = "{sha256}"
description = "Stand-in for the Alpine ISO: login on ttyS0, then a root shell"

[guests.standin]
iso = "standin-iso"
"""


@dataclass(frozen=True)
class Standin:
    """The stand-in's files; root is also a cache root where fetch() finds the ISO."""

    root: Path
    kernel: Path
    initrd: Path
    manifest: Manifest


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _build_standin(guest: Guest, out: Path) -> None:
    assert guest.kernel is not None and guest.initrd is not None
    tree = out / "tree"
    (tree / "boot/grub").mkdir(parents=True)
    shutil.copyfile(guest.kernel, tree / "vmlinuz")
    # The kernel unpacks concatenated archives in order, so this /init replaces the
    # embedded one while its busybox and NIC modules stay.
    overlay = cpio_newc([("init", stat.S_IFREG | 0o755, STANDIN_INIT.encode())])
    (tree / "initrd.gz").write_bytes(guest.initrd.read_bytes() + gzip.compress(overlay))
    (tree / "boot/grub/grub.cfg").write_text(GRUB_CFG)
    iso = out / "assets/standin-iso/standin.iso"
    iso.parent.mkdir(parents=True)
    subprocess.run(["grub-mkrescue", "-o", str(iso), str(tree)], check=True,
                   capture_output=True, timeout=120)
    (out / "assets.toml").write_text(MANIFEST.format(sha256=_sha256(iso.read_bytes())))


@pytest.fixture(scope="session")
def standin(tapmig_guest: Guest) -> Standin:
    """Built once per set of inputs into the tapmig cache; a build takes about a second."""
    missing = [t for t in ("grub-mkrescue", "xorriso") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: run ci/setup (grub-pc-bin, xorriso)")
    guest = tapmig_guest
    assert guest.kernel is not None and guest.initrd is not None
    version = subprocess.run(["grub-mkrescue", "--version"], capture_output=True, text=True,
                             check=True).stdout
    inputs = [_sha256(guest.kernel.read_bytes()), _sha256(guest.initrd.read_bytes()),
              STANDIN_INIT, GRUB_CFG, MANIFEST, version]
    root = default_cache() / "standin" / _sha256(json.dumps(inputs).encode())[:16]
    if not (root / "assets.toml").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".build-"))
        try:
            _build_standin(guest, tmp)
            tmp.rename(root)
        except OSError:
            if not (root / "assets.toml").exists():  # not a parallel worker's win: a failure
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Standin(root, root / "tree/vmlinuz", root / "tree/initrd.gz",
                   load_manifest(root / "assets.toml"))


def migrate(guest: Guest, accel: AccelChoice, out: Path) -> str:
    """One real new-TAP migration on the system QEMU; returns the source console log."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    rec = run(Config(qemu=QEMU, guest=guest, accel=accel, out=out), log=print)
    assert rec.status == "ok", rec.error
    assert rec.artifacts["ping"] == "ping.log" and (out / "ping.log").stat().st_size > 0
    assert rec.guest == guest.name
    assert rec.blackout_ms is not None and rec.downtime_ms is not None
    print(f"{guest.name}: booted in {rec.boot_s} s, blackout {rec.blackout_ms} ms")
    console = (out / "source-console.log").read_text(errors="replace")
    # Logged in on the console and configured eth0 there; the embedded init never ran.
    assert LOGIN_PROMPT in console and NET_OK in console
    assert READY not in console
    return console


# --- real migrations -------------------------------------------------------------------


@pytest.mark.kvm
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_iso_guest_migrates(standin: Standin, tapmig_accel: AccelChoice, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAPMIG_OFFLINE", "1")  # served by the verified cache, or not at all
    spec = parse_guest("standin", standin.manifest)
    guest = resolve(spec, standin.manifest, standin.root)
    assert guest.iso == standin.root / "assets/standin-iso/standin.iso"
    assert guest.kernel is None and guest.console_login
    console = migrate(guest, tapmig_accel, tmp_path)
    assert "tapmig stand-in" in console  # GRUB from the CD-ROM booted it, not -kernel


@pytest.mark.kvm
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_kernel_guest_migrates(standin: Standin, tapmig_accel: AccelChoice,
                               tmp_path: Path) -> None:
    manifest = load_manifest()
    spec = parse_guest(f"kernel:{standin.kernel},initrd:{standin.initrd}", manifest)
    guest = resolve(spec, manifest, tmp_path / "unused-cache")
    assert (guest.kernel, guest.initrd, guest.iso) == (standin.kernel, standin.initrd, None)
    assert guest.console_login and not (tmp_path / "unused-cache").exists()
    migrate(guest, tapmig_accel, tmp_path)


# --- the embedded guest's traffic helper ---------------------------------------------------


def cpio_modes(archive: bytes) -> dict[str, int]:
    """name -> mode of each entry of a newc archive (the format cpio_newc writes)."""
    modes, pos = {}, 0
    while archive[pos:pos + 6] == b"070701":
        fields = [int(archive[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = archive[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize + (-(110 + namesize) % 4)
        pos += size + (-size % 4)
        modes[name] = mode
    return modes


def test_embedded_guest_carries_the_helper_built_from_its_source(tapmig_guest: Guest) -> None:
    assert tapmig_guest.initrd is not None
    modes = cpio_modes(gzip.decompress(tapmig_guest.initrd.read_bytes()))
    mode = modes[f"bin/{HELPER}"]
    assert stat.S_ISREG(mode) and mode & 0o111
    inputs = json.loads((tapmig_guest.initrd.parent / "inputs.json").read_text())
    assert inputs["helper"] == _sha256(HELPER_SOURCE.read_bytes())  # a change rebuilds it
    assert inputs["cc"].startswith("gcc")


def test_building_without_gcc_is_one_line_saying_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        pytest.skip("apt-cache is missing: the embedded guest is built on Debian")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "apt-cache").symlink_to(apt_cache)  # apt, but no compiler
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(HostError, match=r"^gcc not found; .* \(apt-get install gcc libc6-dev\)$"):
        build_embedded(tmp_path / "cache")


def test_a_failing_build_command_names_its_step_and_its_last_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    apt_cache = tmp_path / "bin" / "apt-cache"  # an apt whose lists are broken
    apt_cache.write_text("#!/bin/sh\necho 'Reading package lists...'\n"
                         "echo 'E: The package lists are corrupt' >&2\nexit 100\n")
    apt_cache.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(GuestBuildFailed) as err:
        build_embedded(tmp_path / "cache")
    e = err.value
    assert (e.step, e.status) == ("resolve", 100)
    assert e.argv == ("apt-cache", "depends", "linux-image-amd64")
    assert e.last_line == "E: The package lists are corrupt"  # stderr before stdout
    assert e.command_line == "apt-cache depends linux-image-amd64"
    assert e.exit_code == EXIT_FAILED
    assert not (tmp_path / "cache").exists()


def test_what_apt_answered_is_kept_until_apt_changes(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tapmig process resolves the embedded guest; apt answers once per apt state.
    The second call finds the answer with no apt on PATH at all; any file apt reads
    that changes (here a pin) changes the state, and so asks apt again."""
    if shutil.which("apt-cache") is None:
        pytest.skip("apt-cache is missing: the embedded guest is built on Debian")
    first = resolve_packages(tmp_path)
    assert first[1].startswith(f"{first[0]}=") and first[2].startswith("busybox-static=")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert resolve_packages(tmp_path) == first
    assert len(list(tmp_path.glob("apt-*.json"))) == 1
    etc = tmp_path / "etc-apt"
    (etc / "preferences.d").mkdir(parents=True)
    before = apt_state((etc,))
    (etc / "preferences.d" / "pin").write_text("Package: busybox-static\n")
    assert apt_state((etc,)) != before


def test_a_build_command_that_hangs_is_stopped() -> None:
    argv = ["sh", "-c", "echo fetching >&2; exec sleep 30"]
    began = time.monotonic()
    with pytest.raises(GuestBuildFailed) as err:
        embedded._run("download", argv, timeout=0.5)
    assert time.monotonic() - began < 5
    e = err.value
    assert (e.step, e.status, e.timeout_s, e.last_line) == ("download", None, 0.5, "fetching")


# --- boot arguments and resolution, without QEMU ------------------------------------------


def test_boot_args_per_kind(tmp_path: Path) -> None:
    embedded = Guest("embedded", kernel=tmp_path / "k", initrd=tmp_path / "i")
    assert "tapmig.ip=10.0.0.2/24" in embedded.boot_args("10.0.0.2/24")[-1]

    kernel_only = Guest("k", kernel=tmp_path / "k", console_login=True)
    args = kernel_only.boot_args("10.0.0.2/24")
    assert args[:2] == ["-kernel", str(tmp_path / "k")] and "-initrd" not in args
    assert "tapmig.ip" not in args[-1] and "console=ttyS0" in args[-1]

    iso = Guest("iso", iso=tmp_path / "a,b.iso", console_login=True)
    assert iso.boot_args("10.0.0.2/24") == [
        "-drive", f"file={tmp_path}/a,,b.iso,media=cdrom,format=raw,readonly=on", "-boot", "d"]


@pytest.mark.parametrize(("kernel", "iso", "login"), [
    (None, None, True), (Path("k"), Path("i"), True), (None, Path("i"), False)])
def test_guest_needs_one_boot_method(kernel: Path | None, iso: Path | None, login: bool) -> None:
    with pytest.raises(UsageError, match="give a kernel, or an ISO"):
        Guest("bad", kernel=kernel, iso=iso, console_login=login)


@pytest.mark.parametrize("name", ["alpine-iso", "fedora"])
def test_asset_guest_offline_fails_naming_url_and_path(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAPMIG_OFFLINE", "1")
    manifest = load_manifest()
    spec = parse_guest(name, manifest)
    first = manifest.asset(next(iter(spec.assets.values())))
    assert first.url is not None
    with pytest.raises(TapmigError) as err:
        resolve(spec, manifest, tmp_path)
    assert first.url in str(err.value) and str(tmp_path / "assets" / first.name) in str(err.value)


# --- the command line ---------------------------------------------------------------------


def tapmig(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """In-process: each of these is refused, or only lists, before anything starts."""
    return call_tapmig(*args, env=env)


def error_line(res: subprocess.CompletedProcess[str]) -> str:
    """The single `tapmig: error:` line of an exit-2 refusal."""
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tapmig: error: "), res.stderr
    return lines[0]


@pytest.mark.parametrize("command", [
    ["run"],
    ["measure", "--qemu", "qemu-system-x86_64", "--mode", "new-tap", "--iterations", "1"],
])
def test_unknown_guest_lists_the_known_ones(command: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    extra = ["--out", str(out)] if command[0] == "measure" else []
    line = error_line(tapmig(*command, *extra, "--guest", "nosuch"))
    assert "unknown guest 'nosuch'" in line
    for known in ("embedded", "alpine-iso", "fedora", "kernel:PATH[,initrd:PATH]"):
        assert known in line
    assert not out.exists()  # refused before anything was made


@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_run_with_an_uncached_asset_offline_fails_fast(tmp_path: Path) -> None:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    cache = tmp_path / "cache"
    t0 = time.monotonic()
    res = tapmig("run", "--qemu", QEMU, "--guest", "alpine-iso",
                 env={"TAPMIG_OFFLINE": "1", "TAPMIG_CACHE": str(cache)})
    line = error_line(res)
    # The bound is the point: offline, the asset must be refused at once, never after a
    # download attempt's 30 s timeout (harness.guest.assets.fetch); it takes well under
    # a second, and 30 s leaves a loaded host all the slack it could need.
    assert time.monotonic() - t0 < 30
    url = load_manifest().asset("alpine-iso").url
    assert url is not None and url in line
    assert f"{cache}/assets/alpine-iso/" in line
    assert res.stdout == ""  # no result table: nothing ran


def test_assets_commands(tmp_path: Path) -> None:
    env = {"TAPMIG_CACHE": str(tmp_path)}
    listing = tapmig("assets", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    for asset in load_manifest().assets.values():
        assert asset.name in listing.stdout
        if asset.url is not None:
            assert asset.url in listing.stdout
    assert f"missing: {tmp_path}/assets/alpine-iso/" in listing.stdout
    assert "guests: embedded, alpine-iso, fedora" in listing.stdout

    line = error_line(tapmig("assets", "fetch", "fedora-kernel", "--offline", env=env))
    assert "offline" in line and f"{tmp_path}/assets/fedora-kernel/vmlinuz" in line
    assert "unknown asset 'nosuch'" in error_line(tapmig("assets", "fetch", "nosuch", env=env))
