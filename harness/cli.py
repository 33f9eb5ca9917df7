"""The `tapmig` command: argument parsing, one-line errors, exit codes.

Exit codes: 0 success, 1 a run or check failed, 2 bad input or an unusable
host, 130 interrupted (after everything was cleaned up).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from harness import accel, assets, measure, ping, rootless
from harness.bench import bench
from harness.cache import default_cache
from harness.errors import TapmigError
from harness.guest import build_embedded, resolve
from harness.measure import stderr_log as _log
from harness.probe import probe
from harness.record import MODES, RunRecord
from harness.report import compare, load_report, parse_threshold, render_markdown
from harness.scenario import Config, preflight, run


def _out_dir(value: str) -> Path:
    return Path(value)


GUEST_HELP = ("guest to boot: a name from assets.toml (default: embedded; see `tapmig assets "
              "list`) or kernel:PATH[,initrd:PATH]")


def _guest_spec(value: str | None) -> tuple[assets.Manifest, assets.GuestSpec]:
    """--guest, checked before anything runs; without it, the manifest's default guest."""
    manifest = assets.load_manifest()
    return manifest, assets.parse_guest(value or manifest.default, manifest)


def cmd_run(args: argparse.Namespace) -> int:
    manifest, spec = _guest_spec(args.guest)
    cfg = Config(qemu=args.qemu, mode=args.mode, accel=args.accel, vhost=args.vhost,
                 queues=args.queues, ram_mib=args.ram, out=args.out, cache=args.cache,
                 epsilon_ms=args.epsilon_ms, boot_timeout=args.boot_timeout, probe=args.probe)
    caps = preflight(cfg)  # bad input and an unusable host: one line, exit 2, before any table
    cfg.guest = resolve(spec, manifest, args.cache, _log)  # a download comes after preflight
    # --accel kvm on a host whose KVM cannot boot the guest is refused here too; the
    # verdict is cached, so the run itself does not probe again.
    accel.choose(cfg.accel, caps.qemu, cfg.guest, args.cache, _log)
    rec = run(cfg, log=_log)
    print(format_record(rec))
    if rec.status != "ok":
        first, _, detail = (rec.error or "unknown failure").partition("\n")
        print(f"tapmig: error: {first}", file=sys.stderr)
        if detail:
            print("  " + detail.replace("\n", "\n  "), file=sys.stderr)
        return 2 if rec.status == "unsupported" else 1
    return 0


