"""tapmig as a pytest plugin (entry point `pytest11: tapmig`), for any project's tests.

Options, each in tapmig's namespace, as the plugin loads into every pytest of the
environment: `--tapmig-qemu PATH` (repeatable; default $TAPMIG_QEMU, an
os.pathsep-separated list, or qemu-system-x86_64), `--tapmig-accel auto|kvm|tcg`
(default $TAPMIG_ACCEL or auto), `--tapmig-target-qemu PATH` (a live update's target;
default $TAPMIG_TARGET_QEMU), `--tapmig-records DIR`, `--tapmig-require
guest,root,series` (default $TAPMIG_REQUIRE; see harness.testing.require: a missing
prerequisite named there fails the run instead of skipping). Every test that asks
for `tapmig_qemu` runs once per QEMU, or, marked `qemu_independent`, on the first one
only. Fixtures:

    tapmig_qemu           the QEMU binary under test (parametrized per --tapmig-qemu)
    tapmig_capabilities   what it can do, from QMP introspection (session-wide)
    tapmig_pair           Pair(source, target): this QEMU and --tapmig-target-qemu (or
                          itself), each with its capabilities; .config(...) migrates
                          from one to the other
    tapmig_guest          the embedded guest, built once and cached
    tapmig_accel          the accelerator asked for: auto, kvm or tcg
    tapmig_run            a factory: Config -> RunRecord, kept in --tapmig-records
    tapmig_keep_record    keeps a record in --tapmig-records, named after the test
    tapmig_namespace      a private network namespace (harness.host.netns.Namespace)
    tapmig_root_with_tun  skips, naming why, where this host cannot run a migration
    tapmig_leak_check     fails a test that leaves a namespace, shm file, run dir or
                          child process behind; not autouse, request it as you like
                          (what a session fixture keeps on purpose is registered in
                          kept(config), harness.testing.leaks)

Markers: `kvm`, for tests that boot real guests (KVM where it works, else TCG);
`qemu_independent`, for tests whose subject is tapmig's and not QEMU's.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from harness.cache import default_cache
from harness.errors import HostError, UsageError
from harness.guest.embedded import build_embedded
from harness.guest.spec import Guest
from harness.host.netns import Namespace
from harness.host.rundir import SHM_DIR
from harness.qemu.capabilities import Capabilities, capabilities_of
from harness.record import RunRecord
from harness.run import scenario
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Observer
from harness.testing import leaks, require
from harness.testing.leaks import Kept, children, stat_fields
from harness.testing.require import host_problem, missing
from harness.vocabulary import ACCEL_CHOICES, AccelChoice, as_accel_choice

__all__ = ["ACCEL_DEST", "QEMU_DEST", "Kept", "Pair", "RunFactory", "accel_default", "children",
           "kept", "missing", "qemus", "stat_fields"]
KEPT = pytest.StashKey[Kept]()


class RunFactory(Protocol):
    """tapmig_run: a Config in, the run's record out; observers watch or perturb it."""

    def __call__(self, cfg: Config, observers: Sequence[Observer[Lab]] = (),
                 shm_dir: Path = SHM_DIR) -> RunRecord: ...


