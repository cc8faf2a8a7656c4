"""Loading ONNX models safely and lazily, and writing them atomically.

Models load into onnx-ir with external data memory-mapped, so a 2 GB model costs megabytes until a rule
reads a tensor. Everything that can go wrong with a file becomes a `ModelLoadError` with one clear line:
a missing path, a directory, a pipe, an empty or truncated file, a file that is not ONNX (saying what it is
when the first bytes tell: a PyTorch checkpoint, a TensorRT engine; see `describe_foreign_file`), external data
without a byte size (STRING, negative dims), and external data whose location escapes the model's folder,
in any graph, subgraph or function body (we never open a file outside it). External data that is missing or
shorter than declared does not stop loading: rule GD014 reports it, and readers of tensor values skip it.

Writing never leaves a half-written model behind: `stage_model` writes the model (and its external data)
into a hidden folder beside the target, and `StagedModel.commit` renames the files into place once they are on
disk, the data first and the .onnx last, so a reader never finds a model without its weights. A full disk, a file-size
limit or an interrupt discard the folder and raise one clear error; the input is never touched.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import secrets
import shutil
import signal
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from graphdoctor.errors import GraphDoctorError, Interrupted, ModelLoadError, first_line

__all__ = [
    "PROTOBUF_LIMIT",
    "LoadedModel",
    "StagedModel",
    "check_references",
    "describe_foreign_file",
    "disk_size",
    "input_files",
    "iter_external_tensors",
    "load_model",
    "refuse_overwriting",
    "serialize",
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


def load_model(path: str | os.PathLike[str], weights_in_place: bool = False) -> LoadedModel:
    """Load `path` without reading external data; raise ModelLoadError on anything unreadable or unsafe.
    `weights_in_place`: the weights stored inside the file are not parsed either, but read from it when asked
    (graphdoctor.weights_in_place), for readers of the graph that leave the weights to ONNX Runtime."""
    file = Path(path)
    size = _check_is_model_file(file)
    proto = _parse_leaving_weights(file) if weights_in_place else None
    proto = _parse_model_proto(file) if proto is None else proto
    _check_is_onnx(file, proto)
    _refuse_unknown_data_types(file, proto)
    try:
        with warnings.catch_warnings():  # onnx-ir warns on stderr about keys it ignores; one line is ours to print
            warnings.simplefilter("ignore")
            model = ir.serde.deserialize_model(proto)
    except Exception as error:  # the IR rejects inconsistent graphs the protobuf parser accepted
        raise ModelLoadError(f"{file}: not a valid ONNX model: {first_line(error)}") from None
    _refuse_undecodable_names(file, model)
    _type_initializers_as_stored(model)
    base_dir = file.resolve().parent
    for tensor in iter_external_tensors(model):
        tensor.base_dir = base_dir  # set here, not by ir's set_base_dir, which skips function bodies
        _refuse_unsized(file, tensor)
        _refuse_escaping(file, tensor.name, os.fspath(tensor.location), base_dir)
    _keep_sparse_initializers(file, proto, model, base_dir)
    return LoadedModel(model=model, path=file, file_size=size)


def _type_initializers_as_stored(model: ir.Model) -> None:
    """An initializer's type is its tensor's: torch's dynamo exporter also states it in value_info, and the IR
    lets that entry win. After a converter retypes the tensor (or drops the entry's type, as a rewrite that
    keeps the exporter's metadata does), the entry is stale, and every reader believing it (the FP16 emulation,
    a second conversion) sees a float32 weight that is FLOAT16, or one of no type at all."""
    for graph in _all_graphs(model):
        if not isinstance(graph, ir.Graph):
            continue
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None or value.is_graph_input():  # an input's declared type is the model's signature
                continue
            if value.dtype != tensor.dtype or value.shape != tensor.shape:
                value.type, value.shape = ir.TensorType(tensor.dtype), tensor.shape


def _all_graphs(model: ir.Model) -> list[ir.Graph | ir.Function]:
    """The main graph, its subgraphs, and every function body with its subgraphs, in onnx-ir's order: analysis'
    walk, three times faster than onnx-ir's own (`Graph.subgraphs`, which visits every node through generators)."""
    from graphdoctor.analysis.graph import iter_graph_sites  # analysis imports this module

    return [graph for graph, _ in iter_graph_sites(model)]


