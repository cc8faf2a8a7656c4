"""Dtypes and shapes of every value, by ONNX shape inference that also works on models over 2 GB.

The graph is serialized without its large initializers (they become typed graph inputs), so the protobuf
stays small whatever the model's size, and ONNX's C++ inference types it. Its results are copied back by
walking the inferred graph beside ours, node for node: no second model is built, and nothing is quadratic
(onnx-ir's own pass tests list membership per initializer and deserializes the whole inferred model, 3 s of
a 12,400-node chain). Inference runs non-strict: a node it cannot type (contrib ops, data-dependent shapes)
leaves its outputs unknown instead of failing the whole model, and rules treat an unknown dtype as "don't
know", never as a match.

Data propagation (shape values computed through Shape/Gather/Concat) is on, except where a constant asks for
a huge tensor: ONNX's propagation materializes ConstantOfShape/Expand/Tile/Range results, and a shape of
3·10⁹ elements took 24 GB before it finished. Nor where a declared type is huge: propagating through a Slice
whose starts (or data) are declared [2^40] grows without bound (3.6 GB and counting; [2^24] takes 4 s), as
a value_info of 10^12 elements may. Those models are inferred without it.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnx_ir as ir

from graphdoctor.analysis.constants import const_array
from graphdoctor.analysis.graph import iter_graph_sites

__all__ = ["infer_types"]

logger = logging.getLogger(__name__)

_INLINE_BYTES = 1024  # initializers up to this size go to inference: shape arithmetic reads them
_UNTYPED = "graphdoctor.untyped_after_inference"  # model.meta key: names inference could not type


def infer_types(model: ir.Model) -> bool:
    """Fill in value dtypes and shapes in place; False when inference failed (the model is unchanged).

    Skipped when no value lacks a dtype that the last inference could have given it (a model inferred
    before, whose rewrites typed what they added): fixes re-analyse after every change, and a model with
    contrib ops would otherwise be inferred again each time."""
    untyped = _untyped_names(model)
    if untyped <= model.meta.get(_UNTYPED, frozenset()):
        return True
    try:
        data_prop = not (_asks_for_huge_tensors(model) or _declares_huge_tensors(model))
        inferred = _inferred_proto(model, data_prop=data_prop)
    except Exception as error:  # inference is a help, never a reason to stop linting
        logger.warning("shape inference failed: %s", error)
        return False
    _copy_types(model.graph, inferred.graph)
    model.meta[_UNTYPED] = _untyped_names(model)
    return True


def _untyped_names(model: ir.Model) -> frozenset[str]:
    return frozenset(
        value.name
        for graph, _ in iter_graph_sites(model)
        for node in graph
        for value in node.outputs
        if value.name and value.type is None
    )


def _inferred_proto(model: ir.Model, data_prop: bool) -> onnx.ModelProto:
    """The model, less its large initializers' bytes, as ONNX shape inference types it."""
    graph = model.graph
    inputs, initializers = list(graph.inputs), list(graph.initializers.values())
    declared = {id(value) for value in inputs}
    try:
        for value in initializers:
            tensor = value.const_value
            if tensor is not None and tensor.nbytes <= _INLINE_BYTES:
                continue
            graph.initializers.pop(value.name)
            if tensor is not None:  # an input is declared by its type: the tensor's, where the value has none
                value.dtype = value.dtype or tensor.dtype
                value.shape = value.shape or tensor.shape
            if id(value) not in declared:
                graph.inputs.append(value)
        proto = ir.serde.serialize_model(model)
    finally:
        graph.inputs.clear()
        graph.inputs.extend(inputs)
        for name in list(graph.initializers):
            graph.initializers.pop(name)
        for value in initializers:
            graph.initializers[value.name] = value
    return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=data_prop)


def _copy_types(graph: ir.Graph, inferred: onnx.GraphProto) -> None:
    """Copy the inferred types of `graph`'s values, and recurse into subgraphs (the proto was serialized from
    this graph, so its nodes come in the same order)."""
    values = {value.name: value for node in graph for value in node.outputs if value.name}
    for info in (*inferred.value_info, *inferred.output):
        value = values.get(info.name)
        if value is not None and info.HasField("type"):
            _set_type(value, info.type)
    for node, node_proto in zip(graph, inferred.node, strict=True):
        for attribute in node_proto.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _copy_types(node.attributes[attribute.name].value, attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                subgraphs = node.attributes[attribute.name].value
                for subgraph, subgraph_proto in zip(subgraphs, attribute.graphs, strict=True):
                    _copy_types(subgraph, subgraph_proto)


def _set_type(value: ir.Value, type_proto: onnx.TypeProto) -> None:
    if type_proto.WhichOneof("value") != "tensor_type":  # sequences, optionals, maps: rare, build them fully
        value.type = ir.serde.deserialize_type_proto_for_type(type_proto) or value.type
        return
    tensor_type = type_proto.tensor_type
    if tensor_type.elem_type and value.dtype != tensor_type.elem_type:
        value.dtype = ir.DataType(tensor_type.elem_type)
    if tensor_type.HasField("shape"):
        shape = ir.Shape([_dim(dim) for dim in tensor_type.shape.dim])
        if value.shape is None or value.shape != shape:  # Shape.__eq__ is slow: 0.3 s on 12,400 values
            value.shape = shape


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or None


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


_HUGE_VECTOR = 1 << 20  # elements of a rank-0/1 value: data propagation treats each as a dim
_HUGE_DECLARED = 1 << 31  # elements of any declared value


def _declares_huge_tensors(model: ir.Model) -> bool:
    """Whether a declared input, initializer or value_info type (what inference starts from) is so large that
    data propagation through it would not end: a vector of 2^20 elements, or any tensor of 2^31."""
    for graph, _ in iter_graph_sites(model):
        values = [*graph.inputs, *(v for node in graph for v in node.outputs)]
        if isinstance(graph, ir.Graph):
            values += [v.const_value for v in graph.initializers.values() if v.const_value is not None]
        for value in values:
            dims = [d for d in value.shape or () if isinstance(d, int)]
            elements = math.prod(dims)
            if elements >= _HUGE_DECLARED or (len(dims) <= 1 and elements >= _HUGE_VECTOR):
                return True
    return False


def _too_big(op_type: str, array: np.ndarray) -> bool:
    if array.dtype.kind not in "iuf" or array.size > 64:
        return False
    values = np.abs(array.astype(np.float64))
    return float(values.max() if op_type == "Range" else np.prod(values)) >= _HUGE
