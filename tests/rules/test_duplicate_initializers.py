"""GD003 duplicate-initializers: byte-identical copies and W/Wᵀ pairs, with the bytes they waste."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from fixtures.handmade import model_from_text
from graphdoctor import api
from graphdoctor.analysis import digests
from graphdoctor.rule import Finding, Severity

RNG = np.random.default_rng(0)
MiB = 1024 * 1024


def weights_model(weights: dict[str, np.ndarray], constants: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Initializers (`weights`) and Constant nodes (`constants`), each read by a named Identity and returned."""
    nodes, outputs = [], []
    for name, array in (constants or {}).items():
        nodes.append(
            helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(array))
        )
    for name, array in {**weights, **(constants or {})}.items():
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"], name=f"use_{name}"))
        dtype = helper.np_dtype_to_tensor_dtype(array.dtype)
        outputs.append(helper.make_tensor_value_info(f"{name}_out", dtype, array.shape))
    initializers = [numpy_helper.from_array(array, name) for name, array in weights.items()]
    graph = helper.make_graph(nodes, "g", [], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def lint(lint_proto, model: onnx.ModelProto, **options) -> list[Finding]:
    rule_options = {"duplicate-initializers": options} if options else None
    return lint_proto(model, "GD003", rule_options=rule_options)


def random(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


# --- VALID ----------------------------------------------------------------------------------------------------

LAYER = random(512, 512)
EMBED = random(1000, 128)
SQUARE = random(64, 64)

VALID = {
    "distinct-same-shape": weights_model({"a": random(64, 64), "b": random(64, 64)}),
    "small-copies": weights_model({"bias1": random(16), "bias2": random(16).copy()}),  # 64 B: below min-bytes
    "repeated-shape-constants": model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,4] y) <int64[2] s1 = {-1, 4}, int64[2] s2 = {-1, 4}> {
            [r1] a = Reshape(x, s1)
            [r2] y = Reshape(a, s2)
        }"""),
    "same-bytes-other-shape": weights_model({"w": SQUARE, "flat": SQUARE.reshape(-1)}),
    "symmetric-matrix": weights_model({"sym": SQUARE + SQUARE.T}),
    "zero-vs-negative-zero": weights_model(
        {"zeros": np.zeros((32, 32), np.float32), "negzeros": np.full((32, 32), -0.0, np.float32)}
    ),
}


@pytest.mark.parametrize("name", VALID)
def test_valid(lint_proto, name):
    assert lint(lint_proto, VALID[name]) == []


# --- INVALID: byte-identical copies ---------------------------------------------------------------------------


def test_identical_layers_are_one_warning_with_wasted_bytes(lint_proto):
    model = weights_model(
        {
            "layers.0.fc.weight": random(512, 512),
            "layers.1.fc.weight": LAYER,
            "layers.2.fc.weight": LAYER.copy(),
            "layers.3.fc.weight": LAYER.copy(),
        }
    )
    [finding] = lint(lint_proto, model)
    assert finding.message == (
        "weight 'layers.1.fc.weight' float32[512,512] is stored 3 times"
        " (also 'layers.2.fc.weight', 'layers.3.fc.weight'): 2.0 MiB wasted"
    )
    assert finding.help == "`graphdoctor fix` merges them (safe)"
    assert finding.severity == Severity.WARNING
    assert finding.values == ("layers.1.fc.weight", "layers.2.fc.weight", "layers.3.fc.weight")
    assert finding.nbytes == finding.data["wasted"] == 2 * MiB
    assert (finding.data["count"], finding.data["tensor_nbytes"]) == (3, MiB)


def test_small_group_is_info_and_thresholds_are_options(lint_proto):
    small = random(16, 16)  # exactly 1 KiB: the default min-bytes
    model = weights_model({"p": small, "q": small.copy(), "r": random(8, 8), "s": np.ones((8, 8), np.float32)})
    [finding] = lint(lint_proto, model)
    assert (finding.severity, finding.values, finding.nbytes) == (Severity.INFO, ("p", "q"), 1024)
    [finding] = lint(lint_proto, model, **{"warn-bytes": 1024})
    assert finding.severity == Severity.WARNING
    assert lint(lint_proto, model, **{"min-bytes": 1025}) == []


def test_many_copies_are_counted_not_listed(lint_proto):
    model = weights_model({f"w{i}": SQUARE.copy() for i in range(6)})
    [finding] = lint(lint_proto, model)
    assert "is stored 6 times (also 'w1', 'w2', 'w3' and 2 more): 80.0 KiB wasted" in finding.message


def test_constant_node_copy_of_an_initializer(lint_proto):
    model = weights_model({"w": SQUARE}, constants={"c": SQUARE.copy()})
    [finding] = lint(lint_proto, model)
    assert finding.values == ("w", "c")
    assert finding.message.startswith("weight 'w' float32[64,64] is stored 2 times (also 'c')")


def test_copies_across_subgraphs(lint_proto):
    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["t"], name="then_const", value=numpy_helper.from_array(SQUARE))],
        "then",
        [],
        [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [64, 64])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["e"], name="else_id")],
        "else",
        [],
        [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [64, 64])],
    )
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 64])],
        [numpy_helper.from_array(SQUARE.copy(), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    [finding] = lint(lint_proto, model)
    assert finding.values == ("w", "t")


# --- INVALID: W and Wᵀ ----------------------------------------------------------------------------------------


def test_tied_embedding_stored_transposed(lint_proto):
    model = weights_model({"embed.weight": EMBED, "lm_head.weight": np.ascontiguousarray(EMBED.T)})
    [finding] = lint(lint_proto, model)
    assert finding.message_id == "transposed"
    assert finding.message == (
        "'lm_head.weight' float32[128,1000] is the transpose of 'embed.weight' float32[1000,128]:"
        " 500.0 KiB stored twice"
    )
    assert "--dedup-transposed" in finding.help
    assert finding.values == ("lm_head.weight", "embed.weight")
    assert (finding.severity, finding.nbytes) == (Severity.INFO, 512_000)
    [finding] = lint(lint_proto, model, **{"warn-bytes": 512_000})
    assert finding.severity == Severity.WARNING
    assert lint(lint_proto, model, transposed=False) == []


@pytest.mark.parametrize("row, col", [(0, 0), (500, 64), (333, 5)], ids=["sampled-corner", "centre", "unsampled"])
def test_almost_transposed_is_not_reported(lint_proto, row, col):
    """(333, 5) lies outside every sampled block: only the full comparison tells the two apart."""
    head = np.ascontiguousarray(EMBED.T)
    head[col, row] += 1.0
    assert lint(lint_proto, weights_model({"embed": EMBED, "head": head})) == []


def test_square_pair_is_reported_once(lint_proto):
    model = weights_model({"q": SQUARE, "k": np.ascontiguousarray(SQUARE.T)})
    [finding] = lint(lint_proto, model)
    assert (finding.message_id, finding.values) == ("transposed", ("k", "q"))


@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.float64])
def test_transpose_compares_bits_of_any_element_size(lint_proto, dtype):
    weight = (random(96, 40) * 50).astype(dtype)
    [finding] = lint(lint_proto, weights_model({"w": weight, "wt": np.ascontiguousarray(weight.T)}))
    assert finding.values == ("wt", "w")


def test_copies_of_a_transposed_pair(lint_proto):
    """W stored twice and Wᵀ once: one copy group, one transpose pair with the group's first member."""
    model = weights_model({"w": EMBED, "w_copy": EMBED.copy(), "wt": np.ascontiguousarray(EMBED.T)})
    findings = {f.message_id: f for f in lint(lint_proto, model)}
    assert findings["identical"].values == ("w", "w_copy")
    assert findings["transposed"].values == ("wt", "w")


def test_tiled_comparison(lint_proto, monkeypatch):
    """Tiles much smaller than the matrix: the comparison walks many tiles and still agrees."""
    monkeypatch.setattr(digests, "CHUNK_BYTES", 4096)
    model = weights_model({"embed": EMBED, "head": np.ascontiguousarray(EMBED.T)})
    [finding] = lint(lint_proto, model)
    assert finding.message_id == "transposed"
    head = np.ascontiguousarray(EMBED.T)
    head[127, 999] = 0.0  # the very last tile
    assert lint(lint_proto, weights_model({"embed": EMBED, "head": head})) == []


# --- external data ------------------------------------------------------------------------------------------


def save_external(model: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "model.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def test_external_data_is_streamed_not_loaded(tmp_path, monkeypatch):
    """Duplicates and a transposed pair in external data, found with every whole-tensor read disabled."""
    layer = random(256, 256)  # 256 KiB: sampled digests, then a full one
    model = weights_model(
        {
            "a": layer,
            "b": layer.copy(),
            "c": layer.copy(),
            "d": random(256, 256),
            "embed": EMBED,
            "head": np.ascontiguousarray(EMBED.T),
        }
    )
    path = save_external(model, tmp_path)

    def refuse(self, *args, **kwargs):
        raise AssertionError("an external tensor was read whole")

    monkeypatch.setattr(ir.ExternalTensor, "numpy", refuse)
    monkeypatch.setattr(ir.ExternalTensor, "tobytes", refuse)
    monkeypatch.setattr(digests, "CHUNK_BYTES", 64 * 1024)  # several tiles per matrix
    findings = {f.message_id: f for f in api.lint(path, select=["GD003"]).findings}
    assert findings["identical"].values == ("a", "b", "c")
    assert findings["identical"].nbytes == 2 * 256 * 1024
    assert findings["transposed"].values == ("head", "embed")


def test_two_names_for_one_stored_copy_waste_nothing(tmp_path):
    model = weights_model({"a": SQUARE, "b": random(64, 64)})
    path = save_external(model, tmp_path)
    proto = onnx.load(path, load_external_data=False)
    first, second = proto.graph.initializer
    second.ClearField("external_data")
    second.external_data.extend(first.external_data)  # b points at a's bytes
    second.data_location = onnx.TensorProto.EXTERNAL
    onnx.save_model(proto, path)
    assert api.lint(path, select=["GD003"]).findings == []


def test_unreadable_external_data_is_skipped(tmp_path):
    model = weights_model({"a": SQUARE, "b": SQUARE.copy(), "c": SQUARE.copy()})
    path = save_external(model, tmp_path)
    data = tmp_path / "weights.bin"
    data.write_bytes(data.read_bytes()[: -SQUARE.nbytes // 2])  # 'c' is cut short
    findings = api.lint(path, select=["GD003"]).findings
    assert [f.values for f in findings] == [("a", "b")]


# --- real exports -------------------------------------------------------------------------------------------


def exported(name: str) -> Path:
    from fixtures import torch_exports

    return torch_exports.path(name)


def byte_identical_groups(path: Path, min_bytes: int = 1024) -> list[tuple[str, ...]]:
    """An independent oracle: initializers grouped by dtype, dims and raw bytes, with onnx alone."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for tensor in onnx.load(path).graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.nbytes >= min_bytes:
            groups[(tensor.data_type, tuple(tensor.dims), array.tobytes())].append(tensor.name)
    return sorted(tuple(names) for names in groups.values() if len(names) > 1)


@pytest.mark.torch
def test_identical_layers_export():
    path = exported("identical_layers")
    findings = api.lint(path, select=["GD003"]).findings
    identical = [f for f in findings if f.message_id == "identical"]
    assert sorted(f.values for f in identical) == byte_identical_groups(path)
    assert any(f.data["count"] == 3 for f in identical), "three deep-copied blocks"
    for finding in identical:
        assert finding.nbytes == finding.data["tensor_nbytes"] * (finding.data["count"] - 1)


@pytest.mark.torch
def test_tied_embeddings_export():
    path = exported("tied_embeddings")
    [finding] = api.lint(path, select=["GD003"]).findings
    assert finding.message_id == "transposed"
    assert finding.data["original"] == "embed.weight"
    assert finding.data["type"] == "float32[128,1000]"
    assert finding.nbytes == 1000 * 128 * 4
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    np.testing.assert_array_equal(weights[finding.values[0]], weights["embed.weight"].T)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "yolo", "bert_opset17"])
def test_clean_exports_have_no_duplicates(name):
    findings = api.lint(exported(name), select=["GD003"]).findings
    assert [f for f in findings if f.severity >= Severity.WARNING] == []
