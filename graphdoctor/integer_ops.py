"""The ops of shape arithmetic computed in numpy, for folding (graphdoctor.folding) without ONNX's reference
runtime.

Why: torch exports compute shapes with Shape, Gather, Slice, Concat, Unsqueeze, ConstantOfShape and a little
integer arithmetic, and GD001 folds them on every lint and every round of `fix`. ONNX's reference runtime
costs 0.1–0.3 s to import and ~2 ms a node to build, on small models the largest part of a lint or of
`fix --fp16 --no-verify`. These ops are numpy's own functions on integer and bool arrays (the reference
runtime calls the same ones), so the results are the same, dtype included. Anything outside what is written
here (other ops, float or mixed dtypes, an index out of range, axes that do not fit) is left to the reference
runtime, which decides as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

__all__ = ["compute"]

_AXES_AS_INPUT = 13  # Unsqueeze's and Squeeze's axes: an attribute before opset 13, an input from it on
_SLICE_BOUNDS_AS_INPUTS = 10  # Slice's starts, ends and axes: attributes before opset 10

Attributes = Mapping[str, object]
_Op = Callable[[Sequence[np.ndarray | None], Attributes, int], list[np.ndarray]]


def compute(
    op_type: str, operands: Sequence[np.ndarray | None], attributes: Attributes, opset: int
) -> list[np.ndarray] | None:
    """The outputs of an ai.onnx `op_type` node on these operands (`attributes` by name, as Python values), or
    None when this module does not compute it: the reference runtime then does."""
    op = _OPS.get(op_type)
    if op is None or not _integer_operands(op_type, operands):
        return None
    try:
        with np.errstate(all="ignore"):  # integer overflow wraps, as in the reference runtime
            return [np.array(result) for result in op(operands, attributes, opset)]  # owned: no view of an operand
    except (ValueError, IndexError, TypeError, KeyError):  # numpy's AxisError is a ValueError and IndexError
        return None


def _integer_operands(op_type: str, operands: Sequence[np.ndarray | None]) -> bool:
    """Every data operand present, of one integer dtype (bool for the logical ops, either for those that only
    move or convert values)."""
    data = operands[:1] if op_type in _FIRST_OPERAND_ONLY else operands
    if op_type in _BINARY and len(operands) != 2:
        return False
    if not data or any(array is None for array in data):
        return False
    kinds = "b" if op_type in _LOGICAL else "iub" if op_type in _MOVES_VALUES else "iu"
    return all(a.dtype.kind in kinds for a in data) and len({a.dtype for a in data}) == 1


def _gather(operands, attributes, _opset) -> list[np.ndarray]:
    data, indices = operands[0], operands[1]
    if indices is None or indices.dtype.kind not in "iu":
        raise TypeError("indices")
    axis = int(attributes.get("axis", 0))
    size = data.shape[axis]  # IndexError (a rank-0 data) is left to the reference runtime
    if np.any(indices < -size) or np.any(indices >= size):
        raise IndexError("index out of range")
    return [np.take(data, np.where(indices < 0, indices + size, indices), axis=axis)]


def _axes(operands, attributes, opset) -> tuple[int, ...] | None:
    """Unsqueeze's and Squeeze's axes, wherever the opset keeps them; None: not given."""
    if opset < _AXES_AS_INPUT:
        axes = attributes.get("axes")
        if axes is not None and not len(axes):
            raise TypeError("axes")
        return None if axes is None else tuple(int(a) for a in axes)
    given = operands[1] if len(operands) > 1 else None
    if given is not None and (given.dtype != np.int64 or given.size == 0):
        raise TypeError("axes")  # an empty axes input is for the reference runtime to read
    return None if given is None else tuple(int(a) for a in given.reshape(-1))


def _unsqueeze(operands, attributes, opset) -> list[np.ndarray]:
    axes = _axes(operands, attributes, opset)
    if axes is None:
        raise ValueError("Unsqueeze needs axes")
    return [np.expand_dims(operands[0], axes)]  # negative axes count in the output's rank; a repeat raises


def _squeeze(operands, attributes, opset) -> list[np.ndarray]:
    axes = _axes(operands, attributes, opset)
    return [np.squeeze(operands[0], axis=axes)]  # an axis of size other than 1 raises


def _slice(operands, attributes, opset) -> list[np.ndarray]:
    """Slice: starts and ends counted from the back when negative, then clamped to the axis as the spec says
    ([0, dim] stepping forward, [-1, dim - 1] stepping back), axes negative from the back, steps nonzero."""
    data = operands[0]
    if opset < _SLICE_BOUNDS_AS_INPUTS:
        starts, ends = attributes["starts"], attributes["ends"]
        axes, steps = attributes.get("axes"), None
    else:
        if any(a is not None and a.dtype.kind not in "iu" for a in operands[1:]):
            raise TypeError("Slice's bounds")
        starts, ends, axes, steps = (*operands[1:], None, None)[:4]
    starts, ends = [int(v) for v in np.ravel(starts)], [int(v) for v in np.ravel(ends)]
    axes = (
        list(range(len(starts))) if axes is None else [int(a) + data.ndim if a < 0 else int(a) for a in np.ravel(axes)]
    )
    steps = [1] * len(starts) if steps is None else [int(v) for v in np.ravel(steps)]
    if not len(starts) == len(ends) == len(axes) == len(steps) or len(set(axes)) != len(axes) or 0 in steps:
        raise ValueError("Slice's bounds do not fit")
    selection = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        selection[axis] = _bounded(start, end, step, data.shape[axis])  # an axis outside the rank raises
    return [data[tuple(selection)]]


def _bounded(start: int, end: int, step: int, dim: int) -> slice:
    start, end = (bound + dim if bound < 0 else bound for bound in (start, end))
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)  # Python reads -1 as the last element, ONNX as before 0


def _constant_of_shape(operands, attributes, _opset) -> list[np.ndarray]:
    value = attributes.get("value")
    if value is None:
        raise TypeError("the default fill is float32")
    fill = np.asarray(value.numpy()).reshape(-1)
    if fill.size != 1 or fill.dtype.kind not in "iub":
        raise TypeError("ConstantOfShape's value")
    return [np.full([int(d) for d in operands[0].reshape(-1)], fill[0], dtype=fill.dtype)]


def _reshape(operands, attributes, _opset) -> list[np.ndarray]:
    """Reshape: a 0 in the shape copies the input's dim unless `allowzero`; one -1 takes what is left."""
    data, shape = operands[0], operands[1]
    if shape is None or shape.dtype != np.int64:
        raise TypeError("Reshape's shape")
    dims = [int(d) for d in shape.reshape(-1)]
    if not attributes.get("allowzero", 0):
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]  # past the input's rank: raises
    elif 0 in dims and -1 in dims:
        raise ValueError("allowzero with both 0 and -1 is invalid")
    return [np.reshape(data, dims)]


