"""Loading ONNX models safely and lazily.

Models load into onnx-ir with external data memory-mapped, so a 2 GB model costs megabytes until a rule
reads a tensor. Everything that can go wrong with a file becomes a `ModelLoadError` with one clear line:
a missing path, a directory, a pipe, an empty or truncated file, a file that is not ONNX, external data
without a byte size (STRING, negative dims), and external data whose location escapes the model's folder,
in any graph, subgraph or function body (we never open a file outside it). External data that is missing or
shorter than declared does not stop loading: rule GD014 reports it, and readers of tensor values skip it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from graphdoctor.errors import ModelLoadError, first_line

__all__ = ["LoadedModel", "iter_external_tensors", "load_model"]


@dataclass(frozen=True)
class LoadedModel:
    """A model with the file it came from (the folder bounds where its external data may live)."""

    model: ir.Model
    path: Path
    file_size: int


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load `path` without reading external data; raise ModelLoadError on anything unreadable or unsafe."""
    file = Path(path)
    size = _check_is_model_file(file)
    proto = _parse_model_proto(file)
    _check_is_onnx(file, proto)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:  # the IR rejects inconsistent graphs the protobuf parser accepted
        raise ModelLoadError(f"{file}: not a valid ONNX model: {first_line(error)}") from None
    base_dir = file.resolve().parent
    for tensor in iter_external_tensors(model):
        tensor.base_dir = base_dir  # set here, not by ir's set_base_dir, which skips function bodies
        _refuse_unsized(file, tensor)
        _refuse_escaping(file, tensor, base_dir)
    return LoadedModel(model=model, path=file, file_size=size)


def iter_external_tensors(model: ir.Model) -> Iterator[ir.ExternalTensor]:
    """Yield every tensor stored as external data: initializers and tensor attributes of the main graph,
    its subgraphs and every function body. One missed here would escape the containment check below."""
    graphs: list[ir.Graph | ir.Function] = [model.graph, *model.graph.subgraphs()]
    for function in model.functions.values():
        graphs += [function, *function.subgraphs()]
    for graph in graphs:
        if isinstance(graph, ir.Graph):
            for value in graph.initializers.values():
                if isinstance(value.const_value, ir.ExternalTensor):
                    yield value.const_value
        for node in graph:
            for attr in node.attributes.values():
                yield from _external_tensors_of(attr)


def _external_tensors_of(attr: ir.Attr | ir.RefAttr) -> Iterator[ir.ExternalTensor]:
    if attr.is_ref():
        return
    if attr.type == ir.AttributeType.TENSOR:
        tensors = [attr.value]
    elif attr.type == ir.AttributeType.TENSORS:
        tensors = list(attr.value)
    else:
        return
    yield from (t for t in tensors if isinstance(t, ir.ExternalTensor))


def _check_is_model_file(file: Path) -> int:
    if not file.exists():
        raise ModelLoadError(f"{file}: no such file")
    if file.is_dir():
        raise ModelLoadError(f"{file}: is a directory, not an ONNX model file")
    try:
        status = file.stat()
        if not stat.S_ISREG(status.st_mode):  # opening a FIFO would block forever
            raise ModelLoadError(f"{file}: is not a regular file (a pipe or device?), not an ONNX model file")
        size = status.st_size
        with file.open("rb"):
            pass
    except OSError as error:
        raise ModelLoadError(f"{file}: cannot be read: {error.strerror}") from None
    if size == 0:
        raise ModelLoadError(f"{file}: is empty (0 bytes), not an ONNX model")
    return size


def _parse_model_proto(file: Path) -> onnx.ModelProto:
    try:
        return onnx.load_model(os.fspath(file), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as error:
        raise ModelLoadError(
            f"{file}: not a valid ONNX model: the protobuf does not parse ({first_line(error)});"
            " the file is truncated or not ONNX"
        ) from None


def _check_is_onnx(file: Path, proto: onnx.ModelProto) -> None:
    """A protobuf parser accepts many non-ONNX byte strings; require the fields every ONNX model has."""
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelLoadError(f"{file}: not an ONNX model (no ir_version or no graph)")
    if not proto.opset_import:
        raise ModelLoadError(f"{file}: not a valid ONNX model: it imports no opset (truncated file?)")


def _refuse_unsized(file: Path, tensor: ir.ExternalTensor) -> None:
    """External data holds fixed-size elements only: a STRING or UNDEFINED dtype, or a negative dim, has no
    byte size, and every reader of the tensor (GD014 first) would fail on it."""
    try:
        nbytes = tensor.nbytes
    except TypeError:
        nbytes = -1
    if nbytes < 0 or any(d < 0 for d in tensor.shape.numpy()):
        raise ModelLoadError(
            f"{file}: not a valid ONNX model: tensor '{tensor.name}' stores {tensor.dtype.name}"
            f"{list(tensor.shape.numpy())} as external data, which has no valid byte size"
        )


def _refuse_escaping(file: Path, tensor: ir.ExternalTensor, base_dir: Path) -> None:
    location = os.fspath(tensor.location)
    if os.path.isabs(location):
        raise ModelLoadError(
            f"{file}: tensor '{tensor.name}' names external data by absolute path '{location}';"
            " refused: external data must live in the model's folder"
        )
    try:
        target = (base_dir / location).resolve()
    except (OSError, ValueError, RuntimeError) as error:  # an embedded NUL byte; a symlink loop
        raise ModelLoadError(
            f"{file}: tensor '{tensor.name}' has an invalid external data location {location!r}: {first_line(error)}"
        ) from None
    if not target.is_relative_to(base_dir):
        raise ModelLoadError(
            f"{file}: tensor '{tensor.name}' has external data '{location}' outside the model's folder"
            f" (resolves to {target}); refused"
        )
