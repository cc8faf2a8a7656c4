"""GD010 float64: DOUBLE tensors, which TensorRT computes and binds as float32.

What it finds
    The sources of float64 in the graph: graph inputs and outputs typed DOUBLE, `Cast(to=DOUBLE)` nodes,
    nodes whose `dtype` (or `output_datatype`, or ConstantOfShape's value) asks for DOUBLE (RandomNormal,
    EyeLike, ...), and DOUBLE initializers and Constants. Values computed from those sources are counted,
    not listed one by one.

    Only for TensorRT targets: ONNX Runtime runs float64 (for `--target onnxruntime` nothing is reported).

Why it matters
    TensorRT has no FP64. Its ONNX parser (8.6 and 10.x alike: `convertDtype` maps DOUBLE to FLOAT) builds a
    float32 engine instead: a DOUBLE graph input or output becomes a float32 binding, so a caller passing
    float64 buffers feeds garbage; Casts and dtype attributes asking for DOUBLE compute in float32, so results
    differ from ONNX Runtime's wherever float64 precision mattered; DOUBLE weights are converted with a
    warning, and values beyond float32's range clamped to +-3.4e38 (WeightsContext::convertDouble). PyTorch exports
    float64 wherever a tensor was created with `dtype=torch.float64` or from a NumPy array (NumPy's default
    float is float64), often in pre/post-processing nobody meant to run in double.

How to fix
    Create those tensors as float32 in the model code (`torch.tensor(x, dtype=torch.float32)`,
    `np.asarray(x, np.float32)`) and re-export. `graphdoctor fix --unsafe-fixes` computes in float32 instead
    (unsafe: values round to float32): DOUBLE weights and Constants are converted, Casts and dtype
    attributes asking for DOUBLE ask for FLOAT, and every value computed from them, in If/Loop/Scan bodies
    too, becomes float32. The graph's signature stays: a DOUBLE input is cast to float32 where it is read
    (Casts reading it keep reading float64, so they round once), and a DOUBLE output is cast back under its
    own name, so callers do not break; TensorRT still binds those inputs and outputs as float32, whose
    findings stay, without a fix. The fix leaves a float64 computation as it is, and says why, when a
    constant in it holds finite values beyond float32's range (they would become inf), when it reaches a
    function or a custom-domain node (their bodies and contracts are not ours to retype), when it involves
    sequences or optionals, or when a type is unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.constants import const_tensor, iter_constant_values
from graphdoctor.analysis.format import format_bytes, format_number, format_type
from graphdoctor.analysis.graph import iter_values, node_label
from graphdoctor.analysis.tensor_data import iter_chunks
from graphdoctor.engine import RuleContext
from graphdoctor.rewrite import fresh_name, insert_after_producer
from graphdoctor.rule import Finding, FixSafety, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "check"]

_DOUBLE = ir.DataType.DOUBLE
_FLOAT = ir.DataType.FLOAT
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Ops whose output type an attribute chooses, and that attribute's name.
_DTYPE_ATTRS = {
    "RandomNormal": "dtype",
    "RandomUniform": "dtype",
    "RandomNormalLike": "dtype",
    "RandomUniformLike": "dtype",
    "EyeLike": "dtype",
    "Bernoulli": "dtype",
    "HannWindow": "output_datatype",
    "HammingWindow": "output_datatype",
    "BlackmanWindow": "output_datatype",
    "MelWeightMatrix": "output_datatype",
}
_FIX = "; `graphdoctor fix --unsafe-fixes` "
_FOLLOWS = "computes what follows in float32 (values round to float32)"

META = RuleMeta(
    code="GD010",
    name="float64",
    kind=RuleKind.PROBLEM,
    severity=Severity.ERROR,
    summary="float64 (DOUBLE) inputs, outputs, casts and weights, which TensorRT binds and computes as float32",
    fix=FixSafety.UNSAFE,
    messages={
        "graph_io": Message(
            "graph {kind} '{name}' is {type}: TensorRT has no FP64 and makes it a float32 binding, so a caller"
            " passing float64 buffers breaks{downstream}",
            help="declare it float32 in the model code and re-export; `graphdoctor fix --unsafe-fixes` keeps"
            " float64 inputs and outputs so callers do not break, and computes in float32 behind them{note}",
        ),
        "cast": Message(
            "Cast to float64 of '{source}' ({type}){downstream}: TensorRT has no FP64 and computes it in float32",
            help="cast to float32 instead (`.float()`), or drop the cast{note}",
            severity=Severity.WARNING,
        ),
        "dtype_attr": Message(
            "{op} creates float64 values ({what}){downstream}: TensorRT has no FP64 and creates float32 ones",
            help="pass dtype=torch.float32 where the tensor is created{note}",
            severity=Severity.WARNING,
        ),
        "weight": Message(
            "{count} float64 constant(s) ({size}), e.g. '{example}' {type}: TensorRT casts them down to float32"
            " with a warning{downstream}",
            help="store them as float32{note}",
            severity=Severity.WARNING,
        ),
        "weight_range": Message(
            "{count} float64 constant(s), e.g. '{example}', hold finite values beyond float32's range (such as"
            " {extreme}): TensorRT's cast down to float32 clamps them to +-3.4e38",
            help="clamp or rescale them, e.g. to torch.finfo(torch.float32).max; `graphdoctor fix` leaves them,"
            " and the float64 computation they take part in, as they are",
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    if not ctx.analysis.target.is_tensorrt:  # ONNX Runtime computes in float64
        return
    plan = _Plan(model, ctx) if ctx.analysis.types_inferred else None
    yield from _graph_io(model, ctx, plan)
    yield from _casts_and_dtype_attrs(ctx, plan)
    yield from _weights(ctx, plan)


def _downstream(values: list[ir.Value]) -> str:
    """How many float64 values follow from these sources, for the message."""
    seen: set[int] = set()
    stack = list(values)
    while stack:
        value = stack.pop()
        for use in value.uses():
            for output in use.node.outputs:
                if output.dtype == _DOUBLE and id(output) not in seen:
                    seen.add(id(output))
                    stack.append(output)
    return f"; {len(seen)} float64 value(s) computed from it" if seen else ""


def _graph_io(model: ir.Model, ctx: RuleContext, plan: _Plan | None) -> Iterator[Finding]:
    for kind, values in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for value in values:
            if value.dtype == _DOUBLE and value.const_value is None:
                downstream = _downstream([value]) if kind == "input" else ""
                note, repair = _fix_for(plan, [value], [value], "")
                yield ctx.report(
                    "graph_io",
                    values=[value],
                    kind=kind,
                    name=value.name,
                    type=format_type(value),
                    downstream=downstream,
                    note=note,
                    repair=repair,
                )


def _casts_and_dtype_attrs(ctx: RuleContext, plan: _Plan | None) -> Iterator[Finding]:
    for node in ctx.analysis.nodes():
        if node.domain not in ("", "ai.onnx") or not node.outputs:
            continue
        if node.op_type == "Cast" and node.attributes.get_int("to") == _DOUBLE:
            source = node.inputs[0]
            if _is_signature_cast(node, ctx.analysis.model.graph):
                output = node.outputs[0].name
                note, repair = f"; `graphdoctor fix` keeps it: it makes the float64 output '{output}'", None
            else:
                action = _FIX + "makes it a Cast to float32 and " + _FOLLOWS
                note, repair = _fix_for(plan, node.outputs[:1], [node], action)
            yield ctx.report(
                "cast",
                node=node,
                values=[node.outputs[0]],
                source=source.name if source else "?",
                type=format_type(source) if source else "?",
                downstream=_downstream(list(node.outputs)),
                note=note,
                repair=repair,
            )
        elif (attr := _double_attr(node)) is not None:
            what = "a float64 value" if attr == "value" else f"{attr}=DOUBLE"
            action = "converts the value" if attr == "value" else f"sets {attr}=FLOAT"
            note, repair = _fix_for(plan, node.outputs[:1], [node], f"{_FIX}{action} and {_FOLLOWS}")
            yield ctx.report(
                "dtype_attr",
                node=node,
                values=[node.outputs[0]],
                op=node.op_type,
                what=what,
                downstream=_downstream(list(node.outputs)),
                note=note,
                repair=repair,
            )


def _weights(ctx: RuleContext, plan: _Plan | None) -> Iterator[Finding]:
    doubles = [
        value
        for graph, _ in ctx.analysis.graph_sites
        for value in iter_constant_values(graph)
        if _constant_dtype(value) == _DOUBLE
    ]
    out_of_range = plan.out_of_range if plan is not None else {}
    if too_big := [value for value in doubles if id(value) in out_of_range]:
        extreme = max((out_of_range[id(value)] for value in too_big), key=abs)
        yield ctx.report(
            "weight_range",
            values=too_big,
            count=len(too_big),
            example=too_big[0].name,
            extreme=format_number(extreme),
        )
    groups: dict[str, list[ir.Value]] = {}  # by why the fix leaves them ('' when it converts them)
    for value in doubles:
        if id(value) not in out_of_range:
            groups.setdefault(_refusal_note(plan, [value]), []).append(value)
    for values in groups.values():
        yield _weight_finding(values, ctx, plan)


def _weight_finding(doubles: list[ir.Value], ctx: RuleContext, plan: _Plan | None) -> Finding:
    nbytes = sum(_nbytes(v) for v in doubles)
    biggest = max(doubles, key=_nbytes)
    note, repair = _fix_for(plan, doubles, doubles, _FIX + "converts them and " + _FOLLOWS)
    return ctx.report(
        "weight",
        values=doubles,
        nbytes=nbytes // 2,
        count=len(doubles),
        size=format_bytes(nbytes),
        example=biggest.name,
        type=format_type(biggest),
        downstream=_downstream(doubles),
        note=note,
        repair=repair,
    )


def _nbytes(value: ir.Value) -> int:
    return value.const_value.nbytes if value.const_value is not None else 0


def _constant_dtype(value: ir.Value) -> ir.DataType | None:
    if value.const_value is not None:
        return value.const_value.dtype
    return value.dtype


def _double_attr(node: ir.Node) -> str | None:
    """The attribute that makes this node create float64 values: a dtype, or ConstantOfShape's value."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "ConstantOfShape":
        value = node.attributes.get_tensor("value")
        return "value" if value is not None and value.dtype == _DOUBLE else None
    attr = _DTYPE_ATTRS.get(node.op_type)
    return attr if attr is not None and node.attributes.get_int(attr) == _DOUBLE else None


