"""Writing a file so that a reader, or an interrupted run, never sees half of it.

One helper, `staged`, for everything tapmig publishes: a temporary path beside
the target that is renamed over it only when the writer finished. A rename
within one directory is atomic, so readers see the old content or the new,
never a part.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def staged(path: Path, *, resumable: bool = False) -> Iterator[Path]:
    """Yield a path beside `path` to write (a file, or a directory to fill); on success
    rename it over `path`, on any failure (Ctrl-C too) remove it.

    resumable: the staging file is `<name>.part`, the same for every attempt and
    kept on failure, so that an interrupted download resumes where it stopped.
    """
    tmp = (path.with_name(path.name + ".part") if resumable
           else path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    try:
        yield tmp
        tmp.replace(path)
    finally:
        if not resumable:
            _remove(tmp)


def write_bytes(path: Path, data: bytes) -> None:
    with staged(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())
