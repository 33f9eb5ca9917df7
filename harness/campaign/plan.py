"""What a campaign runs: builds x modes x iterations (or chains), its shard, in what order.

Runs are interleaved (iteration, then mode, then build) so that drift of the host
(thermal state, other load) hits every combination alike instead of biasing the
one that happened to run last.  Every option is checked here, before any run.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.campaign.shards import WHOLE, Shard, check_shard, parse_shard
from harness.errors import UsageError
from harness.qemu.capabilities import resolve_qemu
from harness.report import units
from harness.run.config import Config
from harness.vocabulary import MODES, AccelChoice, Mode, as_mode


@dataclass(frozen=True)
class Plan:
    """What to run; `builds` maps a short label (A, B, ...) to a resolved QEMU path.

    With `hops`, each iteration is one chain of that many migrations after one boot
    (harness.run.chain); `iterations` None then means "until `duration_s` is up". A shard
    takes only its own iterations (harness.campaign.shards).
    """

    builds: dict[str, str]
    modes: tuple[Mode, ...]
    iterations: int | None
    out: Path
    # The options every run shares; each run's qemu, target_qemu, mode and out are its
    # own (config), so the template's are never read.
    run: Config = field(default_factory=lambda: Config(qemu=""))
    shard: Shard = WHOLE
    hops: int | None = None
    duration_s: float | None = None
    # A live update per label: its runs (and chains' first hops) go from builds[label] to
    # targets[label]; a label without one migrates its build to itself.
    targets: dict[str, str] = field(default_factory=dict)

    @property
    def accel(self) -> AccelChoice:
        """The accelerator asked for: the report's metadata names it."""
        return self.run.accel

    def build(self, label: str) -> Config:
        """The options of every run of one build (or pair), with its binaries."""
        return replace(self.run, qemu=self.builds[label], target_qemu=self.targets.get(label))

    def iteration_numbers(self) -> Iterator[int]:
        its = itertools.count(1) if self.iterations is None else range(1, self.iterations + 1)
        return (i for i in its if self.shard.takes(i))

    @property
    def total(self) -> int | None:
        """Runs (or chains) this shard does; None when only the clock ends them."""
        if self.iterations is None:
            return None
        return len(self.builds) * len(self.modes) * sum(1 for _ in self.iteration_numbers())

    def left_after(self, i: int) -> int:
        """This shard's iterations after i: what skipping a combination saves (none
        to count when only the clock ends the campaign)."""
        if self.iterations is None:
            return 0
        return sum(1 for j in self.iteration_numbers() if j > i)

    def order(self) -> Iterator[tuple[int, Mode, str]]:
        """(iteration, mode, build label), interleaved so drift hits every combination alike."""
        for i in self.iteration_numbers():
            for mode in self.modes:
                for label in self.builds:
                    yield i, mode, label

    def manifest(self) -> dict[str, object]:
        """The plan as shards of one campaign share it: everything but --shard and paths."""
        run = self.run
        return {"builds": list(self.builds), "modes": list(self.modes), "queues": run.queues,
                "iterations": self.iterations, "hops": self.hops, "duration_s": self.duration_s,
                "accel": run.accel, "epsilon_ms": run.epsilon_ms, "shards": self.shard.count,
                "vcpus": run.vcpus, "flows": run.flows, "flow_interval": run.flow_interval,
                "tcp": run.tcp,
                "all_queues": run.all_queues, "targets": dict(self.targets),
                "machine": run.machine}


def parse_modes(values: Sequence[str]) -> tuple[Mode, ...]:
    """`--mode new-tap,local` and repeated `--mode` both work; order is kept, repeats dropped."""
    words = dict.fromkeys(m.strip() for v in values for m in v.split(",") if m.strip())
    if not words:
        raise UsageError(f"no mode given; use --mode with one or more of {', '.join(MODES)}")
    return tuple(as_mode(w) for w in words)


def check_iterations(n: int) -> int:
    if n < 1:
        raise UsageError(f"--iterations {n}: give at least 1 run per combination")
    return n


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h' or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--duration {text!r}: give a positive time like 90s, 30m or 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