# Where the options land: a suite may add short spellings of its own with these dests.
QEMU_DEST, ACCEL_DEST = "tapmig_qemu", "tapmig_accel"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tapmig")
    group.addoption("--tapmig-qemu", action="append", default=[], dest=QEMU_DEST,
                    metavar="PATH",
                    help="QEMU binary under test; repeat to test several "
                         "(default: $TAPMIG_QEMU or qemu-system-x86_64)")
    group.addoption("--tapmig-target-qemu", default=os.environ.get("TAPMIG_TARGET_QEMU"),
                    metavar="PATH", dest="tapmig_target_qemu",
                    help="a live update: the target QEMU of tapmig_pair, migrated to from "
                         "each --tapmig-qemu (default: $TAPMIG_TARGET_QEMU, else the same)")
    group.addoption("--tapmig-accel", default=accel_default(), choices=ACCEL_CHOICES,
                    dest=ACCEL_DEST,
                    help="accelerator for guest-booting tests (default: $TAPMIG_ACCEL or auto)")
    group.addoption("--tapmig-records", type=Path, default=None,
                    help="also write each migration's run record (JSON) into this directory")
    group.addoption("--tapmig-require", default=os.environ.get(require.ENV, ""),
                    metavar="LIST",
                    help="fail, naming it, where one of these is missing instead of "
                         f"skipping: a comma-separated list of {', '.join(require.NEEDS)} "
                         f"(default: ${require.ENV})")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kvm: boots real guests under QEMU (KVM where usable, else TCG)")
    config.addinivalue_line(
        "markers", "qemu_independent: tapmig's behaviour, not QEMU's: runs on the first "
                   "--tapmig-qemu only")
    try:  # argparse checks --tapmig-accel's value, not a default from $TAPMIG_ACCEL
        as_accel_choice(str(config.getoption(ACCEL_DEST)))
    except UsageError as exc:
        raise pytest.UsageError(f"$TAPMIG_ACCEL: {exc}") from exc
    config.stash[require.REQUIRED] = require.parse(str(config.getoption("--tapmig-require")))
    config.stash[KEPT] = Kept()


def pytest_sessionstart(session: pytest.Session) -> None:
    """The required prerequisites, checked once before any test: a broken runner fails
    here in one message naming each, rather than in every test (or green, skipped).
    An xdist worker leaves it to the controller, which checked before starting it."""
    config = session.config
    needs = require.required(config)
    if not needs or hasattr(config, "workerinput"):
        return
    if found := require.problems(needs, qemus(config)):
        pytest.exit("tapmig: required prerequisites are missing (--tapmig-require="
                    f"{','.join(sorted(needs))}):\n  " + "\n  ".join(found),
                    returncode=pytest.ExitCode.USAGE_ERROR)


def accel_default() -> str:
    """--tapmig-accel's default: $TAPMIG_ACCEL, else auto."""
    return os.environ.get("TAPMIG_ACCEL", "auto")


def kept(config: pytest.Config) -> Kept:
    """Where a session fixture registers what it keeps across tests on purpose."""
    return config.stash[KEPT]


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, args: list[str]) -> None:
    """Refuse `--tapmig-qemu PATH` where pytest let PATH choose its rootdir or config file.

    pytest picks those from the paths on the command line before it loads plugins,
    so it reads the PATH of a plugin option written with a space as a test path
    (pytest-dev/pytest#8846). When the result still finds a config file above the
    working directory, no harm is done; otherwise the run would use the wrong or no
    config (testpaths, markers) and write .pytest_cache next to the QEMU binary.
    """
    root, here = early_config.rootpath, early_config.invocation_params.dir
    if early_config.inipath is not None and here.is_relative_to(root):
        return
    for word, value in itertools.pairwise(args):
        if word == "--tapmig-qemu" and Path(value).exists():
            raise pytest.UsageError(
                f"pytest took {root} for its rootdir from `--tapmig-qemu {value}` (it reads "
                f"a plugin's options only after choosing it); write --tapmig-qemu={value}")


