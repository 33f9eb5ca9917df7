"""tapmig's own suite on top of its pytest plugin (harness.testing.plugin, loaded through
the `pytest11` entry point): the leak check on for every test, the `lab` bench, and the
shared guests (`booted`, `hop`: tests/support/shared.py).

Other projects get the plugin's fixtures without the autouse leak check; here every
test must leave nothing behind but what a shared guest keeps on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from harness.guest.spec import Guest
from harness.qemu import accel
from harness.qemu.capabilities import Capabilities, capabilities_of
from harness.record import RunRecord
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Observer
from harness.run.setup import Setup
from harness.testing.plugin import ACCEL_DEST, QEMU_DEST, accel_default, kept, qemus
from harness.testing.require import missing
from harness.vocabulary import ACCEL_CHOICES, AccelChoice
from tests.support import skip_unless_local
from tests.support.shared import Hopper, Key, SharedGuest, setup_for

# tapmig_installed: this checkout's wheel in a fresh venv, for tests of the package;
# counting_qemu: Debian's QEMU behind a script that counts its starts.
pytest_plugins = ["tests.support.wheel", "tests.support.counting"]
# Every shared guest of the session, so that one left idle can be shut while a test
# that boots its own guest runs: two TCG guests at once distort the outage.
SHARED: list[SharedGuest] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    """This suite's short spellings of the plugin's --tapmig-qemu and --tapmig-accel (the
    plugin itself keeps to its namespace, as it loads into every pytest of the venv)."""
    group = parser.getgroup("tapmig")
    group.addoption("--qemu", action="append", default=[], dest=QEMU_DEST, metavar="PATH",
                    help="this suite's short --tapmig-qemu; write --qemu=PATH")
    group.addoption("--accel", default=accel_default(), choices=ACCEL_CHOICES, dest=ACCEL_DEST,
                    help="this suite's short --tapmig-accel")
    group.addoption("--variant", action="append", default=[], dest="tapmig_variants",
                    metavar="NAME=PATH",
                    help="a QEMU variant built by ci/build-qemu --variants (its NAME PATH "
                         "lines), for tests/test_variants.py; repeat")


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("tapmig"):
        raise pytest.UsageError("tapmig's pytest plugin is not loaded: install the package "
                                "(pip install -e '.[test]', as ci/setup does)")


def guest_of(item: pytest.Item) -> tuple[str, str] | None:
    """(QEMU, Key) of the shared guest a test hops on, or None."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or "booted" not in callspec.params:
        return None
    return str(callspec.params.get("tapmig_qemu")), str(callspec.params["booted"])


def place_in_row(item: pytest.Item) -> int:
    if item.get_closest_marker("fresh_guest") is not None:
        return 0
    return 2 if item.get_closest_marker("spends_guest") is not None else 1


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest already runs the tests of one shared guest in a row (a session-scoped
    parameter); within each such row, one that boots it afresh goes first and those
    that spend it go last, so that they cost no extra boot."""
    start = 0
    while start < len(items):
        end, guest = start + 1, guest_of(items[start])
        while guest is not None and end < len(items) and guest_of(items[end]) == guest:
            end += 1
        items[start:end] = sorted(items[start:end], key=place_in_row)
        start = end


@pytest.fixture(autouse=True)
def _leak_check(tapmig_leak_check: None) -> None:
    """The plugin's leak check, for every test of this suite."""


@pytest.fixture(autouse=True)
def _one_guest_at_a_time(request: pytest.FixtureRequest) -> None:
    """A test without the shared guest (it boots its own, or times something) runs with
    no shared guest idling beside it; the next user of that guest boots it again."""
    if "booted" not in request.fixturenames:
        for guest in SHARED:
            guest.spend()


@pytest.fixture(scope="session")
def shared_setup(tapmig_capabilities: Capabilities, tapmig_guest: Guest,
                 tapmig_accel: AccelChoice, tapmig_root_with_tun: None) -> Setup:
    """What every shared guest of this QEMU starts from."""
    return setup_for(tapmig_capabilities, tapmig_guest, tapmig_accel,
                     Config(qemu=tapmig_capabilities.qemu).cache)


@pytest.fixture(scope="session")
def booted(request: pytest.FixtureRequest, shared_setup: Setup) -> Iterator[SharedGuest]:
    """The shared guest of the Key the test is parametrized with (tests.support.shared.on),
    on this QEMU; a local Key skips, naming what is missing, on a QEMU without the series."""
    key = Key.resolved(request.param, shared_setup.caps)
    skip_unless_local(shared_setup.caps, key.mode)
    guest = SharedGuest(key, shared_setup, kept(request.config))
    SHARED.append(guest)
    yield guest
    guest.close()
    SHARED.remove(guest)


@pytest.fixture
def hop(booted: SharedGuest, tapmig_keep_record: Callable[[RunRecord], None]) -> Hopper:
    """One hop of the shared guest per call (observers, then Config changes), its record
    kept in --tapmig-records."""

    def run(observers: tuple[Observer[Lab], ...] = (), **changes: Any) -> RunRecord:
        rec = booted.hop(observers, **changes)
        tapmig_keep_record(rec)
        return rec

    return run


@pytest.fixture(scope="session")
def series_qemu(request: pytest.FixtureRequest) -> Capabilities:
    """The first --qemu that speaks the series: the base the variants were built on."""
    said = []
    for qemu in qemus(request.config):
        caps = capabilities_of(qemu)
        if caps.interface != "none":
            return caps
        said.append(f"{qemu}: {caps.verdict()}")
    missing(request.config, "series", "no --qemu speaks the local-migration series: "
            + "; ".join(said))


@pytest.fixture(scope="session")
def qemu_variant(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """The binary of a variant given with --variant NAME=PATH; missing, it skips (it fails
    where the run requires variants)."""
    given: dict[str, str] = {name: path for name, _, path in
                             (v.partition("=") for v in request.config.getoption(
                                 "tapmig_variants"))}

    def find(name: str) -> str:
        if not given.get(name):
            missing(request.config, "variants", f"no --variant {name}=PATH: build it with "
                    f"ci/build-qemu --variants and pass its line (ci/test does)")
        return given[name]

    return find


@pytest.fixture
def lab_config(tapmig_capabilities: Capabilities) -> Config:
    """What `lab` is built for; a test module overrides this fixture to change it."""
    return Config(qemu=tapmig_capabilities.qemu)


@pytest.fixture
def lab(lab_config: Config, tapmig_capabilities: Capabilities, tapmig_guest: Guest,
        tapmig_accel: AccelChoice, tapmig_root_with_tun: None) -> Iterator[Lab]:
    """The bench of one run for driving the scenario's phases or QEMU by hand: the
    namespace with its TAPs (tap0, and tap1 for new-TAP), the run dir and the RAM
    file, no QEMU yet. Torn down as a run tears it down."""
    accel_name, reason = accel.choose(tapmig_accel, tapmig_capabilities.qemu, tapmig_guest,
                                      lab_config.cache, log=lambda _m: None)
    setup = Setup.of(lab_config, tapmig_capabilities, tapmig_guest, accel_name, reason)
    with ExitStack() as stack:
        bench = Lab(lab_config, setup, stack, log=print)
        bench.add_taps()
        yield bench
