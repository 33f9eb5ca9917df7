"""Build the QEMU under test from a source plus a patch series, with a cache.

Stdlib only, so ``ci/build-qemu`` can run it before the project venv exists.
The source and patches are checked and prepared by harness.qemu.source.

The result is keyed by the source content, each patch's sha256 in order, the
configure flags and BUILD_RECIPE_VERSION; a finished build is
``<cache>/qemu/<key>/bin/qemu-system-x86_64`` next to ``DONE`` (its inputs as
JSON) and ``build.log``. It is built in ``<key>.tmp-<pid>`` under a flock on
``<key>.lock`` and published under its key only when complete; a failed build
leaves only ``<key>.failed.log``. The binary has no firmware (Debian's
``+ds`` tarball carries none): run it with ``-L /usr/share/seabios
-L /usr/share/qemu``, which the harness does.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from harness import atomic
from harness.cache import default_cache
from harness.errors import EXIT_INTERRUPTED, BuildFailed, HostError, InternalError, TapmigError
from harness.qemu.source import (
    Log,
    Source,
    expand_patches,
    inspect_source,
    log_stderr,
    prepare_source,
    run,
    sha256_file,
)

BUILD_RECIPE_VERSION = 1
TARGET = "qemu-system-x86_64"
PYTHON_DEPS = ("meson==1.9.0", "pycotap==1.3.1")  # as in QEMU's pythondeps.toml
MESON_VENV = "pyvenv-meson-1.9.0"
LOG_TAIL_LINES = 20  # of the build log, in a BuildFailed
# x86_64 only and minimal, but with TCG, KVM, tap and vhost-net (shared/qemu/README.md).
CONFIGURE_FLAGS = tuple("""--target-list=x86_64-softmmu --without-default-features --enable-tcg
    --enable-kvm --enable-vhost-net --enable-vhost-kernel --enable-pixman --enable-fdt=system
    --disable-install-blobs --disable-docs --disable-werror --disable-tools --disable-guest-agent
    """.split())


def cache_key(
    source: Source, patches: Sequence[Path], configure: Sequence[str]
) -> tuple[str, dict[str, object]]:
    """The cache key and the inputs it was computed from."""
    inputs: dict[str, object] = {
        "recipe": BUILD_RECIPE_VERSION,
        "source": {"kind": source.kind, "digest": source.digest},
        "patches": [sha256_file(p) for p in patches],
        "configure": list(configure),
        "python_deps": list(PYTHON_DEPS),
        "target": TARGET,
    }
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24], inputs


@contextmanager
def _locked(path: Path, log: Log) -> Iterator[None]:
    """Hold an exclusive flock on path, saying so if another process has it."""
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build holding {path}")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _meson_python(cache: Path, log: Log) -> Path:
    """A venv with the meson QEMU wants: the +ds tarball does not bundle it."""
    venv = cache / MESON_VENV
    python, marker = venv / "bin" / "python3", venv / ".tapmig-complete"
    if marker.is_file():
        return python
    with _locked(cache / f"{MESON_VENV}.lock", log):
        if marker.is_file():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        log(f"meson: creating {venv} with {' '.join(PYTHON_DEPS)}")
        steps = ([sys.executable, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  *PYTHON_DEPS])
        for cmd in steps:
            proc = run(cmd)
            if proc.returncode:
                last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
                raise HostError(f"cannot set up {venv} ({last}); need python3-venv and PyPI")
        atomic.write_text(marker, "ok\n")
    return python


def _elapsed(start: float) -> str:
    secs = int(time.monotonic() - start)
    return f"{secs // 60}m{secs % 60:02d}s"


def _ninja(build: Path, jobs: int, logf: BinaryIO, log: Log, failed_log: Path) -> None:
    """Build only the emulator, printing ninja's [done/total] every 10 s or 10%."""
    start = last = time.monotonic()
    last_pct = 0
    env = {**os.environ, "NINJA_STATUS": "[%f/%t] "}
    cmd = ["ninja", "-j", str(jobs), TARGET]
    try:
        proc = subprocess.Popen(cmd, cwd=build, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env)
    except FileNotFoundError:
        raise HostError("ninja not found; install ninja-build (ci/build-qemu does)") from None
    failed = ""
    tail: deque[bytes] = deque(maxlen=LOG_TAIL_LINES)
    with proc:
        if proc.stdout is None:
            raise InternalError("ninja's stdout is a pipe (Popen with stdout=PIPE)")
        for line in proc.stdout:
            logf.write(line)
            tail.append(line)
            if line.startswith(b"FAILED: ") and not failed:
                failed = line[8:].decode(errors="replace").strip()[:120]
            if m := re.match(rb"\[(\d+)/(\d+)\]", line):
                done, total = int(m.group(1)), int(m.group(2))
                pct = done * 100 // total
                if time.monotonic() - last >= 10 or pct // 10 > last_pct // 10 or done == total:
                    log(f"build: [{done}/{total}] {pct}% after {_elapsed(start)}")
                    last, last_pct = time.monotonic(), pct
    if proc.returncode:
        raise BuildFailed(f"ninja failed ({failed or 'exit ' + str(proc.returncode)}); "
                          f"see {failed_log}", "ninja", proc.returncode, failed,
                          str(failed_log), b"".join(tail).decode(errors="replace"))
    log(f"build: done after {_elapsed(start)}")


