"""The `tapmig` command line: its options, its help, and the exit codes it documents.

Each leaf command sets `handler`, the key harness.cli.main dispatches on, so this module
needs none of the machinery the commands run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

import harness
from harness.cache import default_cache
from harness.vocabulary import ACCEL_CHOICES, MODES, PROBERS, TCP_PATTERNS

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _out_dir(value: str) -> Path:
    return Path(value)


GUEST_HELP = ("guest to boot: a name from assets.toml (default: embedded; see `tapmig assets "
              "list`) or kernel:PATH[,initrd:PATH]")


DESCRIPTION = """\
tapmig proves that a virtio-net guest keeps its network through a live migration
between two QEMUs, and measures to the millisecond how long the network is gone:
real QEMU, real multiqueue TAPs in a private network namespace, a real guest.
Run it as root (or as a normal user where user namespaces and /dev/net/tun allow)."""

EPILOG = """\
exit codes:
  0    success (compare: no regression)
  1    a run or a check failed (compare: REGRESSED); the reason is printed
  2    bad input, an unusable host, a variant this QEMU cannot run, or reports
       that are not comparable: one line saying what to do, before anything runs
  3    inconclusive: the host was too noisy to judge the outage (the record names the
       noise figure and the fix); measure: too many such runs to give a verdict
  70   an internal error: a bug in tapmig (an invariant of its own broke); report it
  130  interrupted; everything tapmig started was cleaned up first
  141  the output pipe closed early (e.g. `tapmig analyze LOG | head`)

Start with `tapmig run --qemu /usr/bin/qemu-system-x86_64`; `tapmig COMMAND --help`
describes each command."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the description and the exit-code table."""


