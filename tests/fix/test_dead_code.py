"""GD009 fixes: unused initializers, dead nodes and uncalled functions removed (safe); unused inputs and
initializers listed as inputs dropped from the signature (unsafe). Bit-exact, lint-clean afterwards, idempotent."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from fixtures.handmade import save
from graphdoctor import api
from graphdoctor.rule import Finding
from tests.fix.conftest import assert_bit_exact, fix_proto, run_ort
from tests.rules.test_dead_code import LOCAL_FUNCTIONS, VALID, graph

RULE = "GD009"
X = {"x": np.array([1.5, -2.0, 0.0, 3.25], np.float32)}
BRANCH = {"c": np.array(True), **X}


def fix(proto: onnx.ModelProto, unsafe: bool = False):
    """fix_proto on a copy: ir tensors wrap the proto's, so the original stays as it was for comparison."""
    return fix_proto(copy.deepcopy(proto), RULE, unsafe=unsafe)


def fixed(proto: onnx.ModelProto, feeds=X, unsafe: bool = False):
    """Fix, compare outputs bit for bit (both branches when there is a condition), check a second fix does
    nothing, and return the result with the repairs made."""
    result, fixes = fix(proto, unsafe)
    for flag in (True, False) if "c" in feeds else (None,):
        assert_bit_exact(proto, result, feeds if flag is None else {**feeds, "c": np.array(flag)})
    assert fix(result, unsafe)[1] == [], "not idempotent"
    return result, dict(fixes[0].repairs) if fixes else {}, fixes


def lint(proto: onnx.ModelProto, tmp_path: Path) -> list[Finding]:
    return api.lint(save(proto, tmp_path / "fixed.onnx"), select=[RULE]).findings


def names(nodes) -> list[str]:
    return [n.name for n in nodes]


def initializers(proto: onnx.ModelProto) -> list[str]:
    return [t.name for t in proto.graph.initializer]


def branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


# --- safe: initializers, nodes, functions --------------------------------------------------------------------


@pytest.mark.parametrize("case", VALID)
def test_nothing_to_remove(case):
    """An initializer read only inside an If branch, among others, stays alive."""
    assert fix(VALID[case], unsafe=True)[1] == []


def test_unused_initializer_is_removed(tmp_path):
    proto = graph("float[4] x", "float[4] y", "[neg] y = Neg(x)", "<float[4] w = {1, 2, 3, 4}, float[2] v = {1, 2}>")
    result, repairs, [fixes] = fixed(proto)
    assert (initializers(result), repairs, fixes.bytes_saved) == ([], {"unused_initializer": 2}, 24)
    assert lint(result, tmp_path) == []


def test_many_unused_initializers_go_in_one_repair():
    inits = ", ".join(f"float[{i + 1}] w{i} = {{{', '.join(['1.0'] * (i + 1))}}}" for i in range(11))
    result, repairs, _ = fixed(
        graph("float[4] x", "float[4] y", "[neg] y = Neg(x)", f"<{inits}, float[4] k = {{1, 2, 3, 4}}>")
    )
    assert (initializers(result), repairs) == ([], {"unused_initializers": 1})


def test_dead_chain_and_then_the_weights_only_it_read(tmp_path):
    body = (
        "[k] c = Constant <value = float[4] {1, 2, 3, 4}> ()\n[add] t = Add(x, c)\n[mul] u = Mul(t, w)\n"
        "[relu] unused = Relu(u)\n[neg] y = Neg(x)"
    )
    proto = graph("float[4] x", "float[4] y", body, "<float[4] w = {1, 2, 3, 4}>")
    result, repairs, [fixes] = fixed(proto)
    assert (names(result.graph.node), initializers(result)) == (["neg"], [])
    assert repairs == {"dead_nodes": 1, "unused_initializer": 1}  # w dies with the chain: removed the next round
    assert (fixes.nodes_removed, fixes.bytes_saved) == (4, 32)
    assert lint(result, tmp_path) == []


def test_weights_shared_with_live_nodes_stay():
    body = "[dead] unused = Mul(x, w)\n[live] y = Add(x, w)"
    result, repairs, _ = fixed(graph("float[4] x", "float[4] y", body, "<float[4] w = {1, 2, 3, 4}>"))
    assert (names(result.graph.node), initializers(result), repairs) == (["live"], ["w"], {"dead_nodes": 1})


def test_many_dead_chains_go_in_one_repair():
    body = "\n".join(f"[dead{i}] t{i} = Abs(x)" for i in range(11)) + "\n[u] s = Neg(t0)\n[live] y = Neg(x)"
    result, repairs, _ = fixed(graph("float[4] x", "float[4] y", body))
    assert (names(result.graph.node), repairs) == (["live"], {"dead_nodes_many": 1})


