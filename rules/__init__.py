"""The built-in rules, one module each, registered as the `builtin` plugin of the graphdoctor.rules group.

Every public module of this package is a rule (shared helpers live in graphdoctor.analysis), so adding a
rule is adding a module: `RULES` lists them all, in code order.
"""

from __future__ import annotations

import importlib
import pkgutil

__all__ = ["RULES"]

RULES = sorted(
    (
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    ),
    key=lambda module: module.META.code,
)
