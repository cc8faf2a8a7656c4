"""Where the exporter said "compute this in FP32": float32 Casts of float32 values, and what they fence.

In an FP32 export, `Cast(to=FLOAT)` of a float32 tensor does nothing, and GD002 removes it as clutter. It is
there because the model's code asked for it: T5LayerNorm computes its variance as
`hidden_states.to(torch.float32).pow(2).mean(-1)`, attention implementations upcast scores before Softmax
(`softmax(scores.float())`), rotary embeddings compute their angles in float32. Those are the spots the model's
authors found to break in half precision, and PyTorch's own autocast honours them. Before an FP16/BF16
conversion they are information: the fenced nodes stay FP32.

What a fence covers: the nodes reached forward from the Cast's output through nodes whose float inputs all
come from the fenced region or are small constants (an eps, an exponent, a scale: at most
`SMALL_CONSTANT_ELEMENTS` elements, counted from the shape, never read). The variance chain
Pow → ReduceMean → Add(eps) → Sqrt → Reciprocal is fenced; the Mul that applies it to the un-cast activations,
and any MatMul or Conv reading weights, are not: that is where the model's code left FP32 too (its `.to()`
covered one expression). A Cast of a graph input, at the very start of a model, so fences only the
preprocessing arithmetic before the first weighted layer.

Decided by structure, linear in the graph's size, without reading any weight.
"""

from __future__ import annotations

import math
from collections import deque

import onnx_ir as ir

from graphdoctor.analysis.constants import const_tensor
from graphdoctor.analysis.graph import is_constant_node, iter_graph_sites, node_label

__all__ = ["SMALL_CONSTANT_ELEMENTS", "exporter_fences", "is_fence"]

SMALL_CONSTANT_ELEMENTS = 16  # a float constant this small is an eps, an exponent or a scale, not a weight
_F32 = ir.DataType.FLOAT


def is_fence(node: ir.Node) -> bool:
    """A Cast to float32 of a computed float32 value: a no-op in FP32, a mark for FP16. CastLike is the
    exporter's own type plumbing (torch's dynamo exporter writes one per scalar it matches to a tensor, e.g.
    every BatchNorm's eps when not optimized), and a Cast of a constant fences no computation: neither counts."""
    if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or not node.inputs:
        return False
    source = node.inputs[0]
    if source is None or source.dtype != _F32 or not node.outputs or _small_constant(source):
        return False
    producer = source.producer()
    if source.const_value is not None or (producer is not None and is_constant_node(producer)):
        return False
    return node.outputs[0].dtype == _F32


def exporter_fences(model: ir.Model) -> dict[ir.Node, str]:
    """Each fence Cast and each node it fences, with the reason (naming the fence), in every graph."""
    fenced: dict[ir.Node, str] = {}
    for graph, _ in iter_graph_sites(model):
        for node in graph:
            if is_fence(node) and node not in fenced:
                _fence_from(node, fenced)
    return fenced


def _fence_from(cast: ir.Node, fenced: dict[ir.Node, str]) -> None:
    label = node_label(cast)
    fenced[cast] = "a float32 Cast of a float32 value: the exporter's mark that what follows computes in FP32"
    reason = f"fenced by the exporter's float32 Cast '{label}' (the model computes this in FP32 on purpose)"
    region = {id(cast)}
    queue = deque([cast])
    while queue:
        for value in queue.popleft().outputs:
            for use in value.uses():
                reader = use.node
                if id(reader) in region or reader in fenced or not _reads_only(reader, region):
                    continue
                region.add(id(reader))
                fenced[reader] = reason
                queue.append(reader)


def _reads_only(node: ir.Node, region: set[int]) -> bool:
    """Whether every float input of `node` comes from the fenced region or is a small constant."""
    floats = [v for v in node.inputs if v is not None and v.dtype is not None and v.dtype.is_floating_point()]
    return bool(floats) and all(_from_region(v, region) or _small_constant(v) for v in floats)


def _from_region(value: ir.Value, region: set[int]) -> bool:
    producer = value.producer()
    return producer is not None and id(producer) in region


def _small_constant(value: ir.Value) -> bool:
    producer = value.producer()
    if producer is not None and not is_constant_node(producer):
        return False
    if value.is_graph_input() and const_tensor(value) is None:
        return False
    shape = value.shape
    if shape is None or not all(isinstance(d, int) for d in shape):
        return False
    return math.prod(shape) <= SMALL_CONSTANT_ELEMENTS and (producer is not None or value.const_value is not None)
