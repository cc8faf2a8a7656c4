"""Every normalization in a model, fused op or decomposed pattern, with its epsilon and where that eps lives.

Three rules need the same list: GD004 compares epsilons and checks them against FP16, GD007 must not report
the eps constants a second time, GD008 counts the LayerNorms an old opset forced into primitive ops. Matching
the patterns once (`Analysis.shared("normalizations", find_normalizations)`) keeps the three in agreement.

Decomposed patterns are anchored on the `Add(variance, eps)` node, the one place every exporter agrees on:

    LayerNorm  mean = ReduceMean(x); d = Sub(x, mean); var = ReduceMean(Pow(d, 2) | Mul(d, d));
               Sqrt(Add(var, eps)) -> Div(d, ·) or Reciprocal/Div(1, ·) then Mul   (torch below opset 17)
    RMSNorm    var = ReduceMean(Pow(x, 2) | Mul(x, x)); Sqrt(Add(var, eps)) -> ...  (T5, LLaMA: any opset)

Requiring a square before the mean and a square root after the Add keeps ordinary bias Adds out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:
    from graphdoctor.analysis.context import Analysis

__all__ = ["SHARED_KEY", "EpsLocation", "Normalization", "find_normalizations", "normalizations"]

SHARED_KEY = "normalizations"

EpsLocation = Literal["attribute", "tensor"]

# (domain, op_type) -> (kind, the schema's default epsilon). Kind names the maths, so a fused op and a
# decomposed pattern of the same normalization compare with each other.
_FUSED: dict[tuple[str, str], tuple[str, float]] = {
    ("", "BatchNormalization"): ("BatchNormalization", 1e-5),
    ("", "LayerNormalization"): ("LayerNormalization", 1e-5),
    ("", "InstanceNormalization"): ("InstanceNormalization", 1e-5),
    ("", "GroupNormalization"): ("GroupNormalization", 1e-5),
    ("", "RMSNormalization"): ("RMSNormalization", 1e-5),
    # onnxruntime contrib ops; SimplifiedLayerNormalization is registered in the ONNX domain
    ("", "SimplifiedLayerNormalization"): ("RMSNormalization", 1e-5),
    ("com.microsoft", "SimplifiedLayerNormalization"): ("RMSNormalization", 1e-5),
    ("com.microsoft", "SkipLayerNormalization"): ("LayerNormalization", 1e-12),
    ("com.microsoft", "SkipSimplifiedLayerNormalization"): ("RMSNormalization", 1e-12),
    ("com.microsoft", "EmbedLayerNormalization"): ("LayerNormalization", 1e-12),
}
_DECOMPOSED = "decomposed"


@dataclass(frozen=True, eq=False)
class Normalization:
    """One normalization: what it computes, its eps, and the nodes that make it (the anchor first)."""

    kind: str  # the maths, named by its ONNX op: 'BatchNormalization', 'LayerNormalization', 'RMSNormalization', ...
    op: str  # the fused node's op type, or 'decomposed' for a pattern of primitive ops
    eps: float  # the value the model holds (patterns whose eps is not a constant are not matched)
    eps_location: EpsLocation  # 'attribute' of a fused op, or 'tensor' (a constant input of the Add)
    eps_value: ir.Value | None  # the constant holding eps, for 'tensor'
    nodes: tuple[ir.Node, ...]  # fused: the node; decomposed: Add(var, eps), then the rest of the pattern
    axes: tuple[int, ...] | None = None  # decomposed: the variance's reduction axes, when constant

    @property
    def node(self) -> ir.Node:
        """The anchor: the fused node, or the `Add(var, eps)` of a pattern (where a fix would change eps)."""
        return self.nodes[0]

    @property
    def is_decomposed(self) -> bool:
        return self.op == _DECOMPOSED

    @property
    def form(self) -> str:
        """How it reads in a message: 'LayerNormalization' (the op), or 'decomposed LayerNorm'."""
        if not self.is_decomposed:
            return self.op
        return "decomposed " + self.kind.replace("Normalization", "Norm")

    def reduces_trailing_axes(self) -> bool:
        """Whether a decomposed pattern normalizes the last axes, as `LayerNormalization(axis=-k)` would.

        torch writes layer_norm's axes as negative (-1 or -2,-1); positive axes count only when the input's
        rank is known. ConvNeXt-style channel norms (mean over axis 1 of NCHW) are not LayerNormalization.
        """
        if not self.axes:
            return False
        rank = _rank(self.nodes[1].inputs[0]) if len(self.nodes) > 1 else None
        if any(a >= 0 for a in self.axes):
            if rank is None:
                return False
            axes = sorted(a - rank if a >= 0 else a for a in self.axes)
        else:
            axes = sorted(self.axes)
        return axes == list(range(-len(axes), 0))


def normalizations(analysis: Analysis) -> list[Normalization]:
    """The model's normalizations, computed once per model and shared by the rules that ask."""
    return analysis.shared(SHARED_KEY, find_normalizations)


