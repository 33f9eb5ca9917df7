"""The `tapmig` command: dispatch, one-line errors, and exit codes from the error classes
(harness.errors; `tapmig --help` lists them)."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from harness.analysis import ping
from harness.campaign import loop, plan, store
from harness.campaign.bench import bench, bench_chain
from harness.campaign.loop import stderr_log as _log
from harness.campaign.preflight import preflight as preflight_campaign
from harness.campaign.trace_cost import bench_trace
from harness.cli.parser import parser
from harness.errors import (
    EXIT_INTERRUPTED,
    InternalError,
    TapmigError,
    Unsupported,
    UsageError,
)
from harness.guest import assets
from harness.guest.embedded import build_embedded, resolve
from harness.host import rootless
from harness.proc import fix_mmap_threshold
from harness.qemu.capabilities import query_capabilities
from harness.report.compare import compare, parse_threshold
from harness.report.render import render_markdown
from harness.report.summary import load_report
from harness.report.table import format_record
from harness.run.config import Config, resolve_vcpus
from harness.run.scenario import run
from harness.run.setup import check, preflight
from harness.vocabulary import as_accel_choice, as_mode


def _guest_spec(value: str | None) -> tuple[assets.Manifest, assets.GuestSpec]:
    """--guest, checked before anything runs; without it, the manifest's default guest."""
    manifest = assets.load_manifest()
    return manifest, assets.parse_guest(value or manifest.default, manifest)


def cmd_run(args: argparse.Namespace) -> int:
    manifest, spec = _guest_spec(args.guest)
    cfg = Config(qemu=args.qemu, mode=args.mode, accel=args.accel, vhost=args.vhost,
                 target_qemu=args.target_qemu, machine=args.machine, firmware=args.firmware,
                 target_firmware=args.target_firmware,
                 queues=args.queues, vcpus=resolve_vcpus(args.vcpus, args.queues),
                 flows=args.flows, flow_interval=args.flow_interval / 1000, tcp=args.tcp,
                 all_queues=args.all_queues, ram_mib=args.ram,
                 out=args.out, cache=args.cache,
                 epsilon_ms=args.epsilon_ms, boot_timeout=args.boot_timeout,
                 prober=args.prober)
    # Bad input, an unusable host, and --accel kvm on a host whose KVM cannot boot the
    # guest: one line, exit 2, before any table. The guest is resolved (a download,
    # maybe) once nothing was refused; the run starts from this Setup.
    setup = preflight(cfg, _log, guest=lambda: resolve(spec, manifest, args.cache, _log))
    rec = run(cfg, log=_log, setup=setup)
    print(json.dumps(rec.to_json(), indent=2) if args.json else format_record(rec))
    if rec.status != "ok":
        print_error(rec.error or "unknown failure")
    if rec.exit_code is None:
        raise InternalError("a run's record came back without its exit code")
    return rec.exit_code


def print_error(message: str) -> None:
    """The first line says what to do; the rest (console tails ...) is indented detail."""
    first, _, detail = message.partition("\n")
    print(f"tapmig: error: {first}", file=sys.stderr)
    if detail:
        print("  " + detail.replace("\n", "\n  "), file=sys.stderr)


def parse_window(text: str) -> tuple[float, float]:
    """STOP,RESUME as two finite unix timestamps, STOP first."""
    usage = "give STOP,RESUME as two unix timestamps, e.g. 1795650270.89,1795650270.95"
    try:
        stop, resume = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise UsageError(f"--window {text!r}: {usage}") from exc
    if not (math.isfinite(stop) and math.isfinite(resume)):
        raise UsageError(f"--window {text!r}: not a number; {usage}")
    if stop > resume:
        raise UsageError(f"--window {text!r}: STOP is after RESUME; {usage}")
    return stop, resume


def cmd_analyze(args: argparse.Namespace) -> int:
    """`-` is stdin, so a log can come straight out of a pipe or an archive."""
    window = parse_window(args.window) if args.window else None
    path = Path("/dev/stdin") if str(args.ping_log) == "-" else args.ping_log
    result = ping.analyze_file(path, window)
    if window and result.blackout_ms is None:
        raise UsageError(f"--window {args.window}: no gap between replies in {args.ping_log} "
                         "overlaps it; pass the run's stop_ts,resume_ts from its record.json")
    print(json.dumps(result.to_json(), indent=2))
    return 0


