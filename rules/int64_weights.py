"""GD001 int64-weights: INT64 constants, and which of them TensorRT's cast to INT32 would corrupt.

What it finds
    INT64 initializers, Constant nodes and ConstantOfShape fill values, sorted into three kinds:

    - values that all fit in INT32: one summary finding (info) for all of them;
    - values outside INT32 used as clamp-safe sentinels (info, per tensor): Slice `starts`/`ends`
      (INT64_MAX, INT64_MIN: "to the end", "from the end"), a Loop trip count, and bounds that clamping
      leaves without effect (a Min or Clip `max` above INT32, a Max or Clip `min` below it), reached
      directly or through nodes that only move values (Concat, Unsqueeze, Squeeze, Reshape, Identity,
      Cast to INT64, Gather/Slice/Split/Expand/Tile/Transpose/Flatten of the data, If/Loop outputs);
    - values outside INT32 anywhere else (error, per tensor): Gather indices, arithmetic, Range,
      ConstantOfShape/Expand shapes, Equal/Where comparisons and fills such as INT64_MIN masks.

    Only constants are checked, not the range of INT64 graph inputs. Out-of-range constants that no node
    reads are left to dead-code checks.

Why it matters
    TensorRT 8.x (still the parser of JetPack 5) imports INT64 weights as INT32 and logs once per model
    "Your ONNX model has been generated with INT64 weights ... Attempting to cast down to INT32", naming
    no tensor. Values outside INT32 are clamped to -2147483648 or 2147483647 (a plain numpy
    `astype(np.int32)` wraps them instead: INT64_MAX becomes -1). For a Slice end that still means
    "to the end" unless a dimension reaches 2^31 elements; for an index, a shape, a comparison or a mask
    fill it silently changes what the model computes. TensorRT 10 added native INT64 for many layers.

How to fix
    Sentinels and values that fit need nothing: the warning is harmless for them. Keep them INT64 in the
    file: ONNX requires INT64 for Reshape `shape`, Expand `shape`, Tile `repeats`, ConstantOfShape's input,
    Unsqueeze/Squeeze/Reduce `axes`, Pad `pads`, Resize `sizes`, TopK `K`, Split `split`, Loop `M` and
    GatherND/ScatterND `indices`; TensorRT narrows them itself. Slice starts/ends/axes/steps and Gather
    indices may be INT32 or INT64. For an error, bring the value into INT32 range in the model code
    (e.g. `torch.iinfo(torch.int32).min` as a mask fill, indices below 2^31) and re-export.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx.defs
import onnx_ir as ir

from graphdoctor.analysis.constants import const_tensor, iter_constant_values
from graphdoctor.analysis.format import format_bytes
from graphdoctor.analysis.graph import node_label, opset_version, subgraph_owners
from graphdoctor.analysis.tensor_data import iter_chunks
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "check"]

_INT64 = ir.DataType.INT64
_I32_MIN, _I32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)
# Nodes that move values without computing on them, and the inputs whose values they move.
_MOVES_DATA = {"Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose"}
_MOVES_DATA |= {"Gather", "Slice", "Split", "Expand", "Tile"}
_READS_SHAPE_ONLY = {"Shape", "Size"}  # the values never matter to these
_LISTED = 2  # nodes named in a 'via' chain

META = RuleMeta(
    code="GD001",
    name="int64-weights",
    kind=RuleKind.PROBLEM,
    severity=Severity.ERROR,
    summary="INT64 constants: harmless, clamp-safe sentinels, or values TensorRT's cast to INT32 corrupts",
    messages={
        "fit": Message(
            "{summary} in INT32: TensorRT's cast to INT32 is lossless for them, so its INT64-weights"
            " warning is harmless for these",
            help="nothing to do; keep them INT64 in the file (ONNX requires INT64 for shape inputs such as"
            " Reshape/Expand shape, Tile repeats and Unsqueeze axes, and TensorRT narrows them itself)",
            severity=Severity.INFO,
        ),
        "sentinel": Message(
            "INT64 {kind} '{name}' holds {value}, outside INT32, as {role} of {op} '{consumer}'{via}:"
            " TensorRT clamps it to {clamped}, which {effect}",
            help="nothing to do: a clamp-safe sentinel; keep it INT64 in the file (TensorRT narrows it itself)",
            severity=Severity.INFO,
        ),
        "out_of_range": Message(
            "INT64 {kind} '{name}' holds {value} ({outside} of {size} value(s) outside INT32) and feeds"
            " {target}{via}: TensorRT clamps it to {clamped} (numpy's astype(int32) would wrap it to {wrapped}),"
            " so the model computes with a different value{more}",
            help="{advice}",
            severity=Severity.ERROR,
        ),
    },
)


@dataclass(frozen=True)
class _Source:
    """An INT64 tensor stored in the model, and the value through which nodes read it."""

    value: ir.Value
    tensor: ir.TensorProtocol
    kind: str  # 'initializer' | 'Constant' | 'ConstantOfShape value'
    name: str


@dataclass(frozen=True)
class _Range:
    size: int
    low: int
    high: int
    outside: int  # elements outside INT32

    @property
    def example(self) -> int:
        """The value to show: the largest above INT32 if any, else the smallest below."""
        return self.high if self.high > _I32_MAX else self.low


@dataclass(frozen=True)
class _Sink:
    """Where a traced value stops moving: a node input that uses it, or a graph output."""

    node: ir.Node | None
    index: int
    output: ir.Value | None  # the graph output, when node is None
    via: tuple[ir.Node, ...]


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    """One summary for the constants that fit, one finding per out-of-range constant that a node reads."""
    fitting: list[tuple[_Source, int]] = []
    total = 0
    owners: dict[int, ir.Node] | None = None  # walked only when some value is out of range
    for source in _sources(ctx):
        value_range = _value_range(source.tensor)
        if value_range is None:
            continue
        total += 1
        if value_range.outside == 0:
            fitting.append((source, source.tensor.nbytes))
        else:
            owners = subgraph_owners(ctx.analysis.nodes()) if owners is None else owners
            finding = _classify(model, ctx, source, value_range, owners)
            if finding is not None:
                yield finding
    if fitting:
        yield _report_fitting(ctx, fitting, total)


def _sources(ctx: RuleContext) -> Iterator[_Source]:
    """INT64 initializers, Constant outputs and ConstantOfShape fills of every graph, readable ones only."""
    for graph, _ in ctx.analysis.graph_sites:
        for value in iter_constant_values(graph):
            tensor = const_tensor(value)
            if tensor is not None and tensor.dtype == _INT64 and ctx.analysis.is_readable(tensor):
                kind = "initializer" if value.const_value is not None else "Constant"
                yield _Source(value, tensor, kind, value.name or "?")
        for node in graph:
            fill = _int64_fill(node)
            if fill is not None and ctx.analysis.is_readable(fill):
                yield _Source(node.outputs[0], fill, "ConstantOfShape value", node_label(node))


def _int64_fill(node: ir.Node) -> ir.TensorProtocol | None:
    """The INT64 fill value of a ConstantOfShape node (an INT64 weight to TensorRT too)."""
    if node.op_type != "ConstantOfShape" or not _is_ai_onnx(node) or len(node.outputs) != 1:
        return None
    fill = node.attributes.get("value")
    if fill is None or fill.is_ref() or fill.type != ir.AttributeType.TENSOR:
        return None
    return fill.value if fill.value.dtype == _INT64 else None


def _value_range(tensor: ir.TensorProtocol) -> _Range | None:
    """Min, max and the count outside INT32, read in bounded memory; None if the data cannot be read."""
    low, high, outside, size = 0, 0, 0, 0
    try:
        for chunk in iter_chunks(tensor):
            if chunk.size == 0:
                continue
            chunk_low, chunk_high = int(chunk.min()), int(chunk.max())
            low, high = (chunk_low, chunk_high) if size == 0 else (min(low, chunk_low), max(high, chunk_high))
            outside += int(np.count_nonzero((chunk < _I32_MIN) | (chunk > _I32_MAX)))
            size += chunk.size
    except (OSError, ValueError, TypeError):
        return None
    return _Range(size, low, high, outside)


def _classify(
    model: ir.Model, ctx: RuleContext, source: _Source, value_range: _Range, owners: dict[int, ir.Node]
) -> Finding | None:
    """Error if any use is harmed by clamping; info naming the first use if all are clamp-safe."""
    sinks = _trace(source.value, owners)
    if not sinks:
        return None  # nothing reads it (dead code)
    harmed = [sink for sink in sinks if _clamp_safe_role(sink, value_range) is None]
    if harmed:
        return _report_out_of_range(model, ctx, source, value_range, harmed)
    return _report_sentinel(ctx, source, value_range, sinks[0])


def _trace(start: ir.Value, owners: dict[int, ir.Node]) -> list[_Sink]:
    """Follow the value through nodes that only move values; return where it is used for real.

    Values returned by an If branch or a Loop body are followed on through the node's outputs.
    """
    sinks: list[_Sink] = []
    seen = {id(start)}
    queue: deque[tuple[ir.Value, tuple[ir.Node, ...]]] = deque([(start, ())])

    def follow(value: ir.Value, via: tuple[ir.Node, ...]) -> None:
        if id(value) not in seen:
            seen.add(id(value))
            queue.append((value, via))

    while queue:
        value, via = queue.popleft()
        if value.is_graph_output():
            owner = owners.get(id(value.graph))
            outer = _outer_value(owner, value) if owner is not None else None
            if outer is None:
                sinks.append(_Sink(None, -1, value, via))
            else:
                follow(outer, (*via, owner))
        for use in value.uses():
            node, index = use.node, use.idx
            if _is_ai_onnx(node) and node.op_type in _READS_SHAPE_ONLY:
                continue
            if not _moves_value(node, index):
                sinks.append(_Sink(node, index, None, via))
                continue
            for output in node.outputs:
                follow(output, (*via, node))
    return sinks


def _outer_value(owner: ir.Node, output: ir.Value) -> ir.Value | None:
    """The owner's output that a subgraph output becomes: If branch i -> output i; Loop body i -> i-1."""
    graph = output.graph
    if graph is None or not _is_ai_onnx(owner):
        return None
    position = next((i for i, v in enumerate(graph.outputs) if v is output), None)
    if position is None:
        return None
    if owner.op_type == "If":
        index = position
    elif owner.op_type == "Loop":
        index = position - 1  # the body's first output is the loop condition
    else:
        return None
    return owner.outputs[index] if 0 <= index < len(owner.outputs) else None


