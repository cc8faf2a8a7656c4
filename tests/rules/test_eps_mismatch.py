"""GD004 eps-mismatch and the normalization fact it stands on: fused ops and decomposed patterns."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from fixtures.handmade import model_from_text
from graphdoctor.analysis import Analysis
from graphdoctor.analysis.normalization import find_normalizations
from graphdoctor.rule import Severity


def header(opset: int) -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}]>'


def batchnorms(*eps: float) -> onnx.ModelProto:
    """A chain of BatchNormalization nodes, `BatchNormalization_<i>`, one per eps."""
    lines, previous = [], "x"
    for i, value in enumerate(eps):
        output = "y" if i == len(eps) - 1 else f"b{i}"
        lines.append(f"{output} = BatchNormalization<epsilon: float = {value!r}>({previous}, s, b, m, v)")
        previous = output
    body = "\n    ".join(lines)
    return model_from_text(f"""{header(17)}
g (float[N,2,4,4] x) => (float[N,2,4,4] y)
  <float[2] s = {{1.0, 1.0}}, float[2] b = {{0.0, 0.0}}, float[2] m = {{0.0, 0.0}}, float[2] v = {{1.0, 1.0}}> {{
    {body}
}}""")


def decomposed_layernorm(eps: float = 1e-12, opset: int = 14, square: str = "pow", count: int = 1) -> onnx.ModelProto:
    """`count` LayerNorms as torch exports them below opset 17 (axes an input from opset 18 on)."""
    reduce = "ReduceMean<axes=[-1]>({})" if opset < 18 else "ReduceMean({}, axes)"
    lines = ["axes = Constant<value = int64[1] {-1}>()"] if opset >= 18 else []
    previous = "x"
    for i in range(count):
        output = "y" if i == count - 1 else f"ln{i}"
        squared = f"Pow(d{i}, two{i})" if square == "pow" else f"Mul(d{i}, d{i})"
        lines += [
            f"mean{i} = {reduce.format(previous)}",
            f"d{i} = Sub({previous}, mean{i})",
            f"two{i} = Constant<value = float {{2.0}}>()",
            f"sq{i} = {squared}",
            f"var{i} = {reduce.format(f'sq{i}')}",
            f"eps{i} = Constant<value = float {{{eps!r}}}>()",
            f"ve{i} = Add(var{i}, eps{i})",
            f"sd{i} = Sqrt(ve{i})",
            f"{output} = Div(d{i}, sd{i})",
        ]
        previous = output
    body = "\n    ".join(lines)
    return model_from_text(f"""{header(opset)}
g (float[N,8] x) => (float[N,8] y) {{
    {body}
}}""")


def decomposed_rmsnorm(eps: float) -> onnx.ModelProto:
    """LLaMA's RMSNorm as torch exports it: Pow, ReduceMean, Add(eps), Sqrt, Reciprocal, Mul."""
    return model_from_text(f"""{header(14)}
g (float[N,8] x) => (float[N,8] y) {{
    two = Constant<value = float {{2.0}}>()
    sq = Pow(x, two)
    var = ReduceMean<axes=[-1]>(sq)
    eps = Constant<value = float {{{eps!r}}}>()
    ve = Add(var, eps)
    sd = Sqrt(ve)
    inv = Reciprocal(sd)
    y = Mul(x, inv)
}}""")


def layernormalization(*eps: float) -> onnx.ModelProto:
    lines, previous = [], "x"
    for i, value in enumerate(eps):
        output = "y" if i == len(eps) - 1 else f"l{i}"
        lines.append(f"{output} = LayerNormalization<epsilon: float = {value!r}>({previous}, s, b)")
        previous = output
    body = "\n    ".join(lines)
    return model_from_text(f"""{header(17)}
g (float[N,2] x) => (float[N,2] y) <float[2] s = {{1.0, 1.0}}, float[2] b = {{0.0, 0.0}}> {{
    {body}
}}""")


# an Add of a mean and a constant that no square root follows: not a normalization
MEAN_PLUS_CONSTANT = model_from_text(f"""{header(14)}
g (float[N,8] x) => (float[N,1] y) {{
    two = Constant<value = float {{2.0}}>()
    sq = Pow(x, two)
    var = ReduceMean<axes=[-1]>(sq)
    eps = Constant<value = float {{1e-12}}>()
    y = Add(var, eps)
}}""")


