"""A campaign's preflight, per build and before any run: a campaign that cannot work
fails in one line up front, not once in every run.
"""

from __future__ import annotations

from dataclasses import replace

from harness.campaign.plan import Plan
from harness.run.setup import Setup
from harness.run.setup import preflight as preflight_build
from harness.vocabulary import Log


def preflight(plan: Plan, log: Log) -> dict[str, Setup]:
    """Each build settled once, up front, by the preflight of `tapmig run` (orphans of
    killed runs reaped too), so each run only migrates: the capabilities read here are
    the only ones the campaign reads.

    Also prints which build each label stands for.  An unusable host, a bad
    --queues or `--accel kvm` without KVM fails here in one line instead of in
    every run; a variant a build lacks is left to its first run to record.
    """
    setups = {}
    guest = plan.run.guest
    for label in plan.builds:
        cfg = replace(plan.build(label), guest=guest)
        setup = setups[label] = preflight_build(cfg, log, plan.modes)
        guest = setup.guest  # built (or found) once, for every build
        to = (f" -> {cfg.target_qemu} (QEMU {setup.target_caps.version})"
              if cfg.target_qemu else "")
        log(f"{label} = {cfg.qemu} (QEMU {setup.caps.version}){to}; "
            f"{setup.accel}: {setup.accel_reason}")
        for note in setup.machine.notes:
            log(f"note: {note}")
    return setups
