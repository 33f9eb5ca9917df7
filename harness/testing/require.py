"""The required mode: what a runner is meant to have fails the run when missing.

Without it a missing prerequisite skips the tests that need it, which is right on
a developer's laptop and wrong on a CI runner: a broken runner (no root, a guest
that cannot be built, no QEMU with the series) would end green with nothing
tested. `--tapmig-require=guest,root,series` (or $TAPMIG_REQUIRE) turns each named
one into a failure that names it, checked once before any test runs:

    guest   the embedded guest builds (or is cached)
    root    root with network namespaces, nsenter and a usable /dev/net/tun
    series  at least one --tapmig-qemu speaks the local-migration series (v12 or final)
    variants  the QEMU variants a suite asks for by name were given to it (tapmig's own
            suite: --variant NAME=PATH, from ci/build-qemu --variants); checked by the
            fixture that asks, as only the suite knows their names

What is really absent on a host (vhost-net, or the series on Debian's QEMU while
another --tapmig-qemu has it) stays a skip that names it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from typing import Literal, NoReturn, get_args

import pytest

from harness.cache import default_cache
from harness.errors import TapmigError
from harness.guest.embedded import build_embedded
from harness.host import rootless
from harness.host.devices import tun_problem
from harness.qemu.capabilities import query_capabilities

Need = Literal["guest", "root", "series", "variants"]
NEEDS: tuple[Need, ...] = get_args(Need)
ENV = "TAPMIG_REQUIRE"
REQUIRED = pytest.StashKey[frozenset[Need]]()


def parse(text: str) -> frozenset[Need]:
    """"guest,root" -> {"guest", "root"}; an unknown word is a usage error."""
    words = {w.strip() for w in text.split(",") if w.strip()}
    unknown = sorted(words - set(NEEDS))
    if unknown:
        raise pytest.UsageError(f"--tapmig-require: unknown {', '.join(map(repr, unknown))}; "
                                f"use a comma-separated list of {', '.join(NEEDS)}")
    return frozenset(w for w in NEEDS if w in words)


def required(config: pytest.Config) -> frozenset[Need]:
    """What this run requires (set by the plugin's pytest_configure)."""
    return config.stash.get(REQUIRED, frozenset())


def missing(config: pytest.Config, need: Need, why: str) -> NoReturn:
    """Skip naming why, or, where the run requires `need`, fail naming it."""
    if need in required(config):
        pytest.fail(f"required {need} is missing (--tapmig-require): {why}", pytrace=False)
    pytest.skip(why)


def host_problem(need_tun: bool) -> str | None:
    """Why this host cannot give a test namespaces (and TAPs), or None."""
    if not rootless.privileged():
        return f"needs root for network namespaces and TAPs (running as uid {os.geteuid()})"
    if shutil.which("nsenter") is None:
        return "nsenter (util-linux) is missing: it runs programs inside the namespace"
    return tun_problem() if need_tun else None


def guest_problem() -> str | None:
    """Why the embedded guest cannot be built here, or None (it is then cached)."""
    try:
        build_embedded(default_cache())
    except (TapmigError, OSError) as exc:  # an unwritable cache is a plain OSError
        return f"cannot build the embedded guest here: {exc}"
    return None


def series_problem(qemus: Iterable[str]) -> str | None:
    """None if one of the QEMUs speaks the series; else what each one lacks."""
    said = []
    for qemu in qemus:
        try:
            caps = query_capabilities(qemu)
        except TapmigError as exc:
            said.append(f"{qemu}: {exc}")
            continue
        if caps.interface != "none":
            return None
        said.append(f"{qemu} ({caps.version}): {caps.verdict()}")
    return "no --tapmig-qemu has the local-migration series: " + "; ".join(said)


def problems(needs: frozenset[Need], qemus: Iterable[str]) -> list[str]:
    """Each required prerequisite this host lacks, named."""
    checks: dict[Need, Callable[[], str | None]] = {
        "root": lambda: host_problem(need_tun=True),
        "guest": guest_problem,
        "series": lambda: series_problem(qemus),
        "variants": lambda: None,
    }
    return [f"{need}: {why}" for need in NEEDS if need in needs
            if (why := checks[need]()) is not None]