def format_record(rec: RunRecord) -> str:
    def num(v: float | int | None, unit: str = "") -> str:
        return "-" if v is None else f"{v:g}{unit}"

    rows = [
        ("status", rec.status),
        ("mode", f"{rec.mode} (queues={rec.queues}, vhost={'on' if rec.vhost else 'off'})"),
        ("QEMU", f"{rec.qemu_version} {rec.qemu}"),
        ("accelerator", f"{rec.accel}: {rec.accel_reason}"),
        ("guest", rec.guest),
        ("ping blackout", f"{num(rec.blackout_ms, ' ms')} (resolution "
                          f"{num(rec.resolution_ms, ' ms')}, {rec.probe} probe every "
                          f"{num(rec.interval_ms, ' ms')})"),
        ("lost packets", f"{num(rec.lost)} (late replies: {num(rec.late_replies)})"),
        ("QMP downtime", num(rec.downtime_ms, " ms")),
        ("STOP -> RESUME", f"{num(rec.stop_resume_ms, ' ms')} (outage began "
                           f"{num(rec.pre_stop_ms, ' ms')} before STOP)"),
        ("run time", num(rec.duration_s, " s")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_analyze(args: argparse.Namespace) -> int:
    window = None
    if args.window:
        try:
            a, b = (float(x) for x in args.window.split(","))
        except ValueError as exc:
            raise TapmigError(f"--window {args.window!r}: give STOP,RESUME as two unix "
                              "timestamps, e.g. 1795650270.89,1795650270.95") from exc
        window = (a, b)
    print(json.dumps(ping.analyze_file(args.ping_log, window).to_json(), indent=2))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    caps = probe(args.qemu)
    if args.json:
        print(json.dumps(caps.to_json(), indent=2))
        return 0
    yes = {True: "yes", False: "NO"}
    print(f"QEMU {caps.version} ({caps.qemu})")
    print(f"  migration parameter 'local':        {yes[caps.local]}")
    print(f"  tap option 'incoming-fds':          {yes[caps.incoming_fds]}")
    print(f"  virtio-net-pci 'local-migration':   {yes[caps.local_migration]}")
    print(f"  capability 'x-ignore-shared':       {yes[caps.x_ignore_shared]}")
    print(f"  vhost-net on this host:             "
          f"{'yes' if caps.vhost_net is None else 'NO: ' + caps.vhost_net}")
    missing = caps.missing_for_local()
    print("  local migration:                    "
          + ("supported" if not missing else "NOT supported: missing " + ", ".join(missing)))
    return 0


def cmd_guest_build(args: argparse.Namespace) -> int:
    guest = build_embedded(args.cache, log=_log)
    print(f"{guest.name}\n  kernel {guest.kernel}\n  initrd {guest.initrd}")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    iterations = measure.check_iterations(args.iterations)
    modes = measure.parse_modes(args.mode)
    manifest, spec = _guest_spec(args.guest)
    measure.prepare_out(args.out)
    plan = measure.Plan(builds=measure.resolve_builds(args.qemu), modes=modes,
                        iterations=iterations, out=args.out, accel=args.accel,
                        queues=args.queues, cache=args.cache,
                        guest=resolve(spec, manifest, args.cache, _log))
    plan = measure.preflight(plan, _log)
    _log(f"{plan.total} runs: {iterations} iterations x {len(modes)} modes x "
                       f"{len(plan.builds)} builds, interleaved")
    outcome = measure.measure(plan)
    print(render_markdown(outcome.report), end="")
    for ext, path in outcome.paths.items():
        _log(f"report.{ext}: {path}")
    if outcome.interrupted:
        _log(f"interrupted: PARTIAL report of the {len(outcome.records)} "
                           f"finished runs written; records in {args.out / 'records'}")
    elif outcome.exit_code == 2:
        _log("error: no combination is supported by the given builds; "
                           "nothing was measured")
    return outcome.exit_code


def cmd_assets_list(args: argparse.Namespace) -> int:
    """Each asset with where its file is (or goes, for an offline user to put it there)."""
    manifest = assets.load_manifest()
    cache = assets.cache_dir(args.cache)
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
    verdict = compare(load_report(args.baseline), load_report(args.current), threshold)
    print("\n".join(verdict.lines))
    print("verdict: REGRESSED" if verdict.regressed else "verdict: no regression")
    return 1 if verdict.regressed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    modes = [m for m in args.mode.split(",") if m]
    if unknown := [m for m in modes if m not in MODES]:
        raise TapmigError(f"unknown mode {unknown[0]!r}; use {', '.join(MODES)}")
    if args.iterations < 1:
        raise TapmigError(f"--iterations {args.iterations}: give at least 1")
    preflight(Config(qemu=args.qemu, mode=modes[0], accel=args.accel))
    lines = bench(args.qemu, modes, args.iterations, args.accel, args.cache,
                  log=_log)
    print("\n".join(lines))
    return 0


def parser() -> argparse.ArgumentParser:
    # CI sets TAPMIG_ACCEL=kvm to require KVM; pytest's --accel reads it too.
    accel_default = os.environ.get("TAPMIG_ACCEL", "auto")
    p = argparse.ArgumentParser(prog="tapmig", description=__doc__.splitlines()[0] if __doc__
                                else None)
    p.add_argument("--cache", type=Path, default=default_cache(),
                   help="cache directory (default: $TAPMIG_CACHE or ~/.cache/tapmig)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run one migration and print its numbers")
    r.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary to test")
    r.add_argument("--accel", choices=accel.ACCELS, default=accel_default,
                   help="default: $TAPMIG_ACCEL, else auto")
    r.add_argument("--mode", choices=MODES, default="new-tap")
    r.add_argument("--vhost", action="store_true", help="vhost=on (needs /dev/vhost-net)")
    r.add_argument("--queues", type=int, default=4)
    r.add_argument("--ram", type=int, default=256, help="guest RAM in MiB")
    r.add_argument("--out", type=_out_dir, help="write record.json and logs here")
    r.add_argument("--epsilon-ms", type=float, default=None,
                   help="slack around [STOP, RESUME] for the blackout "
                        "(default 50 under KVM, 150 under TCG)")
    r.add_argument("--boot-timeout", type=float, default=60.0)
    r.add_argument("--probe", choices=ping.PROBES, default="tapmig",
                   help="tapmig: 1 ms pace through the outage (default); iputils: ping -D -O")
    r.add_argument("--guest", help=GUEST_HELP)
    r.set_defaults(func=cmd_run)

    a = sub.add_parser("analyze", help="analyse a saved `ping -D -O` log, as JSON")
    a.add_argument("ping_log", type=Path)
    a.add_argument("--window", help="STOP,RESUME unix timestamps: pick the hole overlapping them")
    a.set_defaults(func=cmd_analyze)

    pr = sub.add_parser("probe", help="what this QEMU can do (local migration, vhost...)")
    pr.add_argument("--qemu", default="qemu-system-x86_64")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_probe)

    m = sub.add_parser("measure", help="repeat migrations over builds and modes; write a report")
    m.add_argument("--qemu", action="append", required=True,
                   help="QEMU binary to test; repeat to compare builds")
    m.add_argument("--mode", action="append", required=True,
                   help=f"comma-separated, or repeated: {','.join(MODES)}")
    m.add_argument("--iterations", type=int, required=True, help="runs per build and mode")
    m.add_argument("--out", type=_out_dir, required=True,
                   help="new directory for report.{json,md,html}, records/ and runs/")
    m.add_argument("--accel", choices=accel.ACCELS, default=accel_default,
                   help="default: $TAPMIG_ACCEL, else auto")
    m.add_argument("--queues", type=int, default=4)
    m.add_argument("--guest", help=GUEST_HELP)
    m.set_defaults(func=cmd_measure)

    c = sub.add_parser("compare", help="regression verdict between two report.json files")
    c.add_argument("--baseline", type=Path, required=True, help="earlier report.json")
    c.add_argument("--current", type=Path, required=True, help="new report.json")
    c.add_argument("--threshold", default="10%",
                   help="allowed slowdown of the median, '10%%' or '0.1' (default 10%%)")
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("bench", help="print speed and memory figures against their targets")
    b.add_argument("--qemu", default="qemu-system-x86_64")
    b.add_argument("--mode", default="new-tap", help="comma-separated: new-tap,local")
    b.add_argument("--iterations", type=int, default=3)
    b.add_argument("--accel", choices=accel.ACCELS, default=accel_default,
                   help="default: $TAPMIG_ACCEL, else auto")
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("assets", help="the downloadable guest files of assets.toml")
    ss = s.add_subparsers(dest="assets_command", required=True)
    ss.add_parser("list", help="every asset, and whether it is cached").set_defaults(
        func=cmd_assets_list)
    sf = ss.add_parser("fetch", help="download one asset into the cache and verify it")
    sf.add_argument("name", help="an asset name from `tapmig assets list`")
    sf.add_argument("--offline", action="store_true",
                    help="never use the network: fail unless it is cached (or TAPMIG_OFFLINE=1)")
    sf.set_defaults(func=cmd_assets_fetch)

    g = sub.add_parser("guest", help="the embedded guest")
    gs = g.add_subparsers(dest="guest_command", required=True)
    gb = gs.add_parser("build", help="build (or find cached) the embedded guest")
    gb.set_defaults(func=cmd_guest_build)
    return p


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


# Subcommands that create namespaces and TAPs: a normal user gets rootless mode.
NEEDS_NET_ADMIN = ("run", "measure", "bench")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = _redeliver
    try:
        if args.command in NEEDS_NET_ADMIN:
            if rootless.active():
                rootless.enter()
            elif not rootless.privileged():
                rootless.reexec(argv)  # does not return
        return int(args.func(args))
    except KeyboardInterrupt:
        print("tapmig: interrupted; everything it started was cleaned up", file=sys.stderr)
        return 130
    except TapmigError as exc:
        first, _, detail = str(exc).partition("\n")
        print(f"tapmig: error: {first}", file=sys.stderr)
        if detail:
            print("  " + detail.replace("\n", "\n  "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