def cmd_capabilities(args: argparse.Namespace) -> int:
    caps = query_capabilities(args.qemu)
    if args.json:
        print(json.dumps(caps.to_json(), indent=2))
        return 0
    yes = {True: "yes", False: "NO"}
    final = caps.tap_local_option or "x-local-migration-supported"
    rows = [("migration parameter 'local'", yes[caps.local]),
            ("v12 tap option 'incoming-fds'", yes[caps.incoming_fds]),
            ("v12 virtio-net 'local-migration'", yes[caps.local_migration]),
            (f"final tap option '{final}'", yes[caps.tap_local_option is not None]),
            ("capability 'x-ignore-shared'", yes[caps.x_ignore_shared]),
            ("vhost-net on this host",
             "yes" if caps.vhost_problem is None else f"NO: {caps.vhost_problem}"),
            ("interface of the series", caps.verdict())]
    width = max(len(k) for k, _ in rows) + 1
    print(f"QEMU {caps.version} ({caps.qemu})")
    for label, value in rows:
        print(f"  {label + ':':<{width}}  {value}")
    return 0


def cmd_guest_build(args: argparse.Namespace) -> int:
    guest = build_embedded(args.cache, log=_log)
    print(f"{guest.name}\n  kernel {guest.kernel}\n  initrd {guest.initrd}")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    shape = plan.shape(args.iterations, args.chain, args.duration, args.shard)
    modes = plan.parse_modes(args.mode)
    manifest, spec = _guest_spec(args.guest)
    store.prepare_out(args.out)
    builds, targets = plan.resolve_pairs(args.qemu, args.pair, args.pairs == "all")
    run_options = Config(qemu="", machine=args.machine, accel=args.accel, queues=args.queues,
                         vcpus=resolve_vcpus(args.vcpus, args.queues),
                         flows=args.flows, flow_interval=args.flow_interval / 1000,
                         tcp=args.tcp, all_queues=args.all_queues,
                         guest=resolve(spec, manifest, args.cache, _log), cache=args.cache,
                         epsilon_ms=args.epsilon_ms)
    campaign = plan.Plan(builds=builds, targets=targets, modes=modes,
                         iterations=shape.iterations, out=args.out, run=run_options,
                         shard=shape.shard, hops=shape.hops, duration_s=shape.duration_s)
    setups = preflight_campaign(campaign, _log)
    _log(plan.describe(campaign))
    outcome = loop.run_campaign(campaign, setups)
    print(render_markdown(outcome.report), end="")
    for ext, path in outcome.paths.items():
        _log(f"report.{ext}: {path}")
    if outcome.interrupted:
        _log(f"interrupted: PARTIAL report of the {len(outcome.records)} "
                           f"finished runs written; records in {args.out / 'records'}")
    elif outcome.exit_code == Unsupported.exit_code:
        _log("error: no combination is supported by the given builds; "
                           "nothing was measured")
    elif outcome.inconclusive is not None:
        _log(f"inconclusive: {outcome.inconclusive}")
    return outcome.exit_code


def _assets_json(manifest: assets.Manifest, cache: Path) -> dict[str, object]:
    listed = []
    for asset in manifest.assets.values():
        path = None if asset.url is None else assets.asset_path(asset, cache)
        listed.append({"name": asset.name, "kind": asset.kind, "description": asset.description,
                       "url": asset.url, "sha256": asset.sha256,
                       "path": None if path is None else str(path),
                       "cached": None if path is None else path.exists()})
    return {"manifest": manifest.path, "default": manifest.default,
            "guests": manifest.guests, "assets": listed}


def cmd_assets_list(args: argparse.Namespace) -> int:
    """Each asset with where its file is (or goes, for an offline user to put it there)."""
    manifest = assets.load_manifest()
    cache = assets.cache_dir(args.cache)
    if args.json:
        print(json.dumps(_assets_json(manifest, cache), indent=2))
        return 0
    for asset in manifest.assets.values():
        print(f"{asset.name}  ({asset.kind})  {asset.description}")
        if asset.url is None:
            print("  built locally, never downloaded")
            continue
        path = assets.asset_path(asset, cache)
        print(f"  {'cached' if path.exists() else 'missing'}: {path}\n  from {asset.url}")
    print(f"guests: {', '.join(manifest.guests)} (default {manifest.default}), "
          "kernel:PATH[,initrd:PATH]")
    return 0


