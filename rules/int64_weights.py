"""GD001 int64-weights: INT64 constants, which of them TensorRT 8.x's cast to INT32 would corrupt, and INT64
shape arithmetic on static shapes.

What it finds
    With `--target tensorrt-8.6`, INT64 initializers, Constant nodes and ConstantOfShape fill values, sorted
    into kinds (TensorRT 9.0 and later keep INT64 natively, as ONNX Runtime does: for those targets, the
    default tensorrt-10 among them, none of these are reported, since no cast happens; INT64 dims beyond
    INT32 are held too, TensorRT 10's Dims being 64-bit):

    - values that all fit in INT32: one summary finding (info) for all of them;
    - values outside INT32 used as clamp-safe sentinels (info, per tensor): Slice `starts`/`ends`
      (INT64_MAX, INT64_MIN: "to the end", "from the end"), a Loop trip count and NonMaxSuppression's
      max_output_boxes_per_class (torchvision's INT64_MAX: every box); and, separately, bounds
      that clamping leaves without effect on INT32 values (a Min or Clip `max` above INT32, a Max or Clip
      `min` below it); reached directly or through nodes that only move values (Concat, Unsqueeze,
      Squeeze, Reshape, Identity, Cast to INT64, Gather/Slice/Split/Expand/Tile/Transpose/Flatten of the
      data, If/Loop outputs);
    - values outside INT32 anywhere else (error, per tensor): Gather indices, arithmetic, Range,
      ConstantOfShape/Expand shapes, Equal/Where comparisons and fills such as INT64_MIN masks.

    Only constants are checked, not the range of INT64 graph inputs. Out-of-range constants that no node
    reads are left to dead-code checks.

    It also finds shape arithmetic on static shapes (info, one finding per computed value that a runtime
    node reads): `Shape`/`Size` of a main-graph value whose dims are static (all of them, or the ones a
    Shape `start`/`end` or a Gather/Slice of the shape selects), and the integer and bool nodes computing
    on such values and constants (Gather, Slice, Concat, Unsqueeze, Squeeze, Reshape, Add, Sub, Mul, Div,
    Cast, Equal, Where, Range, ConstantOfShape, ...). The values are known before run time; exporters
    still write them as INT64 nodes (TorchScript writes `x.shape[1] // 4` as Shape → Gather → Div).

Why it matters
    TensorRT 8.x (still the parser of JetPack 5) imports INT64 weights as INT32 and logs once per model
    "Your ONNX model has been generated with INT64 weights ... Attempting to cast down to INT32", naming
    no tensor. Values outside INT32 are clamped to -2147483648 or 2147483647 (a plain numpy
    `astype(np.int32)` wraps them instead: INT64_MAX becomes -1). For a Slice end that still means
    "to the end" unless a dimension reaches 2^31 elements; for an index, a shape, a comparison or a mask
    fill it silently changes what the model computes. TensorRT 9.0 dropped the cast ("The ONNX parser no
    longer automatically casts INT64 to INT32", onnx-tensorrt Changelog 9.0 EA): INT64 stays INT64, and
    INT64 graph inputs and outputs need INT64 bindings.
    Shape arithmetic on static shapes is INT64 computation that TensorRT turns into shape tensors at
    build time and ONNX Runtime runs as small kernels at every call: nodes that need not exist.

How to fix
    `graphdoctor fix` (safe: outputs bit-identical, graph I/O unchanged):
    - clamps sentinels read only as Slice starts/ends, a Loop trip count or an NMS box limit to INT32
      (2147483647 or -2147483648) in the file, keeping the tensor INT64 (ONNX requires INT64 for some
      inputs, and Slice accepts it): Slice clamps starts and ends to the dimension, so the result is the
      same for every dimension below 2^31 elements, as it is for a loop that stops before 2^31 iterations
      and for a class with fewer than 2^31 candidate boxes;
    - folds shape arithmetic on static shapes into constants (evaluated with ONNX's reference runtime,
      integer and bool results only, each at most `fold_max_bytes` or no larger than its inputs) and
      removes the nodes only it needed. It never folds in functions or subgraphs.
    It leaves bounds (Min/Max/Clip) alone: clamping them in the file would change the results for INT64
    inputs outside INT32. It cannot repair an out-of-range value: bring the value into INT32 range in the
    model code (e.g. `torch.iinfo(torch.int32).min` as a mask fill, indices below 2^31) and re-export.
    Values that fit need nothing: keep them INT64 in the file; ONNX requires INT64 for Reshape `shape`,
    Expand `shape`, Tile `repeats`, ConstantOfShape's input, Unsqueeze/Squeeze/Reduce `axes`, Pad
    `pads`, Resize `sizes`, TopK `K`, Split `split`, Loop `M` and GatherND/ScatterND `indices`; TensorRT
    narrows them itself. Slice starts/ends/axes/steps and Gather indices may be INT32 or INT64.

Options
    fold_max_bytes (1024): fold a static shape value only when it takes at most this many bytes (or no
    more than the constants it is computed from).
"""

