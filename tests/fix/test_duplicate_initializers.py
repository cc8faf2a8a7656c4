"""GD003 fixes: byte-identical copies merged into one tensor where its readers can see it; W and Wᵀ stored once
with a Transpose (opt-in). Every fix is bit-exact, leaves no finding it could fix, and is idempotent."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.handmade import save
from graphdoctor import api
from graphdoctor.engine import FixPolicy, apply_fixes, select_rules
from graphdoctor.model import load_model
from graphdoctor.rule import Finding, load_rules
from tests.fix.conftest import assert_bit_exact, fix_proto
from tests.rules.test_duplicate_initializers import VALID, save_external, weights_model

RULE = "GD003"
OPT_IN = ("dedup-transposed",)
RNG = np.random.default_rng(3)
SQUARE = RNG.standard_normal((64, 64)).astype(np.float32)  # 16 KiB
EMBED = RNG.standard_normal((100, 32)).astype(np.float32)  # 12.5 KiB


def fixed(proto: onnx.ModelProto, feeds=None, opt_ins: tuple[str, ...] = ()):
    """Fix, check the outputs bit for bit, and check that a second fix changes nothing."""
    result, fixes = fix(proto, opt_ins)
    assert_bit_exact(proto, result, feeds or {})
    assert fix(result, opt_ins)[1] == [], "not idempotent"
    return result, fixes


def fix(proto: onnx.ModelProto, opt_ins: tuple[str, ...] = ()):
    """fix_proto on a copy: ir tensors wrap the proto's, and renaming a dropped initializer writes through."""
    return fix_proto(copy.deepcopy(proto), RULE, opt_ins=opt_ins)


def branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


def lint(proto: onnx.ModelProto, tmp_path: Path) -> list[Finding]:
    return api.lint(save(proto, tmp_path / "fixed.onnx"), select=[RULE]).findings


def initializers(proto: onnx.ModelProto | onnx.GraphProto) -> list[str]:
    graph = proto.graph if isinstance(proto, onnx.ModelProto) else proto
    return [t.name for t in graph.initializer]


def node(graph: onnx.GraphProto, name: str) -> onnx.NodeProto:
    return next(n for n in graph.node if n.name == name)


def value_info(name: str, shape=(64, 64), dtype=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def constant(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(array))


def model(graph: onnx.GraphProto, functions=(), domains=()) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def if_model(then_nodes, else_nodes, after=(), initializers=()) -> onnx.ModelProto:
    """y = If(c) over the two branches (each returns 'a' / 'b' of float[64,64]), then the nodes `after`, which
    read 'y' and write 'z'; both y and z are outputs when `after` is given."""
    then_graph = helper.make_graph(then_nodes, "then", [], [value_info("a")])
    else_graph = helper.make_graph(else_nodes, "else", [], [value_info("b")])
    branch = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph)
    outputs = [value_info("y")] + ([value_info("z")] if after else [])
    inputs = [value_info("c", (), TensorProto.BOOL), value_info("x")]
    return model(helper.make_graph([branch, *after], "g", inputs, outputs, list(initializers)))


def branch_feeds(flag: bool) -> dict[str, np.ndarray]:
    return {"c": np.array(flag), "x": RNG.standard_normal((64, 64)).astype(np.float32)}


def test_identical_initializers_merge_into_the_first(tmp_path):
    proto = weights_model({"a": SQUARE, "b": SQUARE.copy(), "d": SQUARE + 1, "c": SQUARE.copy()})
    result, [fixes] = fixed(proto)
    assert initializers(result) == ["a", "d"]
    assert [n.input[0] for n in result.graph.node] == ["a", "a", "d", "a"]
    assert (dict(fixes.repairs), fixes.bytes_saved, fixes.nodes_removed) == ({"identical": 1}, 2 * SQUARE.nbytes, 0)
    assert proto.ByteSize() - result.ByteSize() >= 2 * SQUARE.nbytes - 512  # shape inference adds value_info
    assert lint(result, tmp_path) == []


def test_constant_copy_is_removed_and_reads_the_initializer(tmp_path):
    proto = weights_model({"w": SQUARE}, constants={"c": SQUARE.copy()})
    result, [fixes] = fixed(proto)
    assert [n.op_type for n in result.graph.node] == ["Identity", "Identity"]
    assert node(result.graph, "use_c").input == ["w"]
    assert (fixes.nodes_removed, fixes.bytes_saved) == (1, SQUARE.nbytes)
    assert lint(result, tmp_path) == []