def find_normalizations(analysis: Analysis) -> list[Normalization]:
    """Fused normalization nodes and decomposed LayerNorm/RMSNorm patterns, in graph order."""
    found: list[Normalization] = []
    for node in analysis.nodes():
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        fused = _FUSED.get((domain, node.op_type))
        if fused is not None:
            found.append(_fused(node, *fused))
        elif domain == "" and node.op_type == "Add":
            pattern = _decomposed(node, analysis)
            if pattern is not None:
                found.append(pattern)
    return found


def _fused(node: ir.Node, kind: str, default_eps: float) -> Normalization:
    eps = node.attributes.get_float("epsilon", default_eps)
    return Normalization(kind, node.op_type, float(eps), "attribute", None, (node,))


def _decomposed(add: ir.Node, analysis: Analysis) -> Normalization | None:
    """Match `Sqrt(Add(ReduceMean(square), eps))` at this Add; None when it is any other Add."""
    if len(add.inputs) != 2 or not add.outputs:
        return None
    for var, eps_value in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        variance = _producer(var, "ReduceMean")
        if variance is None or not variance.inputs:
            continue
        square = _square(variance.inputs[0], analysis)
        if square is None:
            continue
        eps = _float_scalar(eps_value, analysis, kinds="f")
        root = _root(add.outputs[0], analysis)
        if eps is None or root is None:
            return None
        square_node, base = square
        centering = _centering(base)
        kind = "LayerNormalization" if centering else "RMSNormalization"
        nodes = (add, variance, square_node, *centering, root)
        return Normalization(kind, _DECOMPOSED, eps, "tensor", eps_value, nodes, _reduce_axes(variance, analysis))
    return None


def _producer(value: ir.Value | None, op_type: str | None) -> ir.Node | None:
    """The default-domain node computing `value`, if it is an `op_type` (any op when None)."""
    if value is None:
        return None
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    return node if op_type is None or node.op_type == op_type else None


def _square(value: ir.Value | None, analysis: Analysis) -> tuple[ir.Node, ir.Value] | None:
    """(node, base) when `value` is `Pow(base, 2)` or `Mul(base, base)`."""
    node = _producer(value, None)
    if node is None or len(node.inputs) != 2 or node.inputs[0] is None:
        return None
    if node.op_type == "Pow" and _float_scalar(node.inputs[1], analysis) == 2.0:
        return node, node.inputs[0]
    if node.op_type == "Mul" and node.inputs[0] is node.inputs[1]:
        return node, node.inputs[0]
    return None


def _centering(base: ir.Value) -> tuple[ir.Node, ...]:
    """(Sub, ReduceMean) when `base` is `Sub(x, ReduceMean(x))`: the mean-subtraction that makes a LayerNorm."""
    sub = _producer(base, "Sub")
    if sub is None or len(sub.inputs) != 2:
        return ()
    mean = _producer(sub.inputs[1], "ReduceMean")
    if mean is None or not mean.inputs or mean.inputs[0] is not sub.inputs[0]:
        return ()
    return sub, mean


def _root(value: ir.Value, analysis: Analysis) -> ir.Node | None:
    """The `Sqrt` (or `Pow(·, ±0.5)`) consuming var + eps; without one the Add is not a normalization."""
    for use in value.uses():
        node = use.node
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Sqrt":
            return node
        if node.op_type == "Pow" and len(node.inputs) == 2 and _float_scalar(node.inputs[1], analysis) in (0.5, -0.5):
            return node
    return None


def _float_scalar(value: ir.Value | None, analysis: Analysis, kinds: str = "fiu") -> float | None:
    """A one-element constant's value as a float (numpy dtype kinds `kinds`); None for anything else."""
    array = analysis.const_array(value)
    if array is None or array.size != 1 or array.dtype.kind not in kinds:
        return None
    return float(array.reshape(()))


def _reduce_axes(node: ir.Node, analysis: Analysis) -> tuple[int, ...] | None:
    """ReduceMean's axes: an attribute before opset 18, the second input from 18 on; None if not constant."""
    axes = node.attributes.get_ints("axes")
    if axes is not None:
        return tuple(int(a) for a in axes)
    if len(node.inputs) > 1:
        array = analysis.const_array(node.inputs[1])
        if array is not None and array.dtype.kind in "iu":
            return tuple(int(a) for a in np.asarray(array).reshape(-1))
    return None


def _rank(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return len(value.shape)
