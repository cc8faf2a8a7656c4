"""A model file's graph apart from its weights, for sessions over a changed graph (statistics added, other
outputs) that leave the weights as they are.

Why: `onnx.load` then `SerializeToString` of a model whose weights are stored inside the file parses and
re-encodes every weight byte in Python's protobuf: 0.6 s and 1.2 s for ViT-B/16's 330 MB, to change a few
thousand nodes. Protobuf's encoding lets a message be split and joined instead: the concatenation of two
encoded ModelProtos is their merge, repeated fields appended. So the file is cut at the wire level into the
graph without its initializers (parsed: small) and the initializers' own bytes (copied once, never parsed),
and the session reads `graph.SerializeToString() + weights`.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from graphdoctor.protowire import MODEL_GRAPH, field_header, rewrite_main_graph

__all__ = ["GraphApart", "load_apart"]

_GRAPH_WEIGHTS = frozenset({5, 15})  # GraphProto.initializer, GraphProto.sparse_initializer


@dataclass
class GraphApart:
    """`graph`: the model without its main graph's initializers, to change; the initializers stay in the
    file at `path`, at the byte ranges `weights`, until `serialized` joins them to the changed graph."""

    graph: onnx.ModelProto
    path: Path
    weights: list[tuple[int, int]]

    def serialized(self) -> bytes:
        """The changed model with its weights, what ONNX Runtime loads from bytes: one copy of the weights,
        straight from the file's pages."""
        light = self.graph.SerializeToString()
        if not self.weights:
            return light
        length = sum(end - begin for begin, end in self.weights)
        header = field_header(MODEL_GRAPH, length)
        with (
            open(self.path, "rb") as file,
            mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data,
            memoryview(data) as view,
        ):
            parts = [view[begin:end] for begin, end in self.weights]
            try:
                return b"".join([light, header, *parts])
            finally:  # the map closes only once no view of it is left
                for part in parts:
                    part.release()


def load_apart(path: str | os.PathLike[str]) -> GraphApart:
    """Cut the model file at `path` into its graph and its weights (see the module docstring). External data
    stays where it is: the caller tells the session its folder. Raises onnx.DecodeError (and ValueError) on a
    file that is not an encoded ModelProto. The file must not change before `serialized`."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:  # mmap cannot map an empty file
            return GraphApart(onnx.ModelProto(), Path(path), [])
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            light, weights = _cut(data)
    return GraphApart(onnx.ModelProto.FromString(light), Path(path), weights)


def _cut(data: mmap.mmap) -> tuple[bytes, list[tuple[int, int]]]:
    """The encoded model less its main graph's weights, and the byte ranges of those weights' fields."""
    weights: list[tuple[int, int]] = []

    def leave_weights(number: int, begin: int, _payload: int, end: int) -> bytes:
        if number in _GRAPH_WEIGHTS:
            weights.append((begin, end))
            return b""
        return data[begin:end]

    return rewrite_main_graph(data, leave_weights), weights
