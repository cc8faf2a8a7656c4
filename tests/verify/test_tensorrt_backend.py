"""Native TensorRT's backend on the CPU: what it decides before TensorRT runs (strongly typed or not, from the
file's dtypes), how it reads the engine inspector's JSON, what its engine cache is keyed on, the workspace
setting, and its reasons when it cannot run. Building and running engines needs a GPU: test_backends.py."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as numpy_helper
import onnx_ir as ir
import pytest

from fixtures.handmade import save
from graphdoctor.errors import GraphDoctorError
from graphdoctor.verify.backends import get_backend
from graphdoctor.verify.backends.tensorrt import (
    WORKSPACE_ENV,
    EngineCache,
    TensorrtBackend,
    _cuda_device_reason,
    build_mode,
    describe_layer_precisions,
    engine_cache_key,
    external_files,
    layer_precisions,
    low_precision_types,
    model_digest,
    one_line_error,
    precision_text,
    workspace_bytes,
)
from tests.verify.builders import linear

FLOAT, FLOAT16, BFLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16
TENSORRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _fp16_initializer() -> onnx.ModelProto:
    """An FP32 graph but for one FP16 weight, cast up before use (the Cast goes to FLOAT, not to FP16)."""
    weight = oh.make_tensor("w", FLOAT16, [4], np.array([1, 2, 3, 4], np.float16).view(np.uint16).tolist())
    return _model(
        [oh.make_node("Cast", ["w"], ["w32"], to=FLOAT, name="up"), oh.make_node("Add", ["x", "w32"], ["y"])],
        [oh.make_tensor_value_info("x", FLOAT, [4])],
        [oh.make_tensor_value_info("y", FLOAT, [4])],
        [weight],
    )


def _fp16_input() -> onnx.ModelProto:
    return _model(
        [oh.make_node("Cast", ["x"], ["y"], to=FLOAT, name="up")],
        [oh.make_tensor_value_info("x", FLOAT16, [4])],
        [oh.make_tensor_value_info("y", FLOAT, [4])],
    )


def _bf16_initializer() -> onnx.ModelProto:
    weight = oh.make_tensor("w", BFLOAT16, [2], [0x3F80, 0x4000])  # 1.0, 2.0
    return _model(
        [oh.make_node("Cast", ["w"], ["w32"], to=FLOAT, name="up"), oh.make_node("Add", ["x", "w32"], ["y"])],
        [oh.make_tensor_value_info("x", FLOAT, [2])],
        [oh.make_tensor_value_info("y", FLOAT, [2])],
        [weight],
    )


def _cast_to_fp16() -> onnx.ModelProto:
    """FP32 at both ends; only the Cast's `to` says FP16 (no value_info: shape inference never ran)."""
    return _model(
        [oh.make_node("Cast", ["x"], ["h"], to=FLOAT16, name="down"), oh.make_node("Cast", ["h"], ["y"], to=FLOAT)],
        [oh.make_tensor_value_info("x", FLOAT, [4])],
        [oh.make_tensor_value_info("y", FLOAT, [4])],
    )


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (linear, ()),
        (_fp16_initializer, ("FP16",)),
        (_fp16_input, ("FP16",)),
        (_bf16_initializer, ("BF16",)),
        (_cast_to_fp16, ("FP16",)),
    ],
)
def test_low_precision_is_read_from_the_file(tmp_path: Path, build, expected):
    path = save(build(), tmp_path / "model.onnx")
    assert low_precision_types(ir.load(path)) == expected


def test_the_build_mode_follows_the_file_and_the_tensorrt_version():
    assert build_mode(False, True, ()) == "fp32"  # TensorRT 10, an FP32 model
    assert build_mode(False, True, ("FP16",)) == "strongly-typed"  # TensorRT 10, an FP16 model
    assert build_mode(False, False, ()) == "strongly-typed"  # TensorRT 11 types every network strongly
    assert build_mode(True, True, ("FP16",)) == "fp16"  # tensorrt-fp16: the builder flag, TensorRT chooses
    assert precision_text("fp32", ()) == "TensorRT FP32 engine (TF32 off)"
    assert precision_text("strongly-typed", ("FP16",)) == (
        "TensorRT strongly typed engine: the model's own dtypes (FP16 where the file says FP16; TF32 off)"
    )
    assert precision_text("strongly-typed", ("FP16", "BF16")) == (
        "TensorRT strongly typed engine: the model's own dtypes (FP16/BF16 where the file says FP16/BF16; TF32 off)"
    )
    fp32_strongly_typed = "TensorRT strongly typed engine: the model's own dtypes (TF32 off)"  # TensorRT 11
    assert precision_text("strongly-typed", ()) == fp32_strongly_typed
    assert precision_text("fp16", ()) == get_backend("tensorrt-fp16").precision


