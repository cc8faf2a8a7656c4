"""GD009 dead-code: unused initializers, dead node chains, unused inputs and functions, initializers as inputs."""

from __future__ import annotations

import onnx
import pytest

from fixtures.handmade import model_from_text
from graphdoctor.rule import Severity

RULE = "GD009"
LOCAL_FUNCTIONS = """
<domain: "local", opset_import: ["" : 17]>
Used (a) => (b) { b = Neg(a) }
<domain: "local", opset_import: ["" : 17, "local" : 1]>
Outer (a) => (b) { b = local.Inner(a) }
<domain: "local", opset_import: ["" : 17]>
Inner (a) => (b) { b = Abs(a) }
"""


def graph(inputs: str, outputs: str, body: str, inits: str = "", functions: str = "") -> onnx.ModelProto:
    header = '<ir_version: 8, opset_import: ["" : 17, "local" : 1]>'
    return model_from_text(f"{header}\ng ({inputs}) => ({outputs}) {inits}\n{{\n{body}\n}}\n{functions}")


VALID = {
    "every value used": graph("float[4] x", "float[4] y", "[add] y = Add(x, w)", "<float[4] w = {1, 2, 3, 4}>"),
    "initializer read only inside a subgraph": graph(
        "bool c, float[4] x",
        "float[4] y",
        "[cond] y = If (c) <then_branch = then () => (float[4] a) { [add] a = Add(x, w) },"
        " else_branch = other () => (float[4] b) { [neg] b = Neg(x) }>",
        "<float[4] w = {1, 2, 3, 4}>",
    ),
    "initializer that is a graph output": graph(
        "float[4] x", "float[4] y, float[4] w", "[neg] y = Neg(x)", "<float[4] w = {1, 2, 3, 4}>"
    ),
    "node whose only use is a graph output": graph(
        "float[4] x", "float[4] y, float[4] t", "[a] t = Abs(x)\n[n] y = Neg(t)"
    ),
    "node with one unused output of several": graph(
        "float[4] x", "float[2] y", "[topk] y, unused_indices = TopK(x, k)", "<int64[1] k = {2}>"
    ),
    "Loop body input the body ignores (the iteration count)": graph(
        "int64 n, bool c, float[4] x",
        "float[4] y",
        "[loop] y = Loop (n, c, x) <body = body (int64 i, bool cond, float[4] v) => (bool cond_out, float[4] v_out)"
        " { [keep] cond_out = Identity(cond) [step] v_out = Neg(v) }>",
    ),
    "functions called directly and through another function": graph(
        "float[4] x", "float[4] y", "[f] t = local.Used(x)\n[g] y = local.Outer(t)", functions=LOCAL_FUNCTIONS
    ),
    "function called from a subgraph": graph(
        "bool c, float[4] x",
        "float[4] y",
        "[cond] y = If (c) <then_branch = then () => (float[4] a) { [f] a = local.Used(x) },"
        " else_branch = other () => (float[4] b) { [g] b = local.Outer(x) }>",
        functions=LOCAL_FUNCTIONS,
    ),
}


@pytest.mark.parametrize("case", VALID)
def test_valid(lint_proto, case):
    assert lint_proto(VALID[case], RULE) == []


def test_unused_initializer_with_its_size(lint_proto):
    model = graph("float[4] x", "float[4] y", "[neg] y = Neg(x)", "<float[4] w = {1, 2, 3, 4}>")
    [finding] = lint_proto(model, RULE)
    assert (finding.values, finding.severity, finding.message_id) == (("w",), Severity.WARNING, "unused_initializer")
    assert finding.nbytes == 16
    assert finding.message == "initializer 'w' float32[4] (16 B) is read by no node and is not a graph output"


def test_many_unused_initializers_are_one_finding(lint_proto):
    inits = ", ".join(f"float[{i + 1}] w{i} = {{{', '.join(['1.0'] * (i + 1))}}}" for i in range(11))
    model = graph("float[4] x", "float[4] y", "[neg] y = Neg(x)", f"<{inits}>")
    [finding] = lint_proto(model, RULE)
    assert (finding.message_id, finding.data["count"]) == ("unused_initializers", 11)
    assert finding.nbytes == 4 * sum(range(1, 12))
    assert finding.data["examples"] == "'w10', 'w9', 'w8' and 8 more"  # largest first
    assert len(finding.values) == 11


def test_dead_chain_is_one_finding_at_its_end_with_the_weights_it_holds(lint_proto):
    body = (
        "[k] c = Constant <value = float[4] {1, 2, 3, 4}> ()\n[add] t = Add(x, c)\n[mul] u = Mul(t, w)\n"
        "[relu] unused = Relu(u)\n[neg] y = Neg(x)"
    )
    model = graph("float[4] x", "float[4] y", body, "<float[4] w = {1, 2, 3, 4}>")
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.severity, finding.message_id) == ("relu", Severity.WARNING, "dead_nodes")
    assert finding.data["nodes"] == ["k", "add", "mul", "relu"]
    assert finding.nbytes == 32  # the Constant and 'w', which nothing live reads
    assert finding.message == (
        "Relu 'relu' computes values nothing reads; so do the 3 node(s) that only feed it (1 Constant, 1 Add, 1 Mul),"
        " holding 32 B of weights nothing else reads"
    )


def test_unused_constant_node_is_dead(lint_proto):
    body = "[k] c = Constant <value = float[4] {1, 2, 3, 4}> ()\n[neg] y = Neg(x)"
    [finding] = lint_proto(graph("float[4] x", "float[4] y", body), RULE)
    assert (finding.node, finding.message_id, finding.nbytes) == ("k", "dead_nodes", 16)
    assert finding.help.startswith("remove it")


