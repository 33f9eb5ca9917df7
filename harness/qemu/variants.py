"""QEMU variants: one extra patch each, applied on a base build (a source plus patches).

Stdlib only, like harness.qemu.build. A variant is named after its patch file
(``reopen-tap.patch`` is ``reopen-tap``) and cached under its own key: the base's key
and the patch's sha256, so editing a patch builds it afresh and the base is shared.
The project's own variants are the patches in ``qemu-variants/``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import BuildInputError
from harness.qemu.source import PATCH_SUFFIXES, expand_patches, sha256_file

BASE = "base"  # the name the CLI prints the base's binary under; no variant may take it
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEADER = re.compile(rb"^--- (\S+)[^\n]*\n\+\+\+ (\S+)", re.M)  # a file's two header lines


@dataclass(frozen=True)
class Variant:
    """A variant's patch and the name its binary is known by."""

    name: str
    patch: Path


@dataclass(frozen=True)
class Planned:
    """Where a variant's binary lives in the cache, and whether it is already there."""

    variant: Variant
    sha256: str  # of the patch as planned: what the key stands for
    key: str
    binary: Path
    done: bool


def variant_name(patch: Path) -> str:
    """The patch file's name without its suffix: what tests and the CLI call it."""
    name = patch.name
    for suffix in PATCH_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def list_variants(paths: Sequence[Path]) -> list[Variant]:
    """The variants given as patch files or folders (their patches, sorted), in order.

    Each name must be unique, not "base", and a plain word, so that the CLI's
    ``NAME PATH`` lines stay machine-readable.
    """
    out: list[Variant] = []
    seen: dict[str, Path] = {}
    for path in paths:
        if not path.exists():
            raise BuildInputError(f"variant {path} does not exist; check the --variant path",
                                  str(path))
    for patch in expand_patches(paths):
        name = variant_name(patch)
        if name == BASE or not _NAME.fullmatch(name):
            raise BuildInputError(f"variant patch {patch} has an unusable name; rename it "
                                  "to letters, digits, '.', '_' or '-', not base.patch",
                                  str(patch))
        if name in seen:
            if seen[name].resolve() == patch.resolve():
                continue
            raise BuildInputError(f"variants {seen[name]} and {patch} have the same name "
                                  f"{name}; rename one", str(patch))
        seen[name] = patch
        out.append(Variant(name, patch))
    return out


def variant_key(base_key: str, patch_sha256: str) -> str:
    """The variant's cache key: its base's key and its patch's content."""
    return hashlib.sha256(f"{base_key}\0{patch_sha256}".encode()).hexdigest()[:24]


def finished(binary: Path) -> bool:
    """Whether a build's binary is published: its DONE, beside bin/, comes with it."""
    return (binary.parent.parent / "DONE").is_file() and binary.is_file()


def plan_variants(base_key: str, variants: Sequence[Variant], root: Path,
                  target: str) -> list[Planned]:
    """Each variant's key and binary (target) under root, the cache's qemu dir, and
    whether the cache has it finished."""
    out: list[Planned] = []
    for v in variants:
        sha = sha256_file(v.patch)
        key = variant_key(base_key, sha)
        binary = root / key / "bin" / target
        out.append(Planned(v, sha, key, binary, finished(binary)))
    return out


def touched_files(diff: bytes) -> list[str]:
    """The files a -p1 diff changes, creates or deletes, in order, each once."""
    out: list[str] = []
    for m in _HEADER.finditer(diff):
        old, new = (g.decode(errors="replace") for g in m.groups())
        path = old if new == "/dev/null" else new
        rel = path.split("/", 1)[1] if "/" in path else path
        if rel not in out:
            out.append(rel)
    return out