def _is_ai_onnx(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _moves_value(node: ir.Node, index: int) -> bool:
    """Whether the node passes the values of input `index` on unchanged (so clamping happens later)."""
    if not _is_ai_onnx(node):
        return False
    if node.op_type == "Concat":
        return True
    if node.op_type == "Cast":
        return index == 0 and node.attributes.get_int("to") == _INT64
    return index == 0 and node.op_type in _MOVES_DATA


def _clamp_safe_role(sink: _Sink, value_range: _Range) -> tuple[str, str] | None:
    """(role, effect) when clamping to INT32 leaves the result unchanged at this use; else None."""
    node, index = sink.node, sink.index
    if node is None or not _is_ai_onnx(node):
        return None
    above_only, below_only = value_range.low >= _I32_MIN, value_range.high <= _I32_MAX
    op = node.op_type
    if op == "Slice" and index in (1, 2):
        role = "the starts" if index == 1 else "the ends"
        return role, "selects the same elements unless the sliced dimension reaches 2^31"
    if op == "Loop" and index == 0 and above_only:
        return "the trip count", "loops the same unless the loop runs 2^31 times or more"
    if (op == "Min" and above_only) or (op == "Max" and below_only):
        return "a bound", "bounds INT32 values the same"
    if op == "Clip" and ((index == 1 and below_only) or (index == 2 and above_only)):
        return "the min" if index == 1 else "the max", "bounds INT32 values the same"
    return None


def _clamped(value: int) -> int:
    return min(max(value, _I32_MIN), _I32_MAX)


def _wrapped(value: int) -> int:
    return int(np.array(value, dtype=np.int64).astype(np.int32))


def _via(sink: _Sink) -> str:
    if not sink.via:
        return ""
    labels = [f"{node.op_type} '{node_label(node)}'" for node in sink.via[:_LISTED]]
    more = f" and {len(sink.via) - _LISTED} more" if len(sink.via) > _LISTED else ""
    return f" (via {', '.join(labels)}{more})"


def _report_fitting(ctx: RuleContext, fitting: list[tuple[_Source, int]], total: int) -> Finding:
    count, nbytes = len(fitting), sum(n for _, n in fitting)
    if total == 1:
        which = "the only INT64 constant"
    else:
        which = f"all {total} INT64 constants" if count == total else f"{count} of {total} INT64 constants"
    verb = "fits" if count == 1 else "fit"
    return ctx.report(
        "fit",
        values=[source.value for source, _ in fitting],
        summary=f"{which} ({format_bytes(nbytes)}) {verb}",
        count=count,
        total=total,
        size_bytes=nbytes,
    )


def _report_sentinel(ctx: RuleContext, source: _Source, value_range: _Range, sink: _Sink) -> Finding:
    assert sink.node is not None
    role, effect = _clamp_safe_role(sink, value_range) or ("", "")
    return ctx.report(
        "sentinel",
        node=sink.node,
        values=[source.value],
        kind=source.kind,
        name=source.name,
        value=value_range.example,
        role=role,
        op=sink.node.op_type,
        consumer=node_label(sink.node),
        via=_via(sink),
        clamped=_clamped(value_range.example),
        effect=effect,
    )


def _report_out_of_range(
    model: ir.Model, ctx: RuleContext, source: _Source, value_range: _Range, harmed: list[_Sink]
) -> Finding:
    sink = harmed[0]
    more = len(harmed) - 1
    if sink.node is not None:
        input_name = _input_name(model, sink.node, sink.index)
        target = f"input '{input_name}' of {sink.node.op_type} '{node_label(sink.node)}'"
        op, consumer = sink.node.op_type, node_label(sink.node)
    else:
        input_name, op, consumer = "", "graph output", sink.output.name if sink.output else "?"
        target = f"graph output '{consumer}'"
    return ctx.report(
        "out_of_range",
        node=sink.node,
        values=[source.value],
        kind=source.kind,
        name=source.name,
        value=value_range.example,
        outside=value_range.outside,
        size=value_range.size,
        target=target,
        op=op,
        consumer=consumer,
        input=input_name,
        via=_via(sink),
        clamped=_clamped(value_range.example),
        wrapped=_wrapped(value_range.example),
        more=f"; {more} other use(s) are affected too" if more else "",
        advice=_advice(model, sink, input_name),
    )


def _advice(model: ir.Model, sink: _Sink, input_name: str) -> str:
    bring = "bring the value into INT32 range in the model code and re-export"
    if sink.node is not None and _requires_int64(model, sink.node, sink.index):
        return (
            f"{bring}; keep the tensor INT64 in the file: ONNX requires INT64 for '{input_name}' of"
            f" {sink.node.op_type}, and TensorRT narrows it itself"
        )
    return f"{bring} (e.g. torch.iinfo(torch.int32).min as a mask fill instead of the INT64 minimum)"


@functools.lru_cache(maxsize=512)
def _formal_input(op_type: str, version: int, domain: str, index: int) -> tuple[str, tuple[str, ...]] | None:
    """The schema's name for input `index` and the types it allows; None for unknown ops."""
    try:
        schema = onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None
    if not schema.inputs:
        return None
    formal = schema.inputs[min(index, len(schema.inputs) - 1)]
    allowed = next(
        (tuple(c.allowed_type_strs) for c in schema.type_constraints if c.type_param_str == formal.type_str),
        (formal.type_str,),
    )
    return formal.name, allowed


def _schema_input(model: ir.Model, node: ir.Node, index: int) -> tuple[str, tuple[str, ...]] | None:
    version = opset_version(model, node.domain)
    if version is None:
        return None
    return _formal_input(node.op_type, version, "" if _is_ai_onnx(node) else node.domain, index)


def _input_name(model: ir.Model, node: ir.Node, index: int) -> str:
    formal = _schema_input(model, node, index)
    return formal[0] if formal else f"#{index}"


def _requires_int64(model: ir.Model, node: ir.Node, index: int) -> bool:
    formal = _schema_input(model, node, index)
    return formal is not None and formal[1] == ("tensor(int64)",)
