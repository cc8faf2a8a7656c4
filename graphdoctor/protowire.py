"""Protobuf's wire format, read and written by hand: enough to cut an encoded ONNX model into fields without
parsing them (verify.weights_apart, weights_in_place) and to forge encodings in the fuzz campaign."""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator

__all__ = [
    "LENGTH_DELIMITED",
    "MODEL_GRAPH",
    "encode_varint",
    "field",
    "field_header",
    "fields",
    "read_varint",
    "rewrite_main_graph",
    "wire_type",
]

LENGTH_DELIMITED = 2  # the wire type of strings, bytes and embedded messages
MODEL_GRAPH = 7  # ModelProto.graph


def fields(data: mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, where its encoding begins, where its payload begins, where it ends) of each field in
    data[start:end]."""
    position = start
    while position < end:
        begin = position
        key, position = read_varint(data, position)
        wire = key & 7
        if wire == 0:
            _, position = read_varint(data, position)
            payload = begin
        elif wire == 1:
            payload, position = position, position + 8
        elif wire == LENGTH_DELIMITED:
            length, payload = read_varint(data, position)
            position = payload + length
        elif wire == 5:
            payload, position = position, position + 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {begin}: not an ONNX model")
        if position > end:
            raise ValueError(f"a field at byte {begin} runs past the end: not an ONNX model")
        yield key >> 3, begin, payload, position


def rewrite_main_graph(data: mmap.mmap, change: Callable[[int, int, int, int], bytes]) -> bytes:
    """The encoded ModelProto in `data` with each field of its main graph replaced by what `change(number,
    begin, payload, end)` returns for it (`data[begin:end]` keeps it, b"" drops it); the model's other fields
    are copied as they are."""
    kept: list[bytes] = []
    for number, begin, payload, end in fields(data, 0, len(data)):
        if number != MODEL_GRAPH or wire_type(data, begin) != LENGTH_DELIMITED:
            kept.append(data[begin:end])
            continue
        graph = [change(*inner) for inner in fields(data, payload, end)]
        kept.append(field(MODEL_GRAPH, b"".join(graph)))
    return b"".join(kept)


def wire_type(data: bytes | mmap.mmap, begin: int) -> int:
    """The wire type of the field whose encoding begins at `begin`."""
    return read_varint(data, begin)[0] & 7


def read_varint(data: bytes | mmap.mmap, position: int) -> tuple[int, int]:
    """The protobuf varint at `position` and the position after it; ValueError when it is cut short."""
    value, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("a truncated varint: not an ONNX model")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return value, position
        shift += 7


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: its key, its length, its bytes."""
    return field_header(number, len(payload)) + payload


def field_header(number: int, length: int) -> bytes:
    """The key and length of a length-delimited field whose `length` bytes of payload follow."""
    return encode_varint(number << 3 | LENGTH_DELIMITED) + encode_varint(length)


def encode_varint(value: int) -> bytes:
    """`value` as a protobuf varint (a negative one as its 64-bit two's complement, as protobuf writes it)."""
    value &= (1 << 64) - 1
    encoded = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            encoded.append(low)
            return bytes(encoded)
        encoded.append(low | 0x80)
