"""What a run needs settled before its Lab exists: capabilities, guest, accelerator.

Settled once, by `preflight`, and handed to every run of the same QEMU: `tapmig run`
settles it once, and a campaign once per build, instead of once more per run. The
accelerator is chosen here and nowhere else, and each variant checked once: the
Setup keeps the verdicts, which its runs look up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from harness.errors import Unsupported, UsageError
from harness.guest.embedded import build_embedded
from harness.guest.spec import Guest
from harness.host.check import check_host
from harness.host.reaper import reap_orphans
from harness.qemu import accel
from harness.qemu.capabilities import Capabilities, capabilities_of
from harness.qemu.side import Machine, check_pair, choose_machine
from harness.run.config import Config
from harness.vocabulary import MODES, Accel, Log, Mode

MAX_FLOWS = 64


@dataclass(frozen=True)
class Setup:
    """The settled facts a run starts from: each binary's capabilities, the guest, the
    accelerator, and the machine both sides run."""

    caps: Capabilities  # the boot's binary (Config.qemu)
    guest: Guest
    accel: Accel
    accel_reason: str
    machine: Machine
    target_caps: Capabilities  # Config.target_qemu's, else the same as caps
    # The preflight's verdict on each variant it checked (see variant()): None, or what
    # these QEMUs lack. Derived from the capabilities, so no part of comparing Setups.
    checked: Mapping[Config, Unsupported | None] = field(default_factory=dict,
                                                          compare=False)

    @classmethod
    def of(cls, cfg: Config, caps: Capabilities, guest: Guest, accel_name: Accel,
           reason: str, checked: Mapping[Config, Unsupported | None] | None = None) -> Setup:
        """The Setup of these settled facts, the target's capabilities and the machine
        both sides run chosen here."""
        target = capabilities_of(cfg.target_qemu) if cfg.target_qemu else caps
        return cls(caps, guest, accel_name, reason,
                   choose_machine(caps, target, accel_name, cfg.machine), target,
                   checked or {})


def check_traffic(cfg: Config) -> None:
    """The traffic options, refused in one line before anything starts."""
    if not 1 <= cfg.vcpus <= 64:
        raise UsageError(f"--vcpus {cfg.vcpus} is out of range; use 1 to 64")
    if not 0 <= cfg.flows <= MAX_FLOWS:
        raise UsageError(f"--flows {cfg.flows} is out of range; use 0 (none) to {MAX_FLOWS}")
    if cfg.flows and not 0.0002 <= cfg.flow_interval / cfg.flows <= 10:
        raise UsageError(f"flow interval {cfg.flow_interval:g} s for {cfg.flows} flows is "
                         "out of range; keep all flows together under 5000 requests/s")


def variant(cfg: Config) -> Config:
    """cfg as check_variant sees it: what it reads, the rest at Config's defaults. Runs
    of one variant on the same QEMUs get one verdict, which a Setup keeps."""
    return Config(cfg.qemu, cfg.mode, target_qemu=cfg.target_qemu, vhost=cfg.vhost,
                  queues=cfg.queues, vcpus=cfg.vcpus, flows=cfg.flows,
                  flow_interval=cfg.flow_interval)


def check_variant(cfg: Config, caps: Capabilities, target: Capabilities | None = None) -> None:
    """The variant asked for, refused in one line if these QEMUs cannot run it."""
    cfg = variant(cfg)  # nothing else is read, so the verdict holds for the whole variant
    if cfg.mode not in MODES:
        raise UsageError(f"unknown mode {cfg.mode!r}; use one of {', '.join(MODES)}")
    if cfg.queues < 1 or cfg.queues > 16:
        raise UsageError(f"--queues {cfg.queues} is out of range; use 1 to 16")
    target = target or caps
    for c in dict.fromkeys((caps, target)):
        if not c.x_ignore_shared:
            raise Unsupported(f"{c.qemu} lacks the x-ignore-shared migration capability")
    if target is caps and cfg.mode == "local" and (missing := caps.missing_for_local()):
        raise Unsupported(f"{caps.qemu} ({caps.version}) cannot do local migration: "
                          f"missing {', '.join(missing)}")
    check_pair(cfg.mode, caps, target)
    check_traffic(cfg)
    if cfg.vhost and caps.vhost_problem:
        raise Unsupported(f"vhost=on needs vhost-net: {caps.vhost_problem}")


def check(cfg: Config, modes: Sequence[Mode] | None = None) -> dict[Config, Unsupported | None]:
    """Everything that can be refused before any resource exists, in one line: the
    variant, the machine both sides run, the host. Returns each variant's verdict.

    With modes (a campaign's), the variant of each is checked; one these QEMUs lack
    is left to its first run to record, while bad input is refused all the same.
    """
    caps = capabilities_of(cfg.qemu)
    target = capabilities_of(cfg.target_qemu) if cfg.target_qemu else caps
    checked: dict[Config, Unsupported | None] = {}
    for mode in (cfg.mode,) if modes is None else modes:
        each = variant(replace(cfg, mode=mode))
        try:
            check_variant(each, caps, target)
        except Unsupported as exc:
            if modes is None:
                raise
            checked[each] = exc
        else:
            checked[each] = None
    choose_machine(caps, target, "tcg", cfg.machine)  # a type one side lacks: refused now
    check_host()
    return checked


def preflight(cfg: Config, log: Log, modes: Sequence[Mode] | None = None,
              guest: Callable[[], Guest] | None = None) -> Setup:
    """The one preflight of `tapmig run`, of each build of a campaign, and of a run
    given no Setup: the checks, the orphans of killed runs reaped, the guest (`guest`
    resolves it, else cfg's or the embedded one, built or cached) and the accelerator
    chosen (its KVM probe boot cached too). The guest comes after the checks, so a
    refused run downloads nothing."""
    checked = check(cfg, modes)
    reap_orphans()
    chosen = guest() if guest is not None else cfg.guest or build_embedded(cfg.cache, log)
    caps = capabilities_of(cfg.qemu)
    name, reason = accel.choose(cfg.accel, caps.qemu, chosen, cfg.cache, log)
    return Setup.of(cfg, caps, chosen, name, reason, checked)


def run_setup(cfg: Config, log: Log, setup: Setup | None = None) -> Setup:
    """The Setup a run starts from: the one given, which refuses this run's variant if
    its preflight found these QEMUs lacking (a variant it did not check is checked
    here, against its capabilities: no QEMU started); else one settled here."""
    if setup is None:
        return preflight(cfg, log)
    key = variant(cfg)
    if key not in setup.checked:
        target = capabilities_of(cfg.target_qemu) if cfg.target_qemu else setup.caps
        check_variant(cfg, setup.caps, target)
    elif (refused := setup.checked[key]) is not None:
        raise refused.with_traceback(None)  # one exception per variant, each raise afresh
    return setup