def cmd_assets_fetch(args: argparse.Namespace) -> int:
    asset = assets.load_manifest().asset(args.name)
    print(assets.fetch(asset, assets.cache_dir(args.cache), offline=args.offline))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    threshold = parse_threshold(args.threshold)
    verdict = compare(load_report(args.baseline), load_report(args.current), threshold,
                      allow_mismatch=args.allow_mismatch)
    word = verdict.word
    if args.json:
        print(json.dumps({"verdict": word, **verdict.to_json()}, indent=2))
    else:
        print("\n".join([*verdict.lines, f"verdict: {word}"]))
    return TapmigError.exit_code if verdict.regressed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    modes = [as_mode(m) for m in args.mode.split(",") if m]
    if args.iterations < 1:
        raise UsageError(f"--iterations {args.iterations}: give at least 1")
    check(Config(qemu=args.qemu, mode=modes[0], accel=args.accel))
    if args.trace_cost:
        if args.chain is None:
            raise UsageError("--trace-cost needs --chain N: the hops of each chain")
        plan.shape(None, args.chain)
        lines = []
        for mode in modes:
            cfg = Config(qemu=args.qemu, mode=mode, accel=args.accel, cache=args.cache,
                         flows=args.flows, tcp=args.tcp, epsilon_ms=args.epsilon_ms,
                         vcpus=resolve_vcpus(args.vcpus, 4))
            lines += bench_trace(cfg, args.chain, args.iterations, _log)
    elif args.chain is not None:
        plan.shape(None, args.chain)  # the same check of N as measure --chain
        lines = bench_chain(args.qemu, modes, args.chain, args.accel, args.cache, _log,
                            args.out, epsilon_ms=args.epsilon_ms, flows=args.flows,
                            tcp=args.tcp, vcpus=resolve_vcpus(args.vcpus, 4))
    else:
        lines = bench(args.qemu, modes, args.iterations, args.accel, args.cache, log=_log)
    print("\n".join(lines))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """One report and verdict from the record directories of several shards."""
    outcome = store.merge_report(args.dirs, args.out, args.allow_mismatch)
    print(render_markdown(outcome.report), end="")
    for ext, path in outcome.paths.items():
        _log(f"report.{ext}: {path}")
    return outcome.exit_code


_OWNER = os.getpid()


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every context manager tears down.

    Only in tapmig's own process: pyroute2 does netns work in forked children and
    stops them with SIGTERM, and a child unwinding here would tear down the parent's
    namespace and TAPs, and go on to finish the parent's command, as if they were its own.
    """
    if os.getpid() != _OWNER:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def _redeliver(hook: sys.UnraisableHookArgs) -> None:
    """Python swallows what an at-fork callback raises, and logging runs one around every
    fork with a preexec_fn (each QEMU and prober start): a Ctrl-C or SIGTERM handled
    there was lost and the run went on. Deliver it again, once out of the callback, as a
    real SIGTERM to the main thread, so that a blocking wait there is cut short too."""
    if (hook.exc_type is not None and issubclass(hook.exc_type, KeyboardInterrupt)
            and os.getpid() == _OWNER):
        timer = threading.Timer(0.01, signal.pthread_kill,
                                (threading.main_thread().ident, signal.SIGTERM))
        timer.daemon = True
        timer.start()
        return
    sys.__unraisablehook__(hook)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "measure": cmd_measure, "compare": cmd_compare, "analyze": cmd_analyze,
    "capabilities": cmd_capabilities, "bench": cmd_bench, "guest build": cmd_guest_build,
    "report": cmd_report,
    "assets list": cmd_assets_list, "assets fetch": cmd_assets_fetch,
}
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
# Subcommands that create namespaces and TAPs: a normal user gets rootless mode.
NEEDS_NET_ADMIN = ("run", "measure", "bench")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    fix_mmap_threshold()
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = _redeliver
    try:
        if "accel" in args:  # $TAPMIG_ACCEL is the default, which argparse never checks
            args.accel = as_accel_choice(args.accel)
        if args.command in NEEDS_NET_ADMIN:
            if rootless.active():
                rootless.enter()
            elif not rootless.privileged():
                rootless.reexec(argv)  # does not return
        return HANDLERS[args.handler](args)
    except KeyboardInterrupt:
        print("tapmig: interrupted; everything it started was cleaned up", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TapmigError as exc:
        print_error(str(exc))
        return exc.exit_code
    except BrokenPipeError:
        # The reader (`| head`) has gone: stop quietly, and keep the interpreter's final
        # flush of stdout from failing again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
