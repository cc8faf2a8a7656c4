"""Reading tensor data in bounded memory.

onnx-ir memory-maps external data, and every page a reader touches counts in the process's resident set:
scanning all weights of a 2 GB model through `tensor.numpy()` would leave 2 GB resident. Rules that must
look at every weight (duplicates, FP16 range) read through `iter_chunks` instead: external data is read
with plain file reads, a few MiB at a time, so peak memory stays flat whatever the model's size.

Before any reading, `tensor_defect` compares what a tensor's payload holds with what its dims and data type
need, from the lengths of its protobuf fields alone: a file can state dims of 2^40 over a payload of 8 bytes,
and a reader that trusts the dims fails (or allocates) on it. Readers skip tensors with a defect; rule GD016
reports them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir

from graphdoctor.analysis.format import format_dtype

__all__ = ["CHUNK_BYTES", "iter_byte_chunks", "iter_chunks", "payload_problem", "tensor_defect"]

CHUNK_BYTES = 16 * 1024 * 1024
# The payload field each data type's values live in when not in raw_data (onnx.proto's TensorProto comments).
_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_FIELD_OF = {
    ir.DataType.FLOAT: "float_data",
    ir.DataType.COMPLEX64: "float_data",
    ir.DataType.INT64: "int64_data",
    ir.DataType.DOUBLE: "double_data",
    ir.DataType.COMPLEX128: "double_data",
    ir.DataType.UINT32: "uint64_data",
    ir.DataType.UINT64: "uint64_data",
    ir.DataType.STRING: "string_data",
}
_PACKED_BITS = (2, 4)  # int4, uint4, float4e2m1, int2, uint2: packed, one byte per int32_data entry


def iter_byte_chunks(tensor: ir.TensorProtocol, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The tensor's raw little-endian bytes in pieces of at most `chunk_bytes`."""
    if isinstance(tensor, ir.ExternalTensor):
        yield from _read_external(tensor, chunk_bytes)
        return
    data = tensor.tobytes()
    for start in range(0, len(data), chunk_bytes):
        yield data[start : start + chunk_bytes]


def iter_chunks(tensor: ir.TensorProtocol, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """The tensor's values, flattened, in pieces; nothing for packed sub-byte types (int4, fp4)."""
    if tensor.dtype.bitwidth < 8:
        return
    dtype = np.dtype(tensor.dtype.numpy()).newbyteorder("<")
    step = max(chunk_bytes // dtype.itemsize, 1) * dtype.itemsize
    if isinstance(tensor, ir.ExternalTensor):
        for piece in _read_external(tensor, step):
            yield np.frombuffer(piece, dtype=dtype)
        return
    flat = tensor.numpy().reshape(-1)
    per_chunk = step // dtype.itemsize
    for start in range(0, flat.size, per_chunk):
        yield flat[start : start + per_chunk]


def _read_external(tensor: ir.ExternalTensor, chunk_bytes: int) -> Iterator[bytes]:
    remaining = tensor.nbytes
    with open(tensor.path, "rb") as file:
        file.seek(tensor.offset or 0)
        while remaining > 0:
            piece = file.read(min(chunk_bytes, remaining))
            if not piece:
                raise OSError(f"external data of '{tensor.name}' ends {remaining} bytes early")
            remaining -= len(piece)
            yield piece


def tensor_defect(tensor: ir.TensorProtocol) -> str:
    """How a tensor's payload contradicts its dims or data type ('' when it does not), from lengths only.

    Tensors onnx-ir or graphdoctor built from arrays are consistent by construction, and external data is
    checked against its file by GD014; what is checked here is what a file states inline."""
    dims = list(tensor.shape.numpy())
    if any(d < 0 for d in dims):
        return f"has negative dims {dims}"
    if tensor.dtype == ir.DataType.UNDEFINED:
        return "has data type 0 (UNDEFINED)"
    count = math.prod(dims)
    if isinstance(tensor, ir.StringTensor):
        held = len(tensor.raw)
        return "" if held == count else f"holds {held} strings but its dims {dims} need {count}"
    proto = getattr(tensor, "raw", None)
    if not isinstance(tensor, ir.serde.TensorProtoTensor) or not isinstance(proto, onnx.TensorProto):
        return ""
    return payload_problem(proto, tensor.dtype, dims, count)


def payload_problem(proto: onnx.TensorProto, dtype: ir.DataType, dims: list[int], count: int) -> str:
    name = format_dtype(dtype)
    expected = _FIELD_OF.get(dtype, "int32_data")
    stray = next((f for f in _FIELDS if f != expected and len(getattr(proto, f))), None)
    if stray is not None:
        return f"stores {stray} in a {name} tensor (its values belong in raw_data or {expected})"
    if dtype == ir.DataType.STRING:  # no bit width: one string_data entry per element
        held = len(proto.string_data)
        return "" if held == count else f"holds {held} strings but its dims {dims} need {count}"
    bits = dtype.bitwidth
    if bits < 8 and bits not in _PACKED_BITS:
        return ""  # float6 and other packings onnx does not pin down for every field: not judged
    if proto.HasField("raw_data"):
        held_bytes, needed_bytes = len(proto.raw_data), math.ceil(count * bits / 8)
        if held_bytes == needed_bytes:
            return ""
        if bits >= 8 and held_bytes % (bits // 8):
            return (
                f"holds {held_bytes} bytes of raw_data, not a whole number of {name} values ({bits // 8} bytes"
                f" each); its dims {dims} need {needed_bytes}"
            )
        return f"holds {held_bytes * 8 // bits} {name} values but its dims {dims} need {count}"
    entries = len(getattr(proto, expected))
    per_value = 2 if dtype in (ir.DataType.COMPLEX64, ir.DataType.COMPLEX128) else 1
    needed = math.ceil(count * bits / 8) if bits < 8 else count * per_value
    if entries == needed:
        return ""
    held = entries * 8 // bits if bits < 8 else entries // per_value
    return f"holds {held} {name} values but its dims {dims} need {count}"