def _configure_error(logpath: Path, failed_log: Path, status: int) -> BuildFailed:
    lines = logpath.read_text(errors="replace").splitlines()
    tail = "".join(f"{ln}\n" for ln in lines[-LOG_TAIL_LINES:])
    errors = [ln.strip() for ln in lines if "ERROR" in ln]
    if pc_bios := [ln for ln in errors if re.search(r"pc-bios/meson\.build:\d+:\d+: ERROR", ln)]:
        return BuildFailed("meson setup failed in pc-bios/meson.build: a Debian +ds tarball "
                           "needs --patch shared/qemu/build-fixes/debian-pc-bios-meson.patch "
                           f"before the series; see {failed_log}", "configure", status,
                           pc_bios[0][:160], str(failed_log), tail)
    why = errors[-1][:160] if errors else ""
    return BuildFailed(f"configure failed ({why or 'no ERROR line'}); install the build "
                       f"dependencies (ci/build-qemu does) or fix the flags; see {failed_log}",
                       "configure", status, why, str(failed_log), tail)


@dataclass(frozen=True)
class _Plan:
    """Checked inputs and where their build lives in the cache."""

    source: Source
    patches: list[Path]
    flags: list[str]
    key: str
    inputs: dict[str, object]
    root: Path

    @property
    def binary(self) -> Path:
        return self.root / self.key / "bin" / TARGET

    @property
    def failed_log(self) -> Path:
        return self.root / f"{self.key}.failed.log"

    def done(self) -> bool:
        return (self.root / self.key / "DONE").is_file() and self.binary.is_file()


def _plan(source: Path, patches: Sequence[Path], extra_configure: Sequence[str],
          cache: Path | None) -> _Plan:
    src, patch_files = inspect_source(source), expand_patches(patches)
    flags = [*CONFIGURE_FLAGS, *extra_configure]
    key, inputs = cache_key(src, patch_files, flags)
    return _Plan(src, patch_files, flags, key, inputs, (cache or default_cache()) / "qemu")


def cached_binary(source: Path, patches: Sequence[Path], *, cache: Path | None = None,
                  extra_configure: Sequence[str] = ()) -> Path | None:
    """The finished binary for these inputs if the cache has it, else None; never builds."""
    plan = _plan(source, patches, extra_configure, cache)
    return plan.binary if plan.done() else None


def _configure_and_make(plan: _Plan, python: Path, work: Path, logf: BinaryIO, jobs: int,
                        log: Log) -> Path:
    """Patch a private copy of the source, configure and build it in work; the build dir."""
    start, failed_log = time.monotonic(), plan.failed_log
    tree = prepare_source(plan.source, plan.patches, work, logf, log)
    build = work / "build"
    build.mkdir()
    log(f"configure: {' '.join(plan.flags)}")
    status = run([str(tree / "configure"), f"--python={python}", *plan.flags], logf,
                 cwd=build).returncode
    if status:
        logf.flush()
        raise _configure_error(work / "build.log", failed_log, status)
    log(f"configure: done after {_elapsed(start)}; build: ninja {TARGET}")
    _ninja(build, jobs, logf, log, failed_log)
    return build


