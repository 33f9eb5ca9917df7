"""A campaign's preflight, per build and before any run: a campaign that cannot work
fails in one line up front, not once in every run.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from harness.campaign.plan import Plan
from harness.errors import Unsupported
from harness.guest.embedded import build_embedded
from harness.host.check import check_host
from harness.qemu import accel
from harness.qemu.capabilities import capabilities_of
from harness.run.setup import Setup, check_variant
from harness.vocabulary import Log


def preflight(plan: Plan, log: Log) -> dict[str, Setup]:
    """Host, guest and accelerator settled once per build, up front, so each run only
    migrates: the capabilities read here are the only ones the campaign reads.

    Also prints which build each label stands for.  An unusable host, a bad
    --queues or `--accel kvm` without KVM fails here in one line instead of in
    every run; a variant a build lacks is left to its first run to record.
    """
    check_host()
    guest = plan.run.guest or build_embedded(plan.run.cache, log)
    setups = {}
    for label, qemu in plan.builds.items():
        cfg = plan.build(label)
        caps = capabilities_of(qemu)
        target = plan.targets.get(label)
        for mode in plan.modes:
            with contextlib.suppress(Unsupported):
                check_variant(replace(cfg, mode=mode), caps,
                              capabilities_of(target) if target else None)
        name, reason = accel.choose(cfg.accel, qemu, guest, cfg.cache, log)
        to = f" -> {target} (QEMU {capabilities_of(target).version})" if target else ""
        log(f"{label} = {qemu} (QEMU {caps.version}){to}; {name}: {reason}")
        setups[label] = Setup.of(cfg, caps, guest, name, reason)
        for note in setups[label].machine.notes:
            log(f"note: {note}")
    return setups
