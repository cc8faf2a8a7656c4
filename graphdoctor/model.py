"""Loading ONNX models safely and lazily, and writing them atomically.

Models load into onnx-ir with external data memory-mapped, so a 2 GB model costs megabytes until a rule
reads a tensor. Everything that can go wrong with a file becomes a `ModelLoadError` with one clear line:
a missing path, a directory, a pipe, an empty or truncated file, a file that is not ONNX, external data
without a byte size (STRING, negative dims), and external data whose location escapes the model's folder,
in any graph, subgraph or function body (we never open a file outside it). External data that is missing or
shorter than declared does not stop loading: rule GD014 reports it, and readers of tensor values skip it.

Writing never leaves a half-written model behind: `stage_model` writes the model (and its external data)
into a hidden folder beside the target, and `StagedModel.commit` renames the files into place, the data
first and the .onnx last, so a reader never finds a model without its weights. A full disk, a file-size
limit or an interrupt discard the folder and raise one clear error; the input is never touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from graphdoctor.errors import GraphDoctorError, ModelLoadError, first_line

__all__ = [
    "PROTOBUF_LIMIT",
    "LoadedModel",
    "StagedModel",
    "disk_size",
    "iter_external_tensors",
    "load_model",
    "stage_model",
    "writing",
]

PROTOBUF_LIMIT = 2**31 - 1  # a serialized ModelProto cannot be larger: above it, weights must be external data
EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inline (shape constants, biases of small layers)
_STAGING: set[Path] = set()  # staging folders not yet committed or discarded


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


@dataclass
class StagedModel:
    """A model written into a hidden folder beside `target`; `commit` moves it into place, `discard` drops it."""

    folder: Path
    target: Path
    data_name: str | None  # the external data file's name, if the model has one

    @property
    def path(self) -> Path:
        """Where the staged model is readable (verify it here before committing)."""
        return self.folder / self.target.name

    def size(self) -> int:
        """Bytes written: the model file and its external data."""
        return sum(file.stat().st_size for file in self.folder.iterdir())

    def commit(self) -> None:
        try:
            if self.data_name is not None:
                os.replace(self.folder / self.data_name, self.target.parent / self.data_name)
            os.replace(self.path, self.target)
        except OSError as error:
            raise GraphDoctorError(f"cannot move the written model to {self.target}: {error.strerror}") from None
        finally:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        _STAGING.discard(self.folder)


def disk_size(loaded: LoadedModel) -> int:
    """Bytes on disk: the model file and every external data file it references, each counted once."""
    files = {Path(tensor.path) for tensor in iter_external_tensors(loaded.model)}
    return loaded.file_size + sum(file.stat().st_size for file in files if file.is_file())


def stage_model(model: ir.Model, target: Path, external_data: bool) -> StagedModel:
    """Write `model` for `target` into a hidden folder beside it (same filesystem, so `commit` is a rename).
    Call it inside `writing(target)`, which removes the folder however the process is interrupted.

    With `external_data`, every initializer of at least 1 KiB goes to `TARGET.data`, streamed from where
    it is now with plain reads (never memory-mapped: a 2 GB model stays out of the resident set). Any
    failure, an interrupt included, removes the folder and raises `GraphDoctorError`."""
    folder = target.parent / f".{target.name}.{secrets.token_hex(6)}.graphdoctor-tmp"
    _STAGING.add(folder)  # before it exists: an interrupt right after mkdir still finds it
    try:
        folder.mkdir(mode=0o700)
    except OSError as error:
        _STAGING.discard(folder)
        raise GraphDoctorError(f"cannot write to {target.parent}: {error.strerror}; nothing was written") from None
    staged = StagedModel(folder, target, f"{target.name}.data" if external_data else None)
    try:
        if staged.data_name is not None:
            _write_external_data(model, folder, staged.data_name)
        _write_proto(model, staged.path)
    except OSError as error:
        staged.discard()
        reason = error.strerror or first_line(error)
        raise GraphDoctorError(f"cannot write {target}: {reason}; nothing was written") from None
    except BaseException:
        staged.discard()
        raise
    return staged


@contextlib.contextmanager
def writing(target: Path) -> Iterator[None]:
    """Around staging, verifying and committing models: a file-size limit (SIGXFSZ) fails the write with
    EFBIG instead of killing the process, SIGINT or SIGTERM stop it with one clear error, and on the way
    out every staging folder not committed is removed, wherever the interrupt landed."""
    try:
        if _in_main_thread():
            with _signals_as_errors(target):
                yield
        else:
            yield
    finally:
        with _signals_as(lambda _signum, _frame: None) if _in_main_thread() else contextlib.nullcontext():
            for folder in list(_STAGING):  # a second Ctrl-C must not stop the clean-up halfway
                shutil.rmtree(folder, ignore_errors=True)
                _STAGING.discard(folder)


@contextlib.contextmanager
def _signals_as_errors(target: Path) -> Iterator[None]:
    def interrupt(_signum, _frame):
        raise GraphDoctorError(f"interrupted while writing {target}; nothing was written")

    with _signals_as(interrupt):
        yield


@contextlib.contextmanager
def _signals_as(handler) -> Iterator[None]:
    """SIGINT and SIGTERM call `handler`; SIGXFSZ is ignored (a write past a file-size limit fails with EFBIG)."""
    handlers = {signal.SIGXFSZ: signal.SIG_IGN, signal.SIGTERM: handler, signal.SIGINT: handler}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _write_external_data(model: ir.Model, folder: Path, data_name: str) -> None:
    """Stream every large initializer into one data file and point the model at it."""
    from graphdoctor.analysis.tensor_data import iter_byte_chunks  # analysis imports this module

    with open(folder / data_name, "wb") as data:
        for value in _initializers(model):
            tensor = value.const_value
            if tensor is None or tensor.nbytes < EXTERNAL_MIN_BYTES:
                continue
            offset = data.tell()  # packed, as ONNX's own writer does: padding for alignment costs bytes
            for piece in iter_byte_chunks(tensor):
                data.write(piece)
            value.const_value = ir.ExternalTensor(
                data_name,
                offset,
                tensor.nbytes,
                tensor.dtype,
                shape=tensor.shape,
                name=tensor.name or value.name or "",
                base_dir=folder,
            )
        data.flush()
        os.fsync(data.fileno())


def _initializers(model: ir.Model) -> Iterator[ir.Value]:
    for graph in (model.graph, *model.graph.subgraphs()):
        yield from graph.initializers.values()


def _write_proto(model: ir.Model, path: Path) -> None:
    """Serialize and write. The size is not asked of protobuf first: that costs as much as serializing (0.2 s
    on ResNet-50), and serializing past 2 GiB fails anyway."""
    from google.protobuf.message import EncodeError

    from graphdoctor.analysis.constants import stored_bytes  # analysis imports this module

    proto = ir.serde.serialize_model(model)
    try:
        data = proto.SerializeToString()
    except EncodeError:  # what protobuf raises past 2 GiB (ByteSize raises it too)
        raise GraphDoctorError(
            f"the model does not serialize: its {stored_bytes(model):,} bytes of tensors are over protobuf's"
            " 2 GiB limit: write it with --external-data"
        ) from None
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
