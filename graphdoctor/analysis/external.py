"""External data integrity: files that are missing, shorter than declared, or sized wrong for the tensor.

Only file metadata is read (stat), never the data, so checking a 2 GB model costs nothing. Locations that
escape the model's folder never get here: the loader refuses them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import onnx_ir as ir

from graphdoctor.model import iter_external_tensors

__all__ = ["ExternalDataProblem", "find_external_data_problems", "unreadable_tensor_names"]


@dataclass(frozen=True)
class ExternalDataProblem:
    tensor: str
    location: str
    kind: str  # 'missing' | 'not_a_file' | 'truncated' | 'size_mismatch' | 'hard_link'
    expected: int  # bytes the tensor needs
    available: int  # bytes the file provides at the tensor's offset (or declared length)
    offset: int = 0  # where the tensor starts in the file
    file_size: int | None = None  # None when the file is missing or not a regular file


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


def _problems_of(tensor: ir.ExternalTensor, status: os.stat_result | None) -> Iterator[ExternalDataProblem]:
    location = os.fspath(tensor.location)
    name = tensor.name or "?"
    needed = tensor.nbytes
    offset = tensor.offset or 0
    if status is None:
        yield ExternalDataProblem(name, location, "missing", needed, 0, offset)
        return
    if not stat.S_ISREG(status.st_mode):  # a directory ('' or '.'), a pipe: its size and links mean nothing
        yield ExternalDataProblem(name, location, "not_a_file", needed, 0, offset)
        return
    size = status.st_size
    if tensor.length is not None and tensor.length != needed:
        yield ExternalDataProblem(name, location, "size_mismatch", needed, tensor.length, offset, size)
    available = max(size - offset, 0)
    if available < needed:
        yield ExternalDataProblem(name, location, "truncated", needed, available, offset, size)
    if status.st_nlink > 1:  # onnx-ir refuses to read hard-linked data (a containment bypass)
        yield ExternalDataProblem(name, location, "hard_link", needed, status.st_nlink, offset, size)
