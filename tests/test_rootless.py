"""Rootless mode, as a real unprivileged user created for the test.

The user runs tapmig with no sudo: it re-executes itself in a new user and
network namespace, creates its TAPs there and migrates a real guest. Where a
normal user cannot have namespaces, or cannot open /dev/net/tun (mode 0600 on a
fresh machine without udev's rule), tapmig must say exactly what is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cache import default_cache
from harness.guest.spec import Guest
from tests.support import REPO, one_line_error

USER = f"tapmig-rl{os.getpid() % 100000}"
SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" \
    / "site-packages"
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root to create the unprivileged test user")


@pytest.fixture
def user(tmp_path: Path) -> Iterator[pwd.struct_passwd]:
    """A throwaway unprivileged user with a home; removed with its files afterwards."""
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True,
                   capture_output=True, timeout=30)
    try:
        yield pwd.getpwnam(USER)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True, timeout=10)
        subprocess.run(["userdel", "--remove", USER], capture_output=True, timeout=30)


def as_user(user: pwd.struct_passwd, args: list[str], env: dict[str, str],
            timeout: float = 180, module: bool = True) -> subprocess.CompletedProcess[str]:
    """Run tapmig (or, module=False, python with args) as the user with the system
    interpreter (the venv's may sit under /root) and the project's pure-Python
    dependencies on its path."""
    return subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
         "--inh-caps=-all", "env", "-i", f"HOME={user.pw_dir}", f"USER={user.pw_name}",
         f"PYTHONPATH={REPO}:{SITE}", *[f"{k}={v}" for k, v in env.items()],
         str(SYSTEM_PYTHON), *(["-m", "harness.cli.main"] if module else []), *args],
        capture_output=True, text=True, timeout=timeout, cwd="/")


def readable_by(user: pwd.struct_passwd, path: Path) -> bool:
    res = subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                          "--init-groups", "test", "-r", str(path)], timeout=10)
    return res.returncode == 0


def usable_clone(user: pwd.struct_passwd) -> None:
    if not SYSTEM_PYTHON.exists() or not readable_by(user, REPO / "harness" / "cli" / "main.py"):
        pytest.skip(f"{SYSTEM_PYTHON} or the clone at {REPO} is not usable by a normal user")


def refusal_as(user: pwd.struct_passwd, call: str = "refusal()") -> str:
    """What rootless preflight says for this user ('' if nothing stops it), run as the user."""
    res = as_user(user, ["-c", f"from harness.host import rootless; print(rootless.{call} or '')"],
                  {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=60, module=False)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_refused_with_the_missing_piece_named(user: pwd.struct_passwd) -> None:
    """No unshare on PATH: rootless mode is impossible, and the message says why."""
    usable_clone(user)
    res = as_user(user, ["run", "--qemu", "/usr/bin/qemu-system-x86_64"],
                  {"PATH": "/nonexistent"}, timeout=60)
    # A HostError has no field but its message: what the user reads is the contract,
    # one line that names the missing piece and the way out.
    one_line_error(res, "rootless mode", "unshare (util-linux) is not installed",
                   "run it with sudo", code=2)
    assert len(res.stderr.splitlines()) == 1 and res.stdout == ""


@pytest.mark.parametrize(("mode", "refused"), [(0o600, True), (0o666, False)],
                         ids=["root-only", "open-to-all"])
def test_tun_check_is_the_users_own(user: pwd.struct_passwd, mode: int, refused: bool) -> None:
    """A real tun device node (char 10:200) of our own, root's, opened as the user:
    root-only is refused naming the fix, open-to-all is accepted, whatever the host's
    own node is. It lives in the user's home, which userdel removes."""
    usable_clone(user)
    node = Path(user.pw_dir) / "tun"
    os.mknod(node, stat.S_IFCHR | mode, os.makedev(10, 200))
    node.chmod(mode)  # mknod applies the umask
    said = refusal_as(user, f"tun_refusal(__import__('pathlib').Path({str(node)!r}))")
    if refused:
        assert said == (f"rootless mode cannot create TAPs: {node} cannot be opened: "
                        f"Permission denied; as root, let users open it (`chmod 0666 {node}`, "
                        "as udev's default rule does) or run tapmig with sudo")
    else:
        assert said == ""


def test_refused_where_dev_net_tun_is_root_only(user: pwd.struct_passwd) -> None:
    """This host's own /dev/net/tun, as a fresh machine leaves it: one line, exit 2."""
    usable_clone(user)
    if refusal_as(user, "missing()"):
        pytest.skip(f"this host gives normal users no namespaces: {refusal_as(user)}")
    if not (why := refusal_as(user)):
        pytest.skip("/dev/net/tun here is usable by a normal user, so nothing is refused")
    res = as_user(user, ["run", "--qemu", "/usr/bin/qemu-system-x86_64"],
                  {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=60)
    assert (res.returncode, res.stdout, res.stderr) == (2, "", f"tapmig: error: {why}\n")
    assert "chmod 0666 /dev/net/tun" in why


@pytest.mark.kvm
def test_rootless_migration(user: pwd.struct_passwd, tapmig_guest: Guest) -> None:
    usable_clone(user)
    if why := refusal_as(user):
        pytest.skip(f"a normal user cannot run tapmig on this host: {why}")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    # Share the embedded guest already built (same key) instead of rebuilding as the user.
    kernel = tapmig_guest.kernel
    assert kernel is not None
    cache = Path(user.pw_dir) / "cache"
    shutil.copytree(kernel.parent, cache / "guest" / kernel.parent.name)
    out = Path(user.pw_dir) / "out"
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(cache)], check=True)
    res = as_user(user, ["run", "--qemu", qemu, "--out", str(out)],
                  {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TAPMIG_CACHE": str(cache)})
    assert res.returncode == 0, res.stderr
    assert "status          ok" in res.stdout
    record = (out / "record.json").read_text()
    assert '"status": "ok"' in record
    # Nothing of the user's left: its namespaces died with it; files were removed.
    leftovers = [p for p in Path("/dev/shm").iterdir() if p.owner() == user.pw_name]
    leftovers += [p for p in Path("/tmp").glob("tapmig-*") if p.owner() == user.pw_name]
    assert leftovers == []
    assert default_cache() != cache  # the user's cache was its own