def test_dead_node_in_a_subgraph():
    model = graph(
        "bool c, float[4] x",
        "float[4] y",
        "[cond] y = If (c) <then_branch = then () => (float[4] a) { [inner_dead] d = Abs(x) [keep] a = Neg(x) },"
        " else_branch = other () => (float[4] b) { [other] b = Identity(x) }>",
    )
    result, repairs, _ = fixed(model, BRANCH)
    assert names(branch(result.graph.node[0], "then_branch").node) == ["keep"]
    assert repairs == {"dead_nodes": 1}


def test_dead_if_goes_with_its_branches_and_frees_what_they_read(tmp_path):
    """The If's branches captured 'w' and 'x': once the If goes, 'w' is unused and goes too; the condition
    input 'c' stays (dropping an input is unsafe) until asked."""
    model = graph(
        "bool c, float[4] x",
        "float[4] y",
        "[cond] unused = If (c) <then_branch = then () => (float[4] a) { [add] a = Add(x, w) },"
        " else_branch = other () => (float[4] b) { [other] b = Identity(x) }>\n[live] y = Neg(x)",
        "<float[4] w = {1, 2, 3, 4}>",
    )
    result, repairs, _ = fixed(model, BRANCH)
    assert (names(result.graph.node), initializers(result)) == (["live"], [])
    assert repairs == {"dead_nodes": 1, "unused_initializer": 1}
    [left] = lint(result, tmp_path)
    assert (left.message_id, left.values) == ("unused_input", ("c",))
    result, repairs, _ = fixed(model, BRANCH, unsafe=True)
    assert [i.name for i in result.graph.input] == ["x"]
    assert repairs == {"dead_nodes": 1, "unused_initializer": 1, "unused_input": 1}
    assert lint(result, tmp_path) == []


def test_dead_node_reading_a_capture_of_a_dead_if_goes_in_a_later_round():
    """'t' is read only inside the dead If's branch: the two are separate chains, and the If goes first."""
    model = graph(
        "bool c, float[4] x",
        "float[4] y",
        "[abs] t = Abs(x)\n[cond] unused = If (c) <then_branch = then () => (float[4] a) { [neg] a = Neg(t) },"
        " else_branch = other () => (float[4] b) { [other] b = Identity(x) }>\n[live] y = Neg(x)",
    )
    result, repairs, _ = fixed(model, BRANCH)
    assert (names(result.graph.node), repairs) == (["live"], {"dead_nodes": 2})


def test_dead_node_of_a_custom_domain_is_removed():
    """A node acts only through its outputs: unread, a custom op is as dead as any. ONNX Runtime refuses the
    model while the op is unregistered, and loads it once the dead node is gone."""
    proto = graph("float[4] x", "float[4] y", "[custom] t = local.Unregistered(x)\n[neg] y = Neg(x)")
    with pytest.raises(Exception, match="Unregistered"):
        run_ort(proto, X)
    result, _ = fix(proto)
    assert names(result.graph.node) == ["neg"]
    np.testing.assert_array_equal(run_ort(result, X)[0], -X["x"])


def test_dead_node_inside_a_function():
    functions = '<domain: "local", opset_import: ["" : 17]>\nUsed (a) => (b) { b = Neg(a) d = Abs(a) }'
    result, repairs, _ = fixed(graph("float[4] x", "float[4] y", "[f] y = local.Used(x)", functions=functions))
    assert [n.op_type for n in result.functions[0].node] == ["Neg"]
    assert repairs == {"dead_nodes": 1}


def test_uncalled_functions_are_removed_and_their_domain_kept_while_used(tmp_path):
    """Outer is never called and Inner only by Outer: both go; 'local' stays imported for Used."""
    proto = graph("float[4] x", "float[4] y", "[f] y = local.Used(x)", functions=LOCAL_FUNCTIONS)
    result, repairs, _ = fixed(proto)
    assert ([f.name for f in result.functions], repairs) == (["Used"], {"unused_function": 2})
    assert {o.domain for o in result.opset_import} == {"", "local"}
    assert lint(result, tmp_path) == []


def test_the_last_function_of_a_domain_takes_its_import_along():
    functions = '<domain: "extra", opset_import: ["" : 17]>\nSpare (a) => (b) { b = Abs(a) }'
    proto = graph("float[4] x", "float[4] y", "[neg] y = Neg(x)", functions=functions)
    proto.opset_import.append(helper.make_opsetid("extra", 1))
    result, repairs, _ = fixed(proto)
    assert (list(result.functions), repairs) == ([], {"unused_function": 1})
    assert {o.domain for o in result.opset_import} == {"", "local"}  # 'local' is the test header's, not a function's


# --- unsafe: the signature ----------------------------------------------------------------------------------


def test_unused_input_is_dropped_only_when_unsafe_fixes_are_asked(tmp_path):
    proto = graph("float[4] x, float[4] extra", "float[4] y", "[neg] y = Neg(x)")
    assert fix(proto)[1] == []
    result, repairs, _ = fixed(proto, {**X, "extra": X["x"]}, unsafe=True)
    assert ([i.name for i in result.graph.input], repairs) == (["x"], {"unused_input": 1})
    assert lint(result, tmp_path) == []


