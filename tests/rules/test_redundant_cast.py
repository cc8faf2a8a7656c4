"""GD002 redundant-cast: valid and invalid hand-made graphs, one defect each, and real exports."""

from __future__ import annotations

import onnx
import pytest

from fixtures.handmade import model_from_text
from graphdoctor.rule import Severity

RULE = "GD002"
# ONNX TensorProto codes for the `to` attribute, by the type names ONNX text uses
TO = {
    "float": 1,
    "uint8": 2,
    "int8": 3,
    "uint16": 4,
    "int16": 5,
    "int32": 6,
    "int64": 7,
    "bool": 9,
    "float16": 10,
    "double": 11,
    "bfloat16": 16,
}


def graph(inputs: str, outputs: str, body: str, inits: str = "", check: bool = True) -> onnx.ModelProto:
    text = (
        f'<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>\ng ({inputs}) => ({outputs}) {inits}\n{{\n{body}\n}}'
    )
    return model_from_text(text, check=check)


def round_trip(src: str, mid: str, *, shared: bool = False) -> onnx.ModelProto:
    """x: src → [first] → mid → [second] → src; `shared` gives the middle value a second reader."""
    extra_out, extra_body = (f", {mid}[2] m", "m = Identity(t)") if shared else ("", "")
    body = f"[first] t = Cast <to = {TO[mid]}> (x)\n[second] y = Cast <to = {TO[src]}> (t)\n{extra_body}"
    return graph(f"{src}[2] x", f"{src}[2] y{extra_out}", body)


VALID = {
    "float32 to float16, one way": graph("float[2] x", "float16[2] y", "[c1] y = Cast <to = 10> (x)"),
    "int64 to int32 and back: narrowing, intended in shape arithmetic": round_trip("int64", "int32"),
    "int64 to float32 and back: inexact, left alone": round_trip("int64", "float"),
    "different target types": graph(
        "float16[2] x", "double[2] y", "[a] t = Cast <to = 1> (x)\n[b] y = Cast <to = 11> (t)"
    ),
    "unknown input type: never guess": graph(
        "float[2] x", "float[2] y", "[op] t = custom.Mystery(x)\n[c1] y = Cast <to = 1> (t)", check=False
    ),
    "CastLike to an unknown type": graph(
        "float[2] x", "float[2] y", "[op] like = custom.Mystery(x)\n[c1] y = CastLike(x, like)", check=False
    ),
    "cast of an overridable initializer (also a graph input)": graph(
        "float[2] x, int64[2] w",
        "float[2] y",
        "[c1] wf = Cast <to = 1> (w)\n[add] y = Add(x, wf)",
        "<int64[2] w = {1, 2}>",
    ),
}


@pytest.mark.parametrize("case", VALID)
def test_valid(lint_proto, case):
    assert lint_proto(VALID[case], RULE) == []


def test_same_type_cast_between_matmul_and_add_is_info_naming_the_fusion(lint_proto):
    """ONNX Runtime and TensorRT drop the no-op at load time: info, and the fusion it sits in is named."""
    model = graph(
        "float[1,4] x, float[4,4] w, float[4] b",
        "float[1,4] y",
        '[mm] t = MatMul(x, w)\n["enc/Cast_12"] u = Cast <to = 1> (t)\n[add] y = Add(u, b)',
    )
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("enc/Cast_12", Severity.INFO, "same_dtype_fusion")
    assert finding.data["dtype"] == "float32"
    assert finding.message.startswith("Cast 'enc/Cast_12' casts float32 to float32 (no-op) between MatMul 'mm' and Add")
    assert "drop the Cast at load time" in finding.message
    assert "graphdoctor fix" in finding.help and "safe" in finding.help
    assert finding.values == ("t", "u")


@pytest.mark.parametrize("activation", ["Relu", "Sigmoid", "Clip"])
def test_same_type_cast_between_conv_and_an_activation_names_the_fusion(lint_proto, activation):
    body = f"[conv] t = Conv(x, w)\n[c1] u = Cast <to = 1> (t)\n[act] y = {activation}(u)"
    [finding] = lint_proto(graph("float[1,1,3,3] x, float[1,1,1,1] w", "float[1,1,3,3] y", body), RULE)
    assert (finding.message_id, finding.data["before"], finding.data["after_op"]) == (
        "same_dtype_fusion",
        "conv",
        activation,
    )