@dataclass(frozen=True)
class Shape:
    """How many runs or chains: the options that decide it, checked together."""

    iterations: int | None
    hops: int | None = None
    duration_s: float | None = None
    shard: Shard = WHOLE


def shape(iterations: int | None, chain: int | None = None, duration: str | None = None,
          shard: str | None = None) -> Shape:
    """--iterations (runs, or chains per combination), --chain, --duration and --shard."""
    if duration is not None and chain is None:
        raise UsageError("--duration keeps chaining: give it with --chain N (hops per chain)")
    if chain is not None and chain < 1:
        raise UsageError(f"--chain {chain}: give at least 1 hop per chain")
    if iterations is None and chain is None:
        raise UsageError("give --iterations N (runs per build and mode), or --chain N")
    if iterations is not None:
        check_iterations(iterations)
    elif duration is None:
        iterations = 1  # one chain per combination
    part = WHOLE if shard is None else parse_shard(shard)
    check_shard(part, iterations)
    return Shape(iterations, chain, None if duration is None else parse_duration(duration),
                 part)


def describe(plan: Plan) -> str:
    """The one line that says how much work this is, before it starts."""
    size = f"{len(plan.modes)} modes x {len(plan.builds)} builds"
    where = "" if plan.shard == WHOLE else f", shard {plan.shard}"
    if plan.hops is None:
        return f"{plan.total} runs: {plan.iterations} iterations x {size}, interleaved{where}"
    chains = "chains until the time is up" if plan.total is None else f"{plan.total} chains"
    limit = "" if plan.duration_s is None else f", for at most {units.duration(plan.duration_s)}"
    return f"{chains} of {plan.hops} hops ({size}, interleaved{where}{limit})"


def resolve_builds(qemus: Sequence[str]) -> dict[str, str]:
    """Every binary checked before the first run; labels A, B, ... keep progress lines short."""
    paths = [resolve_qemu(q) for q in qemus]
    for path in paths:
        if paths.count(path) > 1:
            raise UsageError(f"--qemu {path} is given twice; each build once, please")
    labels = [string.ascii_uppercase[k] if k < 26 else str(k + 1) for k in range(len(paths))]
    return dict(zip(labels, paths, strict=True))


def resolve_pairs(qemus: Sequence[str], pairs: Sequence[str], every: bool
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """(builds, targets): --qemu alone, --pair A:B (repeatable), or --pairs all, every
    ordered pair of two different --qemu. A pair's label is "A->B" of its binaries' labels."""
    if every and len(qemus) < 2:
        raise UsageError("--pairs all needs two --qemu or more")
    if not qemus and not pairs:
        raise UsageError("give --qemu PATH (repeatable) or --pair A:B")
    if pairs and (qemus or every):
        raise UsageError("give --qemu builds (and --pairs all) or --pair A:B pairs, not both")
    wanted: list[tuple[str, str]] = []
    for text in pairs:
        src, sep, dst = text.partition(":")
        if not sep or not src or not dst:
            raise UsageError(f"--pair {text!r}: write SOURCE:TARGET, two QEMU binaries")
        wanted.append((resolve_qemu(src), resolve_qemu(dst)))
    if not pairs:
        builds = resolve_builds(qemus)
        if not every:
            return builds, {}
        wanted = [(a, b) for a in builds.values() for b in builds.values() if a != b]
    paths = list(dict.fromkeys(p for pair in wanted for p in pair))
    name = {path: label for label, path in resolve_builds(paths).items()}
    builds, targets = {}, {}
    for src, dst in dict.fromkeys(wanted):
        label = f"{name[src]}->{name[dst]}"
        builds[label], targets[label] = src, dst
    return builds, targets


def config(plan: Plan, mode: Mode, label: str, name: str) -> Config:
    """One run's Config: the plan's options for this build and mode, its logs under runs/."""
    return replace(plan.build(label), mode=mode, out=plan.out / "runs" / name)