def _common() -> argparse.ArgumentParser:
    """Options every subcommand also accepts after its name: `tapmig run --cache DIR`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", type=Path, default=argparse.SUPPRESS,
                        help="cache directory (default: $TAPMIG_CACHE or ~/.cache/tapmig)")
    return common


def _accel(p: argparse.ArgumentParser) -> None:
    # CI sets TAPMIG_ACCEL=kvm to require KVM; pytest's --accel reads it too.
    p.add_argument("--accel", choices=ACCEL_CHOICES,
                   default=os.environ.get("TAPMIG_ACCEL", "auto"),
                   help="default: $TAPMIG_ACCEL, else auto")


def _vcpus(text: str) -> int | str:
    """--vcpus N, or "queues": as many vCPUs as queue pairs, so that every queue is live."""
    if text == "queues":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number or 'queues'") from None


def _traffic(p: argparse.ArgumentParser) -> None:
    """What crosses the migration besides ICMP (harness.run.hop_probes)."""
    p.add_argument("--vcpus", type=_vcpus, default=1,
                   help="guest vCPUs, or 'queues' for one per queue pair: the guest uses "
                        "min(queue pairs, vCPUs) queue pairs (default 1)")
    p.add_argument("--flows", type=int, default=8,
                   help="UDP flows on distinct ports, spread over the TAP's queues; each must "
                        "recover (default 8; 0: none, and no per-queue check)")
    p.add_argument("--flow-interval", type=float, default=40.0, metavar="MS",
                   help="each flow's request interval in ms (default 40)")
    p.add_argument("--tcp", choices=TCP_PATTERNS, default="sparse",
                   help="a TCP connection across the migration: a message every 1 ms "
                        "(continuous) or 50 ms (sparse, default), or off")
    p.add_argument("--all-queues", action=argparse.BooleanOptionalAction, default=True,
                   help="after the hop the guest enables every queue pair of its device, and "
                        "(with flows) each must carry traffic on the target (default on)")


def _firmware(text: str) -> tuple[str, ...]:
    """--firmware DIR[:DIR...]: each an existing directory."""
    dirs = tuple(d for d in text.split(":") if d)
    bad = [d for d in dirs if not os.path.isdir(d)]
    if not dirs or bad:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give existing directories separated by ':'"
            + (f" ({bad[0]} is none)" if bad else ""))
    return dirs


def _sides(p: argparse.ArgumentParser) -> None:
    """What both sides of a live update share, and what each has of its own."""
    p.add_argument("--machine", metavar="TYPE", default=None,
                   help="machine type for both sides (default: q35 for one binary; for two, "
                        "the newest pc-q35-X.Y both offer)")
    p.add_argument("--firmware", type=_firmware, default=(), metavar="DIR[:DIR]",
                   help="firmware dirs (-L) of --qemu (default: Debian's)")
    p.add_argument("--target-firmware", type=_firmware, default=(), metavar="DIR[:DIR]",
                   help="firmware dirs (-L) of --target-qemu (default: Debian's)")


def _add_run(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser("run", parents=[common], help="run one migration and print its numbers")
    r.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary to test")
    r.add_argument("--target-qemu", metavar="PATH", default=None,
                   help="a live update: the target runs this other binary (default: --qemu)")
    _sides(r)
    _accel(r)
    r.add_argument("--mode", choices=MODES, default="new-tap")
    r.add_argument("--vhost", action="store_true", help="vhost=on (needs /dev/vhost-net)")
    r.add_argument("--queues", type=int, default=4)
    r.add_argument("--ram", type=int, default=256, help="guest RAM in MiB")
    r.add_argument("--out", type=_out_dir, help="write record.json and logs here")
    r.add_argument("--epsilon-ms", type=float, default=None,
                   help="slack around [STOP, RESUME] for the blackout "
                        "(default 50 under KVM, 150 under TCG)")
    r.add_argument("--boot-timeout", type=float, default=60.0)
    r.add_argument("--prober", choices=PROBERS, default="tapmig",
                   help="tapmig: 1 ms pace through the outage (default); iputils: ping -D -O")
    r.add_argument("--guest", help=GUEST_HELP)
    _traffic(r)
    r.add_argument("--json", action="store_true", help="print the run record as JSON")
    r.set_defaults(handler="run")


def _add_measure(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    m = sub.add_parser("measure", parents=[common],
                       help="repeat migrations over builds and modes; write a report")
    m.add_argument("--qemu", action="append", default=[],
                   help="QEMU binary to test; repeat to compare builds")
    m.add_argument("--pair", action="append", default=[], metavar="A:B",
                   help="a live update from binary A to binary B (chains alternate A->B and "
                        "B->A); repeat, or --pairs all for every ordered pair of the --qemu")
    m.add_argument("--pairs", choices=("all",), default=None,
                   help="all: every ordered pair of two different --qemu binaries")
    _sides(m)
    m.add_argument("--mode", action="append", required=True,
                   help=f"comma-separated, or repeated: {','.join(MODES)}")
    m.add_argument("--iterations", type=int, default=None,
                   help="runs per build and mode; with --chain, chains (default 1)")
    m.add_argument("--chain", type=int, metavar="N", default=None,
                   help="boot once, then migrate the guest back and forth N times per chain")
    m.add_argument("--duration", metavar="TIME", default=None,
                   help="with --chain: keep chaining until TIME (90s, 30m, 2h) is up")
    m.add_argument("--shard", metavar="I/N", default=None,
                   help="run only shard I of N (iterations I, I+N, ...), e.g. in a CI matrix")
    m.add_argument("--epsilon-ms", type=float, default=None,
                   help="slack around [STOP, RESUME] for the blackout (default 50 under KVM, "
                        "150 under TCG); a soak for leaks on a busy host may want more")
    m.add_argument("--out", type=_out_dir, required=True,
                   help="new directory for report.{json,md,html}, records/ and runs/")
    _accel(m)
    m.add_argument("--queues", type=int, default=4)
    m.add_argument("--guest", help=GUEST_HELP)
    _traffic(m)
    m.set_defaults(handler="measure")


def _add_compare(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser("compare", parents=[common],
                       help="regression verdict between two report.json files")
    c.add_argument("--baseline", type=Path, required=True, help="earlier report.json")
    c.add_argument("--current", type=Path, required=True, help="new report.json")
    c.add_argument("--threshold", default="10%",
                   help="allowed slowdown of the median, '10%%' or '0.1' (default 10%%)")
    c.add_argument("--allow-mismatch", action="store_true",
                   help="compare even if accelerator, host kernel, CPU model, guest, prober, "
                        "probe interval or queue layout differ (named in the output)")
    c.add_argument("--json", action="store_true", help="print the verdict as JSON")
    c.set_defaults(handler="compare")


def _add_small(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """The commands with a handful of options each."""
    a = sub.add_parser("analyze", parents=[common],
                       help="analyse a saved `ping -D -O` log, as JSON")
    a.add_argument("ping_log", type=Path, help="the log, or - for stdin")
    a.add_argument("--window", help="STOP,RESUME unix timestamps: pick the hole overlapping them")
    a.set_defaults(handler="analyze")
    pr = sub.add_parser("capabilities", parents=[common], help="what this QEMU can do: which "
                        "interface of the series it speaks, vhost...")
    pr.add_argument("--qemu", default="qemu-system-x86_64")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(handler="capabilities")
    b = sub.add_parser("bench", parents=[common],
                       help="print speed and memory figures against their targets")
    b.add_argument("--qemu", default="qemu-system-x86_64")
    b.add_argument("--mode", default="new-tap", help="comma-separated: new-tap,local")
    b.add_argument("--iterations", type=int, default=3)
    b.add_argument("--chain", type=int, metavar="N", default=None,
                   help="instead: one chain of N hops per mode, against the hop targets")
    b.add_argument("--out", type=_out_dir, default=None,
                   help="with --chain: keep its records and report here")
    b.add_argument("--trace-cost", action="store_true",
                   help="with --chain N: what tracing the downtime checkpoints costs: "
                        "--iterations rounds of an N-hop chain traced and one untraced")
    b.add_argument("--epsilon-ms", type=float, default=None,
                   help="with --chain: slack around [STOP, RESUME], as for measure")
    _traffic(b)  # with --chain: the traffic across each hop, as for measure
    _accel(b)
    b.set_defaults(handler="bench")
    rp = sub.add_parser("report", parents=[common], help="merge the records of measure "
                        "directories (e.g. CI shards) into one report")
    rp.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="measure --out directory")
    rp.add_argument("--out", type=_out_dir, required=True,
                    help="where to write report.{json,md,html}")
    rp.add_argument("--allow-mismatch", action="store_true",
                    help="merge even if accelerator, host kernel, CPU model, guest or QEMU "
                         "differ between the directories (noted in the report)")
    rp.set_defaults(handler="report")
    g = sub.add_parser("guest", help="the embedded guest")
    gs = g.add_subparsers(dest="guest_command", required=True)
    gs.add_parser("build", parents=[common], help="build (or find cached) the embedded "
                  "guest").set_defaults(handler="guest build")


def _add_assets(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("assets", help="the downloadable guest files of assets.toml")
    ss = s.add_subparsers(dest="assets_command", required=True)
    sl = ss.add_parser("list", parents=[common], help="every asset, and whether it is cached")
    sl.add_argument("--json", action="store_true", help="print the list as JSON")
    sl.set_defaults(handler="assets list")
    sf = ss.add_parser("fetch", parents=[common],
                       help="download one asset into the cache and verify it")
    sf.add_argument("name", help="an asset name from `tapmig assets list`")
    sf.add_argument("--offline", action="store_true",
                    help="never use the network: fail unless it is cached (or TAPMIG_OFFLINE=1)")
    sf.set_defaults(handler="assets fetch")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tapmig", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"tapmig {harness.__version__}")
    p.add_argument("--cache", type=Path, default=default_cache(),
                   help="cache directory (default: $TAPMIG_CACHE or ~/.cache/tapmig)")
    sub = p.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    common = _common()
    for add in (_add_run, _add_measure, _add_compare, _add_small, _add_assets):
        add(sub, common)
    return p