VALID = [
    pytest.param(batchnorms(1e-3, 1e-3, 1e-3), id="batchnorms-one-eps"),
    pytest.param(layernormalization(1e-5, 1e-5), id="layernormalization-1e-5"),
    pytest.param(decomposed_layernorm(eps=1e-5), id="decomposed-1e-5-subnormal-but-0.1%-off"),
    pytest.param(decomposed_rmsnorm(eps=1e-6), id="rmsnorm-1e-6-1.3%-off"),
    pytest.param(MEAN_PLUS_CONSTANT, id="no-sqrt-no-normalization"),
]


@pytest.mark.parametrize("model", VALID)
def test_valid(lint_proto, model):
    assert lint_proto(model, "GD004") == []


# --- (a) one kind, several values ---------------------------------------------------------------------------


def test_minority_batchnorms_are_named(lint_proto):
    [finding] = lint_proto(batchnorms(1e-3, 1e-5, 1e-3, 1e-3, 1e-5, 1e-3, 1e-3), "GD004")
    assert finding.message_id == "outlier"
    assert finding.severity == Severity.WARNING
    assert finding.node == "BatchNormalization_1"
    assert finding.data["node_names"] == ["BatchNormalization_1", "BatchNormalization_4"]
    assert (finding.data["count"], finding.data["total"], finding.data["majority_count"]) == (2, 7, 5)
    assert (finding.data["eps"], finding.data["majority"]) == (1e-05, 0.001)
    assert finding.message.startswith("2 of 7 BatchNormalization nodes use eps=1e-05; 5 use 0.001")


def test_each_minority_value_is_its_own_finding(lint_proto):
    findings = lint_proto(batchnorms(1e-3, 1e-3, 1e-3, 1e-4, 1e-5), "GD004")
    assert [(f.message_id, f.data["eps"], f.node) for f in findings] == [
        ("outlier", 1e-4, "BatchNormalization_3"),
        ("outlier", 1e-5, "BatchNormalization_4"),
    ]


def test_even_split_names_no_outlier(lint_proto):
    [finding] = lint_proto(batchnorms(1e-3, 1e-5, 1e-3, 1e-5), "GD004")
    assert finding.message_id == "split"
    assert finding.data["counts"] == {1e-5: 2, 0.001: 2}
    assert "none of them by a majority" in finding.message
    assert "outlier" not in finding.message


def test_many_names_are_abbreviated(lint_proto):
    [finding] = lint_proto(batchnorms(*([1e-3] * 6 + [1e-5] * 5)), "GD004")
    assert finding.message.endswith("'BatchNormalization_8' and 2 more")
    assert len(finding.data["node_names"]) == 5


# --- (b) FP16 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(decomposed_layernorm(), id="pow-opset14"),
        pytest.param(decomposed_layernorm(square="mul"), id="mul"),
        pytest.param(decomposed_layernorm(opset=18), id="axes-input-opset18"),
    ],
)
def test_decomposed_eps_that_flushes_is_a_warning(lint_proto, model):
    [finding] = lint_proto(model, "GD004")
    assert finding.message_id == "underflow_tensor"
    assert finding.severity == Severity.WARNING
    assert finding.node == ("Add_6" if model.opset_import[0].version < 18 else "Add_7")
    assert finding.values == ("eps0",)
    assert finding.data["eps"] == 1e-12
    assert "onnxconverter-common to 1.19e-07" in finding.help
    assert "opset 17 or later" in finding.help


def test_identical_layers_make_one_finding(lint_proto):
    [finding] = lint_proto(decomposed_layernorm(count=3), "GD004")
    assert finding.data["count"] == 3
    assert finding.values == ("eps0", "eps1", "eps2")
    assert finding.message.startswith("eps=1e-12 of 3 decomposed LayerNorms is a constant tensor")


def test_attribute_eps_that_flushes_is_an_info(lint_proto):
    [finding] = lint_proto(layernormalization(1e-12, 1e-12), "GD004")
    assert finding.message_id == "underflow_attribute"
    assert finding.severity == Severity.INFO
    assert finding.data["count"] == 2
    assert finding.values == ()


