"""What ONNX allows in FP16 and BF16, read from the operator schemas, and how converters move constants into range.

Shared by the FP16/BF16 emulation (which must keep in FP32 exactly what a converter keeps) and the converter
itself: an output whose schema has no FLOAT16 form (Range's, LayerNormalization's Mean) stays float32, and so
does an input the schema types separately (Resize's scales), whatever the rest of the node does. BFLOAT16 is
asked the same way and answers differently: Conv, pooling and Sin have a BFLOAT16 form only from opset 22,
LayerNormalization's Mean may be BFLOAT16 but not FLOAT16.

`LowPrecision` holds what differs between the two formats: FP16 has 11 significant bits and overflows beyond
65504; BF16 has 8 and FP32's exponent range (overflow only beyond 3.39e38, subnormals down to 2^-133).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from graphdoctor.analysis.ranges import FP16_FLUSH, FP16_MAX, FP16_OVERFLOW

__all__ = [
    "BF16",
    "BF16_FLUSH",
    "BF16_MAX",
    "BF16_OVERFLOW",
    "BF16_TINY",
    "FP16",
    "FP16_TINY",
    "LOW_PRECISIONS",
    "LowPrecision",
    "clamp_to_fp16_range",
    "clamp_to_range",
    "input_allows_fp16",
    "input_allows_type",
    "only_rounded_by",
    "only_rounded_by_fp16",
    "output_allows_fp16",
    "output_allows_type",
]

FP16_TINY = 2.0**-24  # FP16's smallest subnormal: converters clamp nonzero constants up to it


def _float32_of_bits(bits: int) -> float:
    return float(np.array(bits, np.uint32).view(np.float32))


BF16_MAX = _float32_of_bits(0x7F7F0000)  # 3.3895e38, the largest finite BF16 value
BF16_OVERFLOW = _float32_of_bits(0x7F7F8000)  # 3.3962e38: |x| >= this rounds to inf (FP32's max does)
BF16_TINY = 2.0**-133  # BF16's smallest subnormal (9.2e-41)
BF16_FLUSH = 2.0**-134  # 0 < |x| <= this rounds to 0 in BF16 (2^-134 ties to even: 0)


@dataclass(frozen=True)
class LowPrecision:
    """A 16-bit float format, by what converters and the emulation need to know of it."""

    name: str  # as messages write it: "FP16"
    dtype: ir.DataType  # FLOAT16 or BFLOAT16
    type_str: str  # as operator schemas write it: "tensor(float16)"
    largest: float  # the largest finite value: converters clamp constants to it
    overflow: float  # |x| >= this rounds to inf
    flush: float  # 0 < |x| <= this rounds to 0
    tiny: float  # the smallest subnormal: converters clamp nonzero constants up to it

    @property
    def key(self) -> str:
        """Lower-case name, for keys and backend names: "fp16"."""
        return self.name.lower()


FP16 = LowPrecision("FP16", ir.DataType.FLOAT16, "tensor(float16)", FP16_MAX, FP16_OVERFLOW, FP16_FLUSH, FP16_TINY)
BF16 = LowPrecision("BF16", ir.DataType.BFLOAT16, "tensor(bfloat16)", BF16_MAX, BF16_OVERFLOW, BF16_FLUSH, BF16_TINY)
LOW_PRECISIONS = {FP16.dtype: FP16, BF16.dtype: BF16}


def only_rounded_by_fp16(chunk: np.ndarray) -> bool:
    """`only_rounded_by(chunk, FP16)`: none reaching 65520 in magnitude, no nonzero one at or below 2^-25."""
    return only_rounded_by(chunk, FP16)


def only_rounded_by(chunk: np.ndarray, precision: LowPrecision) -> bool:
    """Whether `precision` only rounds every value: all finite, none overflowing, no nonzero one flushed.
    Decided from the extremes and from the magnitudes' bits (a float's bits order like its magnitude), in
    fewer and cheaper passes than counting: the usual weight needs no count at all. Only float32 chunks are
    decided; for any other dtype the answer is False, and the caller counts."""
    if chunk.dtype != np.float32:
        return False
    if chunk.size == 0:
        return True
    low, high = chunk.min(), chunk.max()  # a NaN makes both NaN, and the test below false
    if not (low > -precision.overflow and high < precision.overflow):
        return False
    bits = chunk.view(np.uint32) & np.uint32(0x7FFFFFFF)
    bits -= np.uint32(1)  # zeros wrap around to the largest value: they never count as tiny
    return int(bits.min()) >= int(np.float32(precision.flush).view(np.uint32))


def clamp_to_fp16_range(array: np.ndarray) -> tuple[np.ndarray, int]:
    """Finite nonzero magnitudes into [2^-24, 65504]; 0, inf and NaN unchanged (ONNX Runtime's converter)."""
    return clamp_to_range(array, FP16)


def clamp_to_range(array: np.ndarray, precision: LowPrecision) -> tuple[np.ndarray, int]:
    """Finite nonzero magnitudes into [tiny, largest] of `precision`; 0, inf and NaN unchanged. Returns the
    clamped float32 array and how many values would otherwise have become inf or 0."""
    array = np.asarray(array, dtype=np.float32)
    magnitude = np.abs(array)
    movable = np.isfinite(array) & (array != 0)
    clipped = np.sign(array) * np.clip(magnitude, np.float32(precision.tiny), np.float32(precision.largest))
    out = np.where(movable, clipped, array).astype(np.float32)
    changed = movable & ((magnitude >= precision.overflow) | (magnitude <= precision.flush))
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


def output_allows_fp16(domain: str, op_type: str, opset: int, index: int) -> bool:
    """False for float outputs that cannot be FP16 (Range's; LayerNormalization's Mean and InvStdDev);
    ops without a known schema (contrib ops) are assumed to allow it."""
    return output_allows_type(domain, op_type, opset, index, FP16.type_str)


def input_allows_fp16(domain: str, op_type: str, opset: int, index: int) -> bool:
    """False for float inputs that must stay float32 (Resize's scales)."""
    return input_allows_type(domain, op_type, opset, index, FP16.type_str)


@functools.cache
def output_allows_type(domain: str, op_type: str, opset: int, index: int, type_str: str) -> bool:
    """Whether a float output may have the schema type `type_str` ("tensor(bfloat16)"); ops without a known
    schema (contrib ops) are assumed to allow it."""
    schema = _schema(domain, op_type, opset)
    return schema is None or not schema.outputs or _formal_allows(schema, schema.outputs, index, type_str)


@functools.cache
def input_allows_type(domain: str, op_type: str, opset: int, index: int, type_str: str) -> bool:
    """Whether a float input may have the schema type `type_str`: False for Resize's scales."""
    schema = _schema(domain, op_type, opset)
    return schema is None or not schema.inputs or _formal_allows(schema, schema.inputs, index, type_str)


def _formal_allows(schema: onnx.defs.OpSchema, formals: Sequence, index: int, type_str: str) -> bool:
    """Whether the formal parameter at `index` (the last one for variadic tails) may be `type_str` when it
    may be FLOAT; parameters that are never FLOAT do not matter here."""
    allowed = _allowed(schema, formals[min(index, len(formals) - 1)].type_str)
    return type_str in allowed or "tensor(float)" not in allowed
