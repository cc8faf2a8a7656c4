"""Inputs for verification: generated from the model's input specs with a seed, or loaded from files.

Generated values follow the input's role, because random data outside a model's domain makes verification
meaningless (NaN from log of negatives, token ids past the vocabulary, an all-zero attention mask):
- float inputs: uniform in [0, 1) for 4-D image-like inputs (NCHW), else standard normal;
- integer inputs named like a mask (`attention_mask`, `*mask*`): all ones; token-type ids: zeros;
- other integer inputs (token ids, indices): uniform in [0, `int_high`), 100 by default;
- bool inputs: True.
Dynamic dims take values from `--shape name:1x3x640x640`, else from a symbolic name seen before, else 1
for batch-like leading dims, 128 for sequence-like dims, 224 for spatial dims (stated in the report).

Sizes are checked before anything is allocated: all inputs of a run together, generated or loaded, may take
`INPUTS_BUDGET` bytes, and a file's headers (an .npy header, a zip member's size, a TensorProto's dims) must
agree with the bytes it holds. Object arrays are refused, never unpickled; input_N.pb tensors that point at
external data are refused (they would read files outside the folder); paths that are not regular files
(a FIFO blocks the first read forever) are refused before they are opened.

Calibration (FP16 range analysis) takes several batches: `load_input_batches` reads a folder of .npz files
(one batch each), a folder of ONNX test-data folders (test_data_set_0, ... of input_N.pb files, as in the ONNX
model zoo), or any single source `load_inputs` reads (one batch). Batches are loaded one at a time, when asked
for: 100 batches of 50 MB never sit in memory together, so INPUTS_BUDGET bounds each batch, not their sum.
Every batch's .npz headers are checked when the folder is opened, so a bad 90th file fails before 89 runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, overload

import numpy as np
import onnx_ir as ir

from graphdoctor.errors import GraphDoctorError, first_line
from graphdoctor.files import replace_whole

__all__ = [
    "INPUTS_BUDGET",
    "InputBatches",
    "InputSpec",
    "bind_inputs",
    "generate_inputs",
    "input_specs",
    "load_input_batches",
    "load_inputs",
    "parse_shape",
    "save_inputs",
]

_DEFAULT_DIM = {"batch": 1, "sequence": 128, "spatial": 224, "other": 1}
_MASK = re.compile(r"mask", re.IGNORECASE)
_TOKEN_TYPE = re.compile(r"token_type|segment", re.IGNORECASE)
_UNNAMED = re.compile(r"|input_\d+|arr_\d+")  # .npy, input_N.pb without names, np.savez(*arrays)
_INPUT_PB = re.compile(r"input_\d+\.pb")
_DIGITS = re.compile(r"(\d+)")

INPUTS_BUDGET = 2 * 2**30  # bytes of all inputs of one run together, generated or loaded
_PB_BUDGET = INPUTS_BUDGET // 8  # bytes of input_N.pb files: parsing expands packed varints up to 8 times
_MAX_RANK = 64  # numpy's limit
_CHUNK = 2**20  # elements drawn at a time


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: ir.DataType
    dims: tuple[int | str | None, ...]  # ints, symbolic names, or None for unnamed dynamic dims


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs are weights, not inputs)."""
    specs = []
    for value in model.graph.inputs:
        if value.const_value is not None or value.name in model.graph.initializers:
            continue
        if value.dtype is None or value.shape is None:
            raise GraphDoctorError(f"input '{value.name}' has no declared type or shape; pass --inputs FILE")
        dims = tuple(d if isinstance(d, int) else d.value for d in value.shape)
        specs.append(InputSpec(value.name or "", value.dtype, dims))
    return specs


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`images:1x3x640x640` → ('images', (1, 3, 640, 640)); the name may itself contain ':'."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x")) if sep else ()
    except ValueError:
        shape = ()
    if not name or not shape:
        raise GraphDoctorError(f"--shape '{text}': expected NAME:DIMS such as images:1x3x640x640")
    if any(d < 1 for d in shape):  # a zero-size input verifies nothing
        raise GraphDoctorError(f"--shape '{text}': every dim must be at least 1")
    return name, shape