def test_input_read_only_by_dead_nodes():
    proto = graph("float[4] x, float[4] extra", "float[4] y", "[d] t = Abs(extra)\n[n] y = Neg(x)")
    feeds = {**X, "extra": X["x"]}
    result, repairs, _ = fixed(proto, feeds)
    assert (names(result.graph.node), len(result.graph.input), repairs) == (["n"], 2, {"dead_nodes": 1})
    result, repairs, _ = fixed(proto, feeds, unsafe=True)
    assert ([i.name for i in result.graph.input], repairs) == (["x"], {"dead_nodes": 1, "unused_input": 1})


def listed_initializers(ir_version: int = 8) -> onnx.ModelProto:
    proto = graph(
        "float[4] x, float[4] w, float[4] b",
        "float[4] y",
        "[mul] t = Mul(x, w)\n[add] y = Add(t, b)",
        "<float[4] w = {1, 2, 3, 4}, float[4] b = {-1, 0.5, 2, 8}>",
    )
    proto.ir_version = ir_version
    return proto


def test_initializers_listed_as_inputs_are_unlisted_when_unsafe(tmp_path):
    proto = listed_initializers()
    assert fix(proto)[1] == []
    result, repairs, [fixes] = fixed(proto, unsafe=True)  # the defaults: no feed for w and b
    assert ([i.name for i in result.graph.input], initializers(result)) == (["x"], ["w", "b"])
    assert (repairs, fixes.bytes_saved) == ({"initializers_as_inputs": 1}, 0)
    assert lint(result, tmp_path) == []


def test_ir3_initializers_are_unlisted_with_the_ir_version_raised(tmp_path):
    [finding] = lint(listed_initializers(ir_version=3), tmp_path)
    assert "raises the IR version to 4" in finding.help
    result, _ = fix(listed_initializers(ir_version=3), unsafe=True)
    assert (result.ir_version, [i.name for i in result.graph.input]) == (4, ["x"])


def test_unused_initializer_listed_as_input_goes_entirely_when_unsafe():
    proto = graph("float[4] x, float[4] w", "float[4] y", "[neg] y = Neg(x)", "<float[4] w = {1, 2, 3, 4}>")
    assert fix(proto)[1] == []
    result, repairs, _ = fixed(proto, unsafe=True)
    assert ([i.name for i in result.graph.input], initializers(result)) == (["x"], [])
    assert repairs["unused_initializer"] == 1


# --- real exports -------------------------------------------------------------------------------------------


def exported(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    from fixtures import torch_exports

    path = torch_exports.path(name)
    return onnx.load(path), torch_exports.sample_inputs(path, seed=0)


def list_initializers_as_inputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """What torch.onnx.export(keep_initializers_as_inputs=True) writes: every weight is also an input."""
    listed = copy.deepcopy(proto)
    listed.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in proto.graph.initializer
    )
    return listed


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet50", "tied_embeddings"])
def test_export_with_initializers_as_inputs(tmp_path, name):
    """Unlisted, the weights are constants again: the result runs bit for bit like the export made without
    the listing. Against the listed model it may differ in the last bits (ONNX Runtime prepacks constant
    weights for Conv, not overridable ones), one reason the fix is unsafe."""
    proto, feeds = exported(name)
    listed = list_initializers_as_inputs(proto)
    [finding] = lint(listed, tmp_path)
    assert finding.data["count"] == len(proto.graph.initializer)
    result, [fixes] = fix(listed, unsafe=True)
    assert dict(fixes.repairs) == {"initializers_as_inputs": 1}
    assert_bit_exact(proto, result, feeds)
    for before, after in zip(run_ort(listed, feeds), run_ort(result, feeds), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-4)
    assert [i.name for i in result.graph.input] == [i.name for i in proto.graph.input]
    assert len(result.graph.initializer) == len(proto.graph.initializer)
    assert fix(result, unsafe=True)[1] == []
    assert lint(result, tmp_path) == []


@pytest.mark.torch
def test_export_with_dead_code_added(tmp_path):
    """A real export with an unused weight and a dead branch off a live value: both go, outputs unchanged."""
    proto, feeds = exported("tied_embeddings")
    dirty = copy.deepcopy(proto)
    dirty.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((256, 256), np.float32), "stale.weight"))
    hidden = dirty.graph.node[1].output[0]
    dirty.graph.node.append(helper.make_node("Relu", [hidden], ["probe"], name="probe_relu"))
    dirty.graph.node.append(helper.make_node("ReduceMean", ["probe"], ["probe_mean"], name="probe_mean"))
    result, repairs, [fixes] = fixed(dirty, feeds)
    assert repairs == {"unused_initializer": 1, "dead_nodes": 1}
    assert (fixes.nodes_removed, fixes.bytes_saved) == (2, 256 * 256 * 4)
    assert names(result.graph.node) == names(proto.graph.node)
    assert dirty.ByteSize() - result.ByteSize() >= 256 * 256 * 4 - 1024  # shape inference adds value_info
    assert lint(result, tmp_path) == []
