"""Inputs for verification: generated from the model's input specs with a seed, or loaded from files.

Generated values follow the input's role, because random data outside a model's domain makes verification
meaningless (NaN from log of negatives, token ids past the vocabulary, an all-zero attention mask):
- float inputs: uniform in [0, 1) for 4-D image-like inputs (NCHW), else standard normal;
- integer inputs named like a mask (`attention_mask`, `*mask*`): all ones; token-type ids: zeros;
- other integer inputs (token ids, indices): uniform in [0, `int_high`), 100 by default;
- bool inputs: True.
Dynamic dims take values from `--shape name:1x3x640x640`, else from a symbolic name seen before, else 1
for batch-like leading dims, 128 for sequence-like dims, 224 for spatial dims (stated in the report).
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphdoctor.errors import GraphDoctorError

__all__ = ["InputSpec", "bind_inputs", "generate_inputs", "input_specs", "load_inputs", "parse_shape", "save_inputs"]

_DEFAULT_DIM = {"batch": 1, "sequence": 128, "spatial": 224, "other": 1}
_MASK = re.compile(r"mask", re.IGNORECASE)
_TOKEN_TYPE = re.compile(r"token_type|segment", re.IGNORECASE)
_UNNAMED = re.compile(r"|input_\d+|arr_\d+")  # .npy, input_N.pb without names, np.savez(*arrays)


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
    if not name or not shape or any(d < 0 for d in shape):
        raise GraphDoctorError(f"--shape '{text}': expected NAME:DIMS such as images:1x3x640x640")
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
    rng = np.random.default_rng(seed)
    symbols = _given_symbols(specs, shapes)
    inputs = {}
    for spec in specs:
        shape = _concrete_shape(spec, shapes.get(spec.name), symbols)
        inputs[spec.name] = _values(spec, shape, rng, int_high)
    return inputs


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
    dtype = np.dtype(spec.dtype.numpy())
    if spec.dtype == ir.DataType.BOOL:
        return np.ones(shape, dtype=bool)
    if spec.dtype.is_floating_point():
        image_like = len(shape) == 4
        values = rng.random(shape) if image_like else rng.standard_normal(shape)
        return values.astype(dtype)
    if _MASK.search(spec.name):
        return np.ones(shape, dtype=dtype)
    if _TOKEN_TYPE.search(spec.name):
        return np.zeros(shape, dtype=dtype)
    return rng.integers(0, int_high, size=shape).astype(dtype)


def load_inputs(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Inputs from an .npz (names as keys), a single .npy (the one input), or an ONNX test-data folder of
    input_N.pb files (names from the TensorProtos)."""
    source = Path(path)
    try:
        if source.is_dir():
            return _load_pb_folder(source)
        if source.suffix == ".npz":
            with np.load(source, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if source.suffix == ".npy":
            return {"": np.load(source, allow_pickle=False)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise GraphDoctorError(f"{source}: cannot read inputs: {error}") from None
    raise GraphDoctorError(f"{source}: inputs must be an .npz, an .npy, or a folder of input_N.pb files")


def _load_pb_folder(folder: Path) -> dict[str, np.ndarray]:
    import onnx
    import onnx.numpy_helper
    from google.protobuf.message import DecodeError

    files = sorted(folder.glob("input_*.pb"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if not files:
        raise GraphDoctorError(f"{folder}: no input_N.pb files")
    inputs = {}
    for file in files:
        tensor = onnx.TensorProto()
        try:
            tensor.ParseFromString(file.read_bytes())
            inputs[tensor.name or file.stem] = onnx.numpy_helper.to_array(tensor)
        except DecodeError as error:  # OSError and ValueError are caught by load_inputs
            raise GraphDoctorError(f"{file}: not a serialized ONNX TensorProto: {error}") from None
    return inputs


def bind_inputs(model: ir.Model, loaded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match loaded arrays to the model's inputs: by name, or by position for unnamed ('' or input_N)."""
    names = [spec.name for spec in input_specs(model)]
    if set(loaded) == set(names):
        return dict(loaded)
    # only unnamed arrays bind by position: named ones that differ would be bound to the wrong inputs silently
    if len(loaded) == len(names) and all(_UNNAMED.fullmatch(key) for key in loaded):
        return dict(zip(names, loaded.values(), strict=True))
    raise GraphDoctorError(f"inputs hold {sorted(loaded)}; the model needs {names}")


def save_inputs(inputs: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> Path:
    """Write the inputs used, as .npz, so that a run can be replayed with --inputs."""
    target = Path(path)
    if target.suffix != ".npz":
        target = target.with_suffix(".npz")
    np.savez(target, **inputs)
    return target
