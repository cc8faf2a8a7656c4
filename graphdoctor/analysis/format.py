"""How numbers, dtypes and sizes read in findings: float32[1,768], 2.3 MiB, 1e-05."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["format_bytes", "format_count", "format_dtype", "format_number", "format_shape", "format_type"]


def format_dtype(dtype: ir.DataType | None) -> str:
    """numpy's names (float32, int64, bfloat16) because users read those in PyTorch too."""
    if dtype is None:
        return "?"
    try:
        name = np.dtype(dtype.numpy()).name
    except (TypeError, ValueError):
        return dtype.name.lower()
    return dtype.name.lower() if name == "object" else name


def format_shape(shape: ir.Shape | None) -> str:
    if shape is None:
        return "[?]"
    dims = (str(d) if isinstance(d, int) else (d.value or "?") for d in shape)
    return "[" + ",".join(dims) + "]"


def format_type(value: ir.Value) -> str:
    """`float32[1,768]` from a value's dtype and shape."""
    return f"{format_dtype(value.dtype)}{format_shape(value.shape)}"


def format_bytes(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    if nbytes < 1024**2:
        return f"{nbytes / 1024:.1f} KiB"
    if nbytes < 1024**3:
        return f"{nbytes / 1024**2:.1f} MiB"
    return f"{nbytes / 1024**3:.2f} GiB"


def format_number(x: float | int) -> str:
    """Short, exact-enough numbers: 1e-05, 0.001, 65504, 9223372036854775807."""
    if isinstance(x, int):
        return str(x)
    return f"{x:.4g}"


def format_count(count: int, noun: str) -> str:
    """'1 model', '3 models': a count with its noun, plural when it is not one (nouns with a plain -s)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
