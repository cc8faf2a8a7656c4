"""Which stored tensors hold the same values: byte-identical copies, and 2-D weights stored as W and Wᵀ.

A shared fact (`tensor_digests(analysis)`): GD003 reports what it finds and the dedup fix merges it, so the
digests are computed once. Hashing every weight of a 2 GB model would read 2 GB, yet most weights cannot have
a twin because no other tensor has their dtype and shape. So the work narrows in stages, each one reading
only what the previous stage left in doubt:

1. group by dtype and shape (metadata only: no data is read);
2. a sampled digest of what still collides: the size and the first, middle and last 4 KiB (the whole
   tensor when it is no larger than that);
3. what still collides is read in full, streamed with plain file reads in 16 MiB pieces
   (`tensor_data.iter_byte_chunks`), so memory stays flat and nothing is memory-mapped: two candidates are
   compared byte for byte (cheaper than hashing both), three or more are grouped by BLAKE2b-256 digest.

Transposed pairs follow the same idea: a tensor of shape [r,c] can only be the transpose of one of shape [c,r];
a few 8x8 blocks of A are compared with the mirrored blocks of B, and only pairs that agree are compared in
full, tile by tile. Values are compared as bits, never as floats (NaN and -0.0 compare as stored).
"""

from __future__ import annotations

import hashlib
import io
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.constants import const_tensor, iter_constant_values
from graphdoctor.analysis.tensor_data import CHUNK_BYTES, iter_byte_chunks

if TYPE_CHECKING:
    from graphdoctor.analysis.context import Analysis

__all__ = ["StoredTensor", "TensorDigests", "tensor_digests"]

SAMPLE_BYTES = 4096  # per sampled range: first, middle and last
_WHOLE_SAMPLE = 3 * SAMPLE_BYTES  # tensors up to this size are digested whole at the sampling stage
BLOCK = 8  # side of the square blocks compared to find transposes
_READ_ERRORS = (OSError, ValueError, TypeError)
_K = TypeVar("_K", bound=Hashable)


@dataclass(frozen=True, eq=False)
class StoredTensor:
    """A tensor the file stores: an initializer or a Constant node's value, in model order."""

    value: ir.Value  # what consumers read (the fix rewires its uses)
    tensor: ir.TensorProtocol
    node: ir.Node | None  # the Constant node; None for an initializer
    graph: str  # '' for the main graph, else the subgraph's or function's path
    order: int

    @property
    def name(self) -> str:
        return self.value.name or self.tensor.name or "?"

    @property
    def kind(self) -> str:
        return "constant" if self.node is not None else "weight"

    @property
    def dtype(self) -> ir.DataType:
        return self.tensor.dtype

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor.shape)

    @property
    def nbytes(self) -> int:
        return self.tensor.nbytes


def tensor_digests(analysis: Analysis) -> TensorDigests:
    """The model's digests, computed by the first rule (or fix) that asks and cached on the analysis."""
    return analysis.shared("digests", TensorDigests)


