"""What ONNX allows in FP16, read from the operator schemas, and how converters move constants into FP16's range.

Shared by the FP16 emulation (which must keep in FP32 exactly what a converter keeps) and the converter itself:
an output whose schema has no FLOAT16 form (Range's, LayerNormalization's Mean) stays float32, and so does an
input the schema types separately (Resize's scales), whatever the rest of the node does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import onnx

from graphdoctor.analysis.ranges import FP16_FLUSH, FP16_MAX, FP16_OVERFLOW

__all__ = ["FP16_TINY", "clamp_to_fp16_range", "input_allows_fp16", "only_rounded_by_fp16", "output_allows_fp16"]

FP16_TINY = 2.0**-24  # FP16's smallest subnormal: converters clamp nonzero constants up to it


_FLUSH_BITS = int(np.float32(FP16_FLUSH).view(np.uint32))


def only_rounded_by_fp16(chunk: np.ndarray) -> bool:
    """Whether FP16 only rounds every value: all finite, none reaching 65520 in magnitude, no nonzero one at
    or below 2^-25. Decided from the extremes and from the magnitudes' bits (a float's bits order like its
    magnitude), in fewer and cheaper passes than counting: the usual weight needs no count at all. Only
    float32 chunks are decided; for any other dtype the answer is False, and the caller counts."""
    if chunk.dtype != np.float32:
        return False
    if chunk.size == 0:
        return True
    low, high = chunk.min(), chunk.max()  # a NaN makes both NaN, and the test below false
    if not (low > -FP16_OVERFLOW and high < FP16_OVERFLOW):
        return False
    bits = chunk.view(np.uint32) & np.uint32(0x7FFFFFFF)
    bits -= np.uint32(1)  # zeros wrap around to the largest value: they never count as tiny
    return int(bits.min()) >= _FLUSH_BITS


def clamp_to_fp16_range(array: np.ndarray) -> tuple[np.ndarray, int]:
    """Finite nonzero magnitudes into [2^-24, 65504]; 0, inf and NaN unchanged (ONNX Runtime's converter)."""
    array = np.asarray(array, dtype=np.float32)
    magnitude = np.abs(array)
    movable = np.isfinite(array) & (array != 0)
    out = np.where(movable, np.sign(array) * np.clip(magnitude, FP16_TINY, FP16_MAX), array).astype(np.float32)
    changed = movable & ((magnitude >= FP16_OVERFLOW) | (magnitude <= FP16_FLUSH))
    return out, int(np.count_nonzero(changed))


@functools.cache
def _schema(domain: str, op_type: str, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, opset, "" if domain == "ai.onnx" else domain)
    except onnx.defs.SchemaError:
        return None


def _allowed(schema: onnx.defs.OpSchema, type_str: str) -> set[str]:
    for constraint in schema.type_constraints:
        if constraint.type_param_str == type_str:
            return set(constraint.allowed_type_strs)
    return {type_str}


@functools.cache
def output_allows_fp16(domain: str, op_type: str, opset: int, index: int) -> bool:
    """False for float outputs that cannot be FP16 (Range's; LayerNormalization's Mean and InvStdDev);
    ops without a known schema (contrib ops) are assumed to allow it."""
    schema = _schema(domain, op_type, opset)
    return schema is None or not schema.outputs or _formal_allows_fp16(schema, schema.outputs, index)


@functools.cache
def input_allows_fp16(domain: str, op_type: str, opset: int, index: int) -> bool:
    """False for float inputs that must stay float32 (Resize's scales)."""
    schema = _schema(domain, op_type, opset)
    return schema is None or not schema.inputs or _formal_allows_fp16(schema, schema.inputs, index)


def _formal_allows_fp16(schema: onnx.defs.OpSchema, formals: Sequence, index: int) -> bool:
    """Whether the formal parameter at `index` (the last one for variadic tails) may be FLOAT16 when it
    may be FLOAT; parameters that are never FLOAT do not matter here."""
    allowed = _allowed(schema, formals[min(index, len(formals) - 1)].type_str)
    return "tensor(float16)" in allowed or "tensor(float)" not in allowed
