"""Dtypes and shapes of every value, by ONNX shape inference that also works on models over 2 GB.

onnx-ir's shape-inference pass serializes the graph with large initializers taken out (their types stay as
inputs), so the protobuf stays small whatever the model's size. Inference runs non-strict: a node it cannot
type (contrib ops, data-dependent shapes) leaves its outputs unknown instead of failing the whole model, and
rules treat an unknown dtype as "don't know", never as a match.

Data propagation (shape values computed through Shape/Gather/Concat) is on, except where a constant asks for
a huge tensor: ONNX's propagation materializes ConstantOfShape/Expand/Tile/Range results, and a shape of
3·10⁹ elements took 24 GB before it finished. Those models are inferred without it.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from graphdoctor.analysis.constants import const_array
from graphdoctor.analysis.graph import iter_graph_sites

__all__ = ["infer_types"]

logger = logging.getLogger(__name__)


def infer_types(model: ir.Model) -> bool:
    """Fill in value dtypes and shapes in place; False when inference failed (the model is unchanged).

    Skipped when every node output already has a dtype (a model inferred before, whose rewrites typed what
    they added): one inference round trip costs seconds on a 12,000-node graph, and fixes re-analyse after
    every change."""
    if _all_typed(model):
        return True
    try:
        data_prop = not _asks_for_huge_tensors(model)
        result = ShapeInferencePass(check_type=False, strict_mode=False, data_prop=data_prop)(model)
    except Exception as error:  # inference is a help, never a reason to stop linting
        logger.warning("shape inference failed: %s", error)
        return False
    return result.modified or True


def _all_typed(model: ir.Model) -> bool:
    return all(
        value.dtype is not None
        for graph, _ in iter_graph_sites(model)
        for node in graph
        for value in node.outputs
        if value.name
    )


_MATERIALIZING = frozenset({"ConstantOfShape", "Expand", "Tile", "Range"})
_HUGE = 1 << 24  # elements


def _asks_for_huge_tensors(model: ir.Model) -> bool:
    """Whether a constant shape, repeat count or range bound of a materializing op reaches 2^24 elements."""
    for graph, _ in iter_graph_sites(model):
        for node in graph:
            if node.op_type not in _MATERIALIZING:
                continue
            for value in node.inputs[1:] if node.op_type != "ConstantOfShape" else node.inputs[:1]:
                array = const_array(value) if value is not None and value.dtype != ir.DataType.STRING else None
                if array is not None and array.size and _too_big(node.op_type, array):
                    return True
    return False


def _too_big(op_type: str, array: np.ndarray) -> bool:
    if array.dtype.kind not in "iuf" or array.size > 64:
        return False
    values = np.abs(array.astype(np.float64))
    return float(values.max() if op_type == "Range" else np.prod(values)) >= _HUGE
