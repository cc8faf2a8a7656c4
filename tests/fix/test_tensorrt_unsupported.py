"""GD013 fix: inputs TensorRT's importer needs as constants, computed from constants, folded bit-exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor import api
from tests.fix.conftest import assert_bit_exact, fix_proto

RULE = "GD013"
HEADER = '<ir_version: 8, opset_import: ["" : 18]>'
X = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)


def graph(body: str, inits: str = "") -> onnx.ModelProto:
    return model_from_text(f"{HEADER}\ng (float[2,3,4,5] x) => (float[2,3,1,1] y) {inits}\n{{\n{body}\n}}")


# torch's unoptimized dynamo export: the axes of a ReduceMean are a Constant reshaped at run time
RESHAPED_AXES = graph(
    """[axes_list] a = Constant <value = int64[2] {-1, -2}> ()
    [shape] s = Constant <value = int64[1] {2}> ()
    [reshape] axes = Reshape(a, s)
    [mean] y = ReduceMean <keepdims = 1> (x, axes)""",
)
# the same axes from a graph input: nothing to fold
INPUT_AXES = model_from_text(
    f"{HEADER}\ng (float[2,3,4,5] x, int64[2] axes) => (float[2,3,1,1] y)\n{{\n"
    "[mean] y = ReduceMean <keepdims = 1> (x, axes)\n}"
)


def findings(proto: onnx.ModelProto, tmp_path, target: str = "tensorrt-10") -> list:
    return api.lint(save(proto, tmp_path / "model.onnx"), select=[RULE], target=target).findings


def test_reshaped_axes_are_folded_bit_exactly(tmp_path):
    [before] = findings(RESHAPED_AXES, tmp_path)
    assert (before.message_id, before.node, before.fix.value) == ("foldable", "mean", "safe")
    assert "{-1, -2}" in before.help
    fixed, fixes = fix_proto(RESHAPED_AXES, RULE)
    assert [dict(f.repairs) for f in fixes] == [{"foldable": 1}]
    assert [node.op_type for node in fixed.graph.node] == ["ReduceMean"]  # Constant and Reshape went
    assert_bit_exact(RESHAPED_AXES, fixed, {"x": X})
    assert findings(fixed, tmp_path) == []


# torchvision's detection heads as the TorchScript exporter writes them: a Slice in an If branch whose axes
# are an Unsqueeze of a Constant (TensorRT before 10.3 refuses axes that are not constants)
SLICE_IN_BRANCH = model_from_text(
    f"""{HEADER.replace("18", "17")}
g (float[4,6] x, bool flag) => (float[N,M] y) {{
  [branch] y = If(flag) <
    then_branch = then_g () => (float[4,6] t) {{ [copy] t = Identity(x) }},
    else_branch = else_g () => (float[N,M] e) {{
      [zero] z = Constant <value = int64 {{0}}> ()
      [one] one = Constant <value = int64[1] {{1}}> ()
      [three] three = Constant <value = int64[1] {{3}}> ()
      [first] first = Constant <value = int64[1] {{0}}> ()
      [axes] axes = Unsqueeze(z, first)
      [slice] e = Slice(x, one, three, axes)
    }}
  >
}}"""
)


def test_axes_in_a_subgraph_become_a_constant_node(tmp_path):
    [before] = findings(SLICE_IN_BRANCH, tmp_path, target="tensorrt-8.6")
    assert (before.message_id, before.graph, before.node) == ("foldable", "branch.else_branch", "slice")
    fixed, fixes = fix_proto(SLICE_IN_BRANCH, RULE, target="tensorrt-8.6")
    assert [dict(f.repairs) for f in fixes] == [{"foldable": 1}]
    for flag in (True, False):
        assert_bit_exact(SLICE_IN_BRANCH, fixed, {"x": X.reshape(-1)[:24].reshape(4, 6), "flag": np.array(flag)})
    assert findings(fixed, tmp_path, target="tensorrt-8.6") == []


def test_input_axes_cannot_be_folded(tmp_path):
    [finding] = findings(INPUT_AXES, tmp_path)
    assert (finding.message_id, finding.fix) == ("not-constant", None)
    assert "a graph input" in finding.message
    assert fix_proto(INPUT_AXES, RULE)[1] == []


@pytest.mark.torch
def test_unoptimized_dynamo_export_builds_after_fix(tmp_path):
    """torch.onnx.export(..., optimize=False): every ReduceMean's axes come from a Reshape; after `fix`,
    verified against the original, TensorRT 10's importer finds them as initializers."""
    from fixtures import torch_exports

    source = torch_exports.path("dynamo_cnn_unoptimized")
    refused = [f for f in api.lint(source, select=[RULE]).findings if f.message_id == "foldable"]
    assert len(refused) >= 4 and {f.node.split("_")[1] for f in refused} == {"mean"}
    result = api.fix(source, tmp_path / "fixed.onnx")
    assert result.written and result.passed
    assert api.lint(tmp_path / "fixed.onnx", select=[RULE]).findings == []