def qemus(config: pytest.Config) -> list[str]:
    """The QEMU binaries under test: --tapmig-qemu, else $TAPMIG_QEMU, else the one on
    PATH."""
    given: list[str] = config.getoption(QEMU_DEST)
    if given:
        return given
    env = os.environ.get("TAPMIG_QEMU")
    return env.split(os.pathsep) if env else ["qemu-system-x86_64"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tapmig_qemu" in metafunc.fixturenames:
        binaries = qemus(metafunc.config)
        ids = [Path(b).name if len(binaries) == 1 else f"qemu{i}"
               for i, b in enumerate(binaries)]
        if metafunc.definition.get_closest_marker("qemu_independent") is not None:
            binaries, ids = binaries[:1], ids[:1]
        metafunc.parametrize("tapmig_qemu", binaries, ids=ids, scope="session")


@pytest.fixture(scope="session")
def tapmig_capabilities(tapmig_qemu: str) -> Capabilities:
    return capabilities_of(tapmig_qemu)


@dataclass(frozen=True)
class Pair:
    """tapmig_pair: the source and target binaries of a live update, each with its own
    capabilities (the same binary twice without --tapmig-target-qemu)."""

    source: Capabilities
    target: Capabilities

    def config(self, **fields: Any) -> Config:
        """A Config migrating from the source to the target binary (a chain alternates)."""
        return Config(qemu=self.source.qemu, target_qemu=self.target.qemu, **fields)


@pytest.fixture(scope="session")
def tapmig_pair(pytestconfig: pytest.Config, tapmig_capabilities: Capabilities) -> Pair:
    """This --tapmig-qemu as the source, --tapmig-target-qemu (or itself) as the target."""
    target = pytestconfig.getoption("tapmig_target_qemu")
    return Pair(tapmig_capabilities,
                capabilities_of(target) if target else tapmig_capabilities)


@pytest.fixture(scope="session")
def tapmig_guest(pytestconfig: pytest.Config) -> Guest:
    """The embedded guest; skips, naming why, on a host that cannot build it (no apt),
    or fails where the run requires the guest."""
    try:
        return build_embedded(default_cache())
    except (HostError, OSError) as exc:  # an unwritable cache is a plain OSError
        missing(pytestconfig, "guest", f"cannot build the embedded guest here: {exc}")


@pytest.fixture(scope="session")
def tapmig_accel(pytestconfig: pytest.Config) -> AccelChoice:
    return as_accel_choice(str(pytestconfig.getoption(ACCEL_DEST)))


@pytest.fixture(scope="session")
def tapmig_root_with_tun(pytestconfig: pytest.Config) -> None:
    """Skip, naming the reason, where a migration cannot run: no root, no nsenter, or a
    /dev/net/tun this user cannot open (e.g. crw------- root on a host without udev);
    fail instead where the run requires root."""
    if why := host_problem(need_tun=True):
        missing(pytestconfig, "root", why)


@pytest.fixture
def tapmig_namespace(pytestconfig: pytest.Config) -> Iterator[Namespace]:
    """A fresh network namespace with only lo up, removed whatever the test does."""
    if why := host_problem(need_tun=False):
        missing(pytestconfig, "root", why)
    with Namespace() as ns:
        yield ns


@pytest.fixture
def tapmig_keep_record(request: pytest.FixtureRequest) -> Callable[[RunRecord], None]:
    """With --tapmig-records, keep each record given, named after the test (NAME.json,
    NAME-2.json ...); without it, nothing."""
    records: Path | None = request.config.getoption("--tapmig-records")
    stem = re.sub(r"[^\w.-]+", "_", request.node.name)
    count = itertools.count(1)

    def keep(rec: RunRecord) -> None:
        if records is not None:
            n = next(count)
            records.mkdir(parents=True, exist_ok=True)
            rec.write(records / (f"{stem}.json" if n == 1 else f"{stem}-{n}.json"))

    return keep


@pytest.fixture
def tapmig_run(tapmig_keep_record: Callable[[RunRecord], None],
               tapmig_root_with_tun: None) -> RunFactory:
    """Run one migration per call; with --tapmig-records, keep each record there,
    named after the test."""

    def run(cfg: Config, observers: Sequence[Observer[Lab]] = (),
            shm_dir: Path = SHM_DIR) -> RunRecord:
        rec = scenario.run(cfg, log=print, observers=observers, shm_dir=shm_dir)
        tapmig_keep_record(rec)
        return rec

    return run


@pytest.fixture
def tapmig_leak_check(pytestconfig: pytest.Config) -> Iterator[None]:
    """Fail the test that leaves a namespace, shm file, run dir or child process of
    this pytest behind (only what this process owns, so parallel workers do not
    blame each other; what a session fixture keeps on purpose is not the test's)."""
    with leaks.watch(kept(pytestconfig)) as leaked:
        yield
    if leaked:
        pytest.fail(f"test leaked: {leaked}")
