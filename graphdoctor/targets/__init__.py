"""Deployment targets: the runtime and version a model is checked for (`--target`, `target = ...`).

What a rule knows about the runtime depends on it: TensorRT 9.0 and later keep INT64 where 8.x cast it to
INT32, each TensorRT version's ONNX parser has its own importers and restrictions (targets/tensorrt.py), and
ONNX Runtime runs what ONNX defines. A target names a TensorRT major version (`tensorrt-10`: the newest 10.x
whose parser we read, 10.15) or an exact minor (`tensorrt-10.3`, what JetPack 6 ships), so findings about
what arrived during 10.x can say which minor a family target assumes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from graphdoctor.errors import GraphDoctorError

__all__ = ["DEFAULT_TARGET", "TARGET_CHOICES", "Target", "as_target", "parse_target", "version_text"]

TENSORRT = "tensorrt"
ONNXRUNTIME = "onnxruntime"
# The newest minor of each TensorRT major whose parser was read (research/tensorrt.md); a family target
# assumes it.
_NEWEST_MINOR = {8: 6, 10: 15, 11: 0}
_FAMILY_FIRST_MINOR = {8: 6, 10: 0, 11: 0}
TARGET_CHOICES = ("tensorrt-8.6", "tensorrt-10", "tensorrt-11", "onnxruntime")
_PATTERN = re.compile(r"tensorrt-(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Target:
    """A runtime and, for TensorRT, the version (major, minor) whose parser decides what builds."""

    name: str  # canonical: 'tensorrt-10', 'tensorrt-10.3', 'onnxruntime'
    runtime: str
    version: tuple[int, int] = (0, 0)
    family: bool = False  # 'tensorrt-10': any 10.x; the facts are those of the newest minor read

    @property
    def is_tensorrt(self) -> bool:
        return self.runtime == TENSORRT

    @property
    def int64_native(self) -> bool:
        """TensorRT 9.0 dropped the cast of INT64 to INT32 (onnx-tensorrt Changelog, 9.0 EA); ONNX Runtime
        never had one."""
        return not self.is_tensorrt or self.version >= (9, 0)

    def accepts_from(self, version: tuple[int, int] | None) -> bool:
        """Whether a TensorRT feature that arrived in `version` (None: never) is there in this target."""
        return version is not None and self.version >= version

    def earliest(self) -> Target | None:
        """For a family target, its first minor (tensorrt-10 -> 10.0): what arrived later in the family is
        reported as needing that later minor (JetPack 6 ships 10.3). None for exact targets."""
        major = self.version[0]
        if not self.family or self.version[1] == _FAMILY_FIRST_MINOR[major]:
            return None
        return Target(f"tensorrt-{major}.{_FAMILY_FIRST_MINOR[major]}", TENSORRT, (major, _FAMILY_FIRST_MINOR[major]))

    @property
    def label(self) -> str:
        """How reports name it: 'TensorRT 10 (10.x; read from 10.15)', 'TensorRT 8.6', 'ONNX Runtime'."""
        if not self.is_tensorrt:
            return "ONNX Runtime"
        major = self.version[0]
        if self.family and major == 10:
            return f"TensorRT 10 (10.x; what 10.{_NEWEST_MINOR[10]} accepts)"
        return f"TensorRT {version_text(self.version) if not self.family else major}"

    def __str__(self) -> str:
        return self.name


def version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def parse_target(text: str) -> Target:
    """'tensorrt-8.6', 'tensorrt-10', 'tensorrt-10.N', 'tensorrt-11' or 'onnxruntime'; anything else is one
    line naming the choices."""
    name = text.strip().lower()
    if name == ONNXRUNTIME:
        return Target(name, ONNXRUNTIME)
    match = _PATTERN.fullmatch(name)
    if match:
        major, minor = int(match.group(1)), match.group(2)
        if major in _NEWEST_MINOR and minor is None and major != 8:
            return Target(f"tensorrt-{major}", TENSORRT, (major, _NEWEST_MINOR[major]), family=True)
        version = (major, _NEWEST_MINOR[major] if minor is None else int(minor)) if major in _NEWEST_MINOR else None
        if version is not None and _FAMILY_FIRST_MINOR[major] <= version[1] <= _NEWEST_MINOR[major]:
            return Target(f"tensorrt-{version_text(version)}", TENSORRT, version)  # 'tensorrt-8' is 8.6
    raise GraphDoctorError(
        f"unknown target '{text}' (choose from {', '.join(TARGET_CHOICES)}; or an exact TensorRT 10 minor,"
        f" tensorrt-10.0 to tensorrt-10.{_NEWEST_MINOR[10]})"
    )


def as_target(target: str | Target) -> Target:
    """A Target from the API's argument, which may be its name."""
    return target if isinstance(target, Target) else parse_target(target)


DEFAULT_TARGET = parse_target("tensorrt-10")