class TensorDigests:
    """Digests of the model's stored tensors, computed on demand and memoised per tensor."""

    def __init__(self, analysis: Analysis) -> None:
        self._analysis = analysis
        self._samples: dict[int, bytes | None] = {}
        self._fulls: dict[int, bytes | None] = {}
        self._groups: dict[int, list[list[StoredTensor]]] = {}

    @cached_property
    def stored(self) -> list[StoredTensor]:
        """Readable, byte-addressable tensors of every graph; external data stored once is listed once."""
        found: list[StoredTensor] = []
        locations: set[tuple[str, int]] = set()
        for graph, path in self._analysis.graph_sites:
            for value in iter_constant_values(graph):
                tensor = const_tensor(value)
                if tensor is None or not _is_hashable(tensor) or not self._analysis.is_readable(tensor):
                    continue
                if isinstance(tensor, ir.ExternalTensor):
                    location = (str(tensor.path), tensor.offset or 0)
                    if location in locations:  # two names for one stored copy: nothing is wasted
                        continue
                    locations.add(location)
                node = value.producer() if value.const_value is None else None
                found.append(StoredTensor(value, tensor, node, path, len(found)))
        return found

    def identical_groups(self, min_bytes: int = 1) -> list[list[StoredTensor]]:
        """Groups of two or more byte-identical tensors (same dtype, shape and bytes), in model order."""
        if min_bytes not in self._groups:
            self._groups[min_bytes] = self._find_identical(min_bytes)
        return self._groups[min_bytes]

    def _find_identical(self, min_bytes: int) -> list[list[StoredTensor]]:
        candidates = (t for t in self.stored if t.nbytes >= max(min_bytes, 1))
        groups: list[list[StoredTensor]] = []
        for same_type in _collisions(candidates, lambda t: (t.dtype, t.dims)):
            for same_sample in _collisions(same_type, self.sample_digest):
                if same_sample[0].nbytes <= _WHOLE_SAMPLE:  # the sample was the whole tensor
                    groups.append(same_sample)
                elif len(same_sample) == 2:  # the usual case: comparing bytes beats hashing both
                    groups.extend([same_sample] if _same_bytes(*same_sample) else [])
                else:
                    groups.extend(_collisions(same_sample, self.full_digest))
        return sorted(groups, key=lambda group: group[0].order)

    def transposed_pairs(self, min_bytes: int = 1) -> list[tuple[StoredTensor, StoredTensor]]:
        """(A, B) pairs of 2-D tensors where B holds Aᵀ bit for bit; A comes first in the model.

        Copies already found by `identical_groups` take part through their first member only.
        """
        copies = {id(t) for group in self.identical_groups(min_bytes) for t in group[1:]}
        matrices = [t for t in self.stored if _is_matrix(t, min_bytes) and id(t) not in copies]
        by_type: dict[tuple, list[StoredTensor]] = defaultdict(list)
        for tensor in matrices:
            by_type[(tensor.dtype, tensor.dims)].append(tensor)
        pairs = []
        for (dtype, (rows, cols)), first in by_type.items():
            second = by_type.get((dtype, (cols, rows)), [])
            if rows <= cols and second:
                pairs.extend(_transposed_among(first, second))
        return sorted(pairs, key=lambda pair: (pair[0].order, pair[1].order))

    def sample_digest(self, stored: StoredTensor) -> bytes | None:
        """Digest of the size and three 4 KiB ranges; the full digest for tensors no larger than that."""
        if stored.nbytes <= _WHOLE_SAMPLE:
            return self.full_digest(stored)
        key = id(stored.tensor)
        if key not in self._samples:
            self._samples[key] = _sample_digest(stored.tensor)
        return self._samples[key]

    def full_digest(self, stored: StoredTensor) -> bytes | None:
        """BLAKE2b-256 of all the bytes, streamed; None if the data cannot be read."""
        key = id(stored.tensor)
        if key not in self._fulls:
            self._fulls[key] = _full_digest(stored.tensor)
        return self._fulls[key]


def _is_hashable(tensor: ir.TensorProtocol) -> bool:
    return tensor.dtype not in (ir.DataType.STRING, ir.DataType.UNDEFINED)


def _is_matrix(tensor: StoredTensor, min_bytes: int) -> bool:
    """2-D, big enough, and of a whole-byte element size that bit views can transpose."""
    return len(tensor.dims) == 2 and tensor.nbytes >= max(min_bytes, 1) and tensor.dtype.bitwidth in (8, 16, 32, 64)


def _collisions(
    items: Iterable[StoredTensor], key: Callable[[StoredTensor], _K | None]
) -> Iterator[list[StoredTensor]]:
    """Groups of two or more items sharing a key, first-seen order; items whose key is None are dropped."""
    groups: dict[_K, list[StoredTensor]] = defaultdict(list)
    for item in items:
        value = key(item)
        if value is not None:
            groups[value].append(item)
    return (group for group in groups.values() if len(group) > 1)


def _sample_digest(tensor: ir.TensorProtocol) -> bytes | None:
    size = tensor.nbytes
    middle = (size - SAMPLE_BYTES) // 2
    ranges = [(0, SAMPLE_BYTES), (middle, SAMPLE_BYTES), (size - SAMPLE_BYTES, SAMPLE_BYTES)]
    try:
        pieces = _read_ranges(tensor, ranges)
    except _READ_ERRORS:
        return None
    digest = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    for piece in pieces:
        digest.update(piece)
    return b"sample:" + digest.digest()


def _full_digest(tensor: ir.TensorProtocol) -> bytes | None:
    digest = hashlib.blake2b(digest_size=32)
    try:
        for piece in iter_byte_chunks(tensor):
            digest.update(piece)
    except _READ_ERRORS:
        return None
    return b"full:" + digest.digest()


def _same_bytes(a: StoredTensor, b: StoredTensor) -> bool:
    """Byte equality of two tensors of equal size, streamed in equal pieces (so the pieces line up)."""
    try:
        return all(x == y for x, y in zip(iter_byte_chunks(a.tensor), iter_byte_chunks(b.tensor), strict=True))
    except _READ_ERRORS:
        return False


def _read_ranges(tensor: ir.TensorProtocol, ranges: list[tuple[int, int]]) -> list[bytes]:
    """Byte ranges (offset, size) of a tensor's data: plain file reads for external data."""
    if isinstance(tensor, ir.ExternalTensor):
        with open(tensor.path, "rb") as file:
            return [_pread(file, (tensor.offset or 0) + offset, size) for offset, size in ranges]
    data = memoryview(tensor.tobytes())
    return [bytes(data[offset : offset + size]) for offset, size in ranges]