def generate_inputs(
    model: ir.Model, *, seed: int = 0, shapes: Mapping[str, tuple[int, ...]] | None = None, int_high: int = 100
) -> dict[str, np.ndarray]:
    """One seeded input per model input, shaped by `shapes` and the rules in the module docstring."""
    shapes = dict(shapes or {})
    specs = input_specs(model)
    unknown = sorted(set(shapes) - {s.name for s in specs})
    if unknown:
        raise GraphDoctorError(f"--shape names unknown input(s) {unknown}; inputs: {[s.name for s in specs]}")
    for spec in specs:
        _check_declared(spec)
    rng = np.random.default_rng(seed)
    symbols = _given_symbols(specs, shapes)
    shaped = [(spec, _concrete_shape(spec, shapes.get(spec.name), symbols)) for spec in specs]
    budget = _Budget("")
    for spec, shape in shaped:  # every size is checked before the first array is allocated
        dynamic = any(not isinstance(dim, int) for dim in spec.dims)
        advice = "give smaller dims with --shape NAME:DIMS, or pass --inputs FILE" if dynamic else "pass --inputs FILE"
        budget.take(spec.name, shape, _numpy_dtype(spec), advice)
    return {spec.name: _values(spec, shape, rng, int_high) for spec, shape in shaped}


def _check_declared(spec: InputSpec) -> None:
    """What no array can be: a negative static dim, more dims than numpy holds, an element type without values."""
    negative = [(axis, dim) for axis, dim in enumerate(spec.dims) if isinstance(dim, int) and dim < 0]
    if negative:
        axis, dim = negative[0]
        raise GraphDoctorError(
            f"input '{spec.name}' declares dim {dim} at axis {axis}, which no tensor has; pass --inputs FILE"
        )
    if len(spec.dims) > _MAX_RANK:
        raise GraphDoctorError(
            f"input '{spec.name}' has rank {len(spec.dims)}; numpy arrays hold at most {_MAX_RANK} dims"
        )
    _numpy_dtype(spec)


def _numpy_dtype(spec: InputSpec) -> np.dtype:
    try:
        return np.dtype(spec.dtype.numpy())
    except TypeError:  # UNDEFINED and the types numpy has no counterpart for
        raise GraphDoctorError(
            f"input '{spec.name}' has element type {spec.dtype.name}, which has no values to generate;"
            " pass --inputs FILE"
        ) from None


class _Budget:
    """Bytes of the inputs of one run, checked against INPUTS_BUDGET before each array is allocated."""

    def __init__(self, where: str) -> None:
        self.where, self.used = where, 0  # `where`: a prefix naming the file, if any

    def take(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype, advice: str = "refused before loading it"
    ) -> None:
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: 10^12 dims do not overflow
        if self.used + nbytes > INPUTS_BUDGET:
            before = f" after {_mib(self.used)} for the inputs before it" if self.used else ""
            raise GraphDoctorError(
                f"{self.where}input '{name}' {_typed(dtype, shape)} needs {nbytes:,} bytes ({_mib(nbytes)}){before};"
                f" the inputs of a run are limited to {_mib(INPUTS_BUDGET)} together: {advice}"
            )
        self.used += nbytes


