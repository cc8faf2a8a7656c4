"""GD006 fix: BatchNormalization and Dropout put in inference mode, checked against eval-mode arithmetic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor import api
from tests.fix.conftest import fix_proto, run_ort

RULE = "GD006"
IR_FOR_OPSET = {6: 3, 13: 7, 15: 8, 17: 8}
BN_INPUTS = "float[2,3] x"
EPS = 1e-5
SCALE, BIAS, MEAN, VAR = [1.5, -0.5, 2.0], [0.1, 0.2, -0.3], [0.5, -1.0, 3.0], [4.0, 0.25, 9.0]
BN_INITS = (
    f"<float[3] s = {{{', '.join(map(str, SCALE))}}}, float[3] b = {{{', '.join(map(str, BIAS))}}},"
    f" float[3] m = {{{', '.join(map(str, MEAN))}}}, float[3] v = {{{', '.join(map(str, VAR))}}}>"
)
X = np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 7.0]], dtype=np.float32)


def graph(opset: int, inputs: str, outputs: str, body: str, inits: str = "", check: bool = True) -> onnx.ModelProto:
    header = f'<ir_version: {IR_FOR_OPSET[opset]}, opset_import: ["" : {opset}]>'
    return model_from_text(f"{header}\ng ({inputs}) => ({outputs}) {inits}\n{{\n{body}\n}}", check=check)


def eval_batch_norm(x: np.ndarray) -> np.ndarray:
    """What BatchNormalization computes in inference mode: the running statistics, not the batch's."""
    scale, bias, mean, var = (np.array(a, dtype=np.float32) for a in (SCALE, BIAS, MEAN, VAR))
    return (x - mean) / np.sqrt(var + np.float32(EPS)) * scale + bias


