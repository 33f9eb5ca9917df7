"""Build the QEMU under test from a source plus a patch series, with a cache.

Stdlib only, so ``ci/build-qemu`` can run it before the project venv exists.

Sources: a tarball (one top directory), a plain directory (copied without
``.git``, ``__pycache__`` and meson build dirs, so patching never touches the
user's tree), or a git tree: its committed HEAD is exported with ``git
archive`` and keyed by its tree id, so a build names exactly one commit;
uncommitted changes are reported and left out.

The result is keyed by the source content, each patch's sha256 in order, the
configure flags and BUILD_RECIPE_VERSION; a finished build is
``<cache>/qemu/<key>/bin/qemu-system-x86_64`` next to ``DONE`` (its inputs as
JSON) and ``build.log``. It is built in ``<key>.tmp-<pid>`` under a flock on
``<key>.lock`` and renamed into place only when complete; a failed build
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from harness.cache import default_cache
from harness.errors import TapmigError

BUILD_RECIPE_VERSION = 1
TARGET = "qemu-system-x86_64"
PYTHON_DEPS = ("meson==1.9.0", "pycotap==1.3.1")  # as in QEMU's pythondeps.toml
MESON_VENV = "pyvenv-meson-1.9.0"
# x86_64 only and minimal, but with TCG, KVM, tap and vhost-net (shared/qemu/README.md).
CONFIGURE_FLAGS = tuple("""--target-list=x86_64-softmmu --without-default-features --enable-tcg
    --enable-kvm --enable-vhost-net --enable-vhost-kernel --enable-pixman --enable-fdt=system
    --disable-install-blobs --disable-docs --disable-werror --disable-tools --disable-guest-agent
    """.split())
TARBALL_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar")
PATCH_SUFFIXES = (".patch", ".mbox", ".diff")
_SKIP_NAMES = {".git", "__pycache__"}
_FROM_LINE = re.compile(  # the mbox separator, e.g. "From 1a2b... Mon Sep 17 00:00:00 2001"
    rb"^From \S+ +[A-Z][a-z]{2} [A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d \d{4}[ \t]*$", re.M
)
Log = Callable[[str], None]


class BuildInputError(TapmigError):
    """The inputs themselves are wrong (missing, not QEMU): the CLI exits 2."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Source:
    """A checked source: kind is tarball, dir or git; digest identifies its content."""

    path: Path
    kind: str
    digest: str
    commit: str = ""


def _git(src: Path, *args: str, logf: BinaryIO | None = None) -> tuple[int, str]:
    """git on the user's tree, which may belong to another user (safe.directory)."""
    proc = _run(["git", "-c", f"safe.directory={src}", "-C", str(src), *args], logf)
    return proc.returncode, (proc.stdout or b"").decode(errors="replace").strip()