# Modelled on TensorRT 10's engine inspector with ProfilingVerbosity.DETAILED, as Polygraphy reads it
# (tools/Polygraphy/polygraphy/backend/trt/util.py: each layer a dict with Name, LayerType, Inputs/Outputs of
# {Name, Dimensions, Format/Datatype}); the datatype texts are the ones TensorRT writes: "Float" (its
# sampleEditableTimingCache README), "Row major linear FP16 format" and "Channel major FP16 format where
# C % 8 == 0" (ICudaEngine.get_tensor_format_desc's docstring); "Datatype" is the split key some versions
# write beside "Format" (the trt-perf-analysis schema in NVIDIA/TensorRT accepts both).
def _tensor(name: str, datatype: str, key: str = "Format/Datatype") -> dict:
    return {"Name": name, "Location": "Device", "Dimensions": [1, 64, 56, 56], key: datatype}


DETAILED = {
    "Layers": [
        {
            "Name": "conv1 + relu1",
            "LayerType": "CaskConvolution",
            "Inputs": [_tensor("x", "Float")],
            "Outputs": [_tensor("r1", "Channel major FP16 format where C % 8 == 0")],
            "TacticValue": "0x1",
        },
        {
            "Name": "conv2",
            "LayerType": "CaskConvolution",
            "Inputs": [_tensor("r1", "Half")],
            "Outputs": [_tensor("c2", "Row major linear FP16 format")],
        },
        {"Name": "gemm", "LayerType": "gemm", "Inputs": [_tensor("c2", "Half")], "Outputs": [_tensor("g", "Half")]},
        {
            "Name": "to_fp32",
            "LayerType": "Reformat",
            "Inputs": [_tensor("g", "Half")],
            "Outputs": [_tensor("g32", "Float")],
        },
        {
            "Name": "softmax",
            "LayerType": "Softmax",
            "Inputs": [_tensor("g32", "Float")],
            "Outputs": [_tensor("p", "Row major linear FP32", key="Format") | {"Datatype": "Float"}],
        },
        {
            "Name": "argmax",
            "LayerType": "TopK",
            "Inputs": [_tensor("p", "Float")],
            "Outputs": [_tensor("i", "N/A"), _tensor("k", "Int32")],
        },
        {"Name": "bf16_scale", "LayerType": "ElementWise", "Inputs": [], "Outputs": [_tensor("s", "BFloat16")]},
        {"Name": "shape_only", "LayerType": "NoOp", "Inputs": [], "Outputs": []},
    ],
    "Bindings": ["x", "p", "i"],
}


def test_detailed_inspector_json_gives_layers_per_precision():
    counts = layer_precisions(json.dumps(DETAILED))
    assert counts == {"FP16": 3, "FP32": 2, "INT32": 1, "BF16": 1}
    assert list(counts) == ["FP16", "FP32", "INT32", "BF16"]  # most first
    assert describe_layer_precisions(counts) == (
        "engine layers: 3 FP16, 2 FP32, 1 INT32, 1 BF16 (read from TensorRT's engine inspector)"
    )


def test_a_split_datatype_key_wins_over_the_format_text():
    layer = {"Name": "l", "Outputs": [{"Name": "t", "Format": "Row major linear FP32 format", "DataType": "Half"}]}
    assert layer_precisions(json.dumps({"Layers": [layer], "I/O Tensors": []})) == {"FP16": 1}


@pytest.mark.parametrize(
    "information",
    [
        '{"Layers": ["conv1 + relu1", "conv2", "gemm"], "Bindings": ["x", "y"]}',  # LAYER_NAMES_ONLY
        '{"Layers": [], "Bindings": []}',
        "",  # ProfilingVerbosity.NONE
        "not json",
        "[1, 2]",
    ],
)
def test_inspector_json_without_datatypes_is_not_recorded(information):
    counts = layer_precisions(information)
    assert counts == {}
    assert describe_layer_precisions(counts).startswith("engine layers: precision not recorded")


def _digest(path: Path) -> str:
    return model_digest(path, external_files(ir.load(path)))


def test_the_model_digest_follows_the_bytes_not_the_name(tmp_path: Path):
    first = save(linear(), tmp_path / "a.onnx")
    copy = tmp_path / "elsewhere" / "b.onnx"
    copy.parent.mkdir()
    shutil.copyfile(first, copy)
    moved = save(linear(delta=1.0), tmp_path / "c.onnx")
    assert _digest(first) == _digest(copy)
    assert _digest(first) != _digest(moved)