def test_two_constants_merge_into_the_first():
    proto = weights_model({}, constants={"p": SQUARE, "q": SQUARE.copy()})
    result, _ = fixed(proto)
    assert [n.name for n in result.graph.node] == ["const_p", "use_p", "use_q"]
    assert node(result.graph, "use_q").input == ["p"]


def test_copies_that_are_graph_outputs_keep_their_names():
    """An initializer and a Constant returned as they are: an Identity of the kept tensor takes each name."""
    graph = helper.make_graph(
        [constant("c", SQUARE.copy()), helper.make_node("Neg", ["w"], ["y"], name="neg")],
        "g",
        [],
        [value_info("y"), value_info("w2"), value_info("c")],
        [numpy_helper.from_array(SQUARE, "w"), numpy_helper.from_array(SQUARE.copy(), "w2")],
    )
    result, _ = fixed(model(graph))
    assert initializers(result) == ["w"]
    assert [o.name for o in result.graph.output] == ["y", "w2", "c"]
    producers = {out: n for n in result.graph.node for out in n.output}
    assert [(producers[o].op_type, producers[o].input) for o in ("w2", "c")] == [("Identity", ["w"])] * 2


def test_subgraph_copy_reads_the_outer_initializer(tmp_path):
    """The then-branch returns its Constant as is: it becomes an Identity of the main graph's weight."""
    proto = if_model(
        [constant("a", SQUARE.copy())],
        [helper.make_node("Add", ["x", "w"], ["b"], name="else_add")],
        initializers=[numpy_helper.from_array(SQUARE, "w")],
    )
    result, [fixes] = fix(proto)
    for flag in (True, False):
        assert_bit_exact(proto, result, branch_feeds(flag))
    then_branch = branch(result.graph.node[0], "then_branch")
    assert [(n.op_type, list(n.input)) for n in then_branch.node] == [("Identity", ["w"])]
    assert fixes.bytes_saved == SQUARE.nbytes
    assert lint(result, tmp_path) == []


def test_kept_constant_moves_before_the_subgraph_that_now_reads_it():
    """The main graph's Constant comes after the If whose branch held the copy: it moves up to stay readable."""
    then_nodes = [constant("t", SQUARE.copy()), helper.make_node("Add", ["x", "t"], ["a"], name="then_add")]
    else_nodes = [helper.make_node("Neg", ["x"], ["b"], name="else_neg")]
    after = [constant("k", SQUARE), helper.make_node("Mul", ["y", "k"], ["z"], name="mul")]
    proto = if_model(then_nodes, else_nodes, after)
    result, _ = fix(proto)
    for flag in (True, False):
        assert_bit_exact(proto, result, branch_feeds(flag))
    assert [n.name for n in result.graph.node] == ["const_k", "branch", "mul"]
    then_branch = branch(result.graph.node[1], "then_branch")
    assert [(n.name, list(n.input)) for n in then_branch.node] == [("then_add", ["x", "k"])]


def test_copies_in_sibling_branches_stay_and_say_why(tmp_path):
    proto = if_model(
        [constant("t", SQUARE), helper.make_node("Add", ["x", "t"], ["a"], name="then_add")],
        [constant("e", SQUARE.copy()), helper.make_node("Add", ["x", "e"], ["b"], name="else_add")],
    )
    [finding] = lint(proto, tmp_path)
    assert finding.help.startswith("no fix: the copies are graph inputs") and finding.repair is None
    assert fix(proto)[1] == []


