"""GD011 dynamic-shapes: which inputs are dynamic, and the trtexec profile suggested for them."""

from __future__ import annotations

import shlex

import onnx
import onnx.helper
import pytest

from fixtures.handmade import model_from_text
from graphdoctor.rule import Severity

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def graph(signature: str, body: str = "") -> onnx.ModelProto:
    """A model with the given input/output signature; `body` defaults to an Identity of the first input."""
    return model_from_text(f"{HEADER}\ng {signature} {{ {body} }}", check=False)


def trtexec_args(finding) -> list[str]:
    """The suggested command as the shell splits it: proves the quoting is right."""
    return shlex.split(finding.data["command"])


YOLO = graph("(float[batch,3,height,width] images) => (float[batch,84,anchors] out)", "out = Identity(images)")
BERT = graph(
    "(int64[batch_size,sequence_length] input_ids, int64[batch_size,sequence_length] attention_mask)"
    " => (int64[batch_size,sequence_length] out)",
    "out = Add(input_ids, attention_mask)",
)


# --- no finding ---------------------------------------------------------------------------------


def test_static_inputs_give_no_finding(lint_proto):
    model = graph("(float[1,3,224,224] x) => (float[1,3,224,224] y)", "y = Identity(x)")
    assert lint_proto(model, "GD011") == []


def test_initializer_listed_as_input_is_not_an_input(lint_proto):
    """Old exporters list weights among the graph inputs; a weight with a symbolic dim is not a dynamic input."""
    model = graph("(float[1,4] x) => (float[1,4] y)", "y = Add(x, w)")
    weight = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [1, 4], [1.0, 2.0, 3.0, 4.0])
    model.graph.initializer.append(weight)
    model.graph.input.append(onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, ["n", 4]))
    assert lint_proto(model, "GD011") == []


# --- suggestions --------------------------------------------------------------------------------


def test_yolo_input_gets_batch_range_and_fixed_image_size(lint_proto):
    [finding] = lint_proto(YOLO, "GD011")
    assert finding.severity == Severity.INFO
    assert finding.values == ("images",)
    assert "'images' float32[batch,3,height,width]" in finding.message
    assert trtexec_args(finding)[2:] == [
        "--minShapes=images:1x3x640x640",
        "--optShapes=images:8x3x640x640",
        "--maxShapes=images:16x3x640x640",
    ]
    assert "guessed" in finding.help  # the values are suggestions, and the finding says so


def test_command_names_the_model_file(lint_proto, tmp_path):
    [finding] = lint_proto(YOLO, "GD011", name="my model.onnx")
    args = trtexec_args(finding)
    assert args[:2] == ["trtexec", f"--onnx={tmp_path / 'my model.onnx'}"]
    assert finding.data["command"] in finding.help


def test_inputs_sharing_symbolic_dims_get_the_same_values(lint_proto):
    [finding] = lint_proto(BERT, "GD011")
    assert finding.values == ("input_ids", "attention_mask")
    assert trtexec_args(finding)[2:] == [
        "--minShapes=input_ids:1x1,attention_mask:1x1",
        "--optShapes=input_ids:8x128,attention_mask:8x128",
        "--maxShapes=input_ids:16x512,attention_mask:16x512",
    ]
    assert "batch_size 1/8/16; sequence_length 1/128/512" in finding.help


def test_unnamed_dims_are_guessed_from_position_and_dtype(lint_proto):
    """dim 0 is the batch; dim 1 of 2-D integer ids is the sequence; dynamo-style names (s0) carry no meaning."""
    model = graph("(int64[s0,s1] ids, float[?,3,?,?] img) => (int64[s0,s1] out)", "out = Identity(ids)")
    [finding] = lint_proto(model, "GD011")
    assert trtexec_args(finding)[2:] == [
        "--minShapes=ids:1x1,img:1x3x640x640",
        "--optShapes=ids:8x128,img:8x3x640x640",
        "--maxShapes=ids:16x512,img:16x3x640x640",
    ]


def test_static_image_side_sets_the_dynamic_one(lint_proto):
    model = graph("(float[N,3,?,512] x) => (float[N,3,?,512] y)", "y = Identity(x)")
    [finding] = lint_proto(model, "GD011")
    assert trtexec_args(finding)[2] == "--minShapes=x:1x3x512x512"


