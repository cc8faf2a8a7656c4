"""The torch-exported fixtures hold what the rule tests rely on: if an exporter upgrade changes what a fixture
contains (BatchNorm folded after all, LayerNorm no longer decomposed), these fail first and say which fact moved.
"""

from __future__ import annotations

import collections
import functools
import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fixtures import torch_exports

pytestmark = pytest.mark.torch

DEMO = Path(__file__).resolve().parents[1] / "examples" / "yolo_demo.onnx"
CLEAN = ["resnet50", "mobilenet_v3_large", "efficientnet_b0"]


@functools.cache
def load(name: str) -> onnx.ModelProto:
    return onnx.load(str(DEMO if name == "demo" else torch_exports.path(name)))


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values by name."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    found = [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else default


def nodes(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type == op_type]


def eps_counts(model: onnx.ModelProto, op_type: str) -> dict[float, int]:
    return collections.Counter(round(float(attribute(n, "epsilon")), 15) for n in nodes(model, op_type))


@pytest.mark.parametrize("name", torch_exports.NAMES)
def test_fixture_is_valid_and_runs_in_onnxruntime(name: str):
    path = torch_exports.path(name)
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, torch_exports.sample_inputs(path))
    assert outputs
    assert all(np.isfinite(output).all() for output in outputs)


@pytest.mark.parametrize("name", [n for n in torch_exports.NAMES if n != "identical_layers"])
def test_perturbed_weights_are_all_distinct(name: str):
    """Untouched initialisation (all-ones norm weights, zero biases) would fake duplicate-initializer findings."""
    seen: dict[str, str] = {}
    for init in load(name).graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f" and array.size > 1:
            digest = hashlib.sha256(array.tobytes()).hexdigest()
            assert digest not in seen, f"{init.name} equals {seen[digest]}"
            seen[digest] = init.name


def test_yolo_is_an_ultralytics_export():
    """BatchNorm fused into Conv, dynamic batch/height/width, INT64 shape constants that all fit in INT32."""
    model = load("yolo")
    assert model.opset_import[0].version == 12
    assert not nodes(model, "BatchNormalization")
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    int64 = [v for v in constants(model).values() if v.dtype == np.int64]
    assert len(int64) >= 50
    assert all(np.abs(v).max(initial=0) < 2**31 for v in int64)


@pytest.mark.parametrize("name", ["yolo_bn_eps", "demo"])
def test_yolo_bn_eps_keeps_batchnorm_with_three_outliers(name: str):
    counts = eps_counts(load(name), "BatchNormalization")
    assert set(counts) == {round(float(np.float32(1e-3)), 15), round(float(np.float32(1e-5)), 15)}
    assert counts[round(float(np.float32(1e-5)), 15)] == 3
    assert counts[round(float(np.float32(1e-3)), 15)] >= 50


def test_demo_is_small_and_committed():
    assert DEMO.stat().st_size <= 1.5e6
    assert [o.version for o in load("demo").opset_import] == [12]


def test_bert_opset14_decomposes_layernorm():
    """Each LayerNorm becomes ReduceMean/Sub/Pow/ReduceMean/Add(eps)/Sqrt/Div with eps a float32 Constant."""
    model = load("bert_opset14")
    assert not nodes(model, "LayerNormalization")
    values = constants(model)
    eps_adds = [
        n
        for n in nodes(model, "Add")
        if values.get(n.input[1], np.zeros(2)).size == 1 and np.isclose(values[n.input[1]], 1e-12, rtol=1e-6)
    ]
    assert len(eps_adds) == 5  # embeddings + 2 per layer
    consumers = {name: n.op_type for n in model.graph.node for name in n.input}
    assert all(consumers[n.output[0]] == "Sqrt" for n in eps_adds)


def test_bert_opset17_has_layernormalization():
    counts = eps_counts(load("bert_opset17"), "LayerNormalization")
    assert counts == {round(float(np.float32(1e-12)), 15): 5}


def test_tied_embeddings_stores_w_and_its_transpose():
    model = load("tied_embeddings")
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    vocab_dim = [a for a in weights.values() if a.shape == (torch_exports.VOCAB, 128)]
    dim_vocab = [a for a in weights.values() if a.shape == (128, torch_exports.VOCAB)]
    assert len(vocab_dim) == len(dim_vocab) == 1
    np.testing.assert_array_equal(vocab_dim[0].T, dim_vocab[0])


def test_identical_layers_are_stored_separately():
    groups = collections.defaultdict(list)
    for init in load("identical_layers").graph.initializer:
        groups[hashlib.sha256(numpy_helper.to_array(init).tobytes()).hexdigest()].append(init.name)
    assert sorted(len(names) for names in groups.values())[-1] == 3


def test_training_mode_exports_batchnorm_and_dropout_in_training():
    model = load("training_mode")
    batchnorms = nodes(model, "BatchNormalization")
    assert batchnorms and all(attribute(n, "training_mode") == 1 for n in batchnorms)
    (dropout,) = nodes(model, "Dropout")
    assert bool(constants(model)[dropout.input[2]]) is True


@pytest.mark.parametrize("name", CLEAN)
def test_clean_models_are_plain_inference_graphs(name: str):
    model = load(name)
    assert [o.version for o in model.opset_import] == [17]
    assert not {"BatchNormalization", "Dropout", "Cast"} & {n.op_type for n in model.graph.node}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_cache_key_tracks_builder_source():
    """Each builder has its own key, and it covers the helpers it calls (a changed helper rebuilds)."""
    keys = {torch_exports._cache_key(torch_exports._BUILDERS[name]) for name in torch_exports.NAMES}
    assert len(keys) == len(torch_exports.NAMES)
    sources = torch_exports._sources(torch_exports._BUILDERS["yolo"])
    assert any("def perturb_" in s for s in sources)
    assert any("def _prepare_like_ultralytics" in s for s in sources)
