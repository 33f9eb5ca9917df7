"""Build the QEMU under test from a source plus a patch series, and its variants, with a
cache.

Stdlib only, so ``ci/build-qemu`` can run it before the project venv exists.
The source and patches are checked and prepared by harness.qemu.source.

The base is keyed by the source content, each patch's sha256 in order, the
configure flags and BUILD_RECIPE_VERSION; a finished build is
``<cache>/qemu/<key>/bin/qemu-system-x86_64`` next to ``DONE`` (its inputs as
JSON) and ``build.log``. It is built in the base's kept tree (harness.qemu.tree)
under a flock on ``<key>.lock`` and published under its key, by a rename, only when
complete; a failed build leaves only ``<key>.failed.log``. A variant (one more patch,
harness.qemu.variants) is built in that same tree under the same lock, incrementally,
and published the same way under its own key. The binary has no firmware (Debian's
``+ds`` tarball carries none): run it with ``-L /usr/share/seabios
-L /usr/share/qemu``, which the harness does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from harness import atomic
from harness.cache import default_cache
from harness.errors import EXIT_INTERRUPTED, TapmigError, UsageError
from harness.qemu.source import Source, expand_patches, inspect_source, log_stderr, sha256_file
from harness.qemu.tree import PYTHON_DEPS, TARGET, Tree, elapsed, locked, meson_python, ninja
from harness.qemu.variants import (
    BASE,
    Planned,
    finished,
    list_variants,
    plan_variants,
    touched_files,
)
from harness.vocabulary import Log

BUILD_RECIPE_VERSION = 1
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

    @property
    def tree(self) -> Tree:
        return Tree(self.root / f"{self.key}.tree")

    def done(self) -> bool:
        return finished(self.binary)

    def variants(self, variants: Sequence[Path]) -> list[Planned]:
        return plan_variants(self.key, list_variants(variants), self.root, TARGET)


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


def cached_variant(source: Path, patches: Sequence[Path], variant: Path, *,
                   cache: Path | None = None, extra_configure: Sequence[str] = ()
                   ) -> Path | None:
    """The finished binary of the base (source + patches) plus the variant patch if the
    cache has it, else None; never builds."""
    [planned] = _plan(source, patches, extra_configure, cache).variants([variant])
    return planned.binary if planned.done else None


def _publish(root: Path, key: str, binary: Path, log: Path, done: dict[str, object]) -> None:
    """Copy binary and log into <root>/<key> with DONE, visible only once whole."""
    with atomic.staged(root / key) as out:
        (out / "bin").mkdir(parents=True)
        shutil.copy2(binary, out / "bin" / TARGET)
        shutil.copy2(log, out / "build.log")
        (out / "DONE").write_text(json.dumps(done, indent=2) + "\n")


def _keep_log(log: Path, failed_log: Path) -> None:
    if log.exists():
        with atomic.staged(failed_log) as tmp:
            shutil.copy2(log, tmp)


def _ready_tree(plan: _Plan, files: Sequence[str], jobs: int, log: Log) -> Tree:
    """The base's kept tree, clean and with files as the base has them: made afresh
    (configure and a cold build) when it is missing or not to be trusted."""
    tree = plan.tree
    if not tree.path.exists():
        why = "none yet"
    elif not tree.clean():
        why = "not clean (a build was killed or a patch did not reverse)"
    else:
        why = f"{bad} is not the base's" if (bad := tree.differs(files)) else ""
    if not why:
        return tree
    log(f"kept tree {tree.path}: {why}; making it, the first build takes several minutes")
    tree.remove()
    try:
        tree.make(plan.source, plan.patches, plan.flags, meson_python(plan.root.parent, log),
                  jobs, log, plan.failed_log)
    except BaseException:
        _keep_log(tree.log, plan.failed_log)
        tree.remove()
        raise
    plan.failed_log.unlink(missing_ok=True)
    return tree


def _build_base(plan: _Plan, jobs: int, log: Log) -> None:
    """Build the base in its kept tree (ninja undoes what a variant left in the build
    dir) and publish it; or keep just the log as <key>.failed.log."""
    for stale in [plan.root / plan.key, *plan.root.glob(f".{plan.key}.*.tmp")]:
        shutil.rmtree(stale, ignore_errors=True)
    started, start = time.time(), time.monotonic()
    log(f"building {TARGET} (key {plan.key})")
    tree = _ready_tree(plan, [], jobs, log)
    try:
        with tree.log.open("ab") as logf:
            ninja(tree.build, jobs, logf, log, plan.failed_log)
    except BaseException:
        _keep_log(tree.log, plan.failed_log)
        raise
    done = {"key": plan.key, "inputs": plan.inputs, "source": str(plan.source.path),
            "commit": plan.source.commit, "patches": [str(p) for p in plan.patches],
            "binary": f"bin/{TARGET}", "started": started,
            "seconds": round(time.monotonic() - start, 1)}
    _publish(plan.root, plan.key, tree.build / TARGET, tree.log, done)
    plan.failed_log.unlink(missing_ok=True)
    log(f"built in {elapsed(start)}: {plan.binary}")


def _build_variant(plan: _Plan, planned: Planned, jobs: int, log: Log) -> None:
    """Apply the variant's patch in the kept tree, rebuild, publish, reverse the patch."""
    root, key, name = plan.root, planned.key, planned.variant.name
    for stale in [root / key, *root.glob(f".{key}.*.tmp")]:
        shutil.rmtree(stale, ignore_errors=True)
    failed_log = root / f"{key}.failed.log"
    data = planned.variant.patch.read_bytes()
    if hashlib.sha256(data).hexdigest() != planned.sha256:
        raise UsageError(f"variant {planned.variant.patch} changed while it was being "
                         "built; run again")
    tree = _ready_tree(plan, touched_files(data), jobs, log)
    started, start = time.time(), time.monotonic()  # the variant's own time, not the tree's
    log(f"variant {name}: building (key {key}) in {tree.path}")
    vlog = tree.path / f"{key}.log"
    try:
        with vlog.open("wb") as logf, tree.patched(planned.variant, data, logf, log):
            ninja(tree.build, jobs, logf, log, failed_log)
            done = {"key": key, "base": plan.key, "variant": name,
                    "patch": str(planned.variant.patch.resolve()),
                    "patch_sha256": planned.sha256,
                    "binary": f"bin/{TARGET}", "started": started,
                    "seconds": round(time.monotonic() - start, 1)}
            _publish(root, key, tree.build / TARGET, vlog, done)
    except BaseException:
        _keep_log(vlog, failed_log)
        raise
    finally:
        vlog.unlink(missing_ok=True)
    failed_log.unlink(missing_ok=True)
    log(f"variant {name}: built in {time.monotonic() - start:.1f} s: {planned.binary}")


