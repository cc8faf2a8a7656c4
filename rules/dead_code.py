"""GD009 dead-code: weights, nodes, inputs and functions nothing uses, and initializers listed as inputs.

What it finds
    - Initializers no node reads (subgraphs reading outer values count as readers) that are not graph
      outputs; with their size.
    - Nodes whose outputs nothing reads and that are not graph outputs, and the nodes that only feed them:
      one finding per dead chain, naming its last node, with the weights only that chain reads.
    - Graph inputs no live node reads (info: removing one changes the model's signature).
    - Initializers also listed as graph inputs (`keep_initializers_as_inputs=True`, or IR < 4 files): one
      finding with their count and size.
    - Model-local functions no node calls (info).
    Past `max_listed` unused initializers or dead chains, one finding counts them all with a few examples.

Why it matters
    Dead weights are bytes shipped, loaded and kept in memory for nothing; dead nodes are parsed, typed and
    sometimes run. ONNX Runtime treats an initializer listed as a graph input as an overridable input, not
    a constant: it warns once per tensor, cannot constant-fold it and skips the fusions that need constant
    weights (measured: Conv+BatchNormalization+Relu stays three nodes instead of one fused Conv). TensorRT
    ignores the listing and uses them as weights, so the two backends see different graphs.

How to fix
    `graphdoctor fix` removes unused initializers, dead nodes (with the subgraphs they hold) and uncalled
    functions, and then the opset import of a function's domain when nothing else uses it (safe: outputs
    and graph I/O unchanged). Dead nodes of custom domains go too: an ONNX node acts only through its
    outputs, so one whose outputs nothing reads cannot change the model's results, and ONNX Runtime would
    otherwise refuse the model when the custom op is not registered. Nodes without outputs are never dead.
    Re-export without `keep_initializers_as_inputs=True`; `graphdoctor fix --unsafe-fixes` drops
    initializers from the graph inputs (raising IR < 4 to 4, which allows it) and unused inputs from the
    signature (unsafe: callers that pass them break, and ONNX Runtime then runs the weights as constants,
    which moved resnet50's logits by up to 1e-5: the bits of an export made without the listing). A dead
    node that was meant to be an output: return it from `forward()`.

Options
    max_listed (10): more unused initializers or dead chains than this are reported as one finding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import onnx_ir as ir

from graphdoctor.analysis.constants import const_tensor
from graphdoctor.analysis.format import format_bytes, format_type
from graphdoctor.analysis.graph import iter_graph_sites, node_label, subgraph_owners
from graphdoctor.engine import RuleContext
from graphdoctor.rewrite import is_attached, remove_initializer, remove_node
from graphdoctor.rule import Finding, FixSafety, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "Options", "check"]

_SAFE_HELP = "`graphdoctor fix` (safe)"
_EXAMPLES = 3
_IR_WITHOUT_LISTING = 4  # IR 3 requires every initializer to be a graph input too


@dataclass(frozen=True)
class Options:
    max_listed: int = 10  # more unused initializers or dead chains than this: one finding for all


META = RuleMeta(
    code="GD009",
    name="dead-code",
    kind=RuleKind.SUGGESTION,
    severity=Severity.WARNING,
    summary="unused initializers, nodes, inputs and functions; initializers duplicated as graph inputs",
    fix=FixSafety.SAFE,
    options=Options(),
    messages={
        "unused_initializer": Message(
            "initializer '{name}' {type} ({size}) is read by no node and is not a graph output",
            help=f"remove it: {_SAFE_HELP}",
        ),
        "unused_initializers": Message(
            "{count} initializers ({size}) are read by no node and are not graph outputs, e.g. {examples}",
            help=f"remove them: {_SAFE_HELP}",
        ),
        "dead_nodes": Message(
            "{op} '{dead}' computes values nothing reads{chain}{weights}",
            help=f"remove {{them}}: {_SAFE_HELP}; if the value was meant to be an output, return it from forward()",
        ),
        "dead_nodes_many": Message(
            "{count} nodes in {chains} chains compute values nothing reads{weights}, e.g. {examples}",
            help=f"remove them: {_SAFE_HELP}",
        ),
        "unused_input": Message(
            "graph input '{name}' {type} is read by {readers}",
            help="drop it from forward() if the model does not need it; removing it changes the model's signature,"
            " so `graphdoctor fix` drops it only with --unsafe-fixes",
            severity=Severity.INFO,
            fix=FixSafety.UNSAFE,
        ),
        "initializers_as_inputs": Message(
            "{count} of {total} initializers ({size}) are also graph inputs, e.g. {examples}: ONNX Runtime treats"
            " them as overridable inputs, not constants, so it cannot constant-fold them or fuse Conv with"
            " BatchNormalization; TensorRT treats them as weights",
            help="re-export without keep_initializers_as_inputs=True{ir_note}; `graphdoctor fix --unsafe-fixes`"
            " drops them from the inputs{ir_fix} (changes the signature)",
            fix=FixSafety.UNSAFE,
        ),
        "unused_function": Message(
            "function '{function}' ({count} node(s)) is called by no node",
            help=f"remove it (and its domain's opset import if nothing else uses the domain): {_SAFE_HELP}",
            severity=Severity.INFO,
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    liveness = _Liveness(ctx)
    yield from _unused_initializers(liveness, ctx)
    yield from _dead_nodes(liveness, ctx)
    yield from _unused_inputs(model, liveness, ctx)
    yield from _initializers_as_inputs(model, ctx)
    yield from _unused_functions(model, ctx)


class _Liveness:
    """Which nodes are dead: none of their outputs reaches a graph output through live nodes.

    A value read inside a subgraph counts as read by the subgraph's owner node in the value's own graph, so
    liveness crosses scopes the way values do. Computed as a fixed point over every graph at once.
    """

    def __init__(self, ctx: RuleContext) -> None:
        self.graphs = [_as_graph(site) for site, _ in ctx.analysis.graph_sites]
        self.owner = subgraph_owners(node for graph in self.graphs for node in graph)
        self.dead: set[int] = set()
        self._solve()

    def _solve(self) -> None:
        nodes = [node for graph in self.graphs for node in reversed(list(graph))]
        changed = True
        while changed:  # reverse graph order settles chains in one pass; the loop covers unsorted graphs
            changed = False
            for node in nodes:
                if id(node) not in self.dead and node.outputs and all(self.is_unread(v) for v in node.outputs):
                    self.dead.add(id(node))
                    changed = True

    def is_unread(self, value: ir.Value) -> bool:
        """No live reader and not a graph output."""
        return not value.is_graph_output() and all(self.is_dead_use(use.node) for use in value.uses())

    def is_dead_use(self, node: ir.Node) -> bool:
        """A reader is dead when it, or a node whose subgraph holds it, is dead."""
        return any(id(n) in self.dead for n in self.lineage(node))

    def lineage(self, node: ir.Node) -> Iterator[ir.Node]:
        """The node, then the nodes owning the subgraphs it sits in, innermost first."""
        current: ir.Node | None = node
        while current is not None:
            yield current
            current = self.owner.get(id(current.graph))

    def is_reported(self, node: ir.Node) -> bool:
        """Dead, and not inside the subgraph of a dead node (that node's finding covers it)."""
        return id(node) in self.dead and not any(id(n) in self.dead for n in list(self.lineage(node))[1:])


def _as_graph(site: ir.Graph | ir.Function) -> ir.Graph:
    """The ir.Graph whose nodes these are: a function's nodes belong to its inner graph."""
    return site.graph if isinstance(site, ir.Function) else site


def _nbytes(value: ir.Value) -> int:
    tensor = const_tensor(value)
    return tensor.nbytes if tensor is not None else 0


def _examples(names: list[str]) -> str:
    shown = ", ".join(f"'{name}'" for name in names[:_EXAMPLES])
    return shown + (f" and {len(names) - _EXAMPLES} more" if len(names) > _EXAMPLES else "")


def _unused_initializers(liveness: _Liveness, ctx: RuleContext) -> Iterator[Finding]:
    """Initializers with no reader at all; those read only by dead nodes go with the dead nodes' finding, and
    those also listed as graph inputs are unused inputs (removing one changes the signature)."""
    unused = [
        value
        for graph in liveness.graphs
        for value in graph.initializers.values()
        if not value.uses() and not value.is_graph_output() and not value.is_graph_input()
    ]
    unused.sort(key=_nbytes, reverse=True)
    if len(unused) > ctx.options.max_listed:
        total = sum(_nbytes(v) for v in unused)
        yield ctx.report(
            "unused_initializers",
            values=unused,
            nbytes=total,
            repair=partial(_remove_unused_initializers, unused),
            count=len(unused),
            size=format_bytes(total),
            examples=_examples([v.name or "?" for v in unused]),
        )
        return
    for value in unused:
        size = _nbytes(value)
        yield ctx.report(
            "unused_initializer",
            values=[value],
            nbytes=size,
            repair=partial(_remove_unused_initializers, [value]),
            name=value.name,
            type=format_type(value),
            size=format_bytes(size),
        )


def _dead_nodes(liveness: _Liveness, ctx: RuleContext) -> Iterator[Finding]:
    chains = _dead_chains(liveness)
    if not chains:
        return
    weights = [_chain_weights(chain, liveness) for chain in chains]
    if len(chains) > ctx.options.max_listed:
        total = sum(weights)
        yield ctx.report(
            "dead_nodes_many",
            nbytes=total or None,
            repair=partial(_remove_dead, [node for chain in chains for node in chain]),
            count=sum(len(chain) for chain in chains),
            chains=len(chains),
            weights=_weights_phrase(total),
            examples=_examples([node_label(chain[-1]) for chain in chains]),
        )
        return
    for chain, nbytes in zip(chains, weights, strict=True):
        yield _report_chain(chain, nbytes, ctx)


def _report_chain(chain: list[ir.Node], nbytes: int, ctx: RuleContext) -> Finding:
    last = chain[-1]
    feeders = chain[:-1]
    ops = Counter(node.op_type for node in feeders)
    listed = ", ".join(f"{count} {op}" for op, count in ops.most_common())
    chain_phrase = f"; so do the {len(feeders)} node(s) that only feed it ({listed})" if feeders else ""
    return ctx.report(
        "dead_nodes",
        node=last,
        values=[v for v in last.outputs if v.name],
        nbytes=nbytes or None,
        repair=partial(_remove_dead, chain),
        op=last.op_type,
        dead=node_label(last),
        chain=chain_phrase,
        weights=_weights_phrase(nbytes),
        them="them" if feeders else "it",
        count=len(chain),
        nodes=[node_label(node) for node in chain],
    )


def _weights_phrase(nbytes: int) -> str:
    return f", holding {format_bytes(nbytes)} of weights nothing else reads" if nbytes else ""


def _dead_chains(liveness: _Liveness) -> list[list[ir.Node]]:
    """Reported dead nodes grouped into chains (connected through the values they pass), in graph order."""
    order = [node for graph in liveness.graphs for node in graph if liveness.is_reported(node)]
    parent = {id(node): id(node) for node in order}

    def root(key: int) -> int:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for node in order:
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and id(producer) in parent:
                parent[root(id(node))] = root(id(producer))
    chains: dict[int, list[ir.Node]] = {}
    for node in order:
        chains.setdefault(root(id(node)), []).append(node)
    return list(chains.values())


def _chain_weights(chain: list[ir.Node], liveness: _Liveness) -> int:
    """Bytes only this chain reads: Constant nodes in it (or in its subgraphs), and initializers no other
    live node reads, including outer-scope initializers its subgraphs capture."""
    members = {id(node) for node in chain}
    seen: set[int] = set()
    total = 0
    for node in _with_subgraph_nodes(chain):
        if node.op_type == "Constant":
            total += sum(_nbytes(v) for v in node.outputs)
        for value in node.inputs:
            if value is None or id(value) in seen or not value.is_initializer():
                continue
            seen.add(id(value))
            only_chain = all(any(id(n) in members for n in liveness.lineage(use.node)) for use in value.uses())
            if only_chain and not value.is_graph_output() and not value.is_graph_input():
                total += _nbytes(value)
    return total


def _with_subgraph_nodes(nodes: Iterable[ir.Node]) -> Iterator[ir.Node]:
    for node in nodes:
        yield node
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from attr.value.all_nodes()
            elif attr.type == ir.AttributeType.GRAPHS:
                for subgraph in attr.value:
                    yield from subgraph.all_nodes()


def _unused_inputs(model: ir.Model, liveness: _Liveness, ctx: RuleContext) -> Iterator[Finding]:
    for value in model.graph.inputs:
        if not liveness.is_unread(value):  # initializers listed as inputs too: dropping one changes the signature
            continue
        readers = "only dead nodes" if value.uses() else "no node"
        yield ctx.report(
            "unused_input",
            values=[value],
            repair=partial(_drop_unused_input, model.graph, value),
            name=value.name,
            type=format_type(value),
            readers=readers,
        )


def _initializers_as_inputs(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    listed = [value for value in model.graph.inputs if value.is_initializer()]
    if not listed:
        return
    size = sum(_nbytes(v) for v in listed)
    ir_version = model.ir_version or 0
    old_ir = ir_version < _IR_WITHOUT_LISTING
    ir_note = f" and raise the IR version to 4 or later (IR {ir_version} requires it)" if old_ir else ""
    yield ctx.report(
        "initializers_as_inputs",
        values=listed,
        repair=partial(_unlist_initializers, model, listed),
        count=len(listed),
        total=len(model.graph.initializers),
        size=format_bytes(size),
        examples=_examples([v.name or "?" for v in listed]),
        ir_note=ir_note,
        ir_fix=" and raises the IR version to 4" if old_ir else "",
    )


def _unused_functions(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    """Functions not reachable from the main graph through calls (calls from uncalled functions don't count)."""
    called: set[ir.OperatorIdentifier] = set()
    pending: list[ir.Graph] = [model.graph]
    while pending:
        for node in pending.pop().all_nodes():
            key = node.op_identifier()
            function = model.functions.get(key)
            if function is not None and key not in called:
                called.add(key)
                pending.append(function.graph)
    for key, function in model.functions.items():
        if key not in called:
            name = f"{function.domain}::{function.name}" + (f"::{function.overload}" if function.overload else "")
            yield ctx.report(
                "unused_function",
                repair=partial(_remove_function, model, key),
                function=name,
                count=len(function),
            )


# --- repairs: each checks that its finding still holds, since an earlier repair of the round may have acted ----


def _remove_unused_initializers(values: list[ir.Value]) -> bool:
    removed = False
    for value in values:
        if value.is_initializer() and not (value.uses() or value.is_graph_output() or value.is_graph_input()):
            remove_initializer(value)
            removed = True
    return removed


def _remove_dead(nodes: list[ir.Node]) -> bool:
    """Remove dead nodes, readers before what they read (reverse graph order). A node still read, by a dead
    node of another chain not removed yet or in an unsorted graph, stays for the next round."""
    removed = False
    for node in reversed(nodes):
        if is_attached(node) and not any(value.uses() or value.is_graph_output() for value in node.outputs):
            _release_captures(node)
            remove_node(node)
            removed = True
    return removed


def _release_captures(node: ir.Node) -> None:
    """Detach the inputs of every node in `node`'s subgraphs: they go with it, and the outer values they
    capture must not keep them as readers (else those values would never look unused)."""
    for attr in node.attributes.values():
        subgraphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else []
        subgraphs += list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
        for inner in (n for graph in subgraphs for n in graph.all_nodes()):
            for index in range(len(inner.inputs)):
                inner.replace_input_with(index, None)


def _drop_unused_input(graph: ir.Graph, value: ir.Value) -> bool:
    """Drop an input nothing reads any more (its dead readers are removed first, in the same round)."""
    if value not in graph.inputs or value.uses() or value.is_graph_output():
        return False
    graph.inputs.remove(value)
    return True


def _unlist_initializers(model: ir.Model, values: list[ir.Value]) -> bool:
    """The initializers stay, as constants; only their listing as inputs goes, which IR 3 does not allow."""
    graph = model.graph
    listed = [value for value in values if value.is_initializer() and value in graph.inputs]
    for value in listed:
        graph.inputs.remove(value)
    if listed and (model.ir_version or 0) < _IR_WITHOUT_LISTING:
        model.ir_version = _IR_WITHOUT_LISTING
    return bool(listed)


def _remove_function(model: ir.Model, key: ir.OperatorIdentifier) -> bool:
    """Remove an uncalled function, then its domain's opset import if no node, function or function import
    names the domain any more."""
    if key not in model.functions:
        return False
    domain = model.functions.pop(key).domain
    if domain not in ("", "ai.onnx") and not _uses_domain(model, domain):
        model.opset_imports.pop(domain, None)
    return True


def _uses_domain(model: ir.Model, domain: str) -> bool:
    functions = model.functions.values()
    if any(f.domain == domain or domain in f.opset_imports for f in functions):
        return True
    return any(node.domain == domain for graph, _ in iter_graph_sites(model) for node in graph)