def _is_signature_cast(node: ir.Node, main: ir.Graph) -> bool:
    """A Cast to DOUBLE computing a main-graph output: what keeps a float64 output float64 for its callers."""
    if not _is_cast(node) or node.attributes.get_int("to") != _DOUBLE or node.graph is not main:
        return False
    return any(node.outputs[0] is output for output in main.outputs)


def _fix_for(
    plan: _Plan | None, values: list[ir.Value], targets: list[object], action: str
) -> tuple[str, Callable[[], bool] | None]:
    """The help's note on what the fix does for these values, and the repair, when their computation converts
    and is not converted yet."""
    if refusal := _refusal_note(plan, values):
        return refusal, None
    assert plan is not None  # no plan: a refusal
    regions = [region for region in dict.fromkeys(plan.regions[id(v)] for v in values) if plan.has_work(region)]
    return (action, plan.repair(regions, targets)) if regions else ("", None)


def _refusal_note(plan: _Plan | None, values: list[ir.Value]) -> str:
    """Why the fix leaves these values float64, for the help; '' when it converts them."""
    if plan is None:
        return "; `graphdoctor fix` leaves it: shape inference failed, so the float64 values are not all known"
    for value in values:
        region = plan.regions.get(id(value))
        if region is None:
            where = plan.ctx.analysis.graph_path(value)
            reason = "it does not retype functions" if where.startswith("function ") else "its type is unknown"
            return f"; `graphdoctor fix` leaves '{value.name}': {reason}"
        if region.refusal:
            return f"; `graphdoctor fix` leaves it: {region.refusal}"
    return ""


