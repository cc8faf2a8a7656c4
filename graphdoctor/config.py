"""Project configuration: `[tool.graphdoctor]` in pyproject.toml, or a `.graphdoctor.toml`.

Found by walking up from the model's folder (as black and ruff do); the command line overrides the file,
the file overrides the defaults. Unknown keys are an error, not a warning: a misspelt `ignroe` must not
silently lint with every rule.

    [tool.graphdoctor]
    fail-on = "warning"
    [tool.graphdoctor.lint]
    ignore = ["GD011"]
    [tool.graphdoctor.fix]
    ignore = ["GD002"]
    [tool.graphdoctor.rules.duplicate-initializers]
    min-bytes = 4096
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphdoctor.errors import GraphDoctorError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "find_config", "load_config"]

COMMON_KEYS = {"select", "ignore", "fail_on", "format"}
COMMAND_KEYS = {"lint": COMMON_KEYS | {"exit_zero"}, "fix": COMMON_KEYS | {"unsafe_fixes"}}


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # for the command in question
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def find_config(start: Path) -> Path | None:
    """The nearest .graphdoctor.toml, or pyproject.toml with a [tool.graphdoctor] table, above `start`."""
    folder = start.resolve()
    folder = folder if folder.is_dir() else folder.parent
    for candidate in (folder, *folder.parents):
        dedicated = candidate / ".graphdoctor.toml"
        if dedicated.is_file():
            return dedicated
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and "graphdoctor" in _read(pyproject).get("tool", {}):
            return pyproject
    return None


def load_config(path: Path | None, command: str) -> Config:
    """Settings for `command` (top level merged with [..command]) and per-rule options."""
    if path is None:
        return Config()
    table = _read(path)
    if path.name == "pyproject.toml":
        table = table.get("tool", {}).get("graphdoctor", {})
    table = _normalise(table)
    rules = table.pop("rules", {})
    sections = {name: table.pop(name, {}) for name in COMMAND_KEYS}
    _check_keys(path, "", table, COMMON_KEYS)
    for name, section in sections.items():
        _check_keys(path, name, section, COMMAND_KEYS[name])
    if not isinstance(rules, dict) or not all(isinstance(v, dict) for v in rules.values()):
        raise GraphDoctorError(f"{path}: [rules] must hold one table per rule name")
    settings = {**table, **sections.get(command, {})}
    return Config(path=path, settings=settings, rule_options={k: dict(v) for k, v in rules.items()})


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise GraphDoctorError(f"{path}: cannot read configuration: {error}") from None


def _normalise(table: dict[str, Any]) -> dict[str, Any]:
    """Dashes to underscores in option keys (rule names keep theirs)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key == "rules":
            out[key] = value
        else:
            out[key.replace("-", "_")] = _normalise(value) if isinstance(value, dict) else value
    return out


def _check_keys(path: Path, section: str, table: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        where = f"[tool.graphdoctor{'.' + section if section else ''}]"
        raise GraphDoctorError(f"{path}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")