def test_nhwc_image_dims(lint_proto):
    model = graph("(float[N,?,?,3] x) => (float[N,?,?,3] y)", "y = Identity(x)")
    [finding] = lint_proto(model, "GD011")
    assert trtexec_args(finding)[4] == "--maxShapes=x:16x640x640x3"


def test_export_size_recorded_by_ultralytics_is_used(lint_proto):
    model = graph("(float[batch,3,height,width] images) => (float[batch,3,height,width] y)", "y = Identity(images)")
    onnx.helper.set_model_props(model, {"imgsz": "[480, 800]"})
    [finding] = lint_proto(model, "GD011")
    assert trtexec_args(finding)[3] == "--optShapes=images:8x3x480x800"


def test_dim_without_a_guess_is_set_to_one_and_said_so(lint_proto):
    model = graph("(float[N,q,7] feats) => (float[N,q,7] y)", "y = Identity(feats)")
    [finding] = lint_proto(model, "GD011")
    assert trtexec_args(finding)[2:] == [
        "--minShapes=feats:1x1x7",
        "--optShapes=feats:8x1x7",
        "--maxShapes=feats:16x1x7",
    ]
    assert "no guess for q" in finding.message


def test_options_change_the_suggested_values(lint_proto):
    options = {"dynamic-shapes": {"max_batch": 64, "opt_batch": 1, "image_size": 320}}
    [finding] = lint_proto(YOLO, "GD011", rule_options=options)
    assert trtexec_args(finding)[3:] == ["--optShapes=images:1x3x320x320", "--maxShapes=images:64x3x320x320"]


# --- names trtexec needs quoted ------------------------------------------------------------------


def test_name_with_colon_is_quoted_for_trtexec_and_the_shell(lint_proto):
    """trtexec reads `'input:0':1x3x..`; the shell must pass those single quotes through."""
    model = graph('(float[N,3,224,224] "input:0") => (float[N,3,224,224] y)', 'y = Identity("input:0")')
    [finding] = lint_proto(model, "GD011")
    assert trtexec_args(finding)[2] == "--minShapes='input:0':1x3x224x224"
    assert "\"--minShapes='input:0':1x3x224x224\"" in finding.data["command"]


def test_name_trtexec_cannot_take_is_reported(lint_proto):
    """trtexec splits shape lists on ',' before anything else: such a name cannot be given at all."""
    model = graph('(float[N,4] "a,b") => (float[N,4] y)', 'y = Identity("a,b")')
    [finding] = lint_proto(model, "GD011")
    assert "trtexec cannot name input(s) 'a,b'" in finding.message


# --- unknown rank ---------------------------------------------------------------------------------


def test_input_of_unknown_rank_is_a_warning_and_left_out_of_the_command(lint_proto):
    model = graph("(float[] blob, float[N,4] x) => (float[N,4] y)", "y = Identity(x)")
    findings = lint_proto(model, "GD011")
    by_id = {f.message_id: f for f in findings}
    assert set(by_id) == {"unknown_rank", "dynamic"}
    assert by_id["unknown_rank"].severity == Severity.WARNING
    assert by_id["unknown_rank"].values == ("blob",)
    assert "blob" not in by_id["dynamic"].data["command"]
    assert "1 input(s) of unknown rank left out" in by_id["dynamic"].message


# --- real exports ---------------------------------------------------------------------------------


@pytest.mark.torch
def test_ultralytics_yolo_export():
    from fixtures import torch_exports
    from graphdoctor import api

    path = torch_exports.path("yolo")
    [finding] = api.lint(path, select=["GD011"]).findings
    assert finding.values == ("images",)
    assert trtexec_args(finding)[1] == f"--onnx={path}"
    assert trtexec_args(finding)[2].startswith("--minShapes=images:1x3x")


@pytest.mark.torch
@pytest.mark.parametrize("name", ["bert_opset14", "bert_opset17"])
def test_bert_export_shares_batch_and_sequence(name: str):
    from fixtures import torch_exports
    from graphdoctor import api

    [finding] = api.lint(torch_exports.path(name), select=["GD011"]).findings
    assert finding.values == ("input_ids", "attention_mask")
    assert trtexec_args(finding)[2:] == [
        "--minShapes=input_ids:1x1,attention_mask:1x1",
        "--optShapes=input_ids:8x128,attention_mask:8x128",
        "--maxShapes=input_ids:16x512,attention_mask:16x512",
    ]