# --- the conversion plan ------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Region:
    """float64 values tied together by the nodes between them: they must change type together."""

    values: list[ir.Value] = field(default_factory=list)
    refusal: str = ""  # why the fix leaves this region as is; '' when it converts


class _Plan:
    """The float64 regions of the main graph and its subgraphs (functions are left alone), each either
    convertible to float32 or refused with a reason; the repairs of one round share it."""

    def __init__(self, model: ir.Model, ctx: RuleContext) -> None:
        self.model = model
        self.ctx = ctx
        self.out_of_range: dict[int, float] = {}  # id(constant value) -> its finite value farthest from 0
        self.touched: set[int] = set()  # ids of the values and nodes converted this round
        self._converted: set[int] = set()
        self._main = model.graph
        self._names: set[str] | None = None  # taken value names, gathered when a repair first needs one
        self.regions = self._group()
        for region in dict.fromkeys(self.regions.values()):
            region.refusal = self._refusal(region)

    def _group(self) -> dict[int, _Region]:
        """Union-find over float64 values: a node ties all its float64 inputs and outputs (and those of its
        subgraphs' signatures), since ONNX type constraints make them one type."""
        parent: dict[int, int] = {}
        values: dict[int, ir.Value] = {}

        def find(key: int) -> int:
            while parent[key] != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        def tie(group: Iterable[ir.Value | None]) -> None:
            keys = []
            for value in group:
                if value is not None and value.dtype == _DOUBLE:
                    values.setdefault(id(value), value)
                    parent.setdefault(id(value), id(value))
                    keys.append(find(id(value)))
            for key in keys[1:]:
                parent[key] = keys[0]

        graph = self.model.graph
        for value in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
            tie([value])
        for node in graph.all_nodes():
            tied: list[ir.Value | None] = [*node.inputs, *node.outputs]
            for subgraph in _subgraphs(node):
                tied += [*subgraph.inputs, *subgraph.outputs, *subgraph.initializers.values()]
            tie(tied)
        regions: dict[int, _Region] = {}
        for key, value in values.items():
            regions.setdefault(find(key), _Region()).values.append(value)
        return {key: regions[find(key)] for key in values}

    def _refusal(self, region: _Region) -> str:
        """Why this region cannot be computed in float32, or ''."""
        for value in region.values:
            if reason := self._value_refusal(value):
                return reason
            for use in value.uses():
                if reason := _reader_refusal(value, use.node):
                    return reason
        return ""

    def _value_refusal(self, value: ir.Value) -> str:
        producer = value.producer()
        if not isinstance(value.type, ir.TensorType):
            return f"'{value.name}' is a sequence or optional of float64: those are not converted"
        if producer is not None and _is_container_op(producer):
            return f"'{value.name}' comes out of {_describe(producer)}: sequences and optionals are not converted"
        if const_tensor(value) is not None:
            return self._range_refusal(value, const_tensor(value))
        if producer is None:
            return ""  # a graph input
        if not _is_standard(producer):
            return f"'{value.name}' is computed by {_describe(producer)}, which it leaves as is"
        if producer.op_type == "ConstantOfShape":
            return self._range_refusal(value, producer.attributes.get_tensor("value"))
        follows = any(v is not None and v.dtype == _DOUBLE for v in producer.inputs) or any(_subgraphs(producer))
        if not (_is_source(producer) or follows):
            return f"'{value.name}' comes from {_describe(producer)}, whose float64 output it cannot retype"
        return ""

    def _range_refusal(self, value: ir.Value, tensor: ir.TensorProtocol | None) -> str:
        """Refuse a constant that float32 cannot hold: its finite values would become inf."""
        if tensor is None or not self.ctx.analysis.is_readable(tensor):
            return f"the data of '{value.name}' cannot be read"
        extreme = max((_extreme(chunk) for chunk in iter_chunks(tensor)), key=abs, default=0.0)
        with np.errstate(over="ignore"):
            if np.isfinite(np.float32(extreme)):
                return ""
        self.out_of_range[id(value)] = extreme
        return f"'{value.name}' holds {format_number(extreme)}, beyond float32's range"

    def has_work(self, region: _Region) -> bool:
        """False when only kept I/O remains, read by Casts only: the region is converted already."""
        return any(
            not _is_kept(v, self._main) or any(not _is_cast(use.node) for use in v.uses()) for v in region.values
        )

    def repair(self, regions: list[_Region], targets: list[object]) -> Callable[[], bool]:
        """Convert these regions (once per round, whichever finding asks first); True if this finding's own
        sources were among what changed."""

        def repair() -> bool:
            for region in regions:
                if id(region) not in self._converted:
                    self._converted.add(id(region))
                    self._convert(region)
            return any(id(target) in self.touched for target in targets)

        return repair

    def _convert(self, region: _Region) -> None:
        for value in region.values:
            if _is_kept(value, self._main):
                if any(not _is_cast(use.node) for use in value.uses()):
                    self._cast_readers(value)
                continue
            self._convert_source(value)
            value.type = ir.TensorType(_FLOAT)
            if any(output is value for output in self._main.outputs):
                self._cast_back(value)

    def _convert_source(self, value: ir.Value) -> None:
        """The constant, Cast or attribute that made `value` float64 now makes float32."""
        producer = value.producer()
        if value.const_value is not None:
            value.const_value = _to_float32(value.const_value, value.name)
            self.touched.add(id(value))
        elif producer is None:
            return
        elif producer.op_type == "Constant":
            producer.attributes["value"] = ir.AttrTensor("value", _to_float32(const_tensor(value), value.name))
            self.touched.add(id(value))
        elif producer.op_type == "Cast" and producer.attributes.get_int("to") == _DOUBLE:
            producer.attributes["to"] = ir.AttrInt64("to", _FLOAT)
            self.touched.add(id(producer))
        elif (attr := _double_attr(producer)) == "value":
            tensor = producer.attributes.get_tensor("value")
            producer.attributes["value"] = ir.AttrTensor("value", _to_float32(tensor, tensor.name))
            self.touched.add(id(producer))
        elif attr is not None:
            producer.attributes[attr] = ir.AttrInt64(attr, _FLOAT)
            self.touched.add(id(producer))

    def _cast_readers(self, value: ir.Value) -> None:
        """A kept float64 input (or signature output): its readers, Casts aside, read a float32 copy. Casts
        keep reading the float64 value: casting it once rounds once."""
        cast = self._new_cast(value, _FLOAT, f"{value.name}_float32")
        for use in list(value.uses()):
            if not _is_cast(use.node) and use.node is not cast:
                use.node.replace_input_with(use.idx, cast.outputs[0])
        self.touched.add(id(value))

    def _cast_back(self, value: ir.Value) -> None:
        """A main-graph output now computed in float32 is cast back to float64 under its own name."""
        name = value.name
        value.name = self._fresh(f"{name}_float32")
        cast = self._new_cast(value, _DOUBLE, name)
        outputs = self._main.outputs
        for index, output in enumerate(outputs):
            if output is value:
                outputs[index] = cast.outputs[0]
        self.touched.add(id(value))

    def _new_cast(self, value: ir.Value, to: ir.DataType, name: str) -> ir.Node:
        """A Cast of `value` to `to`, right after where `value` is computed, its output named `name`."""
        cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", to)], num_outputs=1)
        output = cast.outputs[0]
        output.name = name if to == _DOUBLE else self._fresh(name)
        output.type, output.shape = ir.TensorType(to), value.shape.copy() if value.shape is not None else None
        insert_after_producer(self._main, value, cast)
        return cast

    def _fresh(self, base: str) -> str:
        if self._names is None:
            self._names = {value.name for value in iter_values(self.model) if value.name}
        return fresh_name(base, self._names)