def test_weights_shared_with_live_nodes_are_not_counted(lint_proto):
    body = "[dead] unused = Mul(x, w)\n[live] y = Add(x, w)"
    model = graph("float[4] x", "float[4] y", body, "<float[4] w = {1, 2, 3, 4}>")
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.nbytes, finding.data["weights"]) == ("dead", None, "")


def test_separate_dead_chains_are_separate_findings(lint_proto):
    body = "[a] t = Abs(x)\n[b] u = Neg(t)\n[c] v = Relu(x)\n[live] y = Neg(x)"
    findings = lint_proto(graph("float[4] x", "float[4] y", body), RULE)
    assert [(f.node, f.data["count"]) for f in findings] == [("b", 2), ("c", 1)]


def test_many_dead_chains_are_one_finding(lint_proto):
    body = "\n".join(f"[dead{i}] t{i} = Abs(x)" for i in range(11)) + "\n[live] y = Neg(x)"
    [finding] = lint_proto(graph("float[4] x", "float[4] y", body), RULE)
    assert (finding.message_id, finding.data["count"], finding.data["chains"]) == ("dead_nodes_many", 11, 11)


def test_dead_node_in_a_subgraph(lint_proto):
    model = graph(
        "bool c, float[4] x",
        "float[4] y",
        "[cond] y = If (c) <then_branch = then () => (float[4] a) { [inner_dead] d = Abs(x) [keep] a = Neg(x) },"
        " else_branch = other () => (float[4] b) { [other] b = Identity(x) }>",
    )
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.graph, finding.message_id) == ("inner_dead", "cond.then_branch", "dead_nodes")


def test_dead_if_is_one_finding_and_owns_what_its_branches_read(lint_proto):
    model = graph(
        "bool c, float[4] x",
        "float[4] y",
        "[cond] unused = If (c) <then_branch = then () => (float[4] a) { [add] a = Add(x, w) },"
        " else_branch = other () => (float[4] b) { [other] b = Identity(x) }>\n[live] y = Neg(x)",
        "<float[4] w = {1, 2, 3, 4}>",
    )
    unused_condition, dead_if = lint_proto(model, RULE)
    assert (dead_if.node, dead_if.message_id, dead_if.nbytes) == ("cond", "dead_nodes", 16)
    assert (unused_condition.values, unused_condition.data["readers"]) == (("c",), "only dead nodes")


def test_unused_graph_input_is_info(lint_proto):
    [finding] = lint_proto(graph("float[4] x, float[4] extra", "float[4] y", "[neg] y = Neg(x)"), RULE)
    assert (finding.values, finding.severity, finding.message_id) == (("extra",), Severity.INFO, "unused_input")
    assert finding.data["readers"] == "no node"
    assert "signature" in finding.help


def test_graph_input_read_only_by_dead_nodes(lint_proto):
    findings = lint_proto(graph("float[4] x, float[4] extra", "float[4] y", "[d] t = Abs(extra)\n[n] y = Neg(x)"), RULE)
    assert [(f.message_id, f.data.get("readers")) for f in findings] == [
        ("unused_input", "only dead nodes"),
        ("dead_nodes", None),
    ]


def test_initializers_listed_as_inputs_are_one_finding(lint_proto):
    model = graph(
        "float[4] x, float[4] w, float[4] b",
        "float[4] y",
        "[mul] t = Mul(x, w)\n[add] y = Add(t, b)",
        "<float[4] w = {1, 2, 3, 4}, float[4] b = {1, 2, 3, 4}>",
    )
    [finding] = lint_proto(model, RULE)
    assert (finding.severity, finding.message_id) == (Severity.WARNING, "initializers_as_inputs")
    assert (finding.data["count"], finding.data["total"], finding.data["size"]) == (2, 2, "32 B")
    assert finding.values == ("w", "b")
    assert "keep_initializers_as_inputs" in finding.help and finding.data["ir_note"] == ""


def test_unused_initializer_listed_as_input_is_an_unused_input(lint_proto):
    """Removing it changes the signature, so it is not a safe unused-initializer removal."""
    model = graph("float[4] x, float[4] w", "float[4] y", "[neg] y = Neg(x)", "<float[4] w = {1, 2, 3, 4}>")
    findings = lint_proto(model, RULE)
    assert [(f.message_id, f.values) for f in findings] == [
        ("initializers_as_inputs", ("w",)),
        ("unused_input", ("w",)),
    ]


def test_unused_function_is_info(lint_proto):
    model = graph("float[4] x", "float[4] y", "[f] y = local.Used(x)", functions=LOCAL_FUNCTIONS)
    findings = lint_proto(model, RULE)
    # Outer is never called; Inner only by Outer, so it is unreachable too
    assert [(f.message_id, f.severity, f.data["function"]) for f in findings] == [
        ("unused_function", Severity.INFO, "local::Inner"),
        ("unused_function", Severity.INFO, "local::Outer"),
    ]


def test_dead_node_inside_a_function(lint_proto):
    functions = '<domain: "local", opset_import: ["" : 17]>\nUsed (a) => (b) { b = Neg(a) d = Abs(a) }'
    model = graph("float[4] x", "float[4] y", "[f] y = local.Used(x)", functions=functions)
    [finding] = lint_proto(model, RULE)
    assert (finding.node, finding.message_id) == ("Abs->d", "dead_nodes")


@pytest.mark.torch
@pytest.mark.parametrize(
    "name",
    ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "bert_opset14", "bert_opset17", "yolo", "training_mode"],
)
def test_real_exports_have_no_dead_code(name):
    from fixtures import torch_exports
    from graphdoctor import api

    assert api.lint(torch_exports.path(name), select=[RULE]).findings == []
