"""GD015 identity-nodes: Identity nodes removed, readers rewired, graph interfaces unchanged."""

from __future__ import annotations

import numpy as np
import onnx

from fixtures.handmade import model_from_text, save
from graphdoctor import api
from tests.fix.conftest import assert_bit_exact, fix_proto

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _weighted(text: str) -> onnx.ModelProto:
    proto = model_from_text(HEADER + text, check=False)
    weight = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    return proto


def test_identity_of_a_weight_goes_and_outputs_stay_bit_exact(tmp_path):
    """TorchScript's de-duplicated weights: MatMul reads Identity(w); the output Identity's name moves to MatMul.
    Without prepacking both runs use one kernel."""
    proto = _weighted("g (float[2,8] x) => (float[2,8] y) { a = Identity(w)  h = MatMul(x, a)  y = Identity(h) }")
    [finding] = api.lint(save(proto, tmp_path / "m.onnx"), select=["GD015"]).findings
    assert "2 Identity node(s)" in finding.message and finding.fix is not None
    fixed, fixes = fix_proto(proto, "GD015")
    assert [n.op_type for n in fixed.graph.node] == ["MatMul"]
    assert [o.name for o in fixed.graph.output] == ["y"] and list(fixed.graph.node[0].input) == ["x", "w"]
    assert fixes[0].nodes_removed == 2
    assert_bit_exact(proto, fixed, {"x": np.ones((2, 8), np.float32)})
    assert not api.lint(save(fixed, tmp_path / "f.onnx"), select=["GD015"]).findings
    assert fix_proto(fixed, "GD015")[1] == []


def test_an_output_named_after_an_input_keeps_its_identity(tmp_path):
    proto = model_from_text(HEADER + "g (float[2] x) => (float[2] y) { y = Identity(x) }")
    assert not api.lint(save(proto, tmp_path / "m.onnx"), select=["GD015"]).findings


def test_a_subgraph_output_read_from_outside_keeps_its_identity(tmp_path):
    proto = model_from_text(
        HEADER
        + """g (bool c, float[2] x) => (float[2] y) {
      r = Relu(x)
      y = If(c) <then_branch = t () => (float[2] o) { o = Identity(r) },
                 else_branch = e () => (float[2] o2) { o2 = Neg(r) }>
    }"""
    )
    assert not api.lint(save(proto, tmp_path / "m.onnx"), select=["GD015"]).findings
