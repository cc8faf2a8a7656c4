"""GD003 duplicate-initializers: the same tensor stored more than once, and tied weights stored as W and Wᵀ.

What it finds
    Initializers and Constant values, across the main graph, subgraphs and functions, that hold the same
    bytes with the same dtype and shape; and 2-D weights whose transpose is stored too (an embedding
    [V,D] and an output head [D,V] tied to it). Each group is reported once, with the bytes it wastes.
    Tensors smaller than `min-bytes` are skipped: small shape constants repeat in every export and cost
    nothing.

Why it matters
    Every copy is loaded, stored and shipped: files grow past the checkpoint's size (the 2 GB protobuf
    limit arrives sooner), engine builds and downloads take longer, and device memory holds the copy twice.
    The dynamo exporter keeps identical layers apart (its optimizer only merges tensors of up to 1024
    elements), and constant folding of `Transpose(W)` turns tied embeddings into two stored matrices
    (pytorch/pytorch#108342); simplifiers that fold constants make both worse.

How to fix
    `graphdoctor fix` keeps the first tensor of each group and makes the readers of the others read it,
    then drops the copies (safe: outputs are bit-identical, graph outputs keep their names). A value is
    only shared where ONNX lets it be read: subgraphs read the tensors of the graphs around them, never
    the reverse, and a function sees nothing outside its body; so copies in sibling subgraphs or in
    different functions stay, and so do initializers listed as graph inputs (callers may override them).
    For W and Wᵀ, `graphdoctor fix --dedup-transposed` drops the later of the two and computes it with one
    Transpose node placed before its first reader (bit-exact; it costs one transpose per run).
    Exporting with the dynamo exporter keeps tied weights tied.

Options
    min-bytes (1024): ignore tensors smaller than this.
    warn-bytes (1048576): wasted bytes from which a group is a warning; smaller groups are info.
    transposed (true): also look for W/Wᵀ pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import onnx_ir as ir

from graphdoctor.analysis.digests import StoredTensor, tensor_digests
from graphdoctor.analysis.format import format_bytes, format_dtype, format_shape
from graphdoctor.analysis.graph import subgraph_owners
from graphdoctor.engine import RuleContext
from graphdoctor.rewrite import is_attached, owning_graph, remove_initializer, remove_node, replace_value
from graphdoctor.rule import Finding, FixSafety, Message, RuleKind, RuleMeta, Severity

if TYPE_CHECKING:
    from graphdoctor.analysis.context import Analysis

__all__ = ["META", "Options", "check"]

_LISTED = 3  # names quoted in a message; the rest are counted
_MERGE_HELP = "`graphdoctor fix` merges them (safe)"
_APART = "graph inputs (callers may override them) or sit in subgraphs or functions that cannot read one shared tensor"
_NO_TRANSPOSE_HELP = (
    "no fix: one of them is a graph input (callers may override it), or '{original}' cannot be read where '{name}'"
    " is (a sibling subgraph or another function)"
)
_TRANSPOSE_HELP = "store once and add a Transpose: `graphdoctor fix --dedup-transposed` (adds one node)"


@dataclass(frozen=True)
class Options:
    min_bytes: int = 1024  # smaller tensors are skipped: repeated shape constants are noise, not waste
    warn_bytes: int = 1024 * 1024  # wasted bytes from which a group is a warning
    transposed: bool = True  # look for W/Wᵀ pairs too


META = RuleMeta(
    code="GD003",
    name="duplicate-initializers",
    kind=RuleKind.SUGGESTION,
    severity=Severity.WARNING,
    summary="identical tensors stored more than once, tied weights stored as W and Wᵀ; bytes wasted",
    fix=FixSafety.SAFE,
    options=Options(),
    messages={
        "identical": Message(
            "{kind} '{name}' {type} is stored {count} times (also {others}): {wasted_size} wasted",
            help="{action}",
        ),
        "transposed": Message(
            "'{name}' {type} is the transpose of '{original}' {original_type}: {size} stored twice",
            help="{action}",
            opt_in="dedup-transposed",
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    options: Options = ctx.options
    digests = tensor_digests(ctx.analysis)
    scopes = _Scopes(ctx.analysis)
    for group in digests.identical_groups(options.min_bytes):
        yield _report_identical(ctx, group, scopes, options)
    if options.transposed and ctx.wants("transposed"):
        for original, transposed in digests.transposed_pairs(options.min_bytes):
            yield _report_transposed(ctx, original, transposed, scopes, options)


def _severity(wasted: int, options: Options) -> Severity:
    return Severity.WARNING if wasted >= options.warn_bytes else Severity.INFO


def _type(stored: StoredTensor) -> str:
    return f"{format_dtype(stored.dtype)}{format_shape(ir.Shape(stored.dims))}"


def _quoted(names: list[str]) -> str:
    """'a', 'b', 'c' and 5 more."""
    listed = ", ".join(f"'{name}'" for name in names[:_LISTED])
    return listed if len(names) <= _LISTED else f"{listed} and {len(names) - _LISTED} more"


def _report_identical(ctx: RuleContext, group: list[StoredTensor], scopes: _Scopes, options: Options) -> Finding:
    first = group[0]
    plan = _merge_plan(group, scopes)
    wasted = first.nbytes * (len(group) - 1)
    merged = sum(len(merge.copies) for merge in plan)
    if merged == len(group) - 1:
        action = _MERGE_HELP
    elif merged:
        action = f"`graphdoctor fix` merges {merged} of the copies (safe); the others are {_APART}"
    else:
        action = f"no fix: the copies are {_APART}; share the tensor in the model before export"
    return ctx.report(
        "identical",
        node=first.node,
        values=[t.value for t in group],
        nbytes=wasted,
        severity=_severity(wasted, options),
        repair=partial(_merge, plan, scopes) if plan else None,
        kind=first.kind,
        name=first.name,
        type=_type(first),
        count=len(group),
        others=_quoted([t.name for t in group[1:]]),
        wasted_size=format_bytes(wasted),
        wasted=wasted,
        tensor_nbytes=first.nbytes,
        action=action,
    )


def _report_transposed(
    ctx: RuleContext,
    original: StoredTensor,
    transposed: StoredTensor,
    scopes: _Scopes,
    options: Options,
) -> Finding:
    plan = _transpose_plan(original, transposed, scopes)
    action = _TRANSPOSE_HELP if plan else _NO_TRANSPOSE_HELP.format(name=transposed.name, original=original.name)
    return ctx.report(
        "transposed",
        node=transposed.node,
        values=[transposed.value, original.value],
        nbytes=transposed.nbytes,
        severity=_severity(transposed.nbytes, options),
        repair=partial(_store_as_transpose, *plan, scopes) if plan else None,
        name=transposed.name,
        type=_type(transposed),
        original=original.name,
        original_type=_type(original),
        size=format_bytes(transposed.nbytes),
        wasted=transposed.nbytes,
        action=action,
    )


# --- where a tensor can be read ------------------------------------------------------------------------------


class _Scopes:
    """Which graph reads which: a subgraph reads the values of the graphs around it, never the reverse, and a
    function's body reads nothing outside it (its graph has no owner)."""

    def __init__(self, analysis: Analysis) -> None:
        self._owner = subgraph_owners(node for site, _ in analysis.graph_sites for node in site)

    def sees(self, reader: ir.Graph, graph: ir.Graph) -> bool:
        """Whether nodes of `reader` can read the values of `graph`: the same graph or one enclosing it."""
        current: ir.Graph | None = reader
        while current is not graph:
            owner = self._owner.get(id(current))
            if owner is None:
                return False
            current = owner.graph
        return True

    def holder(self, node: ir.Node, graph: ir.Graph) -> ir.Node | None:
        """The node of `graph` that is `node` or holds it in a (nested) subgraph; None if `graph` does not."""
        current = node
        while current.graph is not graph:
            owner = self._owner.get(id(current.graph))
            if owner is None:
                return None
            current = owner
        return current

    def first_reader(self, value: ir.Value, graph: ir.Graph) -> ir.Node | None:
        """The first node of `graph` that reads `value`, itself or in its subgraphs."""
        holders = {id(self.holder(use.node, graph)) for use in value.uses()}
        return next((node for node in graph if id(node) in holders), None)

    def hoist_before_readers(self, stored: StoredTensor) -> None:
        """A Constant node that gained readers (merged copies, a Transpose) must come before all of them; a
        Constant has no inputs, so moving it earlier is always valid."""
        node = stored.node
        graph = node.graph if node is not None else None
        if node is None or graph is None:  # an initializer: readable from anywhere in its scope
            return
        first = self.first_reader(stored.value, graph)
        if first is not None and _comes_before(graph, first, node):
            graph.remove(node)
            graph.insert_before(first, node)


