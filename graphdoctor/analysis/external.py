"""External data integrity: files that are missing, shorter than declared, or sized wrong for the tensor.

Only file metadata is read (stat), never the data, so checking a 2 GB model costs nothing. Locations that
escape the model's folder never get here: the loader refuses them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import onnx_ir as ir

from graphdoctor.model import iter_external_tensors

__all__ = ["ExternalDataProblem", "find_external_data_problems", "unreadable_tensor_names"]


@dataclass(frozen=True)
class ExternalDataProblem:
    tensor: str
    location: str
    kind: str  # 'missing' | 'truncated' | 'size_mismatch' | 'hard_link'
    expected: int  # bytes the tensor needs
    available: int  # bytes the file provides at the tensor's offset (or declared length)


def find_external_data_problems(model: ir.Model) -> list[ExternalDataProblem]:
    sizes: dict[str, os.stat_result | None] = {}
    problems = []
    for tensor in iter_external_tensors(model):
        path = tensor.path
        if path not in sizes:
            sizes[path] = _stat(path)
        problems.extend(_problems_of(tensor, sizes[path]))
    return problems


def unreadable_tensor_names(problems: list[ExternalDataProblem]) -> frozenset[str]:
    return frozenset(p.tensor for p in problems)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _problems_of(tensor: ir.ExternalTensor, stat: os.stat_result | None) -> Iterator[ExternalDataProblem]:
    location = os.fspath(tensor.location)
    name = tensor.name or "?"
    needed = tensor.nbytes
    offset = tensor.offset or 0
    if stat is None:
        yield ExternalDataProblem(name, location, "missing", needed, 0)
        return
    if tensor.length is not None and tensor.length != needed:
        yield ExternalDataProblem(name, location, "size_mismatch", needed, tensor.length)
    available = max(stat.st_size - offset, 0)
    if available < needed:
        yield ExternalDataProblem(name, location, "truncated", needed, available)
    if stat.st_nlink > 1:  # onnx-ir refuses to read hard-linked data (a containment bypass)
        yield ExternalDataProblem(name, location, "hard_link", needed, stat.st_nlink)