def _cast(operands, attributes, _opset) -> list[np.ndarray]:
    """Cast between integer and bool types (numpy's astype, as the reference runtime: narrowing wraps)."""
    target = _INTEGER_TYPES.get(int(attributes["to"]))
    if target is None:
        raise TypeError("a cast to a float or string type")
    return [operands[0].astype(target)]


def _variadic(function: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> _Op:
    return lambda operands, _attributes, _opset: [functools.reduce(function, operands)]


def _unary(function: Callable[[np.ndarray], np.ndarray]) -> _Op:
    return lambda operands, _attributes, _opset: [function(operands[0])]


_OPS: dict[str, _Op] = {
    "Identity": _unary(np.array),
    "Gather": _gather,
    "Concat": lambda operands, attributes, _opset: [np.concatenate(operands, axis=int(attributes["axis"]))],
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Reshape": _reshape,
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "Add": _variadic(np.add),
    "Sub": _variadic(np.subtract),
    "Mul": _variadic(np.multiply),
    "Min": _variadic(np.minimum),
    "Max": _variadic(np.maximum),
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Equal": _variadic(np.equal),
    "Less": _variadic(np.less),
    "LessOrEqual": _variadic(np.less_equal),
    "Greater": _variadic(np.greater),
    "GreaterOrEqual": _variadic(np.greater_equal),
    "Not": _unary(np.logical_not),
    "And": _variadic(np.logical_and),
    "Or": _variadic(np.logical_or),
    "Xor": _variadic(np.logical_xor),
}
_BINARY = frozenset(
    {"Add", "Sub", "Mul", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"} | {"And", "Or", "Xor"}
)
_FIRST_OPERAND_ONLY = frozenset({"Gather", "Unsqueeze", "Squeeze", "Slice", "ConstantOfShape", "Reshape"})  # indices
_INTEGER_TYPES = {
    onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.INT8: np.int8, onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.UINT16: np.uint16, onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.UINT64: np.uint64,
}  # fmt: skip
_LOGICAL = frozenset({"Not", "And", "Or", "Xor"})
_MOVES_VALUES = frozenset({"Identity", "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Reshape", "Cast"})