from __future__ import annotations

import functools
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.defs
import onnx_ir as ir

from graphdoctor import rewrite
from graphdoctor.analysis.constants import const_tensor, iter_constant_values
from graphdoctor.analysis.format import format_bytes, format_dtype, format_shape, format_type
from graphdoctor.analysis.graph import node_label, opset_version, subgraph_owners
from graphdoctor.analysis.tensor_data import iter_chunks
from graphdoctor.engine import RuleContext
from graphdoctor.folding import FOLDABLE_OPS, MAX_OPERAND_BYTES, dim_bound, is_ai_onnx, remove_dead, run_node
from graphdoctor.rule import Finding, FixSafety, Message, RuleKind, RuleMeta, Severity
from graphdoctor.targets import Target

__all__ = ["META", "Options", "check", "describe_target"]

_INT64 = ir.DataType.INT64
_I32_MIN, _I32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)
# Nodes that move values without computing on them, and the inputs whose values they move.
_MOVES_DATA = {"Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose"}
_MOVES_DATA |= {"Gather", "Slice", "Split", "Expand", "Tile"}
_READS_SHAPE_ONLY = {"Shape", "Size"}  # the values never matter to these
_LISTED = 2  # nodes named in a 'via' chain
_FIX_HELP = "`graphdoctor fix` (safe)"
# Static shape arithmetic: the ops whose data input may be a partly known shape (they select dims).
_SELECTS_DIMS = {"Gather", "Slice"}
_PURE_OPS = FOLDABLE_OPS | _READS_SHAPE_ONLY | {"Constant"}  # removed once nothing reads them


@dataclass(frozen=True)
class Options:
    fold_max_bytes: int = 1024  # largest static shape value folded (unless no larger than its operands)


META = RuleMeta(
    code="GD001",
    name="int64-weights",
    kind=RuleKind.PROBLEM,
    severity=Severity.ERROR,
    summary="INT64 constants that TensorRT 8.x's cast to INT32 corrupts or clamps safely; INT64 shape arithmetic"
    " on static shapes",
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
            help=f"clamp it in the file: {_FIX_HELP} stores {{clamped}} and keeps the tensor INT64, which"
            " selects the same elements for any dimension below 2^31",
            severity=Severity.INFO,
            fix=FixSafety.SAFE,
        ),
        "sentinel_bound": Message(
            "INT64 {kind} '{name}' holds {value}, outside INT32, as {role} of {op} '{consumer}'{via}:"
            " TensorRT clamps it to {clamped}, which {effect}",
            help="nothing to do for TensorRT; keep it INT64 in the file. `graphdoctor fix` leaves it: clamped"
            " in the file, it would bound INT64 inputs outside INT32 differently",
            severity=Severity.INFO,
        ),
        "out_of_range": Message(
            "INT64 {kind} '{name}' holds {value} ({outside} of {size} value(s) outside INT32) and feeds"
            " {target}{via}: TensorRT clamps it to {clamped} (numpy's astype(int32) would wrap it to {wrapped}),"
            " so the model computes with a different value{more}",
            help="{advice}",
            severity=Severity.ERROR,
        ),
        "static_shape_arithmetic": Message(
            "{count} node(s) ({ops}) compute {result} at run time from the static shape of {sources}{reader}:"
            " INT64 arithmetic on values known before run time (TensorRT computes it as shape tensors at build"
            " time, ONNX Runtime as kernels on every run)",
            help=f"fold it: {_FIX_HELP} stores {{result}} as a constant and removes the nodes only it needed",
            severity=Severity.INFO,
            fix=FixSafety.SAFE,
        ),
    },
    options=Options(),
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
    """One summary for the constants that fit, one finding per out-of-range constant that a node reads, one
    per value of static shape arithmetic that a runtime node reads. Targets that keep INT64 (TensorRT 9.0 and
    later, ONNX Runtime) have no cast to INT32: only the shape arithmetic is reported there."""
    if not ctx.analysis.target.int64_native:
        yield from _check_int32_cast(model, ctx)
    yield from _check_static_shapes(model, ctx)


