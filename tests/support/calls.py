"""Calls of tapmig's own functions, counted: each is wrapped around the real function,
so the work is done as always and only how often is observed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest


def count_calls(monkeypatch: pytest.MonkeyPatch, module: ModuleType,
                *names: str) -> Counter[str]:
    """Count the calls of module.NAME for each name, as the module's own code (which
    looks the name up in its globals) makes them."""
    calls: Counter[str] = Counter()
    for name in names:
        monkeypatch.setattr(module, name, _counted(calls, name, getattr(module, name)))
    return calls


def _counted(calls: Counter[str], name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return real(*args, **kwargs)
    return counted