def _typed(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    return f"{dtype}[{','.join(map(str, shape))}]"


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def _given_symbols(specs: list[InputSpec], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Symbolic dims fixed by --shape, collected before any input is generated: `--shape input_ids:2x16`
    must also size an attention_mask declared before it. Two --shape values for one symbol must agree."""
    symbols: dict[str, int] = {}
    for spec in specs:
        given = shapes.get(spec.name)
        if given is None:
            continue
        if len(given) != len(spec.dims):
            raise GraphDoctorError(f"--shape {spec.name}: rank {len(given)}, but the input has rank {len(spec.dims)}")
        for dim, size in zip(spec.dims, given, strict=True):
            if isinstance(dim, int) and dim != size:
                raise GraphDoctorError(f"--shape {spec.name}: dim {dim} is static, got {size}")
            if isinstance(dim, str) and symbols.setdefault(dim, size) != size:
                raise GraphDoctorError(
                    f"--shape {spec.name}: dim '{dim}' is {size}, but another --shape set it to {symbols[dim]}"
                )
    return symbols


def _concrete_shape(spec: InputSpec, given: tuple[int, ...] | None, symbols: dict[str, int]) -> tuple[int, ...]:
    if given is not None:
        return given  # checked by _given_symbols
    shape = []
    for index, dim in enumerate(spec.dims):
        if isinstance(dim, int):
            shape.append(dim)
        elif isinstance(dim, str) and dim in symbols:
            shape.append(symbols[dim])
        else:
            size = _DEFAULT_DIM[_role(spec, index, dim)]
            if isinstance(dim, str):
                symbols[dim] = size
            shape.append(size)
    return tuple(shape)


def _role(spec: InputSpec, index: int, dim: str | None) -> str:
    """Guess what a dynamic dim means, from its name first, then its position."""
    name = (dim or "").lower()
    if "batch" in name or name in ("n", "b", "bs"):
        return "batch"
    if any(word in name for word in ("seq", "len", "token", "past")):
        return "sequence"
    if any(word in name for word in ("height", "width")) or name in ("h", "w"):
        return "spatial"
    if index == 0:
        return "batch"
    if spec.dtype.is_floating_point() and len(spec.dims) == 4 and index >= 2:
        return "spatial"
    if not spec.dtype.is_floating_point() and index == 1:
        return "sequence"
    return "other"


def _values(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, int_high: int) -> np.ndarray:
    dtype = _numpy_dtype(spec)
    if spec.dtype == ir.DataType.BOOL:
        return np.ones(shape, dtype=bool)
    if spec.dtype.is_floating_point():
        image_like = len(shape) == 4
        return _drawn(shape, dtype, rng.random if image_like else rng.standard_normal)
    if _MASK.search(spec.name):
        return np.ones(shape, dtype=dtype)
    if _TOKEN_TYPE.search(spec.name):
        return np.zeros(shape, dtype=dtype)
    return _drawn(shape, dtype, lambda size: rng.integers(0, int_high, size=size))


def _drawn(shape: tuple[int, ...], dtype: np.dtype, draw) -> np.ndarray:
    """`draw(n)` cast into an array of `dtype`, a chunk at a time: the generator's float64/int64 values never
    exist all at once (a 1 GiB float32 input would cost 2 GiB more), and the values are the ones a single
    draw of the whole shape gives, so a seed keeps its inputs."""
    values = np.empty(shape, dtype=dtype)
    flat = values.reshape(-1)  # a view: `values` is C-contiguous
    for start in range(0, flat.size, _CHUNK):
        flat[start : start + _CHUNK] = draw(min(_CHUNK, flat.size - start))
    return values


def load_inputs(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Inputs from an .npz (names as keys), a single .npy (the one input), or an ONNX test-data folder of
    input_N.pb files (names from the TensorProtos). Every size is checked against the file and the budget
    before an array is allocated. A folder of several batches is refused, not cut to its first: a command
    that runs one batch would otherwise check one sample and say nothing of the rest."""
    batches = load_input_batches(path)
    if len(batches) > 1:
        raise GraphDoctorError(
            f"{path}: holds {len(batches)} batches of inputs ({batches.sources[0].name}, ...); this command runs"
            f" one: pass one of them (e.g. {batches.sources[0]}); `graphdoctor fix --fp16` calibrates over all"
        )
    return batches[0]


def load_input_batches(path: str | os.PathLike[str]) -> InputBatches:
    """The batches of inputs at `path`: one per .npz file of a folder, one per test-data folder of a folder
    (test_data_set_N of input_N.pb files), else the one batch `path` holds (an .npz, an .npy, a folder of
    input_N.pb files). Batches are in natural name order (batch_2 before batch_10). Other files (output_N.pb,
    a model.onnx beside its test data, hidden files) are ignored; a folder holding no batch, or batches of two
    kinds, is refused. .npz/.npy headers and .pb file sizes are checked now (a TensorProto's dims only by
    parsing it, when its batch is read); arrays are read when a batch is asked for."""
    source = Path(path)
    sources = _batch_sources(source) if source.is_dir() else [source]
    batches = InputBatches(tuple(sources))
    batches.check()
    return batches


class InputBatches(Sequence[dict[str, np.ndarray]]):
    """Batches of sample inputs, each read from its source when indexed (or iterated): at most one is held
    here at a time. `bound_to(model)` gives the same batches bound to the model's inputs, with errors naming
    the file of the batch that does not fit."""

    def __init__(self, sources: tuple[Path, ...], model: ir.Model | None = None) -> None:
        self.sources = sources
        self._model = model

    def __len__(self) -> int:
        return len(self.sources)

    @overload
    def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...
    @overload
    def __getitem__(self, index: slice) -> InputBatches: ...
    def __getitem__(self, index: int | slice) -> dict[str, np.ndarray] | InputBatches:
        if isinstance(index, slice):
            return InputBatches(self.sources[index], self._model)
        source = self.sources[index]
        loaded = _load_source(source)
        if self._model is None:
            return loaded
        try:
            return bind_inputs(self._model, loaded)
        except GraphDoctorError as error:
            if len(self.sources) == 1:
                raise
            raise GraphDoctorError(f"{source}: {error}") from None

    def bound_to(self, model: ir.Model) -> InputBatches:
        return InputBatches(self.sources, model)

    def check(self) -> None:
        """Check every batch's headers against its bytes and the budget, and that .npz batches hold the same
        input names, without reading any array."""
        first: tuple[Path, list[str]] | None = None
        for source in self.sources:
            with _reading(source):
                names = _check_source(source)
            if names is None:
                continue
            if first is None:
                first = (source, names)
            elif sorted(names) != sorted(first[1]):
                raise GraphDoctorError(
                    f"{source}: holds inputs {sorted(names)}, but {first[0].name} holds {sorted(first[1])};"
                    " every batch must hold the same inputs"
                )


def _batch_sources(folder: Path) -> list[Path]:
    """The batches a folder holds, by the kind of its entries (see load_input_batches)."""
    kinds: dict[str, list[Path]] = {}
    with _reading(folder):
        for entry in sorted(folder.iterdir(), key=_natural_key):
            kind = _entry_kind(entry)
            if kind is not None:
                kinds.setdefault(kind, []).append(entry)
    if not kinds:
        raise GraphDoctorError(
            f"{folder}: holds no inputs: expected .npz files (a batch each), input_N.pb files (one batch),"
            " or test-data folders of input_N.pb files (a batch each)"
        )
    if len(kinds) > 1:
        found = " and ".join(f"{kind} ({paths[0].name})" for kind, paths in kinds.items())
        raise GraphDoctorError(f"{folder}: mixes {found}; a folder of inputs holds one kind")
    kind, paths = next(iter(kinds.items()))
    if kind == ".npy files":
        raise GraphDoctorError(
            f"{folder}: holds .npy files ({paths[0].name}), which name no input: save each batch as an .npz"
            " of its inputs by name (one file per batch)"
        )
    return [folder] if kind == "input_N.pb files" else paths


def _entry_kind(entry: Path) -> str | None:
    if entry.name.startswith("."):
        return None
    if entry.is_dir():
        return "test-data folders" if any(_INPUT_PB.fullmatch(p.name) for p in entry.iterdir()) else None
    if _INPUT_PB.fullmatch(entry.name):
        return "input_N.pb files"
    return {".npz": ".npz files", ".npy": ".npy files"}.get(entry.suffix)


def _natural_key(path: Path) -> list[int | str]:
    """batch_2 before batch_10: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(path.name)]


@contextlib.contextmanager
def _reading(source: Path) -> Iterator[None]:
    """What reading `source` raises, as one line naming it."""
    try:
        yield
    except OSError as error:
        raise GraphDoctorError(f"{source}: cannot read inputs: {error.strerror or first_line(error)}") from None
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError) as error:  # RuntimeError: encrypted
        raise GraphDoctorError(f"{source}: cannot read inputs: {first_line(error)}") from None


def _check_source(source: Path) -> list[str] | None:
    """Check one batch's source without reading its arrays; the input names of an .npz (None otherwise)."""
    budget = _Budget(f"{source}: ")
    if source.is_dir():
        _pb_files(source)
        return None
    if source.suffix == ".npz":
        _regular_size(source)
        with zipfile.ZipFile(source) as archive:
            return [name for _, name in _npz_members(archive, budget)]
    if source.suffix == ".npy":
        size = _regular_size(source)
        with source.open("rb") as file:
            _check_npy_header(file, size, "", budget)
        return None
    raise GraphDoctorError(f"{source}: inputs must be an .npz, an .npy, or a folder of input_N.pb files")


def _load_source(source: Path) -> dict[str, np.ndarray]:
    """One batch's arrays, every size checked against the file and the budget before it is allocated."""
    budget = _Budget(f"{source}: ")
    with _reading(source):
        if source.is_dir():
            return _load_pb_folder(source, budget)
        if source.suffix == ".npz":
            return _load_npz(source, budget)
        if source.suffix == ".npy":
            size = _regular_size(source)
            with source.open("rb") as file:
                return {"": _read_npy(file, size, "", budget)}
    raise GraphDoctorError(f"{source}: inputs must be an .npz, an .npy, or a folder of input_N.pb files")


def _regular_size(path: Path) -> int:
    """The size of `path`, refused unless it is a regular file: a FIFO blocks the first read or write forever,
    a device never ends. Checked with stat, before anything opens it."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        kind = "a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file (a pipe, socket or device)"
        raise GraphDoctorError(f"{path}: is {kind}; refused")
    return status.st_size


def _load_npz(source: Path, budget: _Budget) -> dict[str, np.ndarray]:
    """Each member's header is checked (dtype, dims against the member's size, the budget) before any is read."""
    _regular_size(source)
    with zipfile.ZipFile(source) as archive:
        arrays = {}
        for info, name in _npz_members(archive, budget):
            with archive.open(info) as member:
                arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


def _npz_members(archive: zipfile.ZipFile, budget: _Budget) -> list[tuple[zipfile.ZipInfo, str]]:
    """The archive's members with their input names, once every header is checked."""
    members = []
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise ValueError(f"member '{info.filename}' is not an .npy array")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):  # as np.savez(_compressed)
            raise ValueError(f"member '{info.filename}' uses zip compression method {info.compress_type}")
        name = info.filename[: -len(".npy")]
        with archive.open(info) as member:
            _check_npy_header(member, info.file_size, name, budget)
        members.append((info, name))
    return members