def describe_target(target: Target) -> list[str]:
    if target.int64_native:
        return ["INT64 is kept as INT64: only shape arithmetic on static shapes is reported"]
    return ["every INT64 weight is cast to INT32, clamping values outside it: sentinels (info), other values (error)"]


def _check_int32_cast(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    """What TensorRT 8.x's cast of every INT64 weight to INT32 does to each constant."""
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
    if node.op_type != "ConstantOfShape" or not is_ai_onnx(node) or len(node.outputs) != 1:
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
    bounds = [sink for sink in sinks if not _selects_the_same(sink)]
    if bounds:
        return _report_sentinel(ctx, source, value_range, bounds[0], "sentinel_bound")
    repair = None if source.value.is_graph_input() else _clamp_sentinel(source)
    return _report_sentinel(ctx, source, value_range, sinks[0], "sentinel", repair)


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
            if is_ai_onnx(node) and node.op_type in _READS_SHAPE_ONLY:
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
    if graph is None or not is_ai_onnx(owner):
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


def _moves_value(node: ir.Node, index: int) -> bool:
    """Whether the node passes the values of input `index` on unchanged (so clamping happens later)."""
    if not is_ai_onnx(node):
        return False
    if node.op_type == "Concat":
        return True
    if node.op_type == "Cast":
        return index == 0 and node.attributes.get_int("to") == _INT64
    return index == 0 and node.op_type in _MOVES_DATA


def _clamp_safe_role(sink: _Sink, value_range: _Range) -> tuple[str, str] | None:
    """(role, effect) when clamping to INT32 leaves the result unchanged at this use; else None."""
    node, index = sink.node, sink.index
    if node is None or not is_ai_onnx(node):
        return None
    above_only, below_only = value_range.low >= _I32_MIN, value_range.high <= _I32_MAX
    op = node.op_type
    if op == "Slice" and index in (1, 2):
        role = "the starts" if index == 1 else "the ends"
        return role, "selects the same elements unless the sliced dimension reaches 2^31"
    if op == "Loop" and index == 0 and above_only:
        return "the trip count", "loops the same unless the loop runs 2^31 times or more"
    if op == "NonMaxSuppression" and index == 2 and above_only:  # torchvision's "keep every box"
        return "max_output_boxes_per_class", "keeps the same boxes unless a class has 2^31 candidates"
    if (op == "Min" and above_only) or (op == "Max" and below_only):
        return "a bound", "bounds INT32 values the same"
    if op == "Clip" and ((index == 1 and below_only) or (index == 2 and above_only)):
        return "the min" if index == 1 else "the max", "bounds INT32 values the same"
    return None


def _selects_the_same(sink: _Sink) -> bool:
    """Uses whose result a clamp to INT32 in the file keeps bit for bit, whatever the inputs: Slice starts
    and ends (clamped to the dimension anyway), a Loop's trip count (for loops of fewer than 2^31 steps)."""
    node = sink.node
    return node is not None and (
        (node.op_type == "Slice" and sink.index in (1, 2))
        or (node.op_type in ("Loop", "NonMaxSuppression") and sink.index == (0 if node.op_type == "Loop" else 2))
    )


def _clamp_sentinel(source: _Source) -> Callable[[], bool]:
    """Store the sentinel clamped to INT32, still as INT64, where it is: the initializer, the Constant
    node's value or the ConstantOfShape fill."""

    def repair() -> bool:
        tensor = const_tensor(source.value) if source.kind != "ConstantOfShape value" else _int64_fill(_owner(source))
        if tensor is None:
            return False
        values = tensor.numpy()
        clamped = np.clip(values, _I32_MIN, _I32_MAX)
        if np.array_equal(clamped, values):
            return False  # an earlier repair did it
        _replace_tensor(source, ir.tensor(clamped, dtype=_INT64, name=tensor.name))
        return True

    return repair


def _owner(source: _Source) -> ir.Node:
    producer = source.value.producer()
    assert producer is not None  # Constant and ConstantOfShape sources are node outputs
    return producer


def _replace_tensor(source: _Source, tensor: ir.TensorProtocol) -> None:
    if source.kind == "initializer":
        source.value.const_value = tensor
        return
    node = _owner(source)
    if source.kind == "Constant":
        node.attributes.clear()  # value_ints and the like become a plain tensor
    node.attributes["value"] = ir.AttrTensor("value", tensor)


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


def _report_sentinel(
    ctx: RuleContext,
    source: _Source,
    value_range: _Range,
    sink: _Sink,
    message_id: str,
    repair: Callable[[], bool] | None = None,
) -> Finding:
    assert sink.node is not None
    role, effect = _clamp_safe_role(sink, value_range) or ("", "")
    return ctx.report(
        message_id,
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
        repair=repair,
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
    cannot = "`graphdoctor fix` cannot repair it: only the model code knows which INT32 value is meant"
    if sink.node is not None and _requires_int64(model, sink.node, sink.index):
        return (
            f"{bring}; keep the tensor INT64 in the file: ONNX requires INT64 for '{input_name}' of"
            f" {sink.node.op_type}, and TensorRT narrows it itself. {cannot}"
        )
    return f"{bring} (e.g. torch.iinfo(torch.int32).min as a mask fill instead of the INT64 minimum). {cannot}"


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
    return _formal_input(node.op_type, version, "" if is_ai_onnx(node) else node.domain, index)


def _input_name(model: ir.Model, node: ir.Node, index: int) -> str:
    formal = _schema_input(model, node, index)
    return formal[0] if formal else f"#{index}"


def _requires_int64(model: ir.Model, node: ir.Node, index: int) -> bool:
    formal = _schema_input(model, node, index)
    return formal is not None and formal[1] == ("tensor(int64)",)


# --- static shape arithmetic ------------------------------------------------------------------------------------


@dataclass
class _Static:
    """What the main graph computes before run time: values from static shapes (and the constants they
    combine with), partly known shapes, and the nodes that could be folded."""

    arrays: dict[int, np.ndarray | None] = field(default_factory=dict)  # id(value) -> its value; None: unknown
    partial: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # id(value) -> (value, known)
    from_shape: set[int] = field(default_factory=set)  # ids of values computed from a Shape or Size
    foldable: set[int] = field(default_factory=set)  # ids of nodes whose outputs are all known from a shape
    computed: dict[int, int] = field(default_factory=dict)  # id(node) -> graph position, for nodes on shapes


def _check_static_shapes(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    """One finding per value of static shape arithmetic that something computed at run time reads."""
    opset = opset_version(model)
    reads_shapes = any(is_ai_onnx(node) and node.op_type in _READS_SHAPE_ONLY for node in model.graph)
    # Shape inference only when there is a shape to read: ONNX's data propagation can be costly.
    if opset is None or not reads_shapes or not ctx.analysis.types_inferred:
        return
    static = _evaluate_graph(model.graph, opset, model.ir_version, ctx)
    for node in model.graph:
        if id(node) in static.foldable:
            for value in node.outputs:
                if _read_at_run_time(value, static):
                    yield _report_static(ctx, node, value, static)


def _evaluate_graph(graph: ir.Graph, opset: int, ir_version: int, ctx: RuleContext) -> _Static:
    static = _Static()
    for position, node in enumerate(graph):
        if not is_ai_onnx(node):
            continue
        if node.op_type in _READS_SHAPE_ONLY:
            _evaluate_shape(node, static, position)
        elif node.op_type in FOLDABLE_OPS:
            _evaluate_node(node, static, position, (opset, ir_version), ctx)
    return static


def _evaluate_shape(node: ir.Node, static: _Static, position: int) -> None:
    """Shape (its start/end dims) or Size of a value whose inferred dims are static, all or some."""
    data = node.inputs[0] if node.inputs else None
    if data is None or data.shape is None or len(node.outputs) != 1:
        return
    dims = list(data.shape)
    if node.op_type == "Shape":
        rank = len(dims)
        start, end = (
            dim_bound(node.attributes.get_int(key, default), rank) for key, default in (("start", 0), ("end", rank))
        )
        dims = dims[start:end]
    known = np.array([isinstance(d, int) for d in dims], dtype=bool)
    values = np.array([d if isinstance(d, int) else 0 for d in dims], dtype=np.int64)
    if node.op_type == "Size":
        values, known = np.array(int(np.prod(values)), dtype=np.int64), np.array(known.all())
    output = node.outputs[0]
    if known.all():
        static.arrays[id(output)] = values
        static.foldable.add(id(node))
    elif known.any():
        static.partial[id(output)] = (values, known)
        static.arrays[id(output)] = None  # not fully known
    else:
        return
    static.from_shape.add(id(output))
    static.computed[id(node)] = position


def _evaluate_node(node: ir.Node, static: _Static, position: int, versions: tuple[int, int], ctx: RuleContext) -> None:
    """Evaluate a node computing on a shape whose other operands are all known (a partly known shape only as
    the data that Gather or Slice selects from); keep integer and bool results within the size guard."""
    if not any(value is not None and id(value) in static.from_shape for value in node.inputs):
        return  # constants only: evaluated when shape arithmetic reads it (`_operand`), else not our business
    static.arrays.update((id(value), None) for value in node.outputs)  # unknown unless evaluated below
    operands: list[np.ndarray | None] = []
    partial: tuple[np.ndarray, np.ndarray] | None = None
    for index, value in enumerate(node.inputs):
        array = _operand(value, static, versions, ctx) if value is not None else None
        if value is not None and array is None:
            if index != 0 or node.op_type not in _SELECTS_DIMS or id(value) not in static.partial:
                return
            partial = static.partial[id(value)]
            array = partial[0]
        operands.append(array)
    budget = max(ctx.options.fold_max_bytes, sum(a.nbytes for a in operands if a is not None))
    results = run_node(node, operands, versions, budget)
    if results is None:
        return
    if partial is not None:
        known = run_node(node, [partial[1].astype(np.int64), *operands[1:]], versions, budget)
        if known is None:
            return
        if not known[0].all():
            static.partial[id(node.outputs[0])] = (results[0], known[0].astype(bool))
            static.from_shape.add(id(node.outputs[0]))
            static.computed[id(node)] = position
            return
    static.arrays.update((id(value), array) for value, array in zip(node.outputs, results, strict=True))
    static.from_shape.update(id(value) for value in node.outputs)
    static.foldable.add(id(node))
    static.computed[id(node)] = position


def _operand(value: ir.Value, static: _Static, versions: tuple[int, int], ctx: RuleContext) -> np.ndarray | None:
    """A value known before run time: computed from shapes, a small readable constant (not an overridable
    input), or computed from such constants by nodes of the folded kinds (an Unsqueeze of a Constant, say)."""
    if id(value) in static.arrays or value.is_graph_input():
        return static.arrays.get(id(value))
    tensor = const_tensor(value)
    producer = value.producer()
    if tensor is not None:
        unreadable = tensor.dtype in (ir.DataType.STRING, ir.DataType.UNDEFINED) or tensor.nbytes > MAX_OPERAND_BYTES
        array = None if unreadable else ctx.analysis.const_array(value)
    elif producer is not None and is_ai_onnx(producer) and producer.op_type in FOLDABLE_OPS:
        array = _evaluate_on_constants(producer, value, static, versions, ctx)
    else:
        array = None
    static.arrays[id(value)] = array  # None too: tried once
    return array


def _evaluate_on_constants(
    node: ir.Node, value: ir.Value, static: _Static, versions: tuple[int, int], ctx: RuleContext
) -> np.ndarray | None:
    operands = [None if v is None else _operand(v, static, versions, ctx) for v in node.inputs]
    if any(array is None for v, array in zip(node.inputs, operands, strict=True) if v is not None):
        return None
    results = run_node(node, operands, versions, ctx.options.fold_max_bytes)
    return None if results is None else results[list(node.outputs).index(value)]


def _read_at_run_time(value: ir.Value, static: _Static) -> bool:
    """Whether a folded value is read by something not folded with it: a node computed at run time, a
    subgraph, or the graph's outputs."""
    if static.arrays.get(id(value)) is None:
        return False
    return value.is_graph_output() or any(id(use.node) not in static.foldable for use in value.uses())


def _report_static(ctx: RuleContext, node: ir.Node, value: ir.Value, static: _Static) -> Finding:
    array = static.arrays[id(value)]
    assert array is not None  # `_read_at_run_time` checked
    region = _region(node, static)
    ops = Counter(n.op_type for n in region)
    shapes_of = list({id(n.inputs[0]): n.inputs[0] for n in region if n.op_type in _READS_SHAPE_ONLY}.values())
    sources = ", ".join(f"'{v.name}' ({format_type(v)})" for v in shapes_of[:_LISTED])
    if len(shapes_of) > _LISTED:
        sources += f" and {len(shapes_of) - _LISTED} more"
    return ctx.report(
        "static_shape_arithmetic",
        node=node,
        values=[value],
        count=len(region),
        ops=", ".join(op if n == 1 else f"{n} {op}" for op, n in ops.items()),
        result=_preview(array),
        sources=sources,
        reader=_first_reader(value, static),
        nbytes=int(array.nbytes),
        repair=_fold_static(value, array),
    )


def _region(node: ir.Node, static: _Static) -> list[ir.Node]:
    """The nodes computing `node`'s outputs from shapes, in graph order (constant-only nodes left out)."""
    found: dict[int, ir.Node] = {}
    pending = [node]
    while pending:
        current = pending.pop()
        if id(current) in found or id(current) not in static.computed:
            continue
        found[id(current)] = current
        pending.extend(v.producer() for v in current.inputs if v is not None and v.producer() is not None)
    return sorted(found.values(), key=lambda n: static.computed[id(n)])


def _first_reader(value: ir.Value, static: _Static) -> str:
    for use in value.uses():
        if id(use.node) not in static.foldable:
            return f" for {use.node.op_type} '{node_label(use.node)}'"
    return f" as graph output '{value.name}'"


def _preview(array: np.ndarray, limit: int = 8) -> str:
    values = ", ".join(str(v) for v in array.reshape(-1)[:limit].tolist())
    more = ", ..." if array.size > limit else ""
    dtype = format_dtype(ir.DataType.from_numpy(array.dtype))
    return f"{dtype}{format_shape(ir.Shape(array.shape))} {{{values}{more}}}"


def _fold_static(value: ir.Value, array: np.ndarray) -> Callable[[], bool]:
    """Replace the value by a constant, then remove the nodes (and constants) only it needed."""

    def repair() -> bool:
        producer = value.producer()
        if producer is None or not rewrite.is_attached(producer):
            return False
        rewrite.replace_value(value, rewrite.store_constant(producer, value, array, as_initializer=True))
        remove_dead(producer, _PURE_OPS)
        return True

    return repair
