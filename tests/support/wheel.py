"""tapmig as a user gets it: this checkout's wheel, built once per session and installed
into a fresh venv outside the clone, so that a test sees what `pip install tapmig` gives
and nothing of the clone (no PYTHONPATH, run from `/`).

The wheel is built from a copy of the tree, so the build leaves no `build/` or
`*.egg-info` in the clone (a stale `build/lib` would even leak removed modules into a
later wheel). Dependencies come from PyPI, or pip's cache when it has them.

Building and installing take half a minute, and ci/test runs two pytest sessions
(the tests without a guest, then the guest tests) that both need it: the wheel and
its venv are kept in the tapmig cache under the hash of every source file, so a
session finds the one of this very tree, or builds it (one session at a time, under
a lock) and removes those of other trees.

The fixture `tapmig_installed` is registered for the whole suite by the root
conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cache import default_cache
from tests.support import REPO

# What a source checkout has that a wheel must not be built from (the CI jobs keep
# their caches in the project: .tapmig-cache, .cache).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".mypy_cache", ".ruff_cache", ".pytest_cache", "out",
                                    ".tapmig-cache", ".cache", ".baseline")
PIP_TIMEOUT = 600  # a cold pip cache downloads setuptools and the dependencies


@dataclass(frozen=True)
class Installed:
    """The wheel and the venv it is installed in (with pytest, for plugin users)."""

    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """This environment without any route back to the clone, the venv first on PATH."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return {**env, "PATH": f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
                **(extra or {})}

    def run(self, program: str, *args: str, cwd: Path = Path("/"), timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """A program of the venv (`tapmig`, `python`, `pytest`), run from `cwd`."""
        return subprocess.run([str(self.venv / "bin" / program), *args], cwd=cwd,
                              env=self.env(env), capture_output=True, text=True,
                              timeout=timeout, check=False)


def _pip(python: Path | str, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stderr[-3000:]}"


def build_wheel(work: Path) -> Path:
    """The wheel of the tree as it is now, uncommitted changes included."""
    tree, dist = work / "src", work / "dist"
    shutil.copytree(REPO, tree, symlinks=True, ignore=NOT_SOURCE)
    _pip(sys.executable, "wheel", "--no-deps", "-q", "-w", str(dist), str(tree))
    [wheel] = dist.glob("tapmig-*.whl")
    shutil.rmtree(tree)
    return wheel


def install(wheel: Path, venv: Path, *extra: str) -> Installed:
    """A fresh venv with the wheel (and `extra` requirements) installed."""
    done = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    _pip(venv / "bin" / "python", "install", "-q", str(wheel), *extra)
    return Installed(wheel, venv)


def source_files(root: Path) -> Iterator[Path]:
    """What build_wheel copies (NOT_SOURCE left out), in a stable order."""
    for top, dirs, files in os.walk(root):
        ignored = NOT_SOURCE(top, [*dirs, *files])
        dirs[:] = sorted(d for d in dirs if d not in ignored)
        yield from (Path(top) / f for f in sorted(files) if f not in ignored)
        # A link to a directory is copied as a link (symlinks=True): its target counts.
        yield from (Path(top) / d for d in dirs if (Path(top) / d).is_symlink())


def tree_key(root: Path = REPO) -> str:
    """The hash of every source file's path and content (a link's target)."""
    digest = hashlib.sha256()
    for path in source_files(root):
        data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        digest.update(f"{path.relative_to(root)}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def tapmig_installed() -> Installed:
    """This tree's wheel in its venv, built at most once per tree; every user only reads."""
    parent = default_cache() / "test-wheel"
    parent.mkdir(parents=True, exist_ok=True)
    work = parent / tree_key()
    with open(parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel session waits for the build
        if not (work / "ok").exists():
            for old in parent.iterdir():
                if old.is_dir():
                    shutil.rmtree(old)
            work.mkdir()
            install(build_wheel(work), work / "venv", "pytest")
            (work / "ok").touch()
    [wheel] = (work / "dist").glob("tapmig-*.whl")
    return Installed(wheel, work / "venv")
