"""GD012 nms-in-graph: NonMaxSuppression nodes, and TopK doing post-processing near the outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fixtures.handmade import model_from_text
from graphdoctor import api
from graphdoctor.rule import Severity

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def nms_model(inputs: str = "boxes, scores, k, iou, st", initializers: str | None = None) -> onnx.ModelProto:
    inits = initializers or "int64[1] k = {100}, float[1] iou = {0.45}, float[1] st = {0.25}"
    return model_from_text(f"""{HEADER}
        g (float[1,200,4] boxes, float[1,80,200] scores) => (int64[?,3] selected) <{inits}> {{
            selected = NonMaxSuppression <center_point_box = 1> ({inputs})
        }}""")


def topk_model(chain: list[str], k: str = "int64[1] k = {100}") -> onnx.ModelProto:
    """scores → TopK(k) → `chain` of unary ops → output; the TopK is named 'topk'."""
    body = ["vals, idx = TopK <axis = -1> (scores, k)", "x0 = Cast <to = 1> (idx)"]
    body += [f"x{i + 1} = {op}(x{i})" for i, op in enumerate(chain)]
    body += [f"out = Identity(x{len(chain)})"]
    text = f"""{HEADER}
        g (float[1,8400] scores) => (float[1,?] out) <{k}> {{ {"; ".join(body)}; }}"""
    model = model_from_text(text.replace(";", "\n"))
    model.graph.node[0].name = "topk"
    return model


# --- NonMaxSuppression --------------------------------------------------------------------------


def test_nms_is_a_warning_with_its_parameters(lint_proto):
    [finding] = lint_proto(nms_model(), "GD012")
    assert finding.severity == Severity.WARNING
    assert finding.node == "NonMaxSuppression_0"
    assert finding.values == ("selected",)
    assert (
        "center_point_box=1, max_output_boxes_per_class=100, iou_threshold=0.45, score_threshold=0.25"
        in finding.message
    )
    assert "data-dependent" in finding.message
    assert "EfficientNMS_TRT" in finding.help and "nms=False" in finding.help


def test_nms_without_max_boxes_selects_nothing(lint_proto):
    """The spec's default for an absent max_output_boxes_per_class is 0: the node returns no box."""
    [finding] = lint_proto(nms_model("boxes, scores"), "GD012")
    assert "max_output_boxes_per_class=0, iou_threshold=0, score_threshold=none" in finding.message
    assert "selects no boxes at all" in finding.message


def test_nms_with_thresholds_computed_at_run_time(lint_proto):
    model = model_from_text(f"""{HEADER}
        g (float[1,200,4] boxes, float[1,80,200] scores, float[1] iou) => (int64[?,3] selected) <int64[1] k = {{5}}> {{
            selected = NonMaxSuppression(boxes, scores, k, iou)
        }}""")
    [finding] = lint_proto(model, "GD012")
    assert "iou_threshold=dynamic" in finding.message


def test_nms_in_a_subgraph_is_found(lint_proto):
    model = model_from_text(f"""{HEADER}
        g (bool c, float[1,200,4] boxes, float[1,80,200] scores) => (int64[?,3] out) {{
            out = If(c) <
                then_branch = t () => (int64[?,3] a) {{ a = NonMaxSuppression(boxes, scores) }},
                else_branch = e () => (int64[?,3] b) {{ b = NonMaxSuppression(boxes, scores) }}
            >
        }}""")
    findings = lint_proto(model, "GD012")
    assert len(findings) == 2
    assert {f.graph for f in findings} == {"If_0.then_branch", "If_0.else_branch"}


def test_onnxruntime_behaviour_the_rule_describes():
    """The docstring says ONNX Runtime drops a score equal to score_threshold (the spec keeps it) and keeps
    the lower index first among equal scores. Measured here, so the text stays true."""
    session = ort.InferenceSession(nms_model().SerializeToString(), providers=["CPUExecutionProvider"])
    boxes = np.zeros((1, 200, 4), np.float32)
    boxes[0, :, 0] = np.arange(200) * 10  # centre x: far apart, no overlap (center_point_box=1)
    boxes[0, :, 2:] = 1.0
    scores = np.zeros((1, 80, 200), np.float32)
    scores[0, 0, [3, 7]] = 0.25  # equal to score_threshold
    scores[0, 1, [9, 4]] = 0.9  # a tie
    [selected] = session.run(None, {"boxes": boxes, "scores": scores})
    assert selected.tolist() == [[0, 1, 4], [0, 1, 9]]


# --- TopK -----------------------------------------------------------------------------------------


def test_topk_next_to_the_output_is_info(lint_proto):
    [finding] = lint_proto(topk_model(["Relu"]), "GD012")
    assert finding.severity == Severity.INFO
    assert finding.node == "topk"
    assert "k=100" in finding.message and "graph output 'out'" in finding.message


def test_topk_deep_inside_the_network_is_not_flagged(lint_proto):
    """MoE routing and the like: more than max_hops nodes between the TopK and any output."""
    assert lint_proto(topk_model(["Relu", "Neg", "Relu", "Neg", "Relu"]), "GD012") == []


def test_max_hops_option(lint_proto):
    deep = topk_model(["Relu", "Neg", "Relu", "Neg", "Relu"])
    options = {"nms-in-graph": {"max_hops": 10}}
    assert len(lint_proto(deep, "GD012", rule_options=options)) == 1


def test_topk_feeding_nms_is_flagged(lint_proto):
    model = model_from_text(f"""{HEADER}
        g (float[1,200,4] boxes, float[1,1,200] scores) => (int64[?,3] selected) <int64[1] k = {{50}}> {{
            top, idx = TopK(scores, k)
            selected = NonMaxSuppression(boxes, top, k)
        }}""")
    findings = lint_proto(model, "GD012")
    assert {f.message_id for f in findings} == {"nms", "topk"}
    [topk] = [f for f in findings if f.message_id == "topk"]
    assert "NonMaxSuppression 'NonMaxSuppression_1'" in topk.message


def test_topk_with_k_computed_at_run_time(lint_proto):
    model = model_from_text(f"""{HEADER}
        g (float[1,8400] scores, int64[1] k) => (float[1,?] vals) {{
            vals, idx = TopK(scores, k)
        }}""")
    [finding] = lint_proto(model, "GD012")
    assert "k=dynamic" in finding.message and "constant k" in finding.message


def test_topk_over_tensorrt_limit(lint_proto):
    [finding] = lint_proto(topk_model([], k="int64[1] k = {5000}"), "GD012")
    assert "exceeds the 3840" in finding.message


# --- real exports ---------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_large", "yolo"])
def test_models_without_postprocessing_are_clean(name: str):
    from fixtures import torch_exports

    assert api.lint(torch_exports.path(name), select=["GD012"]).findings == []


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's, not ours
def test_torchvision_nms_export(tmp_path: Path):
    """A detector head as users write it: top-k candidates, then torchvision's NMS, exported with torch."""
    import torch
    import torchvision

    class Head(torch.nn.Module):
        def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            top, index = scores.topk(100)
            candidates = boxes[index]
            keep = torchvision.ops.nms(candidates, top, 0.5)
            return candidates[keep], top[keep]

    path = tmp_path / "head.onnx"
    with torch.no_grad():
        torch.onnx.export(Head(), (torch.rand(1000, 4), torch.rand(1000)), str(path), dynamo=False, opset_version=17)
    findings = api.lint(path, select=["GD012"]).findings
    assert [f.message_id for f in findings] == ["nms", "topk"]
    assert "iou_threshold=0.5" in findings[0].message