def _tree_files(root: Path) -> Iterator[Path]:
    """Files and symlinks of a plain source dir, sorted, without VCS and build dirs."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            build_dir = (sub / "build.ninja").exists() or (sub / "meson-private").is_dir()
            if d in _SKIP_NAMES or build_dir:
                continue
            if sub.is_symlink():
                filenames.append(d)
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if name not in _SKIP_NAMES:
                yield here / name


def _dir_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in _tree_files(root):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            what = "l " + os.readlink(path)
        else:
            what = ("x " if os.access(path, os.X_OK) else "f ") + _sha256_file(path)
        h.update(f"{rel}\0{what}\n".encode())
    return h.hexdigest()


def inspect_source(source: Path) -> Source:
    """Check that source exists and looks like QEMU, and identify its content."""
    if not source.exists():
        raise BuildInputError(f"QEMU source {source} does not exist; pass a tarball or tree")
    if source.is_file():
        if not source.name.endswith(TARBALL_SUFFIXES):
            raise BuildInputError(f"{source} is not a .tar.xz/.tar.gz/.tar.bz2 QEMU tarball")
        return Source(source, "tarball", _sha256_file(source))
    if (source / ".git").exists():
        if _git(source, "cat-file", "-e", "HEAD:configure")[0]:
            raise BuildInputError(f"{source} is not a QEMU git tree: HEAD has no configure")
        tree, commit = _git(source, "rev-parse", "HEAD^{tree}", "HEAD")[1].split()
        return Source(source, "git", tree, commit)
    if not (source / "configure").is_file():
        raise BuildInputError(f"{source} is not a QEMU source tree: no configure at its top")
    return Source(source, "dir", _dir_digest(source))


def expand_patches(paths: Sequence[Path]) -> list[Path]:
    """Patch files in order; a directory stands for its *.patch/*.mbox/*.diff, sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.name.endswith(PATCH_SUFFIXES))
            if not found:
                raise BuildInputError(f"patch directory {path} has no *.patch/*.mbox/*.diff")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise BuildInputError(f"patch {path} does not exist; check the --patch path")
    return out


def split_mbox(data: bytes) -> list[bytes]:
    """An mbox's messages in order (so each applies and fails on its own); a diff is one."""
    starts = [m.start() for m in _FROM_LINE.finditer(data)]
    if not starts or data[: starts[0]].strip():
        starts.insert(0, 0)
    return [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]


def _subject(message: bytes) -> str:
    m = re.search(rb"^Subject: *(.*)$", message.split(b"\n\n", 1)[0], re.M)
    return m.group(1).decode(errors="replace").strip()[:72] if m else ""


def cache_key(
    source: Source, patches: Sequence[Path], configure: Sequence[str]
) -> tuple[str, dict[str, object]]:
    """The cache key and the inputs it was computed from."""
    inputs: dict[str, object] = {
        "recipe": BUILD_RECIPE_VERSION,
        "source": {"kind": source.kind, "digest": source.digest},
        "patches": [_sha256_file(p) for p in patches],
        "configure": list(configure),
        "python_deps": list(PYTHON_DEPS),
        "target": TARGET,
    }
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24], inputs


def _failures(output: str) -> list[str]:
    """'file (why)' for each file GNU patch could not patch, parsed from its output."""
    out: list[str] = []
    current = ""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"(?:patching|checking) file (.+)", line):
            current = m.group(1).strip("'")
        elif line.startswith("Reversed (or previously applied)"):
            out.append(f"{current} (reversed or already applied)")
        elif "FAILED" in line and current and f"{current} (hunk FAILED)" not in out:
            out.append(f"{current} (hunk FAILED)")
        elif line.startswith("can't find file to patch"):
            for ctx in lines[i + 1 : i + 40]:
                if m := re.match(r"\|(?:---|\+\+\+) (?:[ab]/)?(\S+)", ctx):
                    out.append(f"{m.group(1)} (no such file)")
                    break
    return out


def apply_patch(tree: Path, data: bytes, name: str, logf: BinaryIO) -> None:
    """Apply one diff with patch -p1; on failure say which patch and which files."""
    cmd = ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch",
           "--reject-file=-", "-d", str(tree)]
    proc = _run(cmd, data=data, env={**os.environ, "LC_ALL": "C"})
    logf.write(f"== patch {name}\n".encode() + proc.stdout + proc.stderr)
    if proc.returncode:
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        why = ", ".join(_failures(text)) or (text.strip().splitlines() or ["no output"])[-1]
        raise TapmigError(f"patch {name} does not apply: {why}; rebase or drop it")


def _run(cmd: list[str], logf: BinaryIO | None = None, *, data: bytes | None = None,
         cwd: Path | None = None, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[bytes]:
    """Run cmd, its output into logf (or captured); a missing tool is a TapmigError."""
    out = logf if logf is not None else subprocess.PIPE
    err = subprocess.STDOUT if logf is not None else subprocess.PIPE
    try:
        return subprocess.run(cmd, input=data, stdout=out, stderr=err, cwd=cwd, env=env,
                              check=False)
    except FileNotFoundError:
        raise TapmigError(f"{cmd[0]} not found; install it (ci/build-qemu does)") from None


def prepare_source(
    source: Source, patches: Sequence[Path], work: Path, logf: BinaryIO, log: Log = _stderr
) -> Path:
    """Put a private copy of the source in work, apply the patches, return its top dir."""
    log(f"extract: {source.path} ({source.kind})")
    if source.kind == "tarball":
        (work / "extract").mkdir()
        cmd = ["tar", "-xf", str(source.path), "-C", str(work / "extract")]
        if _run(cmd, logf).returncode:
            raise TapmigError(f"cannot extract {source.path}; is the tarball complete?")
        tops = list((work / "extract").iterdir())
        tree = tops[0] if len(tops) == 1 and tops[0].is_dir() else work / "extract"
        if not (tree / "configure").is_file():
            raise BuildInputError(f"{source.path} is not a QEMU tarball: no configure at its top")
    elif source.kind == "git":
        if _git(source.path, "status", "--porcelain", "--untracked-files=no")[1]:
            log(f"note: uncommitted changes in {source.path} are NOT built (HEAD only)")
        tree, tar = work / "src", work / "src.tar"
        if (_git(source.path, "archive", f"--output={tar}", "--prefix=src/", "HEAD", logf=logf)[0]
                or _run(["tar", "-xf", str(tar), "-C", str(work)], logf).returncode):
            raise TapmigError(f"cannot export HEAD of {source.path} with git archive")
        tar.unlink()
    else:
        tree = work / "src"
        for path in _tree_files(source.path):
            dest = tree / path.relative_to(source.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                dest.symlink_to(os.readlink(path))
            else:
                shutil.copy2(path, dest)
    for n, patch in enumerate(patches, 1):
        messages = split_mbox(patch.read_bytes())
        for k, msg in enumerate(messages, 1):
            name = str(patch) if len(messages) == 1 else f"{patch} message {k}/{len(messages)}"
            label = f"patch {n}/{len(patches)}: {patch.name}"
            if len(messages) > 1:
                label += f" [{k}/{len(messages)}] {_subject(msg)}"
            if not re.search(rb"^(@@ |diff --git )", msg, re.M):
                log(f"{label}: no diff in it, skipped")
                continue
            log(label)
            apply_patch(tree, msg, name, logf)
    return tree


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
            proc = _run(cmd)
            if proc.returncode:
                last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
                raise TapmigError(f"cannot set up {venv} ({last}); need python3-venv and PyPI")
        marker.write_text("ok\n")
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
        raise TapmigError("ninja not found; install ninja-build (ci/build-qemu does)") from None
    failed = ""
    with proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            if line.startswith(b"FAILED: ") and not failed:
                failed = line[8:].decode(errors="replace").strip()[:120]
            if m := re.match(rb"\[(\d+)/(\d+)\]", line):
                done, total = int(m.group(1)), int(m.group(2))
                pct = done * 100 // total
                if time.monotonic() - last >= 10 or pct // 10 > last_pct // 10 or done == total:
                    log(f"build: [{done}/{total}] {pct}% after {_elapsed(start)}")
                    last, last_pct = time.monotonic(), pct
    if proc.returncode:
        raise TapmigError(f"ninja failed ({failed or 'exit ' + str(proc.returncode)}); "
                          f"see {failed_log}")
    log(f"build: done after {_elapsed(start)}")


def _configure_error(logpath: Path, failed_log: Path) -> TapmigError:
    text = logpath.read_text(errors="replace")
    if re.search(r"pc-bios/meson\.build:\d+:\d+: ERROR", text):
        return TapmigError("meson setup failed in pc-bios/meson.build: a Debian +ds tarball "
                           "needs --patch shared/qemu/build-fixes/debian-pc-bios-meson.patch "
                           f"before the series; see {failed_log}")
    errors = [ln.strip() for ln in text.splitlines() if "ERROR" in ln]
    why = errors[-1][:160] if errors else "no ERROR line"
    return TapmigError(f"configure failed ({why}); install the build dependencies "
                       f"(ci/build-qemu does) or fix the flags; see {failed_log}")


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


def build_qemu(source: Path, patches: Sequence[Path], *, cache: Path | None = None,
               extra_configure: Sequence[str] = (), jobs: int | None = None,
               log: Log = _stderr) -> Path:
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
        for stale in [root / key, *root.glob(f"{key}.tmp-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        started, start = time.time(), time.monotonic()
        log(f"building {TARGET} (key {key}); the first build takes several minutes")
        python = _meson_python(root.parent, log)
        work, failed_log = root / f"{key}.tmp-{os.getpid()}", root / f"{key}.failed.log"
        work.mkdir()
        logpath = work / "build.log"
        try:
            with logpath.open("ab") as logf:
                tree = prepare_source(plan.source, plan.patches, work, logf, log)
                build = work / "build"
                build.mkdir()
                log(f"configure: {' '.join(plan.flags)}")
                cmd = [str(tree / "configure"), f"--python={python}", *plan.flags]
                if _run(cmd, logf, cwd=build).returncode:
                    logf.flush()
                    raise _configure_error(logpath, failed_log)
                log(f"configure: done after {_elapsed(start)}; build: ninja {TARGET}")
                _ninja(build, jobs or os.cpu_count() or 1, logf, log, failed_log)
            out = work / "out"
            (out / "bin").mkdir(parents=True)
            shutil.move(build / TARGET, out / "bin" / TARGET)
            shutil.copy2(logpath, out / "build.log")
            done = {"key": key, "inputs": plan.inputs, "source": str(plan.source.path),
                    "commit": plan.source.commit, "patches": [str(p) for p in plan.patches],
                    "binary": f"bin/{TARGET}", "started": started,
                    "seconds": round(time.monotonic() - start, 1)}
            (out / "DONE").write_text(json.dumps(done, indent=2) + "\n")
            out.rename(root / key)
        except BaseException:
            if logpath.exists():
                shutil.copy2(logpath, failed_log)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        failed_log.unlink(missing_ok=True)
    log(f"built in {_elapsed(start)}: {binary}")
    return binary


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the binary's path as the last stdout line; 2 = bad input, 1 = failure."""
    p = _Parser(prog="python3 -m harness.build",
                description="Build (or find in the cache) qemu-system-x86_64 from a QEMU "
                "source and patches. Progress goes to stderr; the binary's path to stdout.")
    p.add_argument("--source", type=Path, required=True,
                   help="QEMU tarball, source dir (copied) or git tree (committed HEAD)")
    p.add_argument("--patch", type=Path, action="append", default=[],
                   help="patch or mbox file, or dir of *.patch/*.mbox/*.diff; repeat, in order")
    p.add_argument("--cache", type=Path, help=f"cache dir (default now: {default_cache()})")
    p.add_argument("--configure-arg", action="append", default=[], metavar="ARG",
                   help="extra configure flag; write --configure-arg=--enable-foo")
    p.add_argument("-j", "--jobs", type=int, help="ninja jobs (default: CPU count)")
    args = p.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        p.error("-j must be at least 1")
    try:
        binary = build_qemu(args.source, args.patch, cache=args.cache,
                            extra_configure=args.configure_arg, jobs=args.jobs)
    except BuildInputError as e:
        print(f"build-qemu: error: {e}", file=sys.stderr)
        return 2
    except TapmigError as e:
        print(f"build-qemu: error: {e}", file=sys.stderr)
        return 1
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