NOT_FUSED = {
    "Gather, then Add (GPT-2's embeddings)": (
        "int64[2] ids, float[8,4] table, float[2,4] pos",
        "float[2,4] y",
        "[gather] t = Gather(table, ids)\n[c1] u = Cast <to = 1> (t)\n[add] y = Add(u, pos)",
    ),
    "Add, then Pow (T5's LayerNorm)": (
        "float[2] x, float[2] r",
        "float[2] y",
        "[add] t = Add(x, r)\n[c1] u = Cast <to = 1> (t)\n[pow] y = Pow(u, r)",
    ),
    "Conv, then Add": (
        "float[1,1,3,3] x, float[1,1,1,1] w, float[1,1,3,3] r",
        "float[1,1,3,3] y",
        "[conv] t = Conv(x, w)\n[c1] u = Cast <to = 1> (t)\n[add] y = Add(u, r)",
    ),
    "MatMul, then Relu": (
        "float[1,4] x, float[4,4] w",
        "float[1,4] y",
        "[mm] t = MatMul(x, w)\n[c1] u = Cast <to = 1> (t)\n[relu] y = Relu(u)",
    ),
    "a graph input": ("float[2] x", "float[2] y", "[c1] u = Cast <to = 1> (x)\n[neg] y = Neg(u)"),
}


@pytest.mark.parametrize("case", NOT_FUSED)
def test_same_type_float_cast_elsewhere_is_info_with_no_fusion_claim(lint_proto, case):
    [finding] = lint_proto(graph(*NOT_FUSED[case]), RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("c1", Severity.INFO, "same_dtype")
    assert "fus" not in finding.message
    assert "ONNX Runtime and TensorRT drop at load time" in finding.message
    assert finding.help.startswith("nothing to do for them")


def test_same_type_castlike_is_info(lint_proto):
    model = graph("float16[2] x, float16[2] like", "float16[2] y", "[cl] y = CastLike(x, like)")
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.message_id, finding.data["op"]) == ("cl", "same_dtype", "CastLike")
    assert finding.severity == Severity.INFO


@pytest.mark.parametrize("dtype", ["int64", "bool"])
def test_same_type_cast_on_index_and_mask_tensors_is_info(lint_proto, dtype):
    model = graph(f"{dtype}[2] x", f"{dtype}[2] y", f"[c1] y = Cast <to = {TO[dtype]}> (x)")
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("c1", Severity.INFO, "same_dtype_index")


LOSSLESS = [
    ("float16", "float"),
    ("float16", "double"),
    ("bfloat16", "float"),
    ("float", "double"),
    ("int32", "int64"),
    ("int8", "int16"),
    ("uint8", "int16"),
    ("uint8", "float"),
    ("int8", "float"),
    ("int16", "float"),
    ("uint8", "float16"),
    ("int32", "double"),
    ("bool", "float"),
    ("bool", "int64"),
]


