"""Constant values: initializers and Constant-node outputs, read lazily and never fatally.

Reading a value may touch external data that is missing or truncated (GD014 reports those); readers here
return None instead of raising, so one bad tensor never stops the other rules.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

__all__ = ["const_array", "const_tensor", "iter_constant_values"]


def const_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor behind an initializer or a Constant node's output; None for anything else."""
    if value is None:
        return None
    try:
        return ir.convenience.get_const_tensor(value)
    except ValueError:  # malformed Constant node
        return None


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of a constant, or None when it is not constant or its data cannot be read."""
    tensor = const_tensor(value)
    if tensor is None:
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
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.outputs:
            yield node.outputs[0]