def test_functions_merge_only_within_their_body(tmp_path):
    """A function cannot read the main graph's weight; its own two Constants merge with each other."""
    body = [
        constant("f1", SQUARE.copy()),
        constant("f2", SQUARE.copy()),
        helper.make_node("Add", ["u", "f1"], ["s"], name="f_add"),
        helper.make_node("Mul", ["s", "f2"], ["v"], name="f_mul"),
    ]
    function = helper.make_function("local", "Scale", ["u"], ["v"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [
            helper.make_node("Scale", ["x"], ["t"], name="call", domain="local"),
            helper.make_node("Add", ["t", "w"], ["y"], name="add"),
        ],
        "g",
        [value_info("x")],
        [value_info("y")],
        [numpy_helper.from_array(SQUARE, "w")],
    )
    proto = model(graph, [function], ["local"])
    [group] = lint(proto, tmp_path)
    assert group.values == ("w", "f1", "f2") and group.repair is not None
    assert group.help.startswith("`graphdoctor fix` merges 1 of the copies (safe); the others are graph inputs")
    result, [fixes] = fixed(proto, {"x": RNG.standard_normal((64, 64)).astype(np.float32)})
    assert [(n.name, list(n.input)) for n in result.functions[0].node] == [
        ("const_f1", []),
        ("f_add", ["u", "f1"]),
        ("f_mul", ["s", "f1"]),
    ]
    assert initializers(result) == ["w"] and fixes.bytes_saved == SQUARE.nbytes
    [left] = lint(result, tmp_path)
    assert (left.values, left.repair) == (("w", "f1"), None)


def test_initializer_listed_as_input_is_never_merged(tmp_path):
    """Callers may override 'w1': its readers keep reading it, and the two plain copies merge with each other."""
    nodes = [helper.make_node("Add", [w, w], [f"{w}_out"], name=f"use_{w}") for w in ("w1", "w2", "w3")]
    graph = helper.make_graph(
        nodes,
        "g",
        [value_info("w1")],
        [value_info(f"{w}_out") for w in ("w1", "w2", "w3")],
        [numpy_helper.from_array(SQUARE.copy(), w) for w in ("w1", "w2", "w3")],
    )
    proto = model(graph)
    result, _ = fixed(proto, {"w1": SQUARE + 1})  # overridden: the fixed model must still honour it
    assert initializers(result) == ["w1", "w2"]
    assert [list(n.input) for n in result.graph.node] == [["w1", "w1"], ["w2", "w2"], ["w2", "w2"]]
    [left] = lint(result, tmp_path)
    assert left.values == ("w1", "w2") and left.help.startswith("no fix")


@pytest.mark.parametrize(
    "case", ["small-copies", "same-bytes-other-shape", "zero-vs-negative-zero", "symmetric-matrix"]
)
def test_nothing_to_merge(case):
    assert fix(VALID[case])[1] == []


def test_only_groups_above_min_bytes_are_merged():
    """The fix merges the groups its findings name: with min-bytes raised, a smaller group stays."""
    small = SQUARE[:16, :32]  # 2 KiB
    proto = weights_model({"s1": small, "s2": small.copy(), "b1": SQUARE, "b2": SQUARE.copy()})
    ir_model = ir.serde.deserialize_model(proto)
    rules = select_rules(load_rules(), [RULE])
    options = {"duplicate-initializers": {"min-bytes": 4096}}
    [fixes], converged = apply_fixes(ir_model, rules, FixPolicy(), rule_options=options)
    assert converged and fixes.bytes_saved == SQUARE.nbytes
    assert list(ir_model.graph.initializers) == ["s1", "s2", "b1"]


# --- W and Wᵀ -----------------------------------------------------------------------------------------------


def test_transposed_is_fixed_only_when_asked(tmp_path):
    proto = weights_model({"embed": EMBED, "head": np.ascontiguousarray(EMBED.T)})
    assert fix(proto)[1] == []
    result, [fixes] = fixed(proto, opt_ins=OPT_IN)
    assert initializers(result) == ["embed"]
    transpose, use_head = result.graph.node[1:3]  # right before the first reader of 'head'
    assert (transpose.op_type, list(transpose.input), list(transpose.output)) == ("Transpose", ["embed"], ["head"])
    assert helper.get_attribute_value(transpose.attribute[0]) == [1, 0]
    assert use_head.name == "use_head"
    assert (dict(fixes.repairs), fixes.nodes_removed, fixes.bytes_saved) == ({"transposed": 1}, -1, EMBED.nbytes)
    assert lint(result, tmp_path) == []


def test_fixing_without_the_opt_in_does_not_search_for_transposes(monkeypatch: pytest.MonkeyPatch):
    """Nobody would use W/Wᵀ findings without --dedup-transposed: the fix engine tells the rule (`ctx.wants`),
    which skips the search (it reads blocks of every pair of transposed shapes)."""
    from graphdoctor.analysis.digests import TensorDigests

    searched = []
    real = TensorDigests.transposed_pairs
    monkeypatch.setattr(TensorDigests, "transposed_pairs", lambda self, *a: searched.append(1) or real(self, *a))
    proto = weights_model({"embed": EMBED, "head": np.ascontiguousarray(EMBED.T)})
    assert fix(proto)[1] == [] and searched == []
    fix(proto, OPT_IN)
    assert searched


def test_transposed_graph_output_keeps_its_name():
    graph = helper.make_graph(
        [helper.make_node("Neg", ["embed"], ["y"], name="neg")],
        "g",
        [],
        [value_info("y", EMBED.shape), value_info("head", EMBED.T.shape)],
        [numpy_helper.from_array(EMBED, "embed"), numpy_helper.from_array(np.ascontiguousarray(EMBED.T), "head")],
    )
    result, _ = fixed(model(graph), opt_ins=OPT_IN)
    assert [(n.op_type, list(n.output)) for n in result.graph.node] == [("Neg", ["y"]), ("Transpose", ["head"])]


def test_transposed_constant_in_a_subgraph_reads_the_outer_weight():
    head = np.ascontiguousarray(SQUARE.T)
    then_nodes = [constant("h", head), helper.make_node("MatMul", ["x", "h"], ["a"], name="then_matmul")]
    else_nodes = [helper.make_node("MatMul", ["x", "w"], ["b"], name="else_matmul")]
    proto = if_model(then_nodes, else_nodes, initializers=[numpy_helper.from_array(SQUARE, "w")])
    result, _ = fix(proto, OPT_IN)
    for flag in (True, False):
        assert_bit_exact(proto, result, branch_feeds(flag))
    then_branch = branch(result.graph.node[0], "then_branch")
    assert [(n.op_type, list(n.input)) for n in then_branch.node] == [("Transpose", ["w"]), ("MatMul", ["x", "h"])]


def test_transposed_graph_input_is_not_fixed(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "head"], ["y"], name="mm"), helper.make_node("Neg", ["embed"], ["z"])],
        "g",
        [value_info("x", (2, 32)), value_info("embed", EMBED.shape)],
        [value_info("y", (2, 100)), value_info("z", EMBED.shape)],
        [numpy_helper.from_array(EMBED, "embed"), numpy_helper.from_array(np.ascontiguousarray(EMBED.T), "head")],
    )
    proto = model(graph)
    [finding] = lint(proto, tmp_path)
    assert finding.help.startswith("no fix: one of them is a graph input") and finding.repair is None
    assert fix(proto, OPT_IN)[1] == []