def test_rmsnorm_eps_visibly_rounded_in_fp16(lint_proto):
    [finding] = lint_proto(decomposed_rmsnorm(eps=1e-7), "GD004")
    assert finding.message_id == "subnormal_tensor"
    assert finding.severity == Severity.INFO
    assert finding.data["fp16"] == "1.192e-07"
    assert "opset 23" in finding.help


def test_mismatch_and_underflow_are_separate(lint_proto):
    model = decomposed_layernorm(eps=1e-12, count=2)
    model.graph.node[14].attribute[0].t.float_data[0] = 1e-5  # the second LayerNorm's eps Constant
    findings = lint_proto(model, "GD004")
    assert sorted(f.message_id for f in findings) == ["split", "underflow_tensor"]


# --- the normalization fact ---------------------------------------------------------------------------------


def normalizations_of(model: onnx.ModelProto):
    return find_normalizations(Analysis(ir.from_proto(model)))


def test_fact_describes_a_decomposed_layernorm():
    [norm] = normalizations_of(decomposed_layernorm())
    assert (norm.kind, norm.op, norm.form) == ("LayerNormalization", "decomposed", "decomposed LayerNorm")
    assert (norm.eps_location, norm.eps_value.name) == ("tensor", "eps0")
    assert [n.op_type for n in norm.nodes] == ["Add", "ReduceMean", "Pow", "Sub", "ReduceMean", "Sqrt"]
    assert norm.axes == (-1,)
    assert norm.reduces_trailing_axes()


def test_fact_describes_fused_ops_with_their_default_eps():
    model = model_from_text(f"""{header(17)}
g (float[N,2,4] x) => (float[N,2,4] y) <float[2] s = {{1.0, 1.0}}, float[2] b = {{0.0, 0.0}}> {{
    y = InstanceNormalization(x, s, b)
}}""")
    [norm] = normalizations_of(model)
    assert (norm.kind, norm.eps_location, norm.eps_value) == ("InstanceNormalization", "attribute", None)
    assert norm.eps == pytest.approx(1e-5)


def test_fact_tells_rmsnorm_from_layernorm():
    [norm] = normalizations_of(decomposed_rmsnorm(eps=1e-6))
    assert (norm.kind, norm.form) == ("RMSNormalization", "decomposed RMSNorm")
    assert norm.eps == pytest.approx(1e-6)


def test_fact_reads_axes_given_as_an_input():
    [norm] = normalizations_of(decomposed_layernorm(opset=18))
    assert norm.axes == (-1,)


# --- real exports -------------------------------------------------------------------------------------------


def exported(name: str):
    from fixtures import torch_exports

    return torch_exports.path(name)


@pytest.mark.torch
def test_yolo_with_three_batchnorms_at_pytorch_default():
    from graphdoctor import api

    path = exported("yolo_bn_eps")
    expected = [
        node.name
        for node in onnx.load(path).graph.node
        if node.op_type == "BatchNormalization" and abs(onnx.helper.get_node_attr_value(node, "epsilon") - 1e-5) < 1e-9
    ]
    [finding] = api.lint(path, select=["GD004"]).findings
    assert finding.message_id == "outlier"
    assert finding.severity == Severity.WARNING
    assert finding.data["node_names"] == expected
    assert (finding.data["count"], finding.data["total"], finding.data["eps"]) == (3, 57, 1e-05)
    assert finding.data["majority"] == 0.001


@pytest.mark.torch
def test_bert_opset14_eps_constant_flushes():
    from graphdoctor import api

    [finding] = api.lint(exported("bert_opset14"), select=["GD004"]).findings
    assert (finding.message_id, finding.severity) == ("underflow_tensor", Severity.WARNING)
    assert finding.data["count"] == 5  # embeddings + 2 per encoder layer
    assert finding.data["eps"] == 1e-12
    assert finding.node == "/bert/embeddings/LayerNorm/Add"


@pytest.mark.torch
def test_bert_opset17_eps_attribute_is_only_an_info():
    from graphdoctor import api

    [finding] = api.lint(exported("bert_opset17"), select=["GD004"]).findings
    assert (finding.message_id, finding.severity) == ("underflow_attribute", Severity.INFO)
    assert finding.data["count"] == 5


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "yolo"])
def test_clean_exports(name):
    from graphdoctor import api

    assert api.lint(exported(name), select=["GD004"]).findings == []