def _refuse_unknown_data_types(file: Path, proto: onnx.ModelProto) -> None:
    """A tensor of a data type ONNX does not define (99, 2^31-1) cannot even be represented in the IR (it fails
    with ValueError deep inside the first reader), so it is refused here, by name. UNDEFINED (0) can be, and
    GD016 reports it."""
    known = set(onnx.TensorProto.DataType.values())
    bad = next((t for t in _tensor_protos(proto) if t.data_type not in known), None)
    if bad is not None:
        raise ModelLoadError(
            f"{file}: not a valid ONNX model: tensor '{bad.name}' has data type {bad.data_type},"
            " which ONNX does not define"
        )


def _refuse_undecodable_names(file: Path, model: ir.Model) -> None:
    """ONNX strings are UTF-8; protobuf hands a name that is not back as bytes, which nothing downstream can
    write or compare (serializing fails), so such a file is refused here, naming what holds the name."""
    for graph in _all_graphs(model):
        values = [*graph.inputs, *graph.outputs]
        if isinstance(graph, ir.Graph):
            values += list(graph.initializers.values())
        for node in graph:
            texts = [("node name", node.name), ("op type", node.op_type), ("domain", node.domain)]
            texts += [("value name", v.name) for v in (*node.inputs, *node.outputs) if v is not None]
            _refuse_bytes(file, texts, node.name)
        _refuse_bytes(file, [("value name", v.name) for v in values], None)


def _refuse_bytes(file: Path, texts: list[tuple[str, object]], node: object) -> None:
    for what, text in texts:
        if isinstance(text, bytes):
            where = f" in node {node!r}" if node is not None and not isinstance(node, bytes) else ""
            raise ModelLoadError(f"{file}: not a valid ONNX model: a {what}{where} is not UTF-8 text: {text[:40]!r}")


def input_files(loaded: LoadedModel) -> frozenset[Path]:
    """Every file the model reads, resolved: the .onnx and each external data file (sparse tensors' too).
    `fix` refuses to write over any of them."""
    files = {loaded.path.resolve()}
    files.update(Path(tensor.path).resolve() for tensor in iter_external_tensors(loaded.model))
    files.update(path.resolve() for path, _, _ in _sparse_external_parts(loaded.model))
    return frozenset(files)


def refuse_overwriting(targets: Iterator[Path] | list[Path], inputs: frozenset[Path], what: str = "input") -> None:
    """Raise when writing one of `targets` would replace or truncate a file the input model reads: the same
    path, a symbolic link to it, or a hard link to it (the same inode under another name)."""
    identities = {_identity(path): path for path in inputs if path.exists()}
    for target in targets:
        resolved = target.resolve()
        same = resolved in inputs or (target.exists() and _identity(target) in identities)
        if same:
            original = resolved if resolved in inputs else identities[_identity(target)]
            kind = "is a link to" if target.is_symlink() or resolved != original else "is"
            raise GraphDoctorError(
                f"{target} {kind} {original}, a file the {what} model reads: writing it would destroy the"
                " input; choose another output"
            )


def _identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


def iter_external_tensors(model: ir.Model) -> Iterator[ir.ExternalTensor]:
    """Yield every tensor stored as external data: initializers and tensor attributes of the main graph,
    its subgraphs and every function body. One missed here would escape the containment check below."""
    for graph in _all_graphs(model):
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
        raise _not_onnx(file, "is a directory, not an ONNX model file")
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


def _parse_leaving_weights(file: Path) -> onnx.ModelProto | None:
    from graphdoctor.weights_in_place import parse_leaving_weights

    try:
        return parse_leaving_weights(file)
    except OSError:  # unreadable: the usual parse says so
        return None