def build_variants(source: Path, patches: Sequence[Path], variants: Sequence[Path], *,
                   cache: Path | None = None, extra_configure: Sequence[str] = (),
                   jobs: int | None = None, log: Log = log_stderr) -> dict[str, Path]:
    """The base's binary (as "base") and each variant's (by name, in order), building
    only what the cache lacks. variants are patch files or folders of them, each
    applied on the base alone; the base's kept tree makes each an incremental build.

    log gets progress lines (stderr by default); cache defaults to default_cache().
    """
    plan = _plan(source, patches, extra_configure, cache)
    planned = plan.variants(variants)
    binaries = {BASE: plan.binary, **{p.variant.name: p.binary for p in planned}}
    if plan.done() and all(p.done for p in planned):
        for binary in binaries.values():
            log(f"cached: {binary}")
        return binaries
    plan.root.mkdir(parents=True, exist_ok=True)
    n = jobs or os.cpu_count() or 1
    with locked(plan.root / f"{plan.key}.lock", log):
        if plan.done():
            log(f"cached: {plan.binary}")
        else:
            _build_base(plan, n, log)
        for p in planned:
            if finished(p.binary):  # by another process while this one waited
                log(f"cached: {p.binary}")
            else:
                _build_variant(plan, p, n, log)
    return binaries


def build_qemu(source: Path, patches: Sequence[Path], *, cache: Path | None = None,
               extra_configure: Sequence[str] = (), jobs: int | None = None,
               log: Log = log_stderr) -> Path:
    """Return qemu-system-x86_64 built from source + patches, building it only if not cached.

    log gets progress lines (stderr by default); cache defaults to default_cache().
    """
    return build_variants(source, patches, [], cache=cache, extra_configure=extra_configure,
                          jobs=jobs, log=log)[BASE]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> _Parser:
    p = _Parser(prog="python3 -m harness.qemu.build",
                description="Build (or find in the cache) qemu-system-x86_64 from a QEMU "
                "source and patches, and its variants. Progress goes to stderr; to stdout "
                "the binary's path, or with --variant one 'NAME PATH' line per binary, the "
                "base's first as 'base'. Exit codes: 0 built or cached, 1 the build "
                "failed, 2 bad input or a missing tool, 130 interrupted (the partial "
                "build removed).")
    p.add_argument("--source", type=Path, required=True,
                   help="QEMU tarball, source dir (copied) or git tree (committed HEAD)")
    p.add_argument("--patch", type=Path, action="append", default=[],
                   help="patch or mbox file, or dir of *.patch/*.mbox/*.diff; repeat, in order")
    p.add_argument("--variant", type=Path, action="append", default=[],
                   help="a variant: one more patch applied on the base alone, or a dir of "
                   "them (*.patch/*.mbox/*.diff, sorted), each its own variant; repeat")
    p.add_argument("--cache", type=Path, help=f"cache dir (default now: {default_cache()})")
    p.add_argument("--configure-arg", action="append", default=[], metavar="ARG",
                   help="extra configure flag; write --configure-arg=--enable-foo")
    p.add_argument("-j", "--jobs", type=int, help="ninja jobs (default: CPU count)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: the binary's path as the last stdout line, or with variants a 'NAME PATH' line
    each; the exit code from the error class, as `tapmig` does (harness.errors), with one
    line "build-qemu: error: ..."."""
    p = _parser()
    args = p.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        p.error("-j must be at least 1")
    try:
        binaries = build_variants(args.source, args.patch, args.variant, cache=args.cache,
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
    if args.variant:
        print("".join(f"{name} {binary}\n" for name, binary in binaries.items()), end="")
    else:
        print(binaries[BASE])
    return 0


if __name__ == "__main__":
    sys.exit(main())
