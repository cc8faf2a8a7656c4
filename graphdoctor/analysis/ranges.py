"""Value ranges of activations, reduced to what FP16 would do to each tensor; attention masks recognised.

ONNX Runtime's CPU provider runs most FP16 nodes in FP32, so a CPU check of an FP16 model never shows an
activation overflowing 65504. Running the FP32 model once and recording each intermediate tensor's range
does: a tensor whose FP32 values reach 65520 becomes inf in FP16, one whose nonzero values are at most 2^-25
becomes 0. This module is the pure part: one tensor reduced to a few numbers (`range_of`, `TensorRange`),
ranges of several batches merged (`merge_ranges`), which tensors to measure (`float_tensor_names`). Running
the model, a slice of tensors at a time, is `verify.ranges`. A tensor that stays below FP16's limit on one
sample may reach it on the next: bench/fp16_margin.py measures by how much.

Attention masks saturate on purpose (a fill of -3.4e38, -1e9 or -10000 added to scores before Softmax), and
are recognised by structure, not by value: large negative values that reach a Softmax through mask-shaped
ops (Where, Add, Sub, Mul, Expand, Cast, ...) and come from a constant or input holding such values.
GD007 uses the same helpers for constants, so the two parts of the rule agree on what a mask is.

FP16 facts, exact under round-to-nearest-even: the largest finite value is 65504, and every |x| < 65520
rounds to it or below, every |x| >= 65520 to inf; the smallest subnormal is 2^-24 ≈ 5.96e-08, and
2^-25 (halfway to it) ties to even, i.e. to 0, so nonzero |x| <= 2^-25 ≈ 2.98e-08 flushes to 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.constants import const_tensor
from graphdoctor.analysis.graph import holds_tensor, is_constant_node, node_label
from graphdoctor.analysis.tensor_data import iter_chunks

if TYPE_CHECKING:
    from graphdoctor.analysis.context import Analysis

__all__ = [
    "FP16_FLUSH",
    "FP16_MAX",
    "FP16_OVERFLOW",
    "MASK_PATH_OPS",
    "TensorRange",
    "feeds_softmax",
    "float_tensor_names",
    "is_mask_saturation",
    "merge_ranges",
    "range_of",
]

FP16_MAX = 65504.0  # the largest finite FP16 value
FP16_OVERFLOW = 65520.0  # |x| >= this rounds to inf in FP16; below it, to at most 65504
FP16_FLUSH = 2.0**-25  # 0 < |x| <= this rounds to 0 in FP16 (2^-25 ties to even: 0)
_CHUNK = 1 << 20  # elements reduced at a time: temporaries stay a few MiB whatever the tensor's size

# ops a mask passes through between its fill value and the Softmax (broadcasting, dtype, combining)
MASK_PATH_OPS = frozenset(
    {"Where", "Add", "Sub", "Mul", "Min", "Max", "Clip", "Expand", "Tile", "Cast", "CastLike", "Reshape"}
    | {"Unsqueeze", "Squeeze", "Transpose", "Concat", "Slice", "Gather", "Identity"}
)
_SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax"})
_MASK_PATH_DEPTH = 8

# runs the model on one batch of inputs and returns the named tensors' arrays


@dataclass(frozen=True)
class TensorRange:
    """What one tensor held on the sample inputs, reduced to the numbers FP16 cares about."""

    name: str
    node: str | None  # the producing node's label; None for a graph input
    op_type: str | None
    dtype: str
    shape: tuple[int, ...]  # on the sample inputs
    size: int  # elements seen
    min: float  # over finite values (nan when there were none)
    max: float
    max_abs: float
    worst: float  # the finite value of largest magnitude, with its sign
    overflow: int  # finite values with |x| >= 65520: inf in FP16
    overflow_negative: int  # of which negative (mask fills are)
    flushed: int  # nonzero finite values with |x| <= 2^-25: 0 in FP16
    nonzero: int  # nonzero finite values
    nonfinite: int  # inf or NaN already in FP32
    batches: int = 1  # batches of inputs measured (merged by merge_ranges)

    @property
    def flush_fraction(self) -> float:
        return self.flushed / self.nonzero if self.nonzero else 0.0


# --- reducing -----------------------------------------------------------------------------------------------


def merge_ranges(first: TensorRange, second: TensorRange) -> TensorRange:
    """One tensor's range over the inputs of both: the least min, the greatest max, the worst value of
    larger magnitude, counts added. Name, producer, dtype and shape are the first's (batches may differ in
    shape, e.g. sequence length). A range with no finite values (nan min) leaves the other's extremes."""
    worst = first.worst if _magnitude(first.worst) >= _magnitude(second.worst) else second.worst
    return TensorRange(
        name=first.name,
        node=first.node,
        op_type=first.op_type,
        dtype=first.dtype,
        shape=first.shape,
        size=first.size + second.size,
        min=_extreme(min, first.min, second.min),
        max=_extreme(max, first.max, second.max),
        max_abs=abs(worst),
        worst=worst,
        overflow=first.overflow + second.overflow,
        overflow_negative=first.overflow_negative + second.overflow_negative,
        flushed=first.flushed + second.flushed,
        nonzero=first.nonzero + second.nonzero,
        nonfinite=first.nonfinite + second.nonfinite,
        batches=first.batches + second.batches,
    )