def test_the_model_digest_covers_external_data(tmp_path: Path):
    model = linear()
    for tensor in model.graph.initializer:  # raw bytes, which is what ONNX moves to external files
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    path = tmp_path / "model.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert external_files(ir.load(path)) == [tmp_path / "weights.bin"]
    before = _digest(path)
    data = bytearray((tmp_path / "weights.bin").read_bytes())
    data[0] ^= 0xFF  # same size, same graph file, other weights
    (tmp_path / "weights.bin").write_bytes(bytes(data))
    assert _digest(path) != before


def test_the_engine_cache_key_changes_with_what_the_engine_depends_on():
    x = np.zeros((3, 4), np.float32)
    base = ("digest", {"x": x}, None, "fp32", None, "10.16.1")
    key = engine_cache_key(*base)
    assert engine_cache_key("digest", {"x": np.ones((3, 4), np.float32)}, None, "fp32", None, "10.16.1") == key
    changed = [
        ("other digest", {"x": x}, None, "fp32", None, "10.16.1"),
        ("digest", {"x": np.zeros((2, 4), np.float32)}, None, "fp32", None, "10.16.1"),
        ("digest", {"x": x.astype(np.float16)}, None, "fp32", None, "10.16.1"),
        ("digest", {"x": x}, ["m"], "fp32", None, "10.16.1"),
        ("digest", {"x": x}, [], "fp32", None, "10.16.1"),
        ("digest", {"x": x}, None, "strongly-typed", None, "10.16.1"),
        ("digest", {"x": x}, None, "fp32", 512 << 20, "10.16.1"),
        ("digest", {"x": x}, None, "fp32", None, "11.4.0"),
    ]
    keys = {engine_cache_key(*arguments) for arguments in changed}
    assert key not in keys and len(keys) == len(changed)
    assert engine_cache_key("digest", {"x": x}, ["m", "m"], "fp32", None, "v") == engine_cache_key(
        "digest", {"x": x}, ["m"], "fp32", None, "v"
    )


def test_the_engine_cache_keeps_the_last_ones_used():
    cache = EngineCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert (cache.get("b"), cache.get("a"), cache.get("c")) == (None, 1, 3)


def test_workspace_comes_from_the_argument_then_the_environment():
    assert workspace_bytes(None, {}) is None  # TensorRT's default
    assert workspace_bytes(None, {WORKSPACE_ENV: " 512 "}) == 512 << 20
    assert workspace_bytes(256, {WORKSPACE_ENV: "512"}) == 256 << 20
    assert TensorrtBackend(workspace_mib=64).workspace_mib == 64


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5", "2G"])
def test_a_bad_workspace_variable_is_one_line_naming_it(value):
    with pytest.raises(GraphDoctorError) as raised:
        workspace_bytes(None, {WORKSPACE_ENV: value})
    message = str(raised.value)
    assert WORKSPACE_ENV in message and f"'{value}'" in message and "\n" not in message


def test_a_workspace_below_one_mib_is_refused():
    with pytest.raises(GraphDoctorError, match="at least 1 MiB"):
        TensorrtBackend(workspace_mib=0)


def test_tensorrt_errors_become_one_line():
    error = TypeError("pybind11::init(): factory function returned nullptr\nInvoked with: <Logger object>")
    assert one_line_error("10.16.1", error) == (
        "TensorRT 10.16.1: TypeError: pybind11::init(): factory function returned nullptr"
    )
    assert one_line_error("11.4.0", RuntimeError()) == "TensorRT 11.4.0: RuntimeError: RuntimeError"


def test_probing_for_a_cuda_device_never_raises():
    """Whatever this machine holds (here cuda-python's bindings without a driver, or nothing), a reason or None."""
    reason = _cuda_device_reason()
    assert reason is None or reason.startswith(("no CUDA device", "no usable CUDA device", "neither cuda-python"))


@pytest.mark.skipif(TENSORRT_INSTALLED, reason="tensorrt is installed here")
@pytest.mark.parametrize("fp16", [False, True])
def test_without_tensorrt_the_backend_says_how_to_install_it(tmp_path: Path, fp16):
    backend = TensorrtBackend(fp16=fp16)
    missing = (
        "tensorrt is not installed (pip install 'graphdoctor[tensorrt]' (TensorRT 10) or 'graphdoctor[tensorrt11]')"
    )
    assert backend.unavailable_reason() == missing
    model = save(linear(), tmp_path / "linear.onnx")
    with pytest.raises(GraphDoctorError, match=f"^{re.escape(missing)}$"):
        backend.run(model, {"x": np.zeros((3, 4), np.float32)})
    assert backend.placement() is None


def test_the_registry_still_builds_both_modes():
    fp32, fp16 = get_backend("tensorrt"), get_backend("tensorrt-fp16")
    assert (fp32.fp16, fp16.fp16, fp32.workspace_mib) == (False, True, None)