@pytest.mark.parametrize(("src", "mid"), LOSSLESS)
def test_lossless_round_trip_is_removable(lint_proto, src, mid):
    [finding] = lint_proto(round_trip(src, mid), RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("second", Severity.WARNING, "lossless_round_trip")
    assert finding.data["removable"] == "both"
    assert finding.help.startswith("remove both")
    assert finding.values == ("x", "t", "y")


def test_lossless_round_trip_with_a_shared_middle_keeps_the_first_cast(lint_proto):
    [finding] = lint_proto(round_trip("float16", "float", shared=True), RULE)
    assert (finding.node, finding.message_id, finding.data["removable"]) == ("second", "lossless_round_trip", "second")
    assert "only 'second' can go" in finding.message
    assert "'x' directly" in finding.help


def test_lossless_round_trip_whose_middle_is_a_graph_output(lint_proto):
    body = "[first] t = Cast <to = 1> (x)\n[second] y = Cast <to = 10> (t)"
    model = graph("float16[2] x", "float16[2] y, float[2] t", body)
    [finding] = lint_proto(model, RULE)
    assert finding.data["removable"] == "second"
    assert "a graph output" in finding.message


@pytest.mark.parametrize(
    ("src", "mid", "bits"), [("float", "float16", 11), ("float", "bfloat16", 8), ("double", "float", 24)]
)
def test_float_narrowing_round_trip_is_precision_loss_never_removed(lint_proto, src, mid, bits):
    [finding] = lint_proto(round_trip(src, mid), RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("second", Severity.WARNING, "rounding_round_trip")
    assert finding.data["bits"] == bits
    assert f"({bits} significant bits" in finding.message
    assert "never removes" in finding.help
    assert "removable" not in finding.data


def test_float16_round_trip_names_the_precision(lint_proto):
    [finding] = lint_proto(round_trip("float", "float16"), RULE)
    assert "round float32 to float16 precision (11 significant bits, largest finite 65504) and back" in finding.message


@pytest.mark.parametrize(("src", "mid"), [("float", "int64"), ("float", "int32"), ("float16", "int8")])
def test_float_to_int_round_trip_truncates_and_is_info_only(lint_proto, src, mid):
    [finding] = lint_proto(round_trip(src, mid), RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("second", Severity.INFO, "truncating_round_trip")
    assert "truncates toward zero" in finding.message
    assert "never removes" in finding.help
    assert "removable" not in finding.data


@pytest.mark.parametrize("src", ["float", "int32"])
def test_round_trip_through_bool_maps_nonzero_to_one(lint_proto, src):
    [finding] = lint_proto(round_trip(src, "bool"), RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("second", Severity.INFO, "nonzero_round_trip")
    assert "`graphdoctor fix` never removes it" in finding.help


def test_cast_of_an_initializer_is_foldable(lint_proto):
    model = graph(
        "float[2] x", "float[2] y", "[c1] wf = Cast <to = 1> (w)\n[add] y = Add(x, wf)", "<int64[2] w = {1, 2}>"
    )
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("c1", Severity.INFO, "constant_cast")
    assert finding.data["constant"] == "w" and finding.data["target"] == "float32"
    assert finding.data["shared"] == ""


def test_cast_of_a_constant_node_is_foldable(lint_proto):
    body = "[k] w = Constant <value = double[2] {1.0, 2.0}> ()\n[c1] wf = Cast <to = 1> (w)\n[add] y = Add(x, wf)"
    [finding] = lint_proto(graph("float[2] x", "float[2] y", body), RULE)
    assert (finding.node, finding.message_id, finding.data["constant"]) == ("c1", "constant_cast", "w")


def test_cast_of_a_shared_constant_warns_about_the_copy(lint_proto):
    body = "[c1] wf = Cast <to = 1> (w)\n[add] y = Add(x, wf)\n[neg] z = Neg(w)"
    model = graph("float[2] x", "float[2] y, int64[2] z", body, "<int64[2] w = {1, 2}>")
    [finding] = lint_proto(model, RULE)
    assert "feeds 1 other node(s), so folding stores a second copy (8 B)" in finding.message


def test_cast_in_a_subgraph(lint_proto):
    model = graph(
        "bool c, float[2] x",
        "float[2] y",
        "[cond] y = If (c) <then_branch = then () => (float[2] a) { [inner] a = Cast <to = 1> (x) },"
        " else_branch = other () => (float[2] b) { [keep] b = Neg(x) }>",
    )
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.graph, finding.message_id) == ("inner", "cond.then_branch", "same_dtype")


def test_one_finding_per_cast_in_a_long_chain(lint_proto):
    """f16 → f32 → f16 → f32: each Cast that closes a round trip is named once."""
    body = "[a] t1 = Cast <to = 1> (x)\n[b] t2 = Cast <to = 10> (t1)\n[c] y = Cast <to = 1> (t2)"
    findings = lint_proto(graph("float16[2] x", "float[2] y", body), RULE)
    assert [(f.node, f.message_id) for f in findings] == [("b", "lossless_round_trip"), ("c", "lossless_round_trip")]
    assert "every float16 value is exact in float32" in findings[0].message
    # 'c' narrows float32 to float16, but 't1' only ever holds float16 values: still a no-op
    assert "'t1' holds only float16 values (Cast 'a'), exact in float16" in findings[1].message


@pytest.mark.torch
@pytest.mark.parametrize(
    "name",
    ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "bert_opset14", "bert_opset17", "yolo", "t5_encoder"],
)
def test_real_exports_have_no_warning(lint_proto_path, name):
    """BERT and YOLO exports hold a few int64/bool no-op Casts (`.long()`, `.bool()`), T5's LayerNorm a
    float32 one (`.to(torch.float32)` after a residual Add): info, and none sits in a fusing pair."""
    findings = lint_proto_path(name, RULE)
    assert [f for f in findings if f.severity >= Severity.WARNING] == []
    assert {f.message_id for f in findings} <= {"same_dtype_index", "same_dtype"}


@pytest.fixture
def lint_proto_path():
    from fixtures import torch_exports
    from graphdoctor import api

    def run(name: str, select: str):
        return api.lint(torch_exports.path(name), select=[select]).findings

    return run
