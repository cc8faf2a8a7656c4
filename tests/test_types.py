"""Shape inference (graphdoctor.analysis.types): every graph typed, the model otherwise untouched, sequences
typed as sequences, and no second inference when nothing new lacks a type."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from fixtures.handmade import model_from_text
from graphdoctor.analysis.types import infer_types

HEADER = '<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>'


def _model(body: str, check: bool = True) -> ir.Model:
    return ir.serde.deserialize_model(model_from_text(HEADER + body, check=check))


def _outputs(model: ir.Model) -> dict[str, ir.Value]:
    graphs = [model.graph, *model.graph.subgraphs()]
    return {value.name: value for graph in graphs for node in graph for value in node.outputs}


def _with_big_weight(model: ir.Model) -> ir.Model:
    """Add a weight above the inline limit, read by nothing: it must survive inference as it was."""
    weight = ir.Value(name="big", const_value=ir.Tensor(np.arange(1024, dtype=np.float32).reshape(32, 32)))
    model.graph.register_initializer(weight)
    return model


def test_every_graph_is_typed_subgraphs_included():
    model = _model("""
        g (float[2, 3] x, bool c) => (float[2, 3] y) {
            r = Relu(x)
            y = If(c) <
                then_branch = t () => (float[2, 3] a) { a = Neg(r) },
                else_branch = e () => (float[2, 3] b) { b = Abs(r) }
            >
        }""")
    assert infer_types(model)
    values = _outputs(model)
    for name in ("r", "a", "b"):
        assert values[name].dtype == ir.DataType.FLOAT, name
        assert list(values[name].shape) == [2, 3], name


def test_inference_leaves_initializers_and_inputs_as_they_were():
    """Large weights are lent to inference as graph inputs; afterwards order, membership and bytes are back."""
    model = _with_big_weight(
        _model(
            """
        g (float[1, 32] x) => (float[1, 32] y) <float[32, 32] w = {1.0, 2.0}> {
            y = MatMul(x, w)
        }""",
            check=False,
        )
    )
    before = (list(model.graph.initializers), [v.name for v in model.graph.inputs])
    big = model.graph.initializers["big"].const_value
    assert infer_types(model)
    assert (list(model.graph.initializers), [v.name for v in model.graph.inputs]) == before
    assert model.graph.initializers["big"].const_value is big
    assert all(v.graph is model.graph and v.is_initializer() for v in model.graph.initializers.values())
    assert _outputs(model)["y"].dtype == ir.DataType.FLOAT


def test_sequences_are_typed_as_sequences():
    model = _model(
        """
        g (float[2] x) => (float[2] y) {
            s = SequenceConstruct(x, x)
            y = SequenceAt(s, zero)
            zero = Constant<value = int64 {0}>()
        }""",
        check=False,
    )
    assert infer_types(model)
    values = _outputs(model)
    assert isinstance(values["s"].type, ir.SequenceType)
    assert values["s"].type.elem_type.dtype == ir.DataType.FLOAT
    assert values["y"].dtype == ir.DataType.FLOAT


def test_a_model_inference_cannot_fully_type_is_inferred_once(monkeypatch: pytest.MonkeyPatch):
    """A contrib op leaves its output untyped: later calls must not re-run inference for it (fixes re-analyse
    after every change), but do once a rewrite adds a new untyped value."""
    model = _model(
        """
        g (float[2] x) => (y) {
            m = com.microsoft.FastGelu(x)
            y = Relu(m)
        }""",
        check=False,
    )
    calls = []
    real = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert infer_types(model) and infer_types(model)
    assert len(calls) == 1
    relu = next(node for node in model.graph if node.op_type == "Relu")
    added = ir.node("Neg", [relu.outputs[0]], outputs=[ir.Value(name="n")])
    model.graph.append(added)
    assert infer_types(model)
    assert len(calls) == 2
