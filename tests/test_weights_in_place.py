"""Inline weights left in the model file, named as external data of the file itself (graphdoctor.
weights_in_place): what loads reads the same values, ONNX Runtime computes the same from the light graph,
what cannot be left in place is parsed as before, and the file is never changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper, numpy_helper

from graphdoctor import weights_in_place
from graphdoctor.model import load_model
from graphdoctor.verify.backends import get_backend
from graphdoctor.verify.backends.onnxruntime import EXTERNAL_FOLDER, graph_of
from graphdoctor.verify.inputs import generate_inputs
from graphdoctor.verify.layerwise import LayerwiseOptions, compare_layerwise
from graphdoctor.verify.metrics import PRESETS
from graphdoctor.weights_in_place import parse_leaving_weights

RNG = np.random.default_rng(0)


def _model(path: Path) -> Path:
    """A MatMul on a 64x64 float weight, a float16 bias made float, an int64 shape constant (tiny) and a table
    in float_data: one weight of each kind the cut decides on."""
    weight = numpy_helper.from_array(RNG.standard_normal((64, 64)).astype(np.float32), "w")
    bias = numpy_helper.from_array(RNG.standard_normal(1024).astype(np.float16), "b")
    shape = numpy_helper.from_array(np.array([1, 64], dtype=np.int64), "shape")
    typed = helper.make_tensor("typed", onnx.TensorProto.FLOAT, [512], RNG.standard_normal(512).tolist())
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["r"]),
        helper.make_node("Cast", ["b"], ["bf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["bf"], ["bs"], keepdims=0),
        helper.make_node("ReduceSum", ["typed"], ["ts"], keepdims=0),
        helper.make_node("Add", ["r", "bs"], ["a"]),
        helper.make_node("Add", ["a", "ts"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "in_place",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
        initializer=[weight, bias, shape, typed],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_read_in_place_are_the_weights_parsed(tmp_path: Path):
    path = _model(tmp_path / "m.onnx")
    before = _digest(path)
    in_place, parsed = load_model(path, weights_in_place=True).model, load_model(path).model
    kinds = {}
    for name, value in parsed.graph.initializers.items():
        mine = in_place.graph.initializers[name].const_value
        kinds[name] = type(mine) is ir.ExternalTensor
        assert mine.dtype == value.const_value.dtype and mine.shape == value.const_value.shape
        assert np.array_equal(mine.numpy(), value.const_value.numpy())
    # raw bytes of 1 KiB and more in place; the shape constant (tiny) and the float_data table (typed) parsed
    assert kinds == {"w": True, "b": True, "shape": False, "typed": False}
    assert in_place.graph.initializers["w"].const_value.location == path.name
    assert _digest(path) == before


def test_onnx_runtime_computes_the_same_from_the_light_graph(tmp_path: Path):
    path = _model(tmp_path / "m.onnx")
    light = parse_leaving_weights(path)
    assert light is not None and len(light.SerializeToString()) < path.stat().st_size - 64 * 64 * 4
    options = ort.SessionOptions()
    options.add_session_config_entry(EXTERNAL_FOLDER, os.fspath(tmp_path))
    from_light = ort.InferenceSession(light.SerializeToString(), options, providers=["CPUExecutionProvider"])
    from_file = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    x = {"x": RNG.standard_normal((1, 64)).astype(np.float32)}
    assert np.array_equal(from_light.run(None, x)[0], from_file.run(None, x)[0])


def test_what_cannot_stay_in_place_is_parsed(tmp_path: Path):
    """A hard-linked file (external data that is a hard link is refused), raw bytes that contradict the dims
    (GD016's to report), a file with no weight worth leaving, and a file that is not protobuf: None, and the
    usual parse decides."""
    path = _model(tmp_path / "m.onnx")
    os.link(path, tmp_path / "link.onnx")
    assert parse_leaving_weights(path) is None
    (tmp_path / "link.onnx").unlink()
    model = onnx.load(path)
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    onnx.save(model, tmp_path / "short.onnx")
    short = parse_leaving_weights(tmp_path / "short.onnx")
    assert [t.data_location for t in short.graph.initializer[:2]] == [
        onnx.TensorProto.DEFAULT,
        onnx.TensorProto.EXTERNAL,
    ]
    del model.graph.initializer[:2]
    onnx.save(model, tmp_path / "small.onnx")
    assert parse_leaving_weights(tmp_path / "small.onnx") is None
    (tmp_path / "not.onnx").write_bytes(b"\x0f\xff\xff")
    assert parse_leaving_weights(tmp_path / "not.onnx") is None


def test_layer_wise_reads_large_files_in_place(tmp_path: Path, monkeypatch):
    """Verify's sessions (the merged one, the slices, FP16 emulation's) leave a large file's weights in it:
    the same answers as fetching every tensor, the file unchanged."""
    monkeypatch.setattr(weights_in_place, "MERGEABLE_BELOW", 0)  # this small model counts as large
    path = _model(tmp_path / "m.onnx")
    before = _digest(path)
    assert graph_of(path).graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    inputs = generate_inputs(load_model(path).model, seed=0)
    for backend, preset in ((get_backend("onnxruntime-cpu"), "exact"), (get_backend("fp16-emulation"), "fp16")):
        in_graph = compare_layerwise(path, path, backend, inputs, PRESETS[preset])
        fetched = compare_layerwise(path, path, backend, inputs, PRESETS[preset], LayerwiseOptions(in_graph=False))
        assert in_graph.in_graph == len(in_graph.records) == 7, in_graph.in_graph_unavailable
        assert [(r.name, r.max_abs, r.passed) for r in in_graph.records] == [
            (r.name, r.max_abs, r.passed) for r in fetched.records
        ]
    assert _digest(path) == before