def _comes_before(graph: ir.Graph, a: ir.Node, b: ir.Node) -> bool:
    return next(node for node in graph if node is a or node is b) is a


def _graph(stored: StoredTensor) -> ir.Graph:
    graph = owning_graph(stored.value)
    assert graph is not None, "a stored tensor belongs to a graph"
    return graph


def _is_stored(stored: StoredTensor) -> bool:
    """Still in the model (an earlier repair of the round may have dropped it)."""
    if stored.node is not None:
        return is_attached(stored.node)
    graph = stored.value.graph
    return graph is not None and graph.initializers.get(stored.value.name or "") is stored.value


def _drop(stored: StoredTensor, replacement: ir.Value) -> None:
    """Make the readers of a stored tensor read `replacement`, and drop the tensor. An initializer leaves the
    initializers first: a graph output can only pass its name on once the initializer releases it."""
    if stored.node is None:
        remove_initializer(stored.value)
        replace_value(stored.value, replacement)
    else:
        replace_value(stored.value, replacement)
        remove_node(stored.node)


# --- identical copies ----------------------------------------------------------------------------------------


@dataclass
class _Merge:
    keeper: StoredTensor
    copies: list[StoredTensor] = field(default_factory=list)


def _merge_plan(group: list[StoredTensor], scopes: _Scopes) -> list[_Merge]:
    """Each member merges into the first earlier keeper it can read, else keeps its own tensor. Graphs are
    listed before their subgraphs, so a main-graph tensor is the keeper of the copies in its subgraphs."""
    merges: list[_Merge] = []
    for member in group:
        if member.value.is_graph_input():
            continue  # callers may override it: neither a copy nor a keeper
        target = next((merge for merge in merges if _can_read(member, merge.keeper, scopes)), None)
        if target is None:
            merges.append(_Merge(member))
        else:
            target.copies.append(member)
    return [merge for merge in merges if merge.copies]