def _read_npy(file: IO[bytes], size: int, name: str, budget: _Budget) -> np.ndarray:
    _check_npy_header(file, size, name, budget)
    file.seek(0)
    return np.lib.format.read_array(file, allow_pickle=False)


def _check_npy_header(file: IO[bytes], size: int, name: str, budget: _Budget) -> None:
    """Refuse an .npy whose header asks for Python objects (only unpickling reads them), for more bytes than
    follow it (truncated, or lying to make numpy allocate terabytes), or for more than the budget."""
    label = f"array '{name}'" if name else "the array"  # a lone .npy has no name
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(file)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(file)
    else:
        raise ValueError(f"{label}: unsupported .npy format version {version[0]}.{version[1]}")
    if dtype.hasobject:
        raise ValueError(f"{label} holds Python objects (dtype {dtype}), readable only by unpickling; refused")
    if any(d < 0 for d in shape):
        raise ValueError(f"{label}: its header declares negative dims {list(shape)}")
    needed, held = math.prod(shape) * dtype.itemsize, size - file.tell()
    if needed > held:
        raise ValueError(
            f"{label}: its header declares {_typed(dtype, shape)} ({needed:,} bytes),"
            f" but {held:,} bytes follow it (truncated?)"
        )
    budget.take(name, shape, dtype)