def _magnitude(value: float) -> float:
    return -1.0 if math.isnan(value) else abs(value)


def _extreme(pick: Callable[[float, float], float], a: float, b: float) -> float:
    if math.isnan(a):
        return b
    return a if math.isnan(b) else pick(a, b)


def float_tensor_names(model: ir.Model) -> list[str]:
    """Graph inputs and node outputs of the main graph that are float32, or of unknown type (ORT will tell),
    in graph order; Constant outputs are constants, checked without running anything."""
    names = [v.name for v in model.graph.inputs if v.name and v.dtype == ir.DataType.FLOAT]
    initializers = set(model.graph.initializers)
    for node in model.graph:
        if is_constant_node(node):
            continue
        for value in node.outputs:
            if value.name not in initializers and value.dtype in (ir.DataType.FLOAT, None) and holds_tensor(value):
                names.append(value.name)
    return names


def range_of(name: str, array: np.ndarray, node: ir.Node | None = None) -> TensorRange:
    """Reduce one tensor to its TensorRange, a chunk at a time."""
    acc = _Accumulator()
    array = np.asarray(array)
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        acc.add(flat[start : start + _CHUNK])
    return acc.result(name, node, str(flat.dtype), tuple(int(d) for d in array.shape))


@dataclass
class _Accumulator:
    size: int = 0
    min: float = math.inf
    max: float = -math.inf
    worst: float = 0.0
    overflow: int = 0
    overflow_negative: int = 0
    flushed: int = 0
    nonzero: int = 0
    nonfinite: int = 0

    def add(self, chunk: np.ndarray) -> None:
        self.size += chunk.size
        finite = np.isfinite(chunk)
        bad = chunk.size - int(np.count_nonzero(finite))
        if bad:
            self.nonfinite += bad
            chunk = chunk[finite]
        if not chunk.size:
            return
        low, high = float(chunk.min()), float(chunk.max())
        self.min, self.max = min(self.min, low), max(self.max, high)
        for extreme in (low, high):
            if abs(extreme) > abs(self.worst):
                self.worst = extreme
        magnitude = np.abs(chunk)
        self.nonzero += chunk.size - int(np.count_nonzero(magnitude == 0))
        self.flushed += int(np.count_nonzero((magnitude <= FP16_FLUSH) & (magnitude > 0)))
        if max(-low, high) >= FP16_OVERFLOW:
            self.overflow += int(np.count_nonzero(magnitude >= FP16_OVERFLOW))
            self.overflow_negative += int(np.count_nonzero(chunk <= -FP16_OVERFLOW))

    def result(self, name: str, node: ir.Node | None, dtype: str, shape: tuple[int, ...]) -> TensorRange:
        empty = self.min > self.max
        return TensorRange(
            name=name,
            node=node_label(node) if node is not None else None,
            op_type=node.op_type if node is not None else None,
            dtype=dtype,
            shape=shape,
            size=self.size,
            min=math.nan if empty else self.min,
            max=math.nan if empty else self.max,
            max_abs=math.nan if empty else abs(self.worst),
            worst=math.nan if empty else self.worst,
            overflow=self.overflow,
            overflow_negative=self.overflow_negative,
            flushed=self.flushed,
            nonzero=self.nonzero,
            nonfinite=self.nonfinite,
        )


