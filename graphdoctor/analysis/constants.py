"""Constant values: initializers and Constant-node outputs, read lazily and never fatally.

Reading a value may touch external data that is missing or truncated (GD014 reports those); readers here
return None instead of raising, so one bad tensor never stops the other rules.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.graph import is_constant_node, iter_graph_sites
from graphdoctor.analysis.tensor_data import tensor_defect

__all__ = ["const_array", "const_tensor", "iter_constant_values", "stored_bytes"]


def const_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor behind an initializer or a Constant node's output; None for anything else.

    A Constant's `value` tensor is taken as onnx-ir's `get_const_tensor` takes it, without the check of its
    type against `TensorProtocol`, a runtime protocol: 88 µs a call, where the rules of one pass over yolov8n
    ask 700 times (0.06 s). Other Constants (value_floats, ...) and tensors of other classes go through onnx-ir."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value
    tensor = _constant_value_tensor(value)
    if tensor is not None:
        return tensor
    try:
        return ir.convenience.get_const_tensor(value)
    except (ValueError, TypeError):  # a malformed Constant node (an attribute of the wrong type; GD016 names it)
        return None


_TENSOR_CLASSES = (ir.Tensor, ir.TensorProtoTensor, ir.ExternalTensor, ir.LazyTensor, ir.PackedTensor, ir.StringTensor)


def _constant_value_tensor(value: ir.Value) -> ir.TensorProtocol | None:
    node = value.producer()
    if node is None or node.op_type != "Constant" or node.domain != "" or len(node.outputs) != 1:
        return None
    attribute = node.attributes.get("value") if len(node.attributes) == 1 else None
    if attribute is None or attribute.is_ref() or not isinstance(attribute.value, _TENSOR_CLASSES):
        return None
    attribute.value.name = value.name  # as onnx-ir names it
    return attribute.value


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of a constant, or None when it is not constant or its data cannot be read."""
    tensor = const_tensor(value)
    if tensor is None or tensor_defect(tensor):  # a payload contradicting its dims: GD016 reports it
        return None
    try:
        return tensor.numpy()
    except (OSError, ValueError, TypeError):
        return None


def iter_constant_values(graph: ir.Graph | ir.Function) -> Iterator[ir.Value]:
    """Initializers, then Constant-node outputs, of one graph."""
    if isinstance(graph, ir.Graph):
        yield from graph.initializers.values()
    for node in graph:
        if is_constant_node(node) and node.outputs:
            yield node.outputs[0]


def stored_bytes(model: ir.Model) -> int:
    """Bytes of tensor data the model stores (initializers and Constant values of every graph and function),
    each external-data range counted once: what a fix that merges or drops tensors saves."""
    total = 0
    locations: set[tuple[str, int]] = set()
    for graph, _ in iter_graph_sites(model):
        for value in iter_constant_values(graph):
            tensor = const_tensor(value)
            if tensor is None:
                continue
            if isinstance(tensor, ir.ExternalTensor):
                location = (str(tensor.location), tensor.offset or 0)
                if location in locations:
                    continue
                locations.add(location)
            try:
                total += tensor.nbytes
            except (TypeError, ValueError):  # strings and unsized types
                continue
    return total
