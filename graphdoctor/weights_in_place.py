"""A model file's inline weights left where they are: named as external data of the model file itself.

Why: `verify` reads a model for its graph (inputs, types, the tensors layer-wise compares), not for its
weights, which ONNX Runtime reads from the file itself. `onnx.load` of a model whose weights are stored in the
file parses every weight byte in Python's protobuf: BERT-base's 418 MB cost 1.8 s a load, and a layer-wise
verify of it loaded three times. Here the file is cut at the wire level instead (graphdoctor.protowire): each
main-graph initializer holding raw bytes is re-encoded without them, as external data at their offset in the
model file, so that onnx-ir maps them from the file only if something reads them. What is read is what the
file holds, byte for byte.

Left to the usual parse: tensors under 1 KiB (shape constants, which shape inference reads), tensors in typed
fields (float_data, ...), sub-byte and string dtypes, raw bytes that do not match their dims (GD016 reports
them), tensors in subgraphs and attributes, and files with more than one link (external data that is a hard
link is refused, GD014).
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from graphdoctor.protowire import LENGTH_DELIMITED, encode_varint, field, fields, rewrite_main_graph, wire_type

__all__ = ["left_in_place_for_sessions", "parse_leaving_weights"]

_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION = 9, 13, 14  # TensorProto's fields
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # StringStringEntryProto's
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_VARINT = 0
MIN_BYTES = 1024  # smaller tensors stay inline
MERGEABLE_BELOW = 64 * 1024 * 1024  # verify's sessions leave the weights of larger files in place (graph_of)


def left_in_place_for_sessions(path: Path) -> bool:
    """Whether verify's sessions leave this file's weights in it: for files of MERGEABLE_BELOW or more. Smaller
    files are parsed whole, their weights inline, so that two of them merge into one session from any two
    folders (verify.lockstep); external data must lie in one folder."""
    return path.stat().st_size >= MERGEABLE_BELOW


def parse_leaving_weights(path: Path) -> onnx.ModelProto | None:
    """The model at `path` with its main graph's raw inline weights as external data of the file itself; None
    when there is none to leave, or the file cannot be cut so (the caller parses it as usual, and says what is
    wrong with it). The file must not change while the model is in use."""
    try:
        location = path.name.encode("utf-8")
    except UnicodeEncodeError:  # an external data location must be UTF-8 text
        return None
    with open(path, "rb") as file:
        status = os.fstat(file.fileno())
        if status.st_size == 0 or status.st_nlink > 1:
            return None
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                encoded, left = _cut(data, location)
            except (ValueError, DecodeError):
                return None
    if not left:
        return None
    try:
        return onnx.ModelProto.FromString(encoded)
    except DecodeError:
        return None


def _cut(data: mmap.mmap, location: bytes) -> tuple[bytes, int]:
    """The encoded model with the weights left in place, and how many were."""
    left = 0

    def leave_in_place(number: int, begin: int, payload: int, end: int) -> bytes:
        nonlocal left
        tensor = None
        if number == _GRAPH_INITIALIZER and wire_type(data, begin) == LENGTH_DELIMITED:
            tensor = _in_place(data, payload, end, location)
        left += tensor is not None
        return data[begin:end] if tensor is None else field(_GRAPH_INITIALIZER, tensor)

    return rewrite_main_graph(data, leave_in_place), left


def _in_place(data: mmap.mmap, start: int, end: int, location: bytes) -> bytes | None:
    """The TensorProto in data[start:end] re-encoded with its raw bytes as external data at their offset in
    the file; None to keep it as it is."""
    kept: list[bytes] = []
    raw: tuple[int, int] | None = None
    for number, begin, payload, stop in fields(data, start, end):
        if number in (_EXTERNAL_DATA, _DATA_LOCATION):
            return None  # external data already (or a data location we do not read)
        if number == _RAW_DATA:
            if raw is not None or wire_type(data, begin) != LENGTH_DELIMITED:
                return None
            raw = (payload, stop)
        else:
            kept.append(data[begin:stop])
    if raw is None or raw[1] - raw[0] < MIN_BYTES:
        return None
    header = b"".join(kept)
    offset, length = raw[0], raw[1] - raw[0]
    if length != _expected_bytes(onnx.TensorProto.FromString(header)):
        return None
    entries = [(b"location", location), (b"offset", str(offset).encode()), (b"length", str(length).encode())]
    external = b"".join(field(_EXTERNAL_DATA, field(_ENTRY_KEY, k) + field(_ENTRY_VALUE, v)) for k, v in entries)
    return header + external + encode_varint(_DATA_LOCATION << 3 | _VARINT) + encode_varint(_EXTERNAL)


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    """What raw bytes of its dims and dtype hold; None for dtypes not stored a whole byte per element."""
    try:
        dtype = ir.DataType(tensor.data_type)
    except ValueError:
        return None
    if dtype in (ir.DataType.STRING, ir.DataType.UNDEFINED) or dtype.itemsize != int(dtype.itemsize):
        return None
    if any(d < 0 for d in tensor.dims):
        return None
    return math.prod(tensor.dims) * int(dtype.itemsize)