def op_types(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def remaining(proto: onnx.ModelProto, tmp_path) -> list[str]:
    """Message ids GD006 still reports on the model."""
    return [f.message_id for f in api.lint(save(proto, tmp_path / "fixed.onnx"), select=[RULE]).findings]


def fix_once(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The fixed model and its repair counts; asserts that fixing it again changes nothing."""
    fixed, fixes = fix_proto(proto, RULE, unsafe=True)
    again, second = fix_proto(fixed, RULE, unsafe=True)
    assert second == [] and again == fixed
    return fixed, {k: v for f in fixes for k, v in f.repairs.items()}


# --- BatchNormalization -------------------------------------------------------------------------------------


def test_batch_norm_training_mode_uses_the_running_statistics(tmp_path):
    model = graph(
        17,
        BN_INPUTS,
        "float[2,3] y",
        "[bn] y, rm, rv = BatchNormalization <training_mode = 1, epsilon = 1e-5> (x, s, b, m, v)",
        BN_INITS,
    )
    [training] = run_ort(model, {"x": X})
    assert not np.allclose(training, eval_batch_norm(X), atol=1e-3)  # batch statistics: a different answer
    fixed, repairs = fix_once(model)
    assert repairs == {"bn_training_mode": 1}
    [node] = fixed.graph.node
    assert [a.name for a in node.attribute] == ["epsilon"] and list(node.output) == ["y"]
    np.testing.assert_allclose(run_ort(fixed, {"x": X})[0], eval_batch_norm(X), rtol=1e-6, atol=1e-6)
    assert remaining(fixed, tmp_path) == []


def test_read_running_statistics_become_the_running_statistics_inputs(tmp_path):
    """Eval mode updates nothing: the updated mean is the running mean, as a graph output and as a value read."""
    model = graph(
        15,
        BN_INPUTS,
        "float[2,3] y, float[3] rm, float[3] twice",
        "[bn] y, rm, rv = BatchNormalization <training_mode = 1, epsilon = 1e-5> (x, s, b, m, v)\n"
        "[add] twice = Add(rv, rv)",
        BN_INITS,
    )
    fixed, _ = fix_once(model)
    assert sorted(op_types(fixed)) == ["Add", "BatchNormalization", "Identity"]
    assert [o.name for o in fixed.graph.output] == ["y", "rm", "twice"]
    y, rm, twice = run_ort(fixed, {"x": X})
    np.testing.assert_allclose(y, eval_batch_norm(X), rtol=1e-6, atol=1e-6)
    assert rm.tolist() == MEAN and twice.tolist() == [2 * v for v in VAR]
    assert remaining(fixed, tmp_path) == []


def test_batch_norm_training_outputs_before_opset_14(tmp_path):
    model = graph(
        13,
        BN_INPUTS,
        "float[2,3] y",
        "[bn] y, rm, rv, sm, sv = BatchNormalization <epsilon = 1e-5> (x, s, b, m, v)",
        BN_INITS,
    )
    fixed, repairs = fix_once(model)
    assert repairs == {"bn_training_outputs": 1}
    assert list(fixed.graph.node[0].output) == ["y"]
    np.testing.assert_allclose(run_ort(fixed, {"x": X})[0], eval_batch_norm(X), rtol=1e-6, atol=1e-6)
    assert remaining(fixed, tmp_path) == []


def test_read_saved_batch_statistics_are_left_alone(tmp_path):
    """Outputs 4-5 are the batch's own statistics: eval mode has no value for them, so no repair is offered."""
    model = graph(
        13,
        BN_INPUTS,
        "float[2,3] y, float[3] sm",
        "[bn] y, rm, rv, sm, sv = BatchNormalization (x, s, b, m, v)",
        BN_INITS,
    )
    [finding] = api.lint(save(model, tmp_path / "model.onnx"), select=[RULE]).findings
    assert finding.repair is None and "leaves 1 node(s) alone, e.g. 'bn'" in finding.help
    fixed, fixes = fix_proto(model, RULE, unsafe=True)
    assert fixes == [] and fixed.graph.node[0].output == model.graph.node[0].output


def test_batch_norm_is_test_before_opset_7(tmp_path):
    inputs = "float[2,3] x, float[3] s, float[3] b, float[3] m, float[3] v"  # IR 3: initializers are inputs too
    model = graph(6, inputs, "float[2,3] y", "[bn] y, rm, rv, sm, sv = BatchNormalization (x, s, b, m, v)")
    fixed, repairs = fix_once(model)
    assert repairs == {"bn_is_test": 1}
    [node] = fixed.graph.node
    assert list(node.output) == ["y"] and {a.name: a.i for a in node.attribute} == {"is_test": 1}
    assert remaining(fixed, tmp_path) == []


def test_many_batch_norms_in_one_finding_are_all_repaired(tmp_path):
    nodes = "\n".join(
        f"[bn{i}] t{i + 1}, rm{i}, rv{i} = BatchNormalization <training_mode = 1> (t{i}, s, b, m, v)" for i in range(12)
    )
    body = f"[start] t0 = Identity(x)\n{nodes}\n[end] y = Identity(t12)"
    model = graph(17, BN_INPUTS, "float[2,3] y", body, BN_INITS)
    fixed, repairs = fix_once(model)
    assert repairs == {"bn_training_mode": 1}  # one finding named all twelve
    assert all(len(n.output) == 1 and not n.attribute for n in fixed.graph.node)
    assert remaining(fixed, tmp_path) == []


# --- Dropout ------------------------------------------------------------------------------------------------


def dropout(mode_source: str, inputs: str = "float[2,3] x", outputs: str = "float[2,3] y", tail: str = ""):
    body = f"{mode_source}\n[ratio] r = Constant <value = float {{0.3}}> ()\n[drop] d, mask = Dropout (x, r, mode)"
    return graph(13, inputs, outputs, f"{body}\n[after] y = Relu(d)\n{tail}")


TRUE = "[mode_k] mode = Constant <value = bool {1}> ()"


def test_dropout_training_mode_is_removed(tmp_path):
    model = dropout(TRUE)
    fixed, repairs = fix_once(model)
    assert repairs == {"dropout_training_mode": 1}
    assert "Dropout" not in op_types(fixed)
    assert fixed.graph.node[-1].input == ["x"]  # Relu reads the Dropout's input
    assert run_ort(fixed, {"x": X})[0].tolist() == np.maximum(X, 0).tolist()
    assert remaining(fixed, tmp_path) == []


def test_dropout_runtime_mode_is_removed_and_the_mode_input_stays(tmp_path):
    model = dropout("", inputs="float[2,3] x, bool mode")
    fixed, repairs = fix_once(model)
    assert repairs == {"dropout_runtime_mode": 1}
    assert "Dropout" not in op_types(fixed) and [i.name for i in fixed.graph.input] == ["x", "mode"]
    on = run_ort(fixed, {"x": X, "mode": np.array(True)})[0]
    assert on.tolist() == np.maximum(X, 0).tolist()  # the caller can no longer switch dropout on
    assert remaining(fixed, tmp_path) == []


def test_read_mask_of_a_static_shape_becomes_a_constant_all_true(tmp_path):
    model = dropout(TRUE, outputs="float[2,3] y, bool[2,3] kept", tail="[keep] kept = Identity(mask)")
    fixed, _ = fix_once(model)
    assert "Dropout" not in op_types(fixed)
    y, kept = run_ort(fixed, {"x": X})
    assert y.tolist() == np.maximum(X, 0).tolist() and kept.dtype == bool and kept.shape == (2, 3) and kept.all()
    assert remaining(fixed, tmp_path) == []


def test_read_mask_of_a_dynamic_shape_keeps_the_dropout_in_inference_mode(tmp_path):
    model = dropout(TRUE, inputs="float[N,3] x", outputs="float[N,3] y, bool[N,3] mask")
    fixed, repairs = fix_once(model)
    assert repairs == {"dropout_training_mode": 1}
    [drop] = [n for n in fixed.graph.node if n.op_type == "Dropout"]
    assert list(drop.input) == ["x", "r"]  # training_mode dropped: False
    first, second = run_ort(fixed, {"x": X}), run_ort(fixed, {"x": X})
    assert first[0].tolist() == second[0].tolist() == np.maximum(X, 0).tolist() and first[1].all()
    assert remaining(fixed, tmp_path) == []


def test_dropout_feeding_a_graph_output_keeps_the_output_name(tmp_path):
    model = graph(13, "float[2,3] x", "float[2,3] y", f"{TRUE}\n[drop] y = Dropout (x, , mode)")
    fixed, _ = fix_once(model)
    assert sorted(op_types(fixed)) == ["Constant", "Identity"] and [o.name for o in fixed.graph.output] == ["y"]
    assert run_ort(fixed, {"x": X})[0].tolist() == X.tolist()


def test_dropout_in_a_subgraph(tmp_path):
    model = graph(
        13,
        "bool c, float[2,3] x",
        "float[2,3] y",
        f"{TRUE}\n"
        "[cond] y = If (c) <then_branch = then () => (float[2,3] a) { [drop] a = Dropout (x, , mode) },"
        " else_branch = other () => (float[2,3] b) { [keep] b = Identity(x) }>",
    )
    fixed, repairs = fix_once(model)
    assert repairs == {"dropout_training_mode": 1}
    then_branch = fixed.graph.node[-1].attribute[0].g
    assert [n.op_type for n in then_branch.node] == ["Identity"] and then_branch.output[0].name == "a"
    assert run_ort(fixed, {"c": np.array(True), "x": X})[0].tolist() == X.tolist()
    assert remaining(fixed, tmp_path) == []


def test_dropout_is_test_before_opset_7(tmp_path):
    model = graph(6, "float[2,3] x", "float[2,3] y", "[drop] d = Dropout <ratio = 0.25> (x)\n[after] y = Relu(d)")
    fixed, repairs = fix_once(model)
    assert repairs == {"dropout_is_test": 1} and op_types(fixed) == ["Relu"]
    assert remaining(fixed, tmp_path) == []


def test_dropout_is_test_with_a_read_mask_is_left_alone(tmp_path):
    """Opset 6 leaves the mask undefined in inference mode: nothing to replace it with."""
    model = graph(6, "float[2,3] x", "float[2,3] y, float[2,3] mask", "[drop] y, mask = Dropout (x)")
    [finding] = api.lint(save(model, tmp_path / "model.onnx"), select=[RULE]).findings
    assert finding.repair is None and "its mask is read" in finding.help
    assert fix_proto(model, RULE, unsafe=True)[1] == []


def test_nothing_changes_without_unsafe_fixes():
    model = dropout(TRUE)
    fixed, fixes = fix_proto(model, RULE)
    assert fixes == [] and op_types(fixed) == op_types(model)


# --- the real export ----------------------------------------------------------------------------------------


@pytest.mark.torch
def test_training_export_runs_as_the_eval_mode_torch_model(tmp_path):
    """The TrainingMode.TRAINING export, fixed, computes what the same torch module computes in eval mode
    (the module rebuilt from the export's own weights), and runs deterministically."""
    import torch

    from fixtures import torch_exports

    path = torch_exports.path("training_mode")
    proto = onnx.load(path)
    feeds = torch_exports.sample_inputs(path, seed=0)
    fixed, repairs = fix_once(proto)
    assert repairs == {"bn_training_mode": 2, "dropout_training_mode": 1}
    assert op_types(fixed).count("Dropout") == 0
    assert all(len(n.output) == 1 for n in fixed.graph.node if n.op_type == "BatchNormalization")
    [first], [second] = run_ort(fixed, feeds), run_ort(fixed, feeds)
    assert first.tobytes() == second.tobytes()

    net = torch_exports.training_mode_net()
    weights = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert unexpected == [] and all(name.endswith("num_batches_tracked") for name in missing)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(feeds["input"])).numpy()
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-5)
    assert remaining(fixed, tmp_path) == []
