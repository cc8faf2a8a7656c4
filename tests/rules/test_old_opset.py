"""GD008 old-opset: decomposed LayerNorm below 17, Upsample and opset-10 Resize, opsets outside the runtimes."""

from __future__ import annotations

import onnx
import pytest

from fixtures.handmade import model_from_text
from graphdoctor import api
from graphdoctor.rule import Severity


def relu(opset: int, ir_version: int = 8) -> onnx.ModelProto:
    return model_from_text(
        f"""<ir_version: {ir_version}, opset_import: ["" : {opset}]>
g (float[2] x) => (float[2] y) {{
    y = Relu(x)
}}""",
        check=opset <= onnx.defs.onnx_opset_version(),
    )


def decomposed_layernorm(opset: int, axes: str = "[-1]", count: int = 1) -> onnx.ModelProto:
    """`count` LayerNorms as torch writes them below opset 17, reducing over `axes` of a rank-3 input."""
    lines, previous = [], "x"
    for i in range(count):
        output = "y" if i == count - 1 else f"ln{i}"
        lines += [
            f"mean{i} = ReduceMean<axes={axes}>({previous})",
            f"d{i} = Sub({previous}, mean{i})",
            f"two{i} = Constant<value = float {{2.0}}>()",
            f"sq{i} = Pow(d{i}, two{i})",
            f"var{i} = ReduceMean<axes={axes}>(sq{i})",
            f"eps{i} = Constant<value = float {{1e-05}}>()",
            f"ve{i} = Add(var{i}, eps{i})",
            f"sd{i} = Sqrt(ve{i})",
            f"{output} = Div(d{i}, sd{i})",
        ]
        previous = output
    body = "\n    ".join(lines)
    return model_from_text(f"""<ir_version: 8, opset_import: ["" : {opset}]>
g (float[N,4,8] x) => (float[N,4,8] y) {{
    {body}
}}""")


def resizing(op: str, opset: int) -> onnx.ModelProto:
    """A 2x upsampling with `op` (Upsample or Resize) and constant scales."""
    inputs = "x, scales" if op == "Upsample" or opset == 10 else 'x, "", scales'
    return model_from_text(f"""<ir_version: 8, opset_import: ["" : {opset}]>
g (float[1,1,2,2] x) => (float[1,1,4,4] y) {{
    scales = Constant<value = float[4] {{1.0, 1.0, 2.0, 2.0}}>()
    y = {op}<mode="linear">({inputs})
}}""")


RMSNORM_OPSET14 = model_from_text("""<ir_version: 8, opset_import: ["" : 14]>
g (float[N,8] x) => (float[N,8] y) {
    two = Constant<value = float {2.0}>()
    sq = Pow(x, two)
    var = ReduceMean<axes=[-1]>(sq)
    eps = Constant<value = float {1e-06}>()
    ve = Add(var, eps)
    sd = Sqrt(ve)
    y = Div(x, sd)
}""")

VALID = [
    pytest.param(relu(17), id="opset17"),
    pytest.param(relu(13), id="opset13-no-layernorm"),
    pytest.param(relu(9), id="opset9"),
    pytest.param(relu(21), id="opset21"),
    pytest.param(decomposed_layernorm(17), id="decomposed-at-17-is-not-the-opset's-fault"),
    pytest.param(decomposed_layernorm(14, axes="[1]"), id="channel-norm-axis-1-is-no-layernorm"),
    pytest.param(RMSNORM_OPSET14, id="rmsnorm-needs-opset23-not-reported"),
    pytest.param(resizing("Resize", 13), id="resize-opset13"),
]


@pytest.mark.parametrize("model", VALID)
def test_valid(lint_proto, model):
    assert lint_proto(model, "GD008") == []


def test_decomposed_layernorm_below_17(lint_proto):
    [finding] = lint_proto(decomposed_layernorm(14, count=4), "GD008")
    assert (finding.message_id, finding.severity) == ("decomposed_layernorm", Severity.WARNING)
    assert finding.node == "Add_6"
    assert finding.data["count"] == 4
    assert finding.data["node_names"] == ["Add_6", "Add_15", "Add_24", "Add_33"]
    assert finding.message.endswith("'Add_6', 'Add_15', 'Add_24' and 1 more")
    assert "opset_version=17" in finding.help


def test_trailing_axes_written_positive(lint_proto):
    """axes=[2] of a rank-3 input is the last axis: found once shape inference gives the rank."""
    [finding] = lint_proto(decomposed_layernorm(13, axes="[2]"), "GD008")
    assert finding.message_id == "decomposed_layernorm"


def test_upsample(lint_proto):
    [finding] = lint_proto(resizing("Upsample", 9), "GD008")
    assert (finding.message_id, finding.severity) == ("upsample", Severity.WARNING)
    assert (finding.node, finding.data["opset"]) == ("Upsample_1", 9)


def test_resize_at_opset10(lint_proto):
    [finding] = lint_proto(resizing("Resize", 10), "GD008")
    assert (finding.message_id, finding.node) == ("resize_opset10", "Resize_1")


@pytest.mark.parametrize(("opset", "reported"), [(8, False), (6, True)])
def test_opset_older_than_onnxruntime_guarantees(lint_proto, opset, reported):
    """TensorRT's opset range is GD013's; GD008 keeps onnxruntime's."""
    findings = lint_proto(relu(opset, ir_version=3), "GD008")
    assert [(f.message_id, f.severity, f.node) for f in findings] == (
        [("too_old", Severity.WARNING, None)] if reported else []
    )


def test_opset_newer_than_onnxruntime_is_an_error(lint_proto):
    """onnxruntime refuses such a model (measured with 1.32: opset 28 loads, 29 fails)."""
    [finding] = lint_proto(relu(29, ir_version=11), "GD008")
    assert (finding.message_id, finding.severity) == ("newer_than_runtime", Severity.ERROR)
    assert finding.data["ort_max"] < 29


# --- real exports -------------------------------------------------------------------------------------------


def exported(name: str):
    from fixtures import torch_exports

    return torch_exports.path(name)


@pytest.mark.torch
def test_bert_opset14_layernorms():
    [finding] = api.lint(exported("bert_opset14"), select=["GD008"]).findings
    assert (finding.message_id, finding.severity) == ("decomposed_layernorm", Severity.WARNING)
    assert finding.data["count"] == 5
    assert finding.data["opset"] == 14
    assert all("/LayerNorm/" in name for name in finding.data["node_names"])


@pytest.mark.torch
@pytest.mark.parametrize(
    "name", ["bert_opset17", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "yolo", "yolo_bn_eps"]
)
def test_clean_exports(name):
    assert api.lint(exported(name), select=["GD008"]).findings == []
