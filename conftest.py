"""pytest wiring for tapmig: which QEMUs to test, the accelerator, and the leak check.

`--qemu` may be given several times; every guest-booting test runs once per
binary, and each test asks the capability probe, so a QEMU without the series
skips the local tests naming exactly what it lacks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import resources
from harness.cache import default_cache
from harness.guest import Guest, build_embedded
from harness.probe import Capabilities, probe


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tapmig")
    group.addoption("--qemu", action="append", default=[],
                    help="QEMU binary under test; repeat to test several "
                         "(default: $TAPMIG_QEMU or qemu-system-x86_64)")
    group.addoption("--accel", default=os.environ.get("TAPMIG_ACCEL", "auto"),
                    choices=("auto", "kvm", "tcg"), help="accelerator for guest-booting tests")
    group.addoption("--tapmig-records", type=Path, default=None,
                    help="also write each migration's run record (JSON) into this directory")


def qemus(config: pytest.Config) -> list[str]:
    given: list[str] = config.getoption("--qemu")
    if given:
        return given
    env = os.environ.get("TAPMIG_QEMU")
    return env.split(os.pathsep) if env else ["qemu-system-x86_64"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qemu" in metafunc.fixturenames:
        binaries = qemus(metafunc.config)
        ids = [Path(b).name if len(binaries) == 1 else f"qemu{i}"
               for i, b in enumerate(binaries)]
        metafunc.parametrize("qemu", binaries, ids=ids, scope="session")


@pytest.fixture(scope="session")
def caps(qemu: str) -> Capabilities:
    return probe(qemu)


@pytest.fixture(scope="session")
def guest() -> Guest:
    return build_embedded(default_cache())


@pytest.fixture(scope="session")
def accel_choice(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--accel"))


@pytest.fixture
def records_dir(request: pytest.FixtureRequest) -> Path | None:
    value = request.config.getoption("--tapmig-records")
    return Path(value) if value else None


def _children() -> set[tuple[int, str]]:
    """Our direct child processes (QEMU, ping, the prober), from /proc."""
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
            if fields[1].split()[1] == me:
                found.add((int(stat.parent.name), comm))
        except (OSError, IndexError):
            continue
    return found


@pytest.fixture(autouse=True)
def leak_check() -> Iterator[None]:
    """Fail the test that leaves a namespace, shm file, run dir or child process behind."""
    me = os.getpid()
    before = set(resources.leftovers(me))
    kids_before = _children()
    yield
    leaked = sorted(set(resources.leftovers(me)) - before)
    kids = sorted(_children() - kids_before)
    if leaked or kids:
        pytest.fail(f"test leaked: {leaked + [f'process {pid} ({comm})' for pid, comm in kids]}")


@pytest.fixture(scope="session")
def root_with_tun() -> None:
    if os.geteuid() != 0:
        pytest.skip("guest-booting tests need root (namespaces, TAPs)")
    if not Path("/dev/net/tun").exists():
        pytest.skip("/dev/net/tun is missing")
    if shutil.which("nsenter") is None:
        pytest.skip("nsenter (util-linux) is missing")
