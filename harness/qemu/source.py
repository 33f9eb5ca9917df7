"""A QEMU source (tarball, plain tree or git tree) plus patches, checked and prepared.

Stdlib only, like harness.qemu.build, so ``ci/build-qemu`` can run before the venv exists.

Sources: a tarball (one top directory), a plain directory (copied without
``.git``, ``__pycache__`` and meson build dirs, so patching never touches the
user's tree), or a git tree: its committed HEAD is exported with ``git
archive`` and keyed by its tree id, so a build names exactly one commit;
uncommitted changes are reported and left out. An mbox applies message by
message, so a failure names the patch that did not apply.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from harness.errors import BuildInputError, HostError, UsageError
from harness.vocabulary import Log

TARBALL_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar")
PATCH_SUFFIXES = (".patch", ".mbox", ".diff")
_SKIP_NAMES = {".git", "__pycache__"}
_FROM_LINE = re.compile(  # the mbox separator, e.g. "From 1a2b... Mon Sep 17 00:00:00 2001"
    rb"^From \S+ +[A-Z][a-z]{2} [A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d \d{4}[ \t]*$", re.M
)


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
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
    proc = run(["git", "-c", f"safe.directory={src}", "-C", str(src), *args], logf)
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
            what = ("x " if os.access(path, os.X_OK) else "f ") + sha256_file(path)
        h.update(f"{rel}\0{what}\n".encode())
    return h.hexdigest()


def inspect_source(source: Path) -> Source:
    """Check that source exists and looks like QEMU, and identify its content."""
    if not source.exists():
        raise BuildInputError(f"QEMU source {source} does not exist; pass a tarball or tree",
                              str(source))
    if source.is_file():
        if not source.name.endswith(TARBALL_SUFFIXES):
            raise BuildInputError(f"{source} is not a .tar.xz/.tar.gz/.tar.bz2 QEMU tarball",
                                  str(source))
        return Source(source, "tarball", sha256_file(source))
    if (source / ".git").exists():
        if _git(source, "cat-file", "-e", "HEAD:configure")[0]:
            raise BuildInputError(f"{source} is not a QEMU git tree: HEAD has no configure",
                                  str(source))
        tree, commit = _git(source, "rev-parse", "HEAD^{tree}", "HEAD")[1].split()
        return Source(source, "git", tree, commit)
    if not (source / "configure").is_file():
        raise BuildInputError(f"{source} is not a QEMU source tree: no configure at its top",
                              str(source))
    return Source(source, "dir", _dir_digest(source))


def expand_patches(paths: Sequence[Path]) -> list[Path]:
    """Patch files in order; a directory stands for its *.patch/*.mbox/*.diff, sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.name.endswith(PATCH_SUFFIXES))
            if not found:
                raise BuildInputError(f"patch directory {path} has no *.patch/*.mbox/*.diff",
                                      str(path))
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise BuildInputError(f"patch {path} does not exist; check the --patch path",
                                  str(path))
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


def apply_patch(tree: Path, data: bytes, name: str, logf: BinaryIO, *flags: str) -> None:
    """Apply one diff with patch -p1 and flags (--dry-run, --reverse); on failure say
    which patch and which files."""
    cmd = ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch",
           "--reject-file=-", "-d", str(tree), *flags]
    proc = run(cmd, data=data, env={**os.environ, "LC_ALL": "C"})
    logf.write(f"== patch {' '.join([*flags, name])}\n".encode() + proc.stdout + proc.stderr)
    if proc.returncode:
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        why = ", ".join(_failures(text)) or (text.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"patch {name} does not apply: {why}; rebase or drop it")


def run(cmd: list[str], logf: BinaryIO | None = None, *, data: bytes | None = None,
         cwd: Path | None = None, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[bytes]:
    """Run cmd, its output into logf (or captured); a missing tool is a HostError."""
    out = logf if logf is not None else subprocess.PIPE
    err = subprocess.STDOUT if logf is not None else subprocess.PIPE
    try:
        return subprocess.run(cmd, input=data, stdout=out, stderr=err, cwd=cwd, env=env,
                              check=False)
    except FileNotFoundError:
        raise HostError(f"{cmd[0]} not found; install it (ci/build-qemu does)") from None


def prepare_source(
    source: Source, patches: Sequence[Path], work: Path, logf: BinaryIO, log: Log = log_stderr
) -> Path:
    """Put a private copy of the source in work, apply the patches, return its top dir."""
    log(f"extract: {source.path} ({source.kind})")
    if source.kind == "tarball":
        (work / "extract").mkdir()
        cmd = ["tar", "-xf", str(source.path), "-C", str(work / "extract")]
        if run(cmd, logf).returncode:
            raise UsageError(f"cannot extract {source.path}; is the tarball complete?")
        tops = list((work / "extract").iterdir())
        tree = tops[0] if len(tops) == 1 and tops[0].is_dir() else work / "extract"
        if not (tree / "configure").is_file():
            raise BuildInputError(f"{source.path} is not a QEMU tarball: no configure at its "
                                  "top", str(source.path))
    elif source.kind == "git":
        if _git(source.path, "status", "--porcelain", "--untracked-files=no")[1]:
            log(f"note: uncommitted changes in {source.path} are NOT built (HEAD only)")
        tree, tar = work / "src", work / "src.tar"
        if (_git(source.path, "archive", f"--output={tar}", "--prefix=src/", "HEAD", logf=logf)[0]
                or run(["tar", "-xf", str(tar), "-C", str(work)], logf).returncode):
            raise UsageError(f"cannot export HEAD of {source.path} with git archive")
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
