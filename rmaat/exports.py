"""Lazy package exports (PEP 562) for the packages whose import must stay cheap (no torch).

    _EXPORTS = {"build_model": "rmaat.encoder.model", ...}
    __all__, __getattr__ = lazy_exports(__name__, _EXPORTS)

Each public name is imported from its defining module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], object]]:
    """(``__all__``, module ``__getattr__``) of ``package``, whose ``exports`` maps names to modules."""

    def __getattr__(name: str) -> object:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(exports), __getattr__