def _can_read(copy: StoredTensor, keeper: StoredTensor, scopes: _Scopes) -> bool:
    """The copy's readers see the keeper. A copy that is its graph's output would hand its name to the keeper
    (`replace_value`): a Constant of another graph cannot take it, so that copy stays."""
    copy_graph, keeper_graph = _graph(copy), _graph(keeper)
    if not scopes.sees(copy_graph, keeper_graph):
        return False
    return not (copy.value.is_graph_output() and keeper.node is not None and copy_graph is not keeper_graph)


def _merge(plan: list[_Merge], scopes: _Scopes) -> bool:
    merged = False
    for merge in plan:
        if not _is_stored(merge.keeper):
            continue
        for copy in merge.copies:
            if _is_stored(copy):
                _drop(copy, merge.keeper.value)
                merged = True
        scopes.hoist_before_readers(merge.keeper)
    return merged


# --- W and Wᵀ ------------------------------------------------------------------------------------------------


def _transpose_plan(
    original: StoredTensor, transposed: StoredTensor, scopes: _Scopes
) -> tuple[StoredTensor, StoredTensor] | None:
    """(kept, recomputed): the later tensor becomes Transpose(earlier) where the earlier can be read. Graphs
    are listed before their subgraphs, so the earlier one is never the one nested deeper."""
    if original.value.is_graph_input() or transposed.value.is_graph_input():
        return None
    return (original, transposed) if scopes.sees(_graph(transposed), _graph(original)) else None


def _store_as_transpose(kept: StoredTensor, dropped: StoredTensor, scopes: _Scopes) -> bool:
    """Replace `dropped` by Transpose(kept), placed right before its first reader, under its name."""
    if not (_is_stored(kept) and _is_stored(dropped)):
        return False
    graph, name = _graph(dropped), dropped.value.name
    transpose = ir.Node("", "Transpose", [kept.value], attributes=[ir.AttrInt64s("perm", [1, 0])], name=name)
    output = transpose.outputs[0]
    output.type, output.shape = ir.TensorType(dropped.dtype), ir.Shape(dropped.dims)
    first = scopes.first_reader(dropped.value, graph)
    if first is None:  # only a graph output
        graph.append(transpose)
    else:
        graph.insert_before(first, transpose)
    _drop(dropped, output)
    output.name = name  # readers see the same name; a graph output got it from replace_value already
    scopes.hoist_before_readers(kept)
    return True