def _build(plan: _Plan, python: Path, jobs: int, log: Log) -> None:
    """Build in a private work dir; publish the result under its key only when whole, or
    keep just the log as <key>.failed.log."""
    work, failed_log = plan.root / f"{plan.key}.tmp-{os.getpid()}", plan.failed_log
    work.mkdir()
    logpath, started, start = work / "build.log", time.time(), time.monotonic()
    try:
        with logpath.open("ab") as logf:
            build = _configure_and_make(plan, python, work, logf, jobs, log)
        with atomic.staged(plan.root / plan.key) as out:
            (out / "bin").mkdir(parents=True)
            shutil.move(build / TARGET, out / "bin" / TARGET)
            shutil.copy2(logpath, out / "build.log")
            done = {"key": plan.key, "inputs": plan.inputs, "source": str(plan.source.path),
                    "commit": plan.source.commit, "patches": [str(p) for p in plan.patches],
                    "binary": f"bin/{TARGET}", "started": started,
                    "seconds": round(time.monotonic() - start, 1)}
            (out / "DONE").write_text(json.dumps(done, indent=2) + "\n")
    except BaseException:
        if logpath.exists():
            with atomic.staged(failed_log) as tmp:
                shutil.copy2(logpath, tmp)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed_log.unlink(missing_ok=True)


def build_qemu(source: Path, patches: Sequence[Path], *, cache: Path | None = None,
               extra_configure: Sequence[str] = (), jobs: int | None = None,
               log: Log = log_stderr) -> Path:
    """Return qemu-system-x86_64 built from source + patches, building it only if not cached.

    log gets progress lines (stderr by default); cache defaults to default_cache().
    """
    plan = _plan(source, patches, extra_configure, cache)
    root, key, binary = plan.root, plan.key, plan.binary
    if plan.done():
        log(f"cached: {binary}")
        return binary
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key}.lock", log):
        if plan.done():
            log(f"cached: {binary}")
            return binary
        # What a killed build left: its work dir, or a result not yet published.
        for stale in [root / key, *root.glob(f"{key}.tmp-*"), *root.glob(f".{key}.*.tmp")]:
            shutil.rmtree(stale, ignore_errors=True)
        start = time.monotonic()
        log(f"building {TARGET} (key {key}); the first build takes several minutes")
        _build(plan, _meson_python(root.parent, log), jobs or os.cpu_count() or 1, log)
    log(f"built in {_elapsed(start)}: {binary}")
    return binary


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> _Parser:
    p = _Parser(prog="python3 -m harness.qemu.build",
                description="Build (or find in the cache) qemu-system-x86_64 from a QEMU "
                "source and patches. Progress goes to stderr; the binary's path to stdout. "
                "Exit codes: 0 built or cached, 1 the build failed, 2 bad input or a "
                "missing tool, 130 interrupted (the partial build removed).")
    p.add_argument("--source", type=Path, required=True,
                   help="QEMU tarball, source dir (copied) or git tree (committed HEAD)")
    p.add_argument("--patch", type=Path, action="append", default=[],
                   help="patch or mbox file, or dir of *.patch/*.mbox/*.diff; repeat, in order")
    p.add_argument("--cache", type=Path, help=f"cache dir (default now: {default_cache()})")
    p.add_argument("--configure-arg", action="append", default=[], metavar="ARG",
                   help="extra configure flag; write --configure-arg=--enable-foo")
    p.add_argument("-j", "--jobs", type=int, help="ninja jobs (default: CPU count)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: the binary's path as the last stdout line; the exit code from the error class,
    as `tapmig` does (harness.errors), with one line "build-qemu: error: ..."."""
    p = _parser()
    args = p.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        p.error("-j must be at least 1")
    try:
        binary = build_qemu(args.source, args.patch, cache=args.cache,
                            extra_configure=args.configure_arg, jobs=args.jobs)
    except KeyboardInterrupt:
        print("build-qemu: interrupted; the partial build was removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TapmigError as e:
        first, _, detail = str(e).partition("\n")
        print(f"build-qemu: error: {first}", file=sys.stderr)
        if detail:
            print("  " + detail.replace("\n", "\n  "), file=sys.stderr)
        return e.exit_code
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
