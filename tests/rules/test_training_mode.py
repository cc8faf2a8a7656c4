"""GD006 training-mode: BatchNormalization and Dropout in training mode, in every opset era, and real exports."""

from __future__ import annotations

import onnx
import pytest

from fixtures.handmade import model_from_text
from graphdoctor.rule import Severity

RULE = "GD006"
IR_FOR_OPSET = {6: 3, 10: 5, 11: 6, 13: 7, 17: 8}
BN_INPUTS = "float[2,3] x, float[3] s, float[3] b, float[3] m, float[3] v"


def graph(opset: int, inputs: str, outputs: str, body: str, inits: str = "") -> onnx.ModelProto:
    header = f'<ir_version: {IR_FOR_OPSET[opset]}, opset_import: ["" : {opset}]>'
    return model_from_text(f"{header}\ng ({inputs}) => ({outputs}) {inits}\n{{\n{body}\n}}")


def batch_norm(opset: int, node: str) -> onnx.ModelProto:
    return graph(opset, BN_INPUTS, "float[2,3] y", node)


def dropout(mode_source: str, inputs: str = "float[2,3] x", opset: int = 13, inits: str = "") -> onnx.ModelProto:
    """A Dropout whose training_mode is `mode`, produced by `mode_source` (a node, or nothing for an input)."""
    body = f"{mode_source}\n[ratio] r = Constant <value = float {{0.3}}> ()\n[drop] y = Dropout (x, r, mode)"
    return graph(opset, inputs, "float[2,3] y", body, inits)


VALID = {
    "BatchNormalization, opset 17, inference (default)": batch_norm(17, "[bn] y = BatchNormalization (x, s, b, m, v)"),
    "BatchNormalization, opset 17, training_mode=0": batch_norm(
        17, "[bn] y = BatchNormalization <training_mode = 0> (x, s, b, m, v)"
    ),
    "BatchNormalization, opset 13, one output": batch_norm(13, "[bn] y = BatchNormalization (x, s, b, m, v)"),
    "BatchNormalization, opset 6, is_test=1": batch_norm(
        6, "[bn] y = BatchNormalization <is_test = 1> (x, s, b, m, v)"
    ),
    "Dropout, opset 13, training_mode constant False": dropout("[mode_k] mode = Constant <value = bool {0}> ()"),
    "Dropout, opset 13, training_mode initializer False": dropout("", inits="<bool mode = {0}>", inputs="float[2,3] x"),
    "Dropout, opset 13, no training_mode input": graph(13, "float[2,3] x", "float[2,3] y", "[drop] y = Dropout (x)"),
    "Dropout, opset 10, ratio and mask: no training mode in this opset": graph(
        10, "float[2,3] x", "float[2,3] y", "[drop] y, mask = Dropout <ratio = 0.3> (x)"
    ),
    "Dropout, opset 6, is_test=1": graph(6, "float[2,3] x", "float[2,3] y", "[drop] y = Dropout <is_test = 1> (x)"),
}


@pytest.mark.parametrize("case", VALID)
def test_valid(lint_proto, case):
    assert lint_proto(VALID[case], RULE) == []


def test_batch_norm_training_mode_attribute(lint_proto):
    model = batch_norm(17, "[bn] y, rm, rv = BatchNormalization <training_mode = 1> (x, s, b, m, v)")
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("bn", Severity.ERROR, "bn_training_mode")
    assert "training_mode=1" in finding.message and "depend on the batch" in finding.message
    assert "model.eval()" in finding.help and "TrainingMode.EVAL" in finding.help and "unsafe" in finding.help


def test_batch_norm_training_outputs_before_opset_14(lint_proto):
    model = batch_norm(13, "[bn] y, rm, rv, sm, sv = BatchNormalization (x, s, b, m, v)")
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("bn", Severity.ERROR, "bn_training_outputs")
    assert (finding.data["count"], finding.data["opset"]) == (5, 13)