def _load_pb_folder(folder: Path, budget: _Budget) -> dict[str, np.ndarray]:
    inputs = {}
    for file in _pb_files(folder):
        tensor = _parse_tensor(file)
        name = tensor.name or file.stem
        inputs[name] = _tensor_values(file, tensor, name, budget)
    return inputs


def _pb_files(folder: Path) -> list[Path]:
    """The folder's input_N.pb files in input order, refused unless regular files within the .pb budget."""
    files = sorted((p for p in folder.iterdir() if _INPUT_PB.fullmatch(p.name)), key=_natural_key)
    if not files:
        raise GraphDoctorError(f"{folder}: no input_N.pb files")
    held = sum(_regular_size(file) for file in files)
    if held > _PB_BUDGET:
        raise GraphDoctorError(
            f"{folder}: its input_N.pb files hold {held:,} bytes ({_mib(held)}); .pb inputs are limited to"
            f" {_mib(_PB_BUDGET)} (parsing can expand them 8 times): save the inputs as .npz"
        )
    return files


def _parse_tensor(file: Path):
    import onnx
    from google.protobuf.message import DecodeError

    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(file.read_bytes())
    except DecodeError as error:  # OSError is caught by _reading
        raise GraphDoctorError(f"{file}: not a serialized ONNX TensorProto: {error}") from None
    return tensor


