"""GD010 float64: DOUBLE tensors that TensorRT cannot run.

What it finds
    The sources of float64 in the graph: graph inputs and outputs typed DOUBLE, `Cast(to=DOUBLE)` nodes,
    nodes whose `dtype` attribute asks for DOUBLE (RandomNormal, EyeLike, ...), and DOUBLE initializers and
    Constants. Values computed from those sources are counted, not listed one by one.

Why it matters
    TensorRT has no FP64. Its ONNX parser casts DOUBLE weights down to FLOAT with a warning, but a DOUBLE
    graph input or a Cast to DOUBLE stops the parse ("Unsupported ONNX data type: DOUBLE"). PyTorch exports
    float64 wherever a tensor was created with `dtype=torch.float64` or from a NumPy array (NumPy's default
    float is float64), often in pre/post-processing nobody meant to run in double.

How to fix
    Create those tensors as float32 in the model code (`torch.tensor(x, dtype=torch.float32)`,
    `np.asarray(x, np.float32)`) and re-export. `graphdoctor fix --unsafe-fixes` retypes float64 to float32
    (numeric: values are rounded to float32).
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir

from graphdoctor.analysis.constants import iter_constant_values
from graphdoctor.analysis.format import format_bytes, format_type
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, FixSafety, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "check"]

_DOUBLE = ir.DataType.DOUBLE
_DTYPE_ATTR_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike"}

META = RuleMeta(
    code="GD010",
    name="float64",
    kind=RuleKind.PROBLEM,
    severity=Severity.ERROR,
    summary="float64 (DOUBLE) inputs, outputs, casts and weights that TensorRT cannot run",
    fix=FixSafety.UNSAFE,
    messages={
        "graph_io": Message(
            "graph {kind} '{name}' is {type}: TensorRT rejects DOUBLE {kind}s{downstream}",
            help="declare it float32 in the model code and re-export",
        ),
        "cast": Message(
            "Cast to float64 of '{source}' ({type}){downstream}: TensorRT has no FP64 and the parse fails",
            help="cast to float32 instead (`.float()`), or drop the cast",
        ),
        "dtype_attr": Message(
            "{op} creates float64 values (dtype=DOUBLE){downstream}: TensorRT has no FP64",
            help="pass dtype=torch.float32 where the tensor is created",
        ),
        "weight": Message(
            "{count} float64 constant(s) ({size}), e.g. '{example}' {type}: TensorRT casts them down to float32"
            " with a warning{downstream}",
            help="store them as float32; `graphdoctor fix --unsafe-fixes` converts them",
            severity=Severity.WARNING,
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    ctx.analysis.types_inferred  # noqa: B018 - dtypes of intermediate values
    yield from _graph_io(model, ctx)
    yield from _casts_and_dtype_attrs(ctx)
    yield from _weights(ctx)


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


def _graph_io(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    for kind, values in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for value in values:
            if value.dtype == _DOUBLE and value.const_value is None:
                downstream = _downstream([value]) if kind == "input" else ""
                yield ctx.report(
                    "graph_io",
                    values=[value],
                    kind=kind,
                    name=value.name,
                    type=format_type(value),
                    downstream=downstream,
                )


def _casts_and_dtype_attrs(ctx: RuleContext) -> Iterator[Finding]:
    for node in ctx.analysis.nodes():
        if node.domain not in ("", "ai.onnx") or not node.outputs:
            continue
        if node.op_type == "Cast" and node.attributes.get_int("to") == _DOUBLE:
            source = node.inputs[0]
            yield ctx.report(
                "cast",
                node=node,
                values=[node.outputs[0]],
                source=source.name if source else "?",
                type=format_type(source) if source else "?",
                downstream=_downstream(list(node.outputs)),
            )
        elif node.op_type in _DTYPE_ATTR_OPS and node.attributes.get_int("dtype") == _DOUBLE:
            yield ctx.report(
                "dtype_attr",
                node=node,
                values=[node.outputs[0]],
                op=node.op_type,
                downstream=_downstream(list(node.outputs)),
            )


def _weights(ctx: RuleContext) -> Iterator[Finding]:
    doubles = [
        value
        for graph, _ in ctx.analysis.graph_sites
        for value in iter_constant_values(graph)
        if _constant_dtype(value) == _DOUBLE
    ]
    if not doubles:
        return
    nbytes = sum(v.const_value.nbytes if v.const_value is not None else 0 for v in doubles)
    biggest = max(doubles, key=lambda v: v.const_value.nbytes if v.const_value is not None else 0)
    yield ctx.report(
        "weight",
        values=doubles,
        nbytes=nbytes // 2,
        count=len(doubles),
        size=format_bytes(nbytes),
        example=biggest.name,
        type=format_type(biggest),
        downstream=_downstream(doubles),
    )


def _constant_dtype(value: ir.Value) -> ir.DataType | None:
    if value.const_value is not None:
        return value.const_value.dtype
    return value.dtype
