"""Files that are not ONNX, passed by mistake: each command says what the file is and what to do, on one line,
exit 2. Every sample is made here, offline: the torch ones by torch.save / torch.jit.save / torch.export.save,
the others byte by byte in their documented layout (HDF5 signature, safetensors header, TensorRT's "ftrt"
engine magic with and without Ultralytics' metadata prefix, a SavedModel folder)."""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor.model import describe_foreign_file
from tests.conftest import Run

COMMANDS = ("lint", "fix", "verify")
TO_ONNX = "export the model with torch.onnx.export first"
ENGINE = "which graphdoctor cannot read: lint the ONNX model it was built from"
PARSE_FAILURE = "not a valid ONNX model: the protobuf does not parse"


def assert_refused(result: tuple[int, str, str], path: Path, description: str) -> None:
    """Exit 2, nothing on stdout, and exactly one line on stderr: the path, and what the file is."""
    code, out, err = result
    assert (code, out) == (2, "")
    assert err == f"graphdoctor: error: {path}: not a valid ONNX model: this is {description}\n"


def tensorrt_engine(tmp: Path) -> Path:
    path = tmp / "model.engine"
    path.write_bytes(b"ftrt" + bytes(60))
    return path


def ultralytics_engine(tmp: Path) -> Path:
    """Ultralytics' export: a 4-byte little-endian length, that much JSON metadata, then the engine."""
    meta = json.dumps({"stride": 32, "names": {"0": "person"}}).encode()
    path = tmp / "yolov8n.engine"
    path.write_bytes(len(meta).to_bytes(4, "little") + meta + b"ftrt" + bytes(60))
    return path


def safetensors_file(tmp: Path) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode() + b"  "
    path = tmp / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    return path


def hdf5_file(tmp: Path) -> Path:
    path = tmp / "model.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(56))
    return path


def keras_archive(tmp: Path) -> Path:
    path = tmp / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")
    return path


def saved_model_folder(tmp: Path) -> Path:
    folder = tmp / "exported"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01\x12\x03abc")
    return folder


def saved_model_file(tmp: Path) -> Path:
    return saved_model_folder(tmp) / "saved_model.pb"


def plain_pickle(tmp: Path) -> Path:
    path = tmp / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    return path


def legacy_pt2(tmp: Path) -> Path:
    """torch.export.save up to torch 2.7: the records at the archive's root, no archive_format marker."""
    path = tmp / "program.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("serialized_exported_program.json", "serialized_state_dict.pt", "version"):
            archive.writestr(name, b"{}")
    return path


def pt2_description(path: Path) -> str:
    return (
        "a torch.export program (.pt2, torch.export.save): export it with"
        f" torch.onnx.export(torch.export.load({str(path)!r})) first; then `graphdoctor verify model.onnx --torch"
        f" {path}` compares the ONNX model with it"
    )


def tf2onnx(option: str, path: Path) -> str:
    return f"convert it with tf2onnx (python -m tf2onnx.convert {option} {path} --output model.onnx)"