def _tensor_values(file: Path, tensor, name: str, budget: _Budget) -> np.ndarray:
    """A TensorProto's values, once its dtype, dims and budget are checked; never from external data, which
    would read a file named by the tensor, wherever it is."""
    import onnx
    import onnx.numpy_helper

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise GraphDoctorError(f"{file}: tensor '{name}' keeps its values in external data; refused")
    dims = tuple(tensor.dims)
    if any(d < 0 for d in dims):
        raise GraphDoctorError(f"{file}: tensor '{name}' declares negative dims {list(dims)}")
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        raise GraphDoctorError(f"{file}: tensor '{name}' has no valid element type ({tensor.data_type})") from None
    budget.take(name, dims, dtype)
    try:
        return onnx.numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as error:  # values that do not fill the dims, segments
        raise GraphDoctorError(f"{file}: tensor '{name}' cannot be read: {first_line(error)}") from None


def bind_inputs(model: ir.Model, loaded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match loaded arrays to the model's inputs: by name, or by position for unnamed ('' or input_N)."""
    specs = input_specs(model)
    names = [spec.name for spec in specs]
    if set(loaded) == set(names):
        bound = dict(loaded)
    # only unnamed arrays bind by position: named ones that differ would be bound to the wrong inputs silently
    elif len(loaded) == len(names) and all(_UNNAMED.fullmatch(key) for key in loaded):
        bound = dict(zip(names, loaded.values(), strict=True))
    else:
        raise GraphDoctorError(f"inputs hold {sorted(loaded)}; the model needs {names}")
    for spec in specs:
        _check_fits(spec, bound[spec.name])
    return bound


def _check_fits(spec: InputSpec, array: np.ndarray) -> None:
    """The array must have the input's element type, rank and static dims: ONNX Runtime refuses it otherwise,
    in a message that names neither the array nor the declaration."""
    try:
        dtype = _numpy_dtype(spec)
    except GraphDoctorError:  # no numpy counterpart: the runtime judges
        return
    static = all(not isinstance(dim, int) or dim == size for dim, size in zip(spec.dims, array.shape, strict=False))
    if array.dtype != dtype or array.ndim != len(spec.dims) or not static:
        declared = ",".join("?" if dim is None else str(dim) for dim in spec.dims)
        raise GraphDoctorError(
            f"input '{spec.name}': the inputs hold {_typed(array.dtype, array.shape)},"
            f" but the model declares {dtype}[{declared}]"
        )


def save_inputs(inputs: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> Path:
    """Write the inputs used, as .npz, so that a run can be replayed with --inputs. Written to a temporary file
    beside the target and renamed into place: an interrupt or a full disk leaves no half-written file."""
    target = Path(path)
    if not target.name:  # '', '.', '/'
        raise GraphDoctorError(f"cannot write inputs to '{path}': it names no file")
    if target.suffix != ".npz":
        target = target.with_suffix(".npz")
    if target.exists():
        _regular_size(target)  # a FIFO or a folder: refused, not replaced
    replace_whole(target, lambda file: _write_npz(file, inputs), "inputs")
    return target


def _write_npz(file: IO[bytes], inputs: Mapping[str, np.ndarray]) -> None:
    """What np.savez writes, without passing names as keyword arguments: inputs named 'file' or
    'allow_pickle' are inputs too."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in inputs.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
