"""Hostile command-line values, input files and paths, through the real CLI: each gets one line on stderr and
exit 2, before anything large is allocated and without blocking on a FIFO; never a traceback or an internal
error. (Configuration files: tests/test_config.py.)"""

from __future__ import annotations

import io
import os
import signal
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from onnx import TensorProto, helper

from fixtures.handmade import save
from tests.verify.builders import linear

Run = Callable[..., tuple[int, str, str]]


def assert_one_line(result: tuple[int, str, str], *messages: str) -> None:
    code, out, err = result
    assert (code, out) == (2, ""), (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphdoctor: error: "), err
    assert "Traceback" not in err and "internal error" not in err
    for message in messages:
        assert message in err


@pytest.fixture(autouse=True)
def deadline() -> Iterator[None]:
    """A FIFO opened by mistake blocks forever: fail the test instead (main turns it into an internal error)."""

    def expire(_signum, _frame):
        raise TimeoutError("blocked: a path was opened before it was checked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """y = x·w + b with x float[N,4]."""
    return save(linear(), tmp_path / "linear.onnx")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.npz"
    os.mkfifo(path)
    return path


def identity(tmp_path: Path, dims: list, elem_type: int = TensorProto.FLOAT) -> Path:
    """An Identity model whose one input declares `dims` (ints or names) and `elem_type`."""
    x = helper.make_tensor_value_info("x", elem_type, dims)
    y = helper.make_tensor_value_info("y", elem_type, dims)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "g", [x], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return save(proto, tmp_path / "identity.onnx")


# --- inputs generated from the declared dims and --shape ---------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "fix"])
@pytest.mark.parametrize(
    ("dims", "elem_type", "message"),
    [
        # a declaration no tensor has is a malformed model (GD016), refused before inputs are generated
        ([-1, 4], TensorProto.FLOAT, "malformed model: graph input 'x' is declared with negative dims [-1,4]"),
        (
            [10**12],
            TensorProto.FLOAT,
            "input 'x' float32[1000000000000] needs 4,000,000,000,000 bytes (3,814,697.3 MiB); the inputs of a run"
            " are limited to 2,048.0 MiB together: pass --inputs FILE",
        ),
        ([1, 4], TensorProto.UNDEFINED, "malformed model: graph input 'x' is declared with element type 0"),
        ([f"d{i}" for i in range(1000)], TensorProto.FLOAT, "input 'x' has rank 1000; numpy arrays hold at most 64"),
    ],
)
def test_declared_inputs_no_array_can_hold(gd: Run, tmp_path: Path, command, dims, elem_type, message):
    assert_one_line(gd(command, identity(tmp_path, dims, elem_type)), message)


@pytest.mark.parametrize(
    ("dims", "elem_type", "message"),
    [
        ([-1, 4], TensorProto.FLOAT, "input 'x' declares dim -1 at axis 0, which no tensor has"),
        ([1, 4], TensorProto.UNDEFINED, "input 'x' has element type UNDEFINED, which has no values to generate"),
    ],
)
def test_inputs_are_not_generated_for_declarations_no_tensor_has(tmp_path: Path, dims, elem_type, message):
    """Through the API, past the malformed-model check the CLI commands make first."""
    from graphdoctor.errors import GraphDoctorError
    from graphdoctor.model import load_model
    from graphdoctor.verify.inputs import generate_inputs

    with pytest.raises(GraphDoctorError, match=message):
        generate_inputs(load_model(identity(tmp_path, dims, elem_type)).model)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            "x:100000000000x4",
            "input 'x' float32[100000000000,4] needs 1,600,000,000,000 bytes (1,525,878.9 MiB); the inputs of a run"
            " are limited to 2,048.0 MiB together: give smaller dims with --shape NAME:DIMS, or pass --inputs FILE",
        ),
        ("x:0x4", "--shape 'x:0x4': every dim must be at least 1"),
        ("x:-2x4", "--shape 'x:-2x4': every dim must be at least 1"),
        ("pixels:1x4", "--shape names unknown input(s) ['pixels']; inputs: ['x']"),
        ("x:" + "x".join(["2"] * 1000), "--shape x: rank 1000, but the input has rank 2"),
        ("x:" + "9" * 5000, "expected NAME:DIMS"),  # past Python's int-parsing limit
    ],
)
@pytest.mark.parametrize("command", ["lint", "fix", "verify"])
def test_hostile_shapes(gd: Run, model: Path, command, shape, message):
    assert_one_line(gd(command, model, "--shape", shape), message)


def test_a_shape_given_twice_must_agree(gd: Run, model: Path):
    assert_one_line(
        gd("verify", model, "--shape", "x:2x4", "--shape", "x:3x4"), "--shape x is given twice, as 2x4 and 3x4"
    )
    assert gd("verify", model, "--shape", "x:2x4,x:2x4")[0] == 0


def test_shape_with_loaded_inputs_is_an_error(gd: Run, model: Path, tmp_path: Path):
    np.savez(tmp_path / "feeds.npz", x=np.ones((2, 4), np.float32))
    result = gd("lint", model, "--inputs", tmp_path / "feeds.npz", "--shape", "x:3x4")
    assert_one_line(result, "--shape sizes generated inputs: it does nothing with --inputs FILE")


# --- input files: headers checked before anything is loaded ------------------------------------------------


def npy_bytes(array: np.ndarray | None = None, header: dict | None = None) -> bytes:
    """An .npy: `array` as np.save writes it (pickled if it holds objects), or only `header` and 64 bytes."""
    buffer = io.BytesIO()
    if header is None:
        np.lib.format.write_array(buffer, array, allow_pickle=True)
    else:
        np.lib.format.write_array_header_1_0(buffer, header)
        buffer.write(bytes(64))
    return buffer.getvalue()


def npz(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def tensor_folder(folder: Path, tensor: onnx.TensorProto) -> Path:
    folder.mkdir()
    (folder / "input_0.pb").write_bytes(tensor.SerializeToString())
    return folder


def external_tensor() -> onnx.TensorProto:
    tensor = onnx.numpy_helper.from_array(np.zeros((1, 4), np.float32), "x")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")
    return tensor


def claiming_tensor(dims: list[int], data_type: int = TensorProto.FLOAT) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name="x", data_type=data_type)
    tensor.dims.extend(dims)
    return tensor


HUGE_HEADER = {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
GOOD = npy_bytes(np.ones((1, 4), np.float32))
CLAIMS_TOO_MUCH = "its header declares float32[1000000000000] (4,000,000,000,000 bytes), but 64 bytes follow it"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: npz(d / "huge.npz", {"x.npy": npy_bytes(header=HUGE_HEADER)}), f"array 'x': {CLAIMS_TOO_MUCH}"),
        (lambda d: d / "huge.npy", f"the array: {CLAIMS_TOO_MUCH}"),
        (
            lambda d: npz(d / "negative.npz", {"x.npy": npy_bytes(header={**HUGE_HEADER, "shape": (-1, 4)})}),
            "array 'x': its header declares negative dims [-1, 4]",
        ),
        (
            lambda d: npz(d / "pickled.npz", {"x.npy": npy_bytes(np.array([{"a": 1}], dtype=object))}),
            "array 'x' holds Python objects (dtype object), readable only by unpickling; refused",
        ),
        (lambda d: d / "pickled.npy", "the array holds Python objects (dtype object), readable only by unpickling"),
        (lambda d: npz(d / "text.npz", {"x.txt": b"1 2 3"}), "member 'x.txt' is not an .npy array"),
        (
            lambda d: npz(d / "bzip2.npz", {"x.npy": GOOD}, zipfile.ZIP_BZIP2),
            "member 'x.npy' uses zip compression method 12",
        ),
        (lambda d: d / "truncated.npz", "cannot read inputs: File is not a zip file"),
        (lambda d: tensor_folder(d / "external", external_tensor()), "tensor 'x' keeps its values in external data"),
        (
            lambda d: tensor_folder(d / "huge", claiming_tensor([10**6, 10**6])),
            "input 'x' float32[1000000,1000000] needs 4,000,000,000,000 bytes (3,814,697.3 MiB); the inputs of a"
            " run are limited to 2,048.0 MiB together: refused before loading it",
        ),
        (lambda d: tensor_folder(d / "lying", claiming_tensor([2, 4])), "tensor 'x' cannot be read: cannot reshape"),
        (lambda d: tensor_folder(d / "untyped", claiming_tensor([1], 0)), "tensor 'x' has no valid element type (0)"),
    ],
)
@pytest.mark.parametrize("command", ["lint", "fix", "verify"])
def test_hostile_input_files(gd: Run, model: Path, tmp_path: Path, command, make, message):
    (tmp_path / "huge.npy").write_bytes(npy_bytes(header=HUGE_HEADER))
    (tmp_path / "pickled.npy").write_bytes(npy_bytes(np.array([{"a": 1}], dtype=object)))
    whole = npz(tmp_path / "whole.npz", {"x.npy": GOOD}).read_bytes()
    (tmp_path / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    assert_one_line(gd(command, model, "--inputs", make(tmp_path)), message)


@pytest.mark.parametrize(
    ("array", "held"),
    [
        (np.ones((2, 5), np.float32), "float32[2,5]"),
        (np.ones((2, 4), np.int64), "int64[2,4]"),
        (np.float32(1), "float32[]"),
    ],
)
def test_loaded_arrays_must_fit_the_declared_input(gd: Run, model: Path, tmp_path: Path, array, held):
    np.savez(tmp_path / "feeds.npz", x=array)
    result = gd("verify", model, "--inputs", tmp_path / "feeds.npz")
    assert_one_line(result, f"input 'x': the inputs hold {held}, but the model declares float32[N,4]")


def test_a_fifo_among_the_pb_files_is_refused(gd: Run, model: Path, tmp_path: Path):
    (tmp_path / "feeds").mkdir()
    os.mkfifo(tmp_path / "feeds" / "input_0.pb")
    result = gd("verify", model, "--inputs", tmp_path / "feeds")
    assert_one_line(result, "input_0.pb: is not a regular file (a pipe, socket or device); refused")


# --- every path option refuses FIFOs and devices before opening them ----------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("lint", "{model}", "--inputs", "{fifo}"), "--inputs"),
        (("lint", "{model}", "--config", "{fifo}"), "--config"),
        (("fix", "{model}", "--inputs", "{fifo}"), "--inputs"),
        (("fix", "{model}", "-o", "{fifo}"), "-o' / '--output"),
        (("verify", "{model}", "--inputs", "{fifo}"), "--inputs"),
        (("verify", "{model}", "--save-inputs", "{fifo}"), "--save-inputs"),
        (("verify", "{model}", "--torch", "{fifo}"), "--torch"),
        (("verify", "{model}", "--inputs", "/dev/zero"), "--inputs"),
    ],
)
def test_path_options_refuse_what_is_not_a_regular_file(gd: Run, model: Path, fifo: Path, args, option):
    result = gd(*(arg.format(model=model, fifo=fifo) for arg in args))
    assert_one_line(result, f"Invalid value for '{option}'", "is not a regular file (a pipe, socket or device)")


@pytest.mark.parametrize(
    "args",
    [
        ("lint", "{model}", "--inputs", ""),
        ("lint", "{model}", "--config", ""),
        ("fix", "{model}", "-o", ""),
        ("verify", "{model}", "--save-inputs", ""),
        ("verify", "{model}", "--torch", ""),
    ],
)
def test_empty_paths_are_not_the_current_folder(gd: Run, model: Path, args):
    assert_one_line(gd(*(arg.format(model=model) for arg in args)), "an empty path")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("fix", "{model}", "-o", "{tmp}/missing/out.onnx"), "'{tmp}/missing' is not an existing folder"),
        (("fix", "{model}", "-o", "{tmp}"), "is a directory"),
        (("verify", "{model}", "--save-inputs", "{tmp}/missing/used.npz"), "'{tmp}/missing' is not an existing folder"),
        (("verify", "{model}", "--save-inputs", "{tmp}"), "is a directory"),
        (("verify", "{model}", "--save-inputs", "{tmp}/pipe"), "{tmp}/pipe.npz: is not a regular file"),  # + .npz
    ],
)
def test_outputs_need_a_folder_and_a_file_to_replace(gd: Run, model: Path, fifo: Path, tmp_path: Path, args, message):
    result = gd(*(arg.format(model=model, tmp=tmp_path) for arg in args))
    assert_one_line(result, message.format(tmp=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linear.onnx", "pipe.npz"]  # nothing written


# --- numbers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--seed", "-1"), "Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295."),
        (("--seed", str(2**32)), f"Invalid value for '--seed': {2**32} is not in the range 0<=x<=4294967295."),
        (("--seed", "9" * 5000), "is not a valid integer"),
        (("--atol", "nan"), "Invalid value for '--atol': nan is not a finite number"),
        (("--atol", "-1"), "Invalid value for '--atol': -1.0 is not in the range x>=0."),
        (("--rtol", "inf"), "Invalid value for '--rtol': inf is not a finite number"),
        (("--min-cosine", "2"), "Invalid value for '--min-cosine': 2.0 is not in the range -1<=x<=1."),
        (("--min-cosine", "nan"), "Invalid value for '--min-cosine': nan is not a finite number"),
        (("--layers-per-run", "0"), "Invalid value for '--layers-per-run': 0 is not in the range x>=1."),
    ],
)
def test_hostile_numbers(gd: Run, model: Path, args, message):
    assert_one_line(gd("verify", model, *args), message)


def test_extreme_but_valid_numbers_run(gd: Run, model: Path):
    assert gd("verify", model, "--seed", str(2**32 - 1))[0] == 0
    assert gd("verify", model, "--layerwise", "--layers-per-run", str(10**30))[0] == 0
    assert gd("verify", model, "--atol", "0", "--rtol", "0", "--min-cosine", "-1")[0] == 0


@pytest.mark.parametrize("pattern", ["", ",", "Softmax,", "Softmax,,Add", " "])
def test_empty_keep_fp32_patterns(gd: Run, model: Path, pattern):
    result = gd("fix", model, "--fp16", "--keep-fp32", pattern, "--dry-run")
    assert_one_line(result, f"--keep-fp32 {pattern!r}: empty pattern")
