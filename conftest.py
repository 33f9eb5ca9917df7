"""tapmig's own suite on top of its pytest plugin (harness.testing.plugin, loaded through
the `pytest11` entry point): the leak check on for every test, and the `lab` bench.

Other projects get the plugin's fixtures without the autouse leak check; here every
test must leave nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from harness.guest.spec import Guest
from harness.qemu import accel
from harness.qemu.capabilities import Capabilities
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.setup import Setup
from harness.vocabulary import AccelChoice

# tapmig_installed: this checkout's wheel in a fresh venv, for tests of the package.
pytest_plugins = ["tests.support.wheel"]


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("tapmig"):
        raise pytest.UsageError("tapmig's pytest plugin is not loaded: install the package "
                                "(pip install -e '.[test]', as ci/setup does)")


@pytest.fixture(autouse=True)
def _leak_check(tapmig_leak_check: None) -> None:
    """The plugin's leak check, for every test of this suite."""


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
    setup = Setup(tapmig_capabilities, tapmig_guest, accel_name, reason)
    with ExitStack() as stack:
        bench = Lab(lab_config, setup, stack, log=print)
        bench.add_taps()
        yield bench
