"""GD015 identity-nodes: Identity nodes that pass a tensor through unchanged.

What it finds
    `Identity` nodes of the main graph and subgraphs, one finding per graph with their count. The
    TorchScript exporter emits them for every weight it de-duplicated (`Identity(initializer)` gives each
    module its own name for one stored tensor), and graph surgery leaves them behind.

Why it matters
    They compute nothing, yet each is a node to parse, type and schedule, and its output name hides which
    weight a layer really reads. ONNX Runtime and TensorRT remove them at load time, so they cost bytes and
    readability rather than speed. Simplifiers that fold `Identity(initializer)` into a new initializer
    re-inflate the de-duplicated weights (onnxslim and onnx-graphsurgeon: 12 MiB → 72 MiB on a 6-layer
    transformer); removing the node instead keeps one copy.

How to fix
    `graphdoctor fix` makes every reader of an Identity's output read its input and removes the node (safe:
    outputs are bit-identical; a graph output keeps its name through the Identity that produces it when its
    input is a graph input or initializer, since ONNX needs some node to name it). Identities in model-local
    functions are left alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import onnx_ir as ir

from graphdoctor.analysis.graph import node_label
from graphdoctor.engine import RuleContext
from graphdoctor.rewrite import is_attached, remove_node, replace_value
from graphdoctor.rule import Finding, FixSafety, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "check"]

META = RuleMeta(
    code="GD015",
    name="identity-nodes",
    kind=RuleKind.SUGGESTION,
    severity=Severity.INFO,
    summary="Identity nodes that pass tensors through unchanged (TorchScript's de-duplicated weights)",
    fix=FixSafety.SAFE,
    since="0.2.0",
    messages={
        "identity": Message(
            "{count} Identity node(s) pass tensors through unchanged (first: '{first}', of '{source}')",
            help="`graphdoctor fix` rewires their readers to the input and removes them (safe)",
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    by_graph: dict[int, list[ir.Node]] = defaultdict(list)
    for graph, _ in ctx.analysis.graph_sites:
        if isinstance(graph, ir.Graph):
            by_graph[id(graph)] += [node for node in graph if _removable(node)]
    for nodes in by_graph.values():
        if nodes:
            first = nodes[0]
            yield ctx.report(
                "identity",
                node=first,
                values=[first.inputs[0], first.outputs[0]],
                repair=lambda nodes=nodes: _remove_all(nodes),
                count=len(nodes),
                first=node_label(first),
                source=first.inputs[0].name or "?",
            )


def _removable(node: ir.Node) -> bool:
    """An Identity whose removal changes no name the graph's interface shows: unless its output is a graph
    output, it can go; if it is, only when a node of the same graph computes its input (that node takes the
    name), not when the input is a graph input, initializer, another output or an outer-scope value."""
    if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
        return False
    source = node.inputs[0]
    if source is None or not node.outputs:
        return False
    if not node.outputs[0].is_graph_output():
        return True
    producer = source.producer()
    return producer is not None and producer.graph is node.graph and not source.is_graph_output()


def _remove_all(nodes: list[ir.Node]) -> bool:
    removed = False
    for node in nodes:
        if is_attached(node) and _removable(node):
            replace_value(node.outputs[0], node.inputs[0])
            remove_node(node)
            removed = True
    return removed