# --- external data: no tensor is read whole ------------------------------------------------------------------


def test_external_data_is_merged_without_reading_tensors(tmp_path, monkeypatch):
    layer = RNG.standard_normal((256, 256)).astype(np.float32)
    proto = weights_model({"a": layer, "b": layer.copy(), "embed": EMBED, "head": np.ascontiguousarray(EMBED.T)})
    loaded = load_model(save_external(proto, tmp_path))

    def refuse(self, *args, **kwargs):
        raise AssertionError("an external tensor was read whole")

    monkeypatch.setattr(ir.ExternalTensor, "numpy", refuse)
    monkeypatch.setattr(ir.ExternalTensor, "tobytes", refuse)
    policy = FixPolicy(opt_ins=frozenset(OPT_IN))
    [fixes], converged = apply_fixes(loaded.model, select_rules(load_rules(), [RULE]), policy, path=loaded.path)
    assert converged and dict(fixes.repairs) == {"identical": 1, "transposed": 1}
    assert fixes.bytes_saved == layer.nbytes + EMBED.nbytes
    assert list(loaded.model.graph.initializers) == ["a", "embed"]


# --- real exports -------------------------------------------------------------------------------------------


def exported(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    from fixtures import torch_exports

    path = torch_exports.path(name)
    return onnx.load(path), torch_exports.sample_inputs(path, seed=0)


@pytest.mark.torch
def test_identical_layers_export(tmp_path):
    """Three deep-copied Conv blocks: two 144 KiB weights go, the three Convs read the first."""
    proto, feeds = exported("identical_layers")
    [finding] = lint(proto, tmp_path)
    result, [fixes] = fixed(proto, feeds)
    assert fixes.bytes_saved == finding.nbytes == 288 * 1024
    assert proto.ByteSize() - result.ByteSize() >= finding.nbytes
    assert len(result.graph.initializer) == len(proto.graph.initializer) - 2
    assert [n.input[1] for n in result.graph.node if n.op_type == "Conv"][1:4] == ["2.0.weight"] * 3
    assert lint(result, tmp_path) == []


@pytest.mark.torch
def test_tied_embeddings_export(tmp_path):
    """TorchScript folded Transpose(embed.weight) into a stored [128,1000] head: it becomes a Transpose again."""
    proto, feeds = exported("tied_embeddings")
    [finding] = lint(proto, tmp_path)
    assert fix(proto)[1] == []  # opt-in
    result, [fixes] = fixed(proto, feeds, opt_ins=OPT_IN)
    assert fixes.bytes_saved == finding.nbytes == 1000 * 128 * 4
    assert proto.ByteSize() - result.ByteSize() >= finding.nbytes - 1024  # the Transpose node costs a few bytes
    *_, transpose, head = result.graph.node
    assert (transpose.op_type, list(transpose.input)) == ("Transpose", ["embed.weight"])
    assert (head.op_type, head.input[1]) == ("MatMul", "onnx::MatMul_36")
    assert "onnx::MatMul_36" not in initializers(result)
    assert lint(result, tmp_path) == []