def _parse_model_proto(file: Path) -> onnx.ModelProto:
    try:
        return onnx.load_model(os.fspath(file), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as error:
        raise _not_onnx(
            file,
            f"not a valid ONNX model: the protobuf does not parse ({first_line(error)});"
            " the file is truncated or not ONNX",
        ) from None


def _check_is_onnx(file: Path, proto: onnx.ModelProto) -> None:
    """A protobuf parser accepts many non-ONNX byte strings; require the fields every ONNX model has."""
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise _not_onnx(file, "not an ONNX model (no ir_version or no graph)")
    if not proto.opset_import:
        raise ModelLoadError(f"{file}: not a valid ONNX model: it imports no opset (truncated file?)")


def _not_onnx(file: Path, otherwise: str) -> ModelLoadError:
    """The error for a file that did not load as ONNX: what it is and what to do, when its bytes tell;
    `otherwise` when they do not."""
    description = describe_foreign_file(file)
    if description is None:
        return ModelLoadError(f"{file}: {otherwise}")
    return ModelLoadError(f"{file}: not a valid ONNX model: this is {description}")


_TO_ONNX = "export the model with torch.onnx.export first"
_TF2ONNX = "convert it with tf2onnx (python -m tf2onnx.convert {option} {path} --output model.onnx)"
_ENGINE = "which graphdoctor cannot read: lint the ONNX model it was built from"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ENGINE_MAGIC = b"ftrt"  # a serialized engine's first bytes (torch-tensorrt's _TRTEngine tests for them too)
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # pickled first
_HEAD_BYTES = 32


def describe_foreign_file(path: str | os.PathLike[str]) -> str | None:
    """What a file or folder that is not ONNX is and what to do with it, as a phrase ("a PyTorch checkpoint
    (torch.save zip): export the model with ..."), or None when nothing in it is recognised. Models that
    users pass by mistake are told by their first bytes, a zip archive's member names and a SavedModel's
    file name; nothing is unpickled, decompressed or loaded, so a hostile file costs a few reads."""
    file = Path(path)
    if file.is_dir():
        return _describe_saved_model(file) if _holds_saved_model(file) else None
    if file.name in _SAVED_MODEL_FILES:
        return _describe_saved_model(file.parent)
    try:
        with file.open("rb") as stream:
            return _describe_by_head(file, stream) or _describe_zip(stream)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile):
        return None  # the description explains an error; failing to make one must not replace it


_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def _holds_saved_model(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _SAVED_MODEL_FILES)


def _describe_saved_model(folder: Path) -> str:
    advice = _TF2ONNX.format(option="--saved-model", path=folder)
    return f"a TensorFlow SavedModel: {advice}"


def _describe_by_head(file: Path, stream: BinaryIO) -> str | None:
    """Formats told by their first bytes: HDF5, TensorRT engines (bare or behind Ultralytics' JSON
    metadata), pickles and safetensors."""
    head = stream.read(_HEAD_BYTES)
    if head.startswith(_HDF5_MAGIC):
        advice = _TF2ONNX.format(option="--keras", path=file)
        return f"an HDF5 file (a Keras .h5 model?): for a Keras model, {advice}"
    if head.startswith(_ENGINE_MAGIC):
        return f"a TensorRT engine, {_ENGINE}"
    if _is_ultralytics_engine(stream, head):
        return f"a TensorRT engine (with Ultralytics' metadata header), {_ENGINE}"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return f"a PyTorch checkpoint (torch.save pickle): {_TO_ONNX}"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"a Python pickle (a PyTorch checkpoint?): {_TO_ONNX}"
    if _is_safetensors(stream, head):
        return (
            "a safetensors file: weights only, not a model: export the model that loads them with"
            " torch.onnx.export (for Hugging Face models: optimum-cli export onnx) and lint that"
        )
    return None


def _is_ultralytics_engine(stream: BinaryIO, head: bytes) -> bool:
    """Ultralytics writes a 4-byte little-endian length, that much JSON metadata, then the engine."""
    length = int.from_bytes(head[:4], "little")
    return head[4:5] == b"{" and _read_at(stream, 4 + length, len(_ENGINE_MAGIC)) == _ENGINE_MAGIC