def test_batch_norm_is_test_defaults_to_training_before_opset_7(lint_proto):
    [finding] = lint_proto(batch_norm(6, "[bn] y = BatchNormalization (x, s, b, m, v)"), RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("bn", Severity.ERROR, "bn_is_test")
    assert "is_test=0 (the default) in opset 6" in finding.message


def test_many_batch_norms_are_one_finding_naming_the_first(lint_proto):
    nodes = "\n".join(
        f"[bn{i}] t{i + 1}, rm{i}, rv{i} = BatchNormalization <training_mode = 1> (t{i}, s, b, m, v)" for i in range(12)
    )
    model = batch_norm(17, f"[start] t0 = Identity(x)\n{nodes}\n[end] y = Identity(t12)")
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.message_id) == ("bn0", "bn_training_mode")
    assert "'bn0' and 11 more like it" in finding.message
    assert finding.data["nodes"] == [f"bn{i}" for i in range(12)]


def test_ten_batch_norms_are_listed_one_by_one(lint_proto):
    nodes = "\n".join(
        f"[bn{i}] t{i + 1}, rm{i}, rv{i} = BatchNormalization <training_mode = 1> (t{i}, s, b, m, v)" for i in range(10)
    )
    model = batch_norm(17, f"[start] t0 = Identity(x)\n{nodes}\n[end] y = Identity(t10)")
    assert [f.node for f in lint_proto(model, RULE)] == [f"bn{i}" for i in range(10)]


def test_dropout_training_mode_constant_true(lint_proto):
    [finding] = lint_proto(dropout("[mode_k] mode = Constant <value = bool {1}> ()"), RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("drop", Severity.ERROR, "dropout_training_mode")
    assert (finding.data["mode"], finding.data["ratio"]) == ("mode", "30%")
    assert "TensorRT refuses to parse it" in finding.message


def test_dropout_training_mode_initializer_true(lint_proto):
    [finding] = lint_proto(dropout("", inits="<bool mode = {1}>"), RULE)
    assert (finding.node, finding.message_id) == ("drop", "dropout_training_mode")


def test_dropout_training_mode_from_a_graph_input_is_a_warning(lint_proto):
    [finding] = lint_proto(dropout("", inputs="float[2,3] x, bool mode"), RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("drop", Severity.WARNING, "dropout_runtime_mode")
    assert finding.data["source"] == "graph input 'mode'"


def test_dropout_training_mode_computed_at_run_time_is_a_warning(lint_proto):
    [finding] = lint_proto(dropout("[flip] mode = Not(train)", inputs="float[2,3] x, bool train"), RULE)
    assert (finding.severity, finding.message_id) == (Severity.WARNING, "dropout_runtime_mode")
    assert finding.data["source"] == "'mode', computed by Not 'flip'"


def test_dropout_is_test_zero_before_opset_7(lint_proto):
    model = graph(6, "float[2,3] x", "float[2,3] y", "[drop] y = Dropout <is_test = 0, ratio = 0.25> (x)")
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("drop", Severity.ERROR, "dropout_is_test")
    assert finding.data["ratio"] == "25%" and finding.data["default"] == ""


def test_dropout_in_a_subgraph(lint_proto):
    model = graph(
        13,
        "bool c, float[2,3] x",
        "float[2,3] y",
        "[mode_k] mode = Constant <value = bool {1}> ()\n"
        "[cond] y = If (c) <then_branch = then () => (float[2,3] a) { [drop] a = Dropout (x, , mode) },"
        " else_branch = other () => (float[2,3] b) { [keep] b = Identity(x) }>",
    )
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.graph, finding.message_id) == ("drop", "cond.then_branch", "dropout_training_mode")
    assert finding.data["ratio"] == "50%"  # no ratio input: the default


@pytest.mark.torch
def test_training_mode_export_names_every_batch_norm_and_dropout():
    """The real TorchScript export with TrainingMode.TRAINING: each BatchNormalization and the Dropout, as errors."""
    from fixtures import torch_exports
    from graphdoctor import api

    path = torch_exports.path("training_mode")
    proto = onnx.load(path, load_external_data=False)
    expected = {n.name for n in proto.graph.node if n.op_type in ("BatchNormalization", "Dropout")}
    findings = api.lint(path, select=[RULE]).findings
    assert {f.node for f in findings} == expected
    assert {f.severity for f in findings} == {Severity.ERROR}
    assert {f.message_id for f in findings} == {"bn_training_mode", "dropout_training_mode"}


@pytest.mark.torch
@pytest.mark.parametrize(
    "name", ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "bert_opset14", "bert_opset17", "yolo"]
)
def test_eval_exports_are_clean(name):
    from fixtures import torch_exports
    from graphdoctor import api

    assert api.lint(torch_exports.path(name), select=[RULE]).findings == []