def _pread(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    piece = file.read(size)
    if len(piece) != size:
        raise OSError(f"external data ends {size - len(piece)} bytes early")
    return piece


def _transposed_among(
    first: list[StoredTensor], second: list[StoredTensor]
) -> Iterator[tuple[StoredTensor, StoredTensor]]:
    """Pairs (a in first, b in second) with b == aᵀ: sampled blocks first, then a full comparison."""
    by_signature: dict[bytes, list[StoredTensor]] = defaultdict(list)
    for b in second:
        signature = _signature(b, transposed=False)
        if signature is not None:
            by_signature[signature].append(b)
    seen: set[tuple[int, int]] = set()
    for a in first:
        signature = _signature(a, transposed=True)
        for b in by_signature.get(signature, []) if signature is not None else []:
            pair = (a, b) if a.order < b.order else (b, a)
            key = (pair[0].order, pair[1].order)
            if a is b or key in seen:  # square matrices: a symmetric one, or the pair seen from B
                continue
            seen.add(key)
            if _is_transpose(a, b):
                yield pair


def _signature(stored: StoredTensor, transposed: bool) -> bytes | None:
    """Three BLOCKxBLOCK blocks (corner, centre, corner) of the tensor, or of its transpose, as bits.

    A's transposed signature equals B's plain one exactly when the blocks agree, so candidates match by
    dictionary lookup instead of pair by pair.
    """
    rows, cols = stored.dims
    view_rows, view_cols = (cols, rows) if transposed else (rows, cols)
    k_rows, k_cols = min(BLOCK, view_rows), min(BLOCK, view_cols)
    corners = [(0, 0), ((view_rows - k_rows) // 2, (view_cols - k_cols) // 2), (view_rows - k_rows, view_cols - k_cols)]
    digest = hashlib.blake2b(digest_size=16)
    try:
        with _Matrix(stored) as matrix:
            for i, j in corners:
                if transposed:
                    block = matrix.block(j, j + k_cols, i, i + k_rows).T
                else:
                    block = matrix.block(i, i + k_rows, j, j + k_cols)
                digest.update(np.ascontiguousarray(block).tobytes())
    except _READ_ERRORS:
        return None
    return digest.digest()


def _is_transpose(a: StoredTensor, b: StoredTensor) -> bool:
    """b == aᵀ bit for bit, compared tile by tile so that memory stays bounded for external data.

    A tile of a is [height x width] and the matching tile of b is [width x height]: each costs one read per
    row (one in all when the tile spans whole rows). Tiles span whole rows of a when its rows are short;
    otherwise they are square, which keeps the number of reads lowest for a given tile size.
    """
    rows, cols = a.dims
    elements = max(CHUNK_BYTES // (a.dtype.bitwidth // 8), 1)
    width = min(cols, math.isqrt(elements))
    height = max(elements // width, 1)
    try:
        with _Matrix(a) as left, _Matrix(b) as right:
            for row in range(0, rows, height):
                for col in range(0, cols, width):
                    row_end, col_end = min(row + height, rows), min(col + width, cols)
                    tile = left.block(row, row_end, col, col_end)
                    if not np.array_equal(tile, right.block(col, col_end, row, row_end).T):
                        return False
    except _READ_ERRORS:
        return False
    return True


class _Matrix:
    """A 2-D tensor read block by block as unsigned integers of its element size (bits, not values).

    External data is read with unbuffered file reads straight into the block, one per row of the block (one
    in all when the block spans whole rows); in-memory data is viewed once.
    """

    def __init__(self, stored: StoredTensor) -> None:
        self._tensor = stored.tensor
        self.rows, self.cols = stored.dims
        self._bits = np.dtype(f"<u{stored.tensor.dtype.bitwidth // 8}")
        self._file: io.FileIO | None = None
        self._array: np.ndarray | None = None

    def __enter__(self) -> _Matrix:
        if isinstance(self._tensor, ir.ExternalTensor):
            self._file = io.FileIO(self._tensor.path, "r")
        else:
            self._array = np.frombuffer(self._tensor.tobytes(), dtype=self._bits).reshape(self.rows, self.cols)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def block(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        if self._array is not None:
            return self._array[row0:row1, col0:col1]
        assert self._file is not None and isinstance(self._tensor, ir.ExternalTensor)
        out = np.empty((row1 - row0, col1 - col0), dtype=self._bits)
        item, base = self._bits.itemsize, self._tensor.offset or 0
        if col0 == 0 and col1 == self.cols:
            _read_into(self._file, base + row0 * self.cols * item, out)
        else:
            for index, row in enumerate(range(row0, row1)):
                _read_into(self._file, base + (row * self.cols + col0) * item, out[index])
        return out


def _read_into(file: io.FileIO, offset: int, out: np.ndarray) -> None:
    """Fill `out` from `offset`; raw reads may return less than asked, so loop until full."""
    view = memoryview(out).cast("B")
    file.seek(offset)
    filled = 0
    while filled < len(view):
        count = file.readinto(view[filled:])
        if not count:
            raise OSError(f"external data ends {len(view) - filled} bytes early")
        filled += count