def _is_safetensors(stream: BinaryIO, head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object of that many bytes (padded
    with spaces to align the data)."""
    length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and length >= 2 and _read_at(stream, 8 + length - 1, 1) in (b"}", b" ")


def _read_at(stream: BinaryIO, offset: int, count: int) -> bytes:
    """`count` bytes at `offset`, or fewer past the end (a length field read from a foreign file can be
    anything up to 2^64, which seek refuses)."""
    if offset >= os.fstat(stream.fileno()).st_size:
        return b""
    stream.seek(offset)
    return stream.read(count)


def _describe_zip(stream: BinaryIO) -> str | None:
    """torch.save, torch.jit.save and torch.export.save all write zip archives, told apart by their members
    (all under one folder named after the file, except in torch ≤ 2.7's .pt2); so does Keras 3 (.keras).
    Only the archive's directory is read."""
    if not zipfile.is_zipfile(stream):
        return None
    with zipfile.ZipFile(stream) as archive:
        names = set(archive.namelist())
    inner = {name.partition("/")[2] for name in names if "/" in name}
    legacy_pt2 = "serialized_exported_program.json" in names
    if legacy_pt2 or "archive_format" in inner or any(n.startswith("models/") for n in inner):
        return _describe_pt2(Path(stream.name))
    if "constants.pkl" in inner and any(n.startswith("code/") for n in inner):
        return f"a TorchScript archive (torch.jit.save): {_TO_ONNX}"
    if "data.pkl" in inner:
        return f"a PyTorch checkpoint (torch.save zip): {_TO_ONNX}"
    if "config.json" in names and ("metadata.json" in names or "model.weights.h5" in names):
        return "a Keras model (.keras archive): convert it with tf2onnx (tf2onnx.convert.from_keras)"
    return None


def _describe_pt2(file: Path) -> str:
    return (
        "a torch.export program (.pt2, torch.export.save): export it with"
        f" torch.onnx.export(torch.export.load({str(file)!r})) first; then `graphdoctor verify model.onnx"
        f" --torch {file}` compares the ONNX model with it"
    )


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


def _refuse_escaping(file: Path, name: str | None, location: str, base_dir: Path) -> Path:
    """The resolved path of external data at `location`; raise unless it lies inside the model's folder."""
    if isinstance(location, bytes):  # protobuf's answer for a string that is not UTF-8
        raise ModelLoadError(f"{file}: tensor '{name}' has an external data location that is not UTF-8 text")
    shown = location if len(location) <= 200 else f"{location[:200]}… ({len(location):,} characters)"
    if os.path.isabs(location):
        raise ModelLoadError(
            f"{file}: tensor '{name}' names external data by absolute path '{shown}';"
            " refused: external data must live in the model's folder"
        )
    try:
        target = (base_dir / location).resolve()
        target.exists()  # a name too long for the filesystem fails here, not at the first read
    except (OSError, ValueError, RuntimeError) as error:  # an embedded NUL byte; a symlink loop; ENAMETOOLONG
        reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
        raise ModelLoadError(
            f"{file}: tensor '{name}' has an invalid external data location {shown!r}: {reason}"
        ) from None
    if not target.is_relative_to(base_dir):
        raise ModelLoadError(
            f"{file}: tensor '{name}' has external data '{shown}' outside the model's folder"
            f" (resolves to {target}); refused"
        )
    return target


_SPARSE = "graphdoctor.sparse_initializers"  # model.meta key: the main graph's sparse initializers, as read


def _keep_sparse_initializers(file: Path, proto: onnx.ModelProto, model: ir.Model, base_dir: Path) -> None:
    """onnx-ir drops sparse initializers (their readers see a value with no producer), so they are kept as
    read, with their external data checked like any other, and written back by `serialize`; their values get
    the tensor's type, so the rules and the FP16 converter treat them as the constants they are."""
    nested = [graph.name for graph in _subgraph_protos(proto.graph) if graph.sparse_initializer]
    if nested:
        raise ModelLoadError(
            f"{file}: subgraph '{nested[0]}' holds sparse initializers, which graphdoctor does not support"
            " inside subgraphs; make them dense initializers"
        )
    for sparse in proto.graph.sparse_initializer:
        for part in (sparse.values, sparse.indices):
            if part.data_location == onnx.TensorProto.EXTERNAL:
                location, _, _ = _sparse_external(file, part)
                _refuse_escaping(file, part.name or sparse.values.name, location, base_dir)
    if not proto.graph.sparse_initializer:
        return
    model.meta[_SPARSE] = (base_dir, list(proto.graph.sparse_initializer))
    readers = {value.name: value for node in model.graph for value in node.inputs if value is not None}
    for sparse in proto.graph.sparse_initializer:
        value = readers.get(sparse.values.name)
        if value is not None and value.producer() is None:
            value.dtype = ir.DataType(sparse.values.data_type)
            value.shape = ir.Shape(list(sparse.dims))


def _subgraph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                yield sub
                yield from _subgraph_protos(sub)


def _sparse_external(file: Path, part: onnx.TensorProto) -> tuple[str, int, int]:
    """(location, offset, byte length) of a sparse tensor part stored externally, its length computed from its
    dims and dtype; raise unless what the file states is consistent (the bytes read are exactly these)."""
    info = {entry.key: entry.value for entry in part.external_data}
    try:
        nbytes = ir.DataType(part.data_type).itemsize * math.prod(part.dims)
        offset, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
    except (ValueError, TypeError):
        nbytes, offset, length = -1, -1, -1
    if nbytes < 0 or offset < 0 or length != nbytes or any(d < 0 for d in part.dims):
        raise ModelLoadError(
            f"{file}: sparse tensor part '{part.name}' stores data type {part.data_type} of dims {list(part.dims)}"
            f" as external data at offset {info.get('offset', 0)}, length {info.get('length', '?')}: inconsistent"
        )
    return info.get("location", ""), offset, length


def _sparse_external_parts(model: ir.Model) -> Iterator[tuple[Path, int, int]]:
    """(file, offset, length) of every sparse tensor part stored as external data."""
    base_dir, sparse_tensors = model.meta.get(_SPARSE, (None, []))
    for sparse in sparse_tensors:
        for part in (sparse.values, sparse.indices):
            if part.data_location == onnx.TensorProto.EXTERNAL:
                location, offset, length = _sparse_external(base_dir, part)
                yield base_dir / location, offset, length


def serialize(model: ir.Model) -> onnx.ModelProto:
    """The model as a protobuf, with the sparse initializers it was loaded with (inline)."""
    proto = ir.serde.serialize_model(model)
    base_dir, sparse_tensors = model.meta.get(_SPARSE, (None, []))
    for sparse in sparse_tensors:
        kept = proto.graph.sparse_initializer.add()
        kept.CopyFrom(sparse)
        for part in (kept.values, kept.indices):
            _inline_external(part, base_dir)
    return proto


def _inline_external(part: onnx.TensorProto, base_dir: Path) -> None:
    """Read a tensor's external bytes into raw_data (its location and length were checked at load)."""
    if part.data_location != onnx.TensorProto.EXTERNAL:
        return
    location, offset, length = _sparse_external(base_dir, part)
    path = base_dir / location
    if not path.is_file():  # a FIFO would block the read forever
        raise GraphDoctorError(f"sparse tensor '{part.name}': its external data {path.name} is not a regular file")
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read(length)
    except OSError as error:
        reason = error.strerror
        raise GraphDoctorError(f"sparse tensor '{part.name}': its external data cannot be read: {reason}") from None
    if len(data) != length:
        raise GraphDoctorError(f"sparse tensor '{part.name}': its external data ends {length - len(data)} bytes early")
    del part.external_data[:]
    part.data_location = onnx.TensorProto.DEFAULT
    part.raw_data = data


@dataclass
class StagedModel:
    """A model written into a hidden folder beside `target`; `commit` moves it into place, `discard` drops it.

    Its files reach the disk (fsync) in `sync`, which `commit` calls if nobody did: a caller may sync while a
    check reads the files (from the page cache), and a staging that is only verified and discarded never waits
    for the disk."""

    folder: Path
    target: Path
    data_name: str | None  # the external data file's name, if the model has one
    synced: bool = False

    @property
    def path(self) -> Path:
        """Where the staged model is readable (verify it here before committing)."""
        return self.folder / self.target.name

    def size(self) -> int:
        """Bytes written: the model file and its external data."""
        return sum(file.stat().st_size for file in self.folder.iterdir())

    def sync(self) -> None:
        """Flush the written files to the disk, so the renames of `commit` never publish unwritten data."""
        if self.synced:
            return
        try:
            for name in (self.data_name, self.target.name):
                if name is not None:
                    with open(self.folder / name, "r+b") as file:
                        os.fsync(file.fileno())
        except OSError as error:
            raise GraphDoctorError(
                f"cannot write {self.target}: {error.strerror or first_line(error)}; nothing was written"
            ) from None
        self.synced = True

    def commit(self) -> None:
        try:
            self.sync()
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

    The written model is self-contained: with `external_data`, every tensor of at least 1 KiB goes to
    `TARGET.data`, streamed from where it is now with plain reads (never memory-mapped: a 2 GB model stays out
    of the resident set); every other tensor, external in the input or not, is stored inline. So it never
    references the input's files, wherever it is written. Before returning, every external reference of the
    written file is checked to resolve to its own data file with the right length. Any failure, an interrupt
    included, removes the folder and raises `GraphDoctorError`."""
    folder = target.parent / f".{target.name}.{secrets.token_hex(6)}.graphdoctor-tmp"
    _STAGING.add(folder)  # before it exists: an interrupt right after mkdir still finds it
    try:
        folder.mkdir(mode=0o700)
    except OSError as error:
        _STAGING.discard(folder)
        raise GraphDoctorError(f"cannot write to {target.parent}: {error.strerror}; nothing was written") from None
    staged = StagedModel(folder, target, f"{target.name}.data" if external_data else None)
    try:
        _store_tensors(model, folder, staged.data_name)
        written = _write_proto(model, staged.path)
        check_references(written, staged.path, staged.data_name)
    except OSError as error:
        staged.discard()
        reason = error.strerror or first_line(error)
        raise GraphDoctorError(f"cannot write {target}: {reason}; nothing was written") from None
    except BaseException:
        staged.discard()
        raise
    return staged


def check_references(proto: onnx.ModelProto, path: Path, data_name: str | None) -> None:
    """Raise unless every external tensor of `proto`, as written to `path`, lies in `data_name` beside it,
    within the file: what `fix` writes must load wherever it is moved with its data, and read nothing else.
    The protobuf serialized is read, not the file parsed again (its whole graph, a few ms for yolov8n)."""
    size = (path.parent / data_name).stat().st_size if data_name is not None else 0
    for tensor in (t for t in _tensor_protos(proto) if t.data_location == onnx.TensorProto.EXTERNAL):
        info = {entry.key: entry.value for entry in tensor.external_data}
        end = int(info.get("offset", 0)) + int(info.get("length", -1))
        if info.get("location") != data_name or end > size or "length" not in info:
            raise GraphDoctorError(
                f"the model as written would not load: tensor '{tensor.name}' refers to {info.get('location')!r} up"
                f" to byte {end} (its data file: {data_name!r}, {size} bytes); nothing was written"
            )


def _tensor_protos(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a file states: initializers, sparse tensors' parts and tensor attributes, in the main
    graph, its subgraphs and every function body with its subgraphs."""
    graphs = [proto.graph, *_subgraph_protos(proto.graph)]
    for function in proto.functions:
        holder = onnx.GraphProto(node=function.node)
        graphs += [holder, *_subgraph_protos(holder)]
    for graph in graphs:
        yield from graph.initializer
        yield from (part for sparse in graph.sparse_initializer for part in (sparse.values, sparse.indices))
        for node in graph.node:
            for attr in node.attribute:
                yield from [attr.t] if attr.type == onnx.AttributeProto.TENSOR else attr.tensors


@contextlib.contextmanager
def writing(target: Path) -> Iterator[None]:
    """Around staging, verifying and committing models: a file-size limit (SIGXFSZ) fails the write with
    EFBIG instead of killing the process, SIGINT or SIGTERM stop it with `Interrupted` (never taken for a
    failed verification on the way), and on the way out every staging folder not committed is removed,
    wherever the interrupt landed. An interrupt during that clean-up is held until it is done, then raised."""
    done = False
    try:
        with _signals_as(_interrupt(f"interrupted while writing {target}; nothing was written")):
            yield
        done = True
    finally:
        held: list[int] = []
        with _signals_as(lambda signum, _frame: held.append(signum)):  # a second Ctrl-C must not stop it halfway
            for folder in list(_STAGING):
                shutil.rmtree(folder, ignore_errors=True)
                _STAGING.discard(folder)
        if held and done:
            raise Interrupted(f"interrupted after {target} was written")


def _interrupt(message: str):
    def handler(_signum, _frame):
        raise Interrupted(message)

    return handler


@contextlib.contextmanager
def _signals_as(handler) -> Iterator[None]:
    """SIGINT and SIGTERM call `handler`; SIGXFSZ is ignored (a write past a file-size limit fails with EFBIG).
    Outside the main thread, where Python cannot set handlers, nothing changes."""
    if not _in_main_thread():
        yield
        return
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


def _store_tensors(model: ir.Model, folder: Path, data_name: str | None) -> None:
    """Tensors of at least 1 KiB into the data file (when there is one), in the order met; every other
    tensor read from wherever it is and stored inline. Initializers and tensor attributes, in every graph,
    subgraph and function body."""
    data = open(folder / data_name, "wb") if data_name is not None else None  # noqa: SIM115 (closed below)
    try:
        for tensor, store in _tensor_sites(model):
            if data is not None and tensor.nbytes >= EXTERNAL_MIN_BYTES:
                store(_append(tensor, data, data_name, folder))
            elif isinstance(tensor, ir.ExternalTensor):
                store(ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=tensor.name))
    finally:
        if data is not None:
            data.close()  # synced by `StagedModel.sync`


def _append(tensor: ir.TensorProtocol, data, data_name: str, folder: Path) -> ir.ExternalTensor:
    """Stream the tensor's bytes to the end of `data`, packed (ONNX's own writer pads nothing either)."""
    from graphdoctor.analysis.tensor_data import iter_byte_chunks  # analysis imports this module

    offset = data.tell()
    for piece in iter_byte_chunks(tensor):
        data.write(piece)
    return ir.ExternalTensor(
        data_name, offset, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=tensor.name or "", base_dir=folder
    )


def _tensor_sites(model: ir.Model) -> Iterator[tuple[ir.TensorProtocol, Callable[[ir.TensorProtocol], None]]]:
    """Every stored tensor with a function that replaces it where it is stored."""
    for graph in _all_graphs(model):
        if isinstance(graph, ir.Graph):
            for value in graph.initializers.values():
                if value.const_value is not None:
                    yield value.const_value, functools.partial(setattr, value, "const_value")
        for node in graph:
            for name, attr in list(node.attributes.items()):
                if not attr.is_ref() and attr.type == ir.AttributeType.TENSOR:
                    yield attr.value, functools.partial(_set_tensor_attribute, node, name)


def _set_tensor_attribute(node: ir.Node, name: str, tensor: ir.TensorProtocol) -> None:
    node.attributes[name] = ir.AttrTensor(name, tensor)


def _write_proto(model: ir.Model, path: Path) -> onnx.ModelProto:
    """Serialize and write; the protobuf written. The size is not asked of protobuf first: that costs as much
    as serializing (0.2 s on ResNet-50), and serializing past 2 GiB fails anyway."""
    from google.protobuf.message import EncodeError

    from graphdoctor.analysis.constants import stored_bytes  # analysis imports this module

    proto = serialize(model)
    try:
        data = proto.SerializeToString()
    except EncodeError:  # what protobuf raises past 2 GiB (ByteSize raises it too)
        raise GraphDoctorError(
            f"the model does not serialize: its {stored_bytes(model):,} bytes of tensors are over protobuf's"
            " 2 GiB limit: write it with --external-data"
        ) from None
    with open(path, "wb") as file:
        file.write(data)  # synced by `StagedModel.sync`
    return proto
