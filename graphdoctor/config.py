"""Project configuration: `[tool.graphdoctor]` in pyproject.toml, or a `.graphdoctor.toml`.

Found by walking up from the model's folder (as black and ruff do); the command line overrides the file,
the file overrides the defaults. Unknown keys are an error, not a warning: a misspelt `ignroe` must not
silently lint with every rule.

    [tool.graphdoctor]
    fail-on = "warning"
    target = "tensorrt-8.6"
    [tool.graphdoctor.lint]
    ignore = ["GD011"]
    [tool.graphdoctor.fix]
    ignore = ["GD002"]
    [tool.graphdoctor.rules.duplicate-initializers]
    min-bytes = 4096
"""

from __future__ import annotations

import os
import stat
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

COMMON_KEYS = {"select", "ignore", "fail_on", "format", "target"}
COMMAND_KEYS = {"lint": COMMON_KEYS | {"exit_zero"}, "fix": COMMON_KEYS | {"unsafe_fixes"}}
MAX_BYTES = 2**20  # a configuration file is text a person writes; a bigger one is not read


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # for the command in question
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def find_config(start: Path) -> Path | None:
    """The nearest .graphdoctor.toml, or pyproject.toml with a [tool.graphdoctor] table, above `start`."""
    try:
        folder = start.resolve()
    except (OSError, RuntimeError):  # a symlink loop: loading the model reports it
        return None
    folder = folder if folder.is_dir() else folder.parent
    for candidate in (folder, *folder.parents):
        dedicated = candidate / ".graphdoctor.toml"
        if dedicated.is_file():
            return dedicated
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and "graphdoctor" in _as_table(pyproject, _read(pyproject).get("tool", {}), "tool"):
            return pyproject
    return None


def load_config(path: Path | None, command: str) -> Config:
    """Settings for `command` (top level merged with [..command]) and per-rule options."""
    if path is None:
        return Config()
    table = _read(path)
    if path.name == "pyproject.toml":
        tool = _as_table(path, table.get("tool", {}), "tool")
        table = _as_table(path, tool.get("graphdoctor", {}), "tool.graphdoctor")
    table = _normalise(table)
    rules = table.pop("rules", {})
    sections = {name: _as_table(path, table.pop(name, {}), f"tool.graphdoctor.{name}") for name in COMMAND_KEYS}
    _check_keys(path, "", table, COMMON_KEYS)
    for name, section in sections.items():
        _check_keys(path, name, section, COMMAND_KEYS[name])
    if not isinstance(rules, dict) or not all(isinstance(v, dict) for v in rules.values()):
        raise GraphDoctorError(f"{path}: [rules] must hold one table per rule name")
    settings = {**table, **sections.get(command, {})}
    return Config(path=path, settings=settings, rule_options={k: dict(v) for k, v in rules.items()})


def _read(path: Path) -> dict[str, Any]:
    """Parse a TOML file; whatever is wrong with it is one line naming it. Checked with stat first: a FIFO
    would block the read forever, a device or a huge file would never end."""
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            kind = "a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file (a pipe, socket or device)"
            raise GraphDoctorError(f"{path}: cannot read configuration: it is {kind}")
        if status.st_size > MAX_BYTES:
            raise GraphDoctorError(
                f"{path}: cannot read configuration: {status.st_size:,} bytes, over the {MAX_BYTES:,} read"
            )
        text = path.read_bytes().decode("utf-8")
        return tomllib.loads(text)
    except OSError as error:
        raise GraphDoctorError(f"{path}: cannot read configuration: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        where = f"byte 0x{error.object[error.start]:02x} at offset {error.start}"
        raise GraphDoctorError(f"{path}: cannot read configuration: not UTF-8 text ({where})") from None
    except tomllib.TOMLDecodeError as error:
        raise GraphDoctorError(f"{path}: cannot read configuration: {error}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise GraphDoctorError(f"{path}: cannot read configuration: values nested too deeply to parse") from None


def _as_table(path: Path, value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise GraphDoctorError(f"{path}: [{name}] must be a table, got {type(value).__name__} {value!r:.40}")
    return value


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
    """Only known keys, each with a value of its type: `unsafe-fixes = "no"` must not turn unsafe fixes on."""
    where = f"[tool.graphdoctor{'.' + section if section else ''}]"
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise GraphDoctorError(f"{path}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")
    for key, value in table.items():
        expected, valid = _KINDS[key]
        if not valid(value):
            shown = key.replace("_", "-")
            raise GraphDoctorError(f"{path}: {shown} in {where} must be {expected}, got {value!r:.60}")


def _is_strings(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, str) for item in value))


_KINDS = {
    "select": ("a string or a list of strings", _is_strings),
    "ignore": ("a string or a list of strings", _is_strings),
    "fail_on": ("a string", lambda value: isinstance(value, str)),
    "target": ("a string", lambda value: isinstance(value, str)),
    "format": ("a string", lambda value: isinstance(value, str)),
    "exit_zero": ("true or false", lambda value: isinstance(value, bool)),
    "unsafe_fixes": ("true or false", lambda value: isinstance(value, bool)),
}
