"""A base's build tree, kept so that a variant costs an incremental build, and the steps
that make a tree: meson's venv, configure and ninja.

Stdlib only, like harness.qemu.build. The tree is ``<cache>/qemu/<key>.tree``, built
where it stays, since meson's build dir holds absolute paths. ``TREE`` (JSON) is written
last when the tree is whole: ``clean`` while its source is the base's, ``variant``
while a variant's patch is in it. ``MANIFEST`` holds every source file's sha256 as the
base has it. A tree whose TREE is missing or not clean (a build that was killed, a
patch that did not reverse), or whose files a variant touches differ from the
manifest, is not to be trusted: harness.qemu.build removes it and makes it again.
Files no variant touches are trusted as they are: the tree is the cache's, for no
hand to edit.
"""

from __future__ import annotations

import fcntl
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
from typing import BinaryIO

from harness import atomic
from harness.errors import BuildFailed, HostError, InternalError, UsageError
from harness.qemu.source import Source, apply_patch, prepare_source, run, sha256_file
from harness.qemu.variants import Variant, touched_files
from harness.vocabulary import Log

TARGET = "qemu-system-x86_64"
PYTHON_DEPS = ("meson==1.9.0", "pycotap==1.3.1")  # as in QEMU's pythondeps.toml
MESON_VENV = "pyvenv-meson-1.9.0"
LOG_TAIL_LINES = 20  # of the build log, in a BuildFailed


@contextmanager
def locked(path: Path, log: Log) -> Iterator[None]:
    """Hold an exclusive flock on path, saying so if another process has it."""
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build holding {path}")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def meson_python(cache: Path, log: Log) -> Path:
    """A venv with the meson QEMU wants: the +ds tarball does not bundle it."""
    venv = cache / MESON_VENV
    python, marker = venv / "bin" / "python3", venv / ".tapmig-complete"
    if marker.is_file():
        return python
    with locked(cache / f"{MESON_VENV}.lock", log):
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


def elapsed(start: float) -> str:
    secs = int(time.monotonic() - start)
    return f"{secs // 60}m{secs % 60:02d}s"


def ninja(build: Path, jobs: int, logf: BinaryIO, log: Log, failed_log: Path) -> None:
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
                    log(f"build: [{done}/{total}] {pct}% after {elapsed(start)}")
                    last, last_pct = time.monotonic(), pct
    logf.flush()
    if proc.returncode:
        raise BuildFailed(f"ninja failed ({failed or 'exit ' + str(proc.returncode)}); "
                          f"see {failed_log}", "ninja", proc.returncode, failed,
                          str(failed_log), b"".join(tail).decode(errors="replace"))
    log(f"build: done after {elapsed(start)}")


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


def _digest(path: Path) -> str | None:
    """A file's sha256, a symlink's target, None for nothing there."""
    if path.is_symlink():
        return "-> " + os.readlink(path)
    return sha256_file(path) if path.is_file() else None


def _manifest(src: Path) -> dict[str, str | None]:
    """Every file under src, by its path relative to src, and its _digest."""
    out: dict[str, str | None] = {}
    for dirpath, _, filenames in os.walk(src):
        for name in filenames:
            path = Path(dirpath) / name
            out[path.relative_to(src).as_posix()] = _digest(path)
    return out


@dataclass(frozen=True)
class Tree:
    """One base's kept tree: its patched source, its configured build dir, its state."""

    path: Path

    @property
    def build(self) -> Path:
        return self.path / "build"

    @property
    def log(self) -> Path:
        """The base's configure and build log; a variant's build has a log of its own."""
        return self.path / "build.log"

    def _state(self) -> dict[str, str]:
        try:
            state = json.loads((self.path / "TREE").read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _mark(self, state: str, variant: str = "") -> None:
        src = self._state().get("src", "")
        atomic.write_text(self.path / "TREE", json.dumps(
            {"state": state, "src": src, "variant": variant}) + "\n")

    @property
    def source(self) -> Path:
        return self.path / self._state().get("src", "")

    def clean(self) -> bool:
        """Whole, configured, and with no variant's patch in it."""
        return (self._state().get("state") == "clean" and (self.path / "MANIFEST").is_file()
                and (self.build / "build.ninja").is_file())

    def differs(self, files: Sequence[str]) -> str:
        """The first of files whose content is not the base's; "" when all are."""
        manifest = json.loads((self.path / "MANIFEST").read_text())
        for rel in files:
            if _digest(self.source / rel) != manifest.get(rel):
                return rel
        return ""

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def make(self, source: Source, patches: Sequence[Path], flags: Sequence[str],
             python: Path, jobs: int, log: Log, failed_log: Path) -> None:
        """Extract and patch the base into this (absent) tree, configure it, build the
        emulator, and only then write MANIFEST and mark the tree clean."""
        start = time.monotonic()
        self.path.mkdir()
        with self.log.open("ab") as logf:
            src = prepare_source(source, patches, self.path, logf, log)
            self.build.mkdir()
            log(f"configure: {' '.join(flags)}")
            status = run([str(src / "configure"), f"--python={python}", *flags], logf,
                         cwd=self.build).returncode
            logf.flush()
            if status:
                raise _configure_error(self.log, failed_log, status)
            log(f"configure: done after {elapsed(start)}; build: ninja {TARGET}")
            ninja(self.build, jobs, logf, log, failed_log)
        atomic.write_text(self.path / "MANIFEST", json.dumps(_manifest(src)) + "\n")
        atomic.write_text(self.path / "TREE", json.dumps(
            {"state": "clean", "src": src.relative_to(self.path).as_posix(), "variant": ""})
            + "\n")

    @contextmanager
    def patched(self, variant: Variant, data: bytes, logf: BinaryIO, log: Log
                ) -> Iterator[None]:
        """The variant's patch (data) in the source while the block runs, reversed after.

        A patch that does not apply raises UsageError with the tree untouched (a dry run
        comes first). The tree is marked clean again only once the reverse patch worked
        and the files it touched are the base's; else it stays marked, to be made again.
        """
        name = str(variant.patch)
        apply_patch(self.source, data, name, logf, "--dry-run")
        self._mark("variant", variant.name)
        apply_patch(self.source, data, name, logf)
        try:
            yield
        finally:
            try:
                apply_patch(self.source, data, name, logf, "--reverse")
                bad = self.differs(touched_files(data))
            except UsageError as e:
                bad = str(e)
            if bad:
                log(f"kept tree {self.path} is not the base after {variant.name} ({bad}); "
                    "it is made again before its next use")
            else:
                self._mark("clean")
