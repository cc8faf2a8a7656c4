"""Reading tensor data in bounded memory.

onnx-ir memory-maps external data, and every page a reader touches counts in the process's resident set:
scanning all weights of a 2 GB model through `tensor.numpy()` would leave 2 GB resident. Rules that must
look at every weight (duplicates, FP16 range) read through `iter_chunks` instead: external data is read
with plain file reads, a few MiB at a time, so peak memory stays flat whatever the model's size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

__all__ = ["CHUNK_BYTES", "iter_byte_chunks", "iter_chunks"]

CHUNK_BYTES = 16 * 1024 * 1024


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
