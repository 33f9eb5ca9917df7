"""Where tapmig keeps what is expensive to make: guests, QEMU builds, assets, KVM verdicts.

Stdlib only, because ci/build-qemu uses it before the project venv exists.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache() -> Path:
    """$TAPMIG_CACHE, else $XDG_CACHE_HOME/tapmig, else ~/.cache/tapmig: by default outside
    any clone, so a fresh checkout reuses earlier builds."""
    if env := os.environ.get("TAPMIG_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tapmig"