SAMPLES: dict[str, tuple[Callable[[Path], Path], Callable[[Path], str]]] = {
    "tensorrt_engine": (tensorrt_engine, lambda _: f"a TensorRT engine, {ENGINE}"),
    "ultralytics_engine": (
        ultralytics_engine,
        lambda _: f"a TensorRT engine (with Ultralytics' metadata header), {ENGINE}",
    ),
    "safetensors": (
        safetensors_file,
        lambda _: (
            "a safetensors file: weights only, not a model: export the model that loads them with"
            " torch.onnx.export (for Hugging Face models: optimum-cli export onnx) and lint that"
        ),
    ),
    "hdf5": (hdf5_file, lambda p: f"an HDF5 file (a Keras .h5 model?): for a Keras model, {tf2onnx('--keras', p)}"),
    "keras_archive": (
        keras_archive,
        lambda _: "a Keras model (.keras archive): convert it with tf2onnx (tf2onnx.convert.from_keras)",
    ),
    "saved_model_file": (saved_model_file, lambda p: f"a TensorFlow SavedModel: {tf2onnx('--saved-model', p.parent)}"),
    "plain_pickle": (plain_pickle, lambda _: f"a Python pickle (a PyTorch checkpoint?): {TO_ONNX}"),
    "legacy_pt2": (legacy_pt2, pt2_description),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("sample", SAMPLES)
def test_each_command_says_what_the_file_is(gd: Run, tmp_path: Path, sample: str, command: str) -> None:
    build, describe = SAMPLES[sample]
    path = build(tmp_path)
    assert_refused(gd(command, path), path, describe(path))


def test_a_saved_model_folder_is_named_as_one(gd: Run, tmp_path: Path) -> None:
    """A folder holding saved_model.pb is one TensorFlow model, not a folder of ONNX models."""
    folder = saved_model_folder(tmp_path)
    description = f"a TensorFlow SavedModel: {tf2onnx('--saved-model', folder)}"
    assert describe_foreign_file(folder) == description
    assert_refused(gd("fix", folder), folder, description)
    assert_refused(gd("lint", folder), folder, description)


def test_an_ordinary_folder_is_still_no_model(tmp_path: Path) -> None:
    assert describe_foreign_file(tmp_path) is None


def test_onnx_and_unknown_files_are_not_described(tmp_path: Path) -> None:
    """The description never claims a real model or a file it does not know: those keep the old message."""
    onnx_path = save(
        model_from_text('<ir_version: 8, opset_import: ["": 17]> g (float[2] x) => (float[2] y) {y = Relu(x)}'),
        tmp_path / "m.onnx",
    )
    assert describe_foreign_file(onnx_path) is None
    unknown = tmp_path / "archive.zip"
    with zipfile.ZipFile(unknown, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert describe_foreign_file(unknown) is None


@pytest.mark.parametrize(
    "head",
    [
        (2**64 - 1).to_bytes(8, "little") + b"{",  # a safetensors header length no file can hold
        (2**32 - 1).to_bytes(4, "little") + b"{",  # an Ultralytics metadata length past the end
        b"PK\x03\x04" + bytes(40),  # a zip local header with no archive behind it
        b"\x80",  # one byte of a pickle opcode
    ],
)
def test_lying_headers_keep_the_parse_error(gd: Run, tmp_path: Path, head: bytes) -> None:
    """Lengths and signatures read from a foreign file can be anything: sniffing them never crashes and never
    replaces the parse error with a wrong description."""
    path = tmp_path / "model.onnx"
    path.write_bytes(head)
    code, out, err = gd("lint", path)
    assert (code, out) == (2, "")
    assert err.startswith(f"graphdoctor: error: {path}: {PARSE_FAILURE}") and err.count("\n") == 1


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What torch writes: a zip checkpoint (state_dict), a legacy pickle checkpoint, a TorchScript archive and
    a torch.export program, of one tiny Linear layer."""
    import torch

    folder = tmp_path_factory.mktemp("torch_files")
    module = torch.nn.Linear(2, 2)
    paths = {name: folder / name for name in ("state_dict.pt", "legacy.pt", "scripted.pt", "program.pt2")}
    torch.save(module.state_dict(), paths["state_dict.pt"])
    torch.save(module.state_dict(), paths["legacy.pt"], _use_new_zipfile_serialization=False)
    with pytest.warns(FutureWarning):  # torch.jit is deprecated, and still what users have on disk
        torch.jit.save(torch.jit.script(module), paths["scripted.pt"])
    torch.export.save(torch.export.export(module, (torch.randn(1, 2),)), paths["program.pt2"])
    return paths


TORCH_DESCRIPTIONS = {
    "state_dict.pt": lambda _: f"a PyTorch checkpoint (torch.save zip): {TO_ONNX}",
    "legacy.pt": lambda _: f"a PyTorch checkpoint (torch.save pickle): {TO_ONNX}",
    "scripted.pt": lambda _: f"a TorchScript archive (torch.jit.save): {TO_ONNX}",
    "program.pt2": pt2_description,
}


@pytest.mark.torch
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", TORCH_DESCRIPTIONS)
def test_torch_files_are_named(gd: Run, torch_files: dict[str, Path], name: str, command: str) -> None:
    path = torch_files[name]
    assert_refused(gd(command, path), path, TORCH_DESCRIPTIONS[name](path))
