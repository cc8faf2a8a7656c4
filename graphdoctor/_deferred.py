"""Defer sympy until something uses it: onnx-ir imports it at module level for symbolic dimension arithmetic,
which graphdoctor's commands do not ask for, and the import costs 0.45–0.7 s of every command.

`sympy` and onnx-ir's expression parser (which reads sympy attributes as it is imported) stand in
`sys.modules` as placeholders holding their real specs, so `import sympy` binds the placeholder without
loading anything. The first attribute asked of either imports the real module and forwards to it from then
on: behaviour is unchanged, only the cost moves to where it is needed. (The standard library's LazyLoader
cannot do this on Python 3.11: the import statement itself reads `__spec__`, which loads the module.)
Nothing is deferred when either module is already imported or cannot be found.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

__all__ = ["defer_sympy"]

_DEFERRED = ("sympy", "onnx_ir._symbolic_shapes")


def defer_sympy() -> None:
    if any(name in sys.modules for name in (*_DEFERRED, "onnx_ir")):
        return
    specs = [_find_spec(name) for name in _DEFERRED]
    if any(spec is None for spec in specs):
        return
    for spec in specs:
        sys.modules[spec.name] = _Placeholder(spec)


class _Placeholder(types.ModuleType):
    """A module not imported yet: its spec is real (the import system reads it); anything else imports it."""

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__(spec.name)
        self.__spec__ = spec

    def __getattr__(self, attribute: str):
        module = self.__dict__.get("_graphdoctor_module")
        if module is None:
            module = self.__dict__["_graphdoctor_module"] = _imported(self)
        return getattr(module, attribute)


def _imported(placeholder: _Placeholder) -> types.ModuleType:
    name = placeholder.__spec__.name
    if sys.modules.get(name) is placeholder:
        del sys.modules[name]
    return importlib.import_module(name)


def _find_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """The module's spec, found without importing its package (which would import sympy already)."""
    package, _, _ = name.rpartition(".")
    try:
        if not package:
            return importlib.util.find_spec(name)
        package_spec = importlib.util.find_spec(package)
        locations = package_spec.submodule_search_locations if package_spec is not None else None
        return importlib.machinery.PathFinder.find_spec(name, locations) if locations else None
    except (ImportError, ValueError):
        return None