# --- attention masks ----------------------------------------------------------------------------------------


def feeds_softmax(value: ir.Value) -> bool:
    """Whether the value reaches a Softmax through mask-shaped ops only (Where, Add, Expand, ...)."""
    frontier, seen = [value], {id(value)}
    for _ in range(_MASK_PATH_DEPTH):
        following = []
        for current in frontier:
            for use in current.uses():
                node = use.node
                if node.op_type in _SOFTMAX_OPS:
                    return True
                if node.op_type not in MASK_PATH_OPS:
                    continue
                for output in node.outputs:
                    if id(output) not in seen:
                        seen.add(id(output))
                        following.append(output)
        frontier = following
    return False


def is_mask_saturation(value: ir.Value, ranges: Mapping[str, TensorRange], analysis: Analysis | None = None) -> bool:
    """Whether an activation's overflow is an attention mask saturating on purpose: only negative values
    overflow, the tensor reaches a Softmax through mask-shaped ops, and its large negative values come, through
    mask-shaped ops too, from a constant or graph input that holds them (not from the scores' own arithmetic)."""
    measured = ranges.get(value.name or "")
    if measured is None or measured.overflow != measured.overflow_negative:
        return False
    return feeds_softmax(value) and _from_large_negative_source(value, ranges, analysis)


def _from_large_negative_source(value: ir.Value, ranges: Mapping[str, TensorRange], analysis: Analysis | None) -> bool:
    """Walk producers back through mask-shaped ops to a constant or graph input holding values <= -65520."""
    frontier, seen = [value], {id(value)}
    for _ in range(_MASK_PATH_DEPTH):
        preceding = []
        for current in frontier:
            if _is_large_negative_source(current, ranges, analysis):
                return True
            node = current.producer()
            if node is not None and node.op_type == "ConstantOfShape" and _fill_is_large_negative(node):
                return True
            if node is None or node.op_type not in MASK_PATH_OPS:
                continue
            for source in node.inputs:
                if source is not None and id(source) not in seen:
                    seen.add(id(source))
                    preceding.append(source)
        frontier = preceding
    return False


def _is_large_negative_source(value: ir.Value, ranges: Mapping[str, TensorRange], analysis: Analysis | None) -> bool:
    tensor = const_tensor(value)
    if tensor is not None:
        if analysis is not None and not analysis.is_readable(tensor):
            return False
        return tensor.dtype.is_floating_point() and _min_of(tensor) <= -FP16_OVERFLOW
    if value.producer() is None and value.name in ranges:  # a graph input, measured
        return ranges[value.name].overflow_negative > 0
    return False


def _fill_is_large_negative(node: ir.Node) -> bool:
    fill = node.attributes.get_tensor("value")
    return fill is not None and fill.dtype.is_floating_point() and _min_of(fill) <= -FP16_OVERFLOW


def _min_of(tensor: ir.TensorProtocol) -> float:
    """The smallest finite value of a float constant, read in bounded memory (inf when there is none)."""
    smallest = math.inf
    try:
        for chunk in iter_chunks(tensor):
            finite = chunk[np.isfinite(chunk)]
            if finite.size:
                smallest = min(smallest, float(finite.min()))
    except (OSError, ValueError, TypeError):
        return math.inf
    return smallest