def _subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.value
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.value


def _is_standard(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _is_cast(node: ir.Node) -> bool:
    return node.op_type == "Cast" and _is_standard(node)


def _is_source(node: ir.Node) -> bool:
    """A node that makes float64 on its own: a Constant, a Cast to DOUBLE, a DOUBLE dtype attribute."""
    if node.op_type == "Constant":
        return True
    if node.op_type == "Cast":
        return node.attributes.get_int("to") == _DOUBLE
    return _double_attr(node) is not None


def _is_kept(value: ir.Value, main: ir.Graph) -> bool:
    """float64 that the fix keeps for the callers: main-graph inputs, and outputs a Cast to DOUBLE computes."""
    if any(value is graph_input for graph_input in main.inputs):
        return True
    producer = value.producer()
    return producer is not None and _is_signature_cast(producer, main)


def _reader_refusal(value: ir.Value, reader: ir.Node) -> str:
    """Why a reader stops `value` from becoming float32: its contract is not ours, it puts float64 in a
    container, or its output's type is unknown (it may be float64 too, unseen)."""
    if not _is_standard(reader):
        return f"'{value.name}' is read by {_describe(reader)}, which it leaves as is"
    if _is_container_op(reader):
        return f"'{value.name}' goes into {_describe(reader)}: sequences and optionals are not converted"
    for output in reader.outputs:
        if output.dtype is None and (output.uses() or output.is_graph_output()):
            return f"the type of '{output.name}', computed by {_describe(reader)}, is unknown"
    return ""


def _is_container_op(node: ir.Node) -> bool:
    """Sequence and optional ops: their float64 hides in a container type that shape inference reports as
    a plain tensor dtype here, so retyping it would be wrong."""
    return "Sequence" in node.op_type or node.op_type.startswith("Optional")


def _describe(node: ir.Node) -> str:
    domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
    return f"{domain}{node.op_type} '{node_label(node)}'"


def _extreme(values: np.ndarray) -> float:
    """The finite value farthest from zero, sign kept (0.0 when none)."""
    finite = values[np.isfinite(values)]
    return float(finite[np.argmax(np.abs(finite))]) if finite.size else 0.0


def _to_float32(tensor: ir.TensorProtocol, name: str | None) -> ir.Tensor:
    """The tensor's values rounded to float32 (its range was checked: nothing finite becomes inf)."""
    return ir.tensor(np.asarray(tensor.numpy(), dtype=np.float64).astype(np.float32), name=name)
