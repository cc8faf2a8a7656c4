"""GD002 redundant-cast: Casts that change nothing, round trips that undo themselves, and Casts of constants.

What it finds
    - `Cast`/`CastLike` to the type its input already has: a no-op (info). On integer and bool tensors it is
      the index and mask arithmetic where exporters leave `.long()`/`.bool()`; on float tensors it is the
      `.to(torch.float32)` of code written for mixed precision. Where it sits between two ops that runtimes
      fuse (MatMul and its bias Add, Conv and an activation), the finding names the pair.
    - Round trips `A → B → A` where every A value is exact in B (float16→float32→float16, bfloat16→float32,
      float32→float64→float32, int32→int64→int32, uint8/int8/int16→float32→back, int32→float64→int32,
      bool→any number→bool): the pair is a no-op. When the intermediate value has other readers, only the
      second Cast can go, and the finding says so.
    - Round trips that are *not* no-ops, reported so nobody "cleans them up": float32→float16→float32 and
      other float narrowings round to the narrower precision (warning); float→int→float truncates toward
      zero and number→bool→number maps every nonzero to 1 (info).
    - Casts whose input is a constant (an initializer or a Constant node): foldable into the constant (info).
    Integer narrowings (int64→int32→int64) and inexact int→float→int trips are left alone: shape arithmetic
    does them on purpose. A Cast whose input type is unknown is never reported.

Why it matters
    A no-op Cast is clutter, not a cost on the usual runtimes: ONNX Runtime's CastElimination and
    TensorRT's builder drop it when they load the model, before they fuse. Only between ops that fuse
    (MatMul+Add into Gemm or a bias epilogue, Conv+Relu/Sigmoid/Tanh/LeakyRelu/Clip/HardSigmoid into one
    kernel) does a Cast left in place cost a kernel launch and a fusion, on runtimes or pattern-matching
    tools that keep it (ONNX Runtime with graph optimizations disabled). FP16 converters leave
    float16→float32→float16 pairs behind by the hundred. The lossy round trips are the opposite trap:
    ONNX Runtime's `convert_float_to_float16` and `onnxslim --dtype fp32` collapse float→int64→float pairs,
    silently turning a truncation into an identity (4.05 instead of 4.0).

How to fix
    `graphdoctor fix` (safe: outputs stay bit-identical, graph inputs and outputs keep their names):
    - removes same-type Casts, their readers reading the input directly;
    - removes both Casts of a lossless round trip, or only the second when the intermediate value has other
      readers;
    - folds a Cast of a constant into a constant of the target type (a new initializer, or a Constant node
      where the source was one), converted as ONNX Runtime's Cast does, and drops the source when nothing
      else reads it. It leaves the Cast when the conversion is not unambiguous (NaN between float types,
      float to integer outside the target range, float64 to float16 whose rounding depends on the path,
      float8/int4 types), when the data cannot be read, and when the source has other readers and the copy
      would exceed `fold_shared_max_bytes`.
    Lossy round trips are never removed; if one is intended, keep it (and check the output of simplifiers
    that collapse it), otherwise cast once or keep the wider type.

Options
    fold_shared_max_bytes (1024): fold a Cast of a constant that other nodes also read only when the
    converted copy is at most this many bytes.
    keep_float32_fences (false): leave float32→float32 Casts in place. `fix --fp16` sets it: before a
    conversion such a Cast is the exporter's mark that what follows computes in FP32 (T5LayerNorm's
    `.to(torch.float32)`), and the converter keeps the fenced nodes FP32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphdoctor import rewrite
from graphdoctor.analysis.constants import const_tensor
from graphdoctor.analysis.format import format_bytes, format_dtype, format_type
from graphdoctor.analysis.graph import consumers, node_label
from graphdoctor.analysis.tensor_data import iter_chunks
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, FixSafety, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "Options", "check", "is_exact"]

_D = ir.DataType
# Significant bits (implicit bit included) and largest finite value of the float types we reason about.
_FLOAT_BITS = {_D.BFLOAT16: 8, _D.FLOAT16: 11, _D.FLOAT: 24, _D.DOUBLE: 53}
_FLOAT_MAX = {_D.BFLOAT16: "3.39e38", _D.FLOAT16: "65504", _D.FLOAT: "3.4e38", _D.DOUBLE: "1.8e308"}
# Float formats holding every value of a narrower one, NaN and inf included: (narrow, wide).
_EXACT_FLOATS = {
    (_D.FLOAT16, _D.FLOAT),
    (_D.FLOAT16, _D.DOUBLE),
    (_D.BFLOAT16, _D.FLOAT),
    (_D.BFLOAT16, _D.DOUBLE),
    (_D.FLOAT, _D.DOUBLE),
}
_INT_RANGE = {
    dtype: (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    for dtype, bits, signed in (
        (_D.INT8, 8, True),
        (_D.INT16, 16, True),
        (_D.INT32, 32, True),
        (_D.INT64, 64, True),
        (_D.UINT8, 8, False),
        (_D.UINT16, 16, False),
        (_D.UINT32, 32, False),
        (_D.UINT64, 64, False),
    )
}
# Types whose conversions numpy (and ml_dtypes for bfloat16) computes as ONNX Runtime's Cast does; float8
# (with its `saturate` attribute), int4 and strings are left alone.
_FOLDABLE = {_D.BOOL, *_INT_RANGE, *_FLOAT_BITS}
_CAST_OPS = ("Cast", "CastLike")
# Ops that ONNX Runtime and TensorRT fuse with the op read after them (ONNX Runtime's MatMulAddFusion and
# ConvActivationFusion; TensorRT's MatMul+bias and Conv+activation fusions): a no-op Cast between such a pair
# is the one place where one left in the graph stands in a fusion's way.
_FUSES_WITH = {
    "MatMul": frozenset({"Add"}),
    "Conv": frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid"}),
}
_FIX_HELP = "`graphdoctor fix` (safe)"


@dataclass(frozen=True)
class Options:
    fold_shared_max_bytes: int = 1024  # fold a constant other nodes also read only if the copy is this small
    keep_float32_fences: bool = False  # leave float32→float32 Casts: an FP16 conversion follows (fix --fp16)


META = RuleMeta(
    code="GD002",
    name="redundant-cast",
    kind=RuleKind.SUGGESTION,
    severity=Severity.WARNING,
    summary="no-op Casts, lossless Cast round trips, Casts of constants; lossy round trips flagged, never removed",
    options=Options(),
    # The fix safety is per message: the lossy round trips have none, so that no report calls them fixable.
    messages={
        "same_dtype": Message(
            "{op} '{cast}' casts {dtype} to {dtype} (no-op): clutter that ONNX Runtime and TensorRT drop at load time",
            help=f"nothing to do for them; to tidy the file: {_FIX_HELP}",
            severity=Severity.INFO,
            fix=FixSafety.SAFE,
        ),
        "same_dtype_fusion": Message(
            "{op} '{cast}' casts {dtype} to {dtype} (no-op) between {before_op} '{before}' and {after_op} '{after}',"
            " which runtimes fuse: ONNX Runtime and TensorRT drop the Cast at load time and still fuse them; a runtime"
            " or tool that keeps it runs them as separate kernels",
            help=f"remove it: {_FIX_HELP}",
            severity=Severity.INFO,
            fix=FixSafety.SAFE,
        ),
        "same_dtype_index": Message(
            "{op} '{cast}' casts {dtype} to {dtype} (no-op) on an index, shape or mask tensor: clutter that runtimes"
            " drop at load time",
            help=f"remove it: {_FIX_HELP}",
            severity=Severity.INFO,
            fix=FixSafety.SAFE,
        ),
        "lossless_round_trip": Message(
            "Casts '{first}' and '{second}' convert {src} to {mid} and back: {why}, so the pair is a no-op{shared}",
            help=f"{{remove}}: {_FIX_HELP}",
            fix=FixSafety.SAFE,
        ),
        "rounding_round_trip": Message(
            "Casts '{first}' and '{second}' round {src} to {mid} precision ({bits} significant bits, largest finite"
            " {max}) and back: values change, this is not a no-op",
            help="keep it if the rounding is intended (e.g. FP16 emulation); otherwise cast once or stay in {src}."
            " `graphdoctor fix` never removes it",
        ),
        "truncating_round_trip": Message(
            "Casts '{first}' and '{second}' convert {src} to {mid} and back: truncates toward zero (-2.7 becomes -2)"
            " and is undefined outside the {mid} range; not a no-op",
            help="if intended, keep it (`graphdoctor fix` never removes it), and check the output of tools that"
            " collapse such pairs: onnxslim and ONNX Runtime's FP16 converter do",
            severity=Severity.INFO,
        ),
        "nonzero_round_trip": Message(
            "Casts '{first}' and '{second}' convert {src} to bool and back: every nonzero value becomes 1"
            " (x != 0); not a no-op",
            help="if intended, `(x != 0).to(x.dtype)` says so; `graphdoctor fix` never removes it",
            severity=Severity.INFO,
        ),
        "constant_cast": Message(
            "{op} '{cast}' converts constant '{constant}' ({type}) to {target} at run time: foldable into the"
            " constant{shared}",
            help="{advice}",
            severity=Severity.INFO,
            fix=FixSafety.SAFE,
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    ctx.analysis.types_inferred  # noqa: B018 - dtypes of intermediate values
    for node in ctx.analysis.nodes(_CAST_OPS):
        finding = _check_cast(node, ctx)
        if finding is not None:
            yield finding


def is_exact(src: ir.DataType, mid: ir.DataType) -> bool:
    """Whether every `src` value converts to `mid` and back unchanged, so `src → mid → src` is a no-op."""
    if src == _D.BOOL:  # 0/1 survive any number type, and x != 0 brings them back
        return mid in _INT_RANGE or mid in _FLOAT_BITS
    if src in _INT_RANGE and mid in _INT_RANGE:
        low, high = _INT_RANGE[src]
        mid_low, mid_high = _INT_RANGE[mid]
        return mid_low <= low and high <= mid_high
    if src in _INT_RANGE and mid in _FLOAT_BITS:  # integers are exact up to 2**significant bits
        low, high = _INT_RANGE[src]
        return max(-low, high) <= 2 ** _FLOAT_BITS[mid]
    return (src, mid) in _EXACT_FLOATS


def _check_cast(node: ir.Node, ctx: RuleContext) -> Finding | None:
    """At most one finding per Cast: no-op first, then a round trip it closes, then a constant it reads."""
    source = node.inputs[0] if node.inputs else None
    target = _target(node)
    if source is None or target is None or source.dtype is None:
        return None  # unknown types: never guess
    if source.dtype == target:
        return _no_op(node, source, target, ctx)
    first = source.producer()
    if first is not None and first.op_type in _CAST_OPS and first.domain in ("", "ai.onnx"):
        return _round_trip(first, node, ctx)
    if const_tensor(source) is not None and not source.is_graph_input():
        return _constant_cast(node, source, target, ctx)
    return None


def _no_op(node: ir.Node, source: ir.Value, target: ir.DataType, ctx: RuleContext) -> Finding:
    """A Cast to its input's type; on floats, the fusing pair it sits in, if any, is named."""
    fence = ctx.options.keep_float32_fences and target == _D.FLOAT
    pair = _fused_pair(node, source) if target.is_floating_point() else None
    names = {"op": node.op_type, "cast": node_label(node), "dtype": format_dtype(target)}
    if pair is None:
        message_id = "same_dtype" if target.is_floating_point() else "same_dtype_index"
    else:
        message_id = "same_dtype_fusion"
        before, after = pair
        names |= {"before_op": before.op_type, "before": node_label(before)}
        names |= {"after_op": after.op_type, "after": node_label(after)}
    repair = None if fence else _remove_cast(node, source)
    return ctx.report(message_id, node=node, values=[source, *node.outputs], repair=repair, **names)


def _fused_pair(node: ir.Node, source: ir.Value) -> tuple[ir.Node, ir.Node] | None:
    """The producer of `source` and the first reader of the Cast's output when runtimes fuse the two."""
    producer = source.producer()
    if producer is None or producer.domain not in ("", "ai.onnx") or producer.op_type not in _FUSES_WITH:
        return None
    readers = [n for n in consumers(node.outputs[0]) if n.domain in ("", "ai.onnx")]
    fused = [n for n in readers if n.op_type in _FUSES_WITH[producer.op_type]]
    return (producer, fused[0]) if fused else None


def _target(node: ir.Node) -> ir.DataType | None:
    """The type a Cast (`to`) or CastLike (its second input) produces; None when unknown."""
    if node.op_type == "CastLike":
        like = node.inputs[1] if len(node.inputs) > 1 else None
        return like.dtype if like is not None else None
    to = node.attributes.get_int("to")
    try:
        return ir.DataType(to) if to is not None else None
    except ValueError:
        return None


def _round_trip(first: ir.Node, second: ir.Node, ctx: RuleContext) -> Finding | None:
    """`first` casts src → mid and `second` casts mid back to src: a no-op, or a lossy trip worth naming."""
    origin = first.inputs[0] if first.inputs else None
    src, mid = origin.dtype if origin is not None else None, _target(first)
    if origin is None or src is None or mid is None or src == mid or _target(second) != src:
        return None
    names = {"first": node_label(first), "second": node_label(second), "src": format_dtype(src)}
    names["mid"] = format_dtype(mid)
    values = [origin, first.outputs[0], second.outputs[0]]
    why = _why_exact(origin, src, mid)
    if why is not None:
        return _lossless(first, second, origin, ctx, values, names | {"why": why})
    if src in _FLOAT_BITS and mid in _FLOAT_BITS:
        bits, largest = _FLOAT_BITS[mid], _FLOAT_MAX[mid]
        return ctx.report("rounding_round_trip", node=second, values=values, bits=bits, max=largest, **names)
    if src in _FLOAT_BITS and mid in _INT_RANGE:
        return ctx.report("truncating_round_trip", node=second, values=values, **names)
    if mid == _D.BOOL and (src in _FLOAT_BITS or src in _INT_RANGE):
        return ctx.report("nonzero_round_trip", node=second, values=values, **names)
    return None  # integer narrowing, inexact int → float → int: intended in shape arithmetic


def _why_exact(origin: ir.Value, src: ir.DataType, mid: ir.DataType) -> str | None:
    """Why `origin` survives src → mid unchanged: its type, or the narrower type an exact Cast made it from.

    The second case catches f16 → f32 → f16 → f32: the last pair narrows float32, but only float16 values.
    """
    if is_exact(src, mid):
        return f"every {format_dtype(src)} value is exact in {format_dtype(mid)}"
    producer = origin.producer()
    if producer is None or producer.op_type not in _CAST_OPS or not producer.inputs or producer.inputs[0] is None:
        return None
    narrow = producer.inputs[0].dtype
    if narrow is None or not is_exact(narrow, src) or not (narrow == mid or is_exact(narrow, mid)):
        return None
    made_by = f"Cast '{node_label(producer)}'"
    return f"'{origin.name}' holds only {format_dtype(narrow)} values ({made_by}), exact in {format_dtype(mid)}"


def _lossless(
    first: ir.Node,
    second: ir.Node,
    origin: ir.Value,
    ctx: RuleContext,
    values: list[ir.Value],
    names: dict[str, str],
) -> Finding:
    """A lossless pair: both Casts go, unless the intermediate value has other readers; then only `second`."""
    middle = first.outputs[0]
    others = [n for n in consumers(middle) if n is not second]
    if not others and not middle.is_graph_output():
        shared, remove, removable = "", "remove both", "both"
    else:
        readers = f"{len(others)} other node(s)" if others else "a graph output"
        also = " and is a graph output" if others and middle.is_graph_output() else ""
        shared = f"; '{middle.name}' also feeds {readers}{also}, so only '{names['second']}' can go"
        remove = f"remove '{names['second']}' (its readers read '{origin.name}' directly)"
        removable = "second"
    return ctx.report(
        "lossless_round_trip",
        node=second,
        values=values,
        shared=shared,
        remove=remove,
        removable=removable,
        repair=_remove_round_trip(first, second, origin),
        **names,
    )


def _constant_cast(node: ir.Node, source: ir.Value, target: ir.DataType, ctx: RuleContext) -> Finding:
    """A Cast of a constant; folding duplicates the constant when something else also reads it."""
    tensor = const_tensor(source)
    assert tensor is not None  # checked by the caller
    others = [n for n in consumers(source) if n is not node]
    copy = _cast_nbytes(tensor, target)
    is_shared = bool(others) or source.is_graph_output()
    shared = ""
    if is_shared:
        shared = f"; the constant also feeds {len(others)} other node(s), so folding stores a second copy"
        shared += f" ({format_bytes(copy)})"
    refusal = _fold_refusal(tensor, target, ctx)
    limit = ctx.options.fold_shared_max_bytes
    if refusal is None and is_shared and copy > limit:
        refusal = f"the copy would exceed fold_shared_max_bytes ({format_bytes(limit)})"
    if refusal is None:
        advice = f"fold it: {_FIX_HELP} stores the constant as {format_dtype(target)}"
    else:
        advice = f"`graphdoctor fix` leaves it: {refusal}"
    return ctx.report(
        "constant_cast",
        node=node,
        values=[source, *node.outputs],
        op=node.op_type,
        cast=node_label(node),
        constant=source.name or "?",
        type=format_type(source),
        target=format_dtype(target),
        shared=shared,
        advice=advice,
        repair=_fold_cast(node, source, target) if refusal is None else None,
    )


def _cast_nbytes(tensor: ir.TensorProtocol, target: ir.DataType) -> int:
    try:
        return int(tensor.size * target.itemsize)
    except (TypeError, ValueError, AttributeError):  # packed or unsized types
        return tensor.nbytes


def _fold_refusal(tensor: ir.TensorProtocol, target: ir.DataType, ctx: RuleContext) -> str | None:
    """Why the Cast of `tensor` cannot be folded bit-exactly, or None when it can (data read in chunks)."""
    if tensor.dtype not in _FOLDABLE or target not in _FOLDABLE:
        return f"{format_dtype(tensor.dtype)} to {format_dtype(target)} is not folded"
    if not ctx.analysis.is_readable(tensor):
        return "its data cannot be read"
    try:
        if all(_convert(chunk, tensor.dtype, target) is not None for chunk in iter_chunks(tensor)):
            return None
    except (OSError, ValueError, TypeError):
        return "its data cannot be read"
    return "runtimes may convert some of its values differently (NaN, non-finite, out of range or path-dependent)"


def _convert(values: np.ndarray, src: ir.DataType, target: ir.DataType) -> np.ndarray | None:
    """`values` converted as ONNX Runtime's Cast does, or None where that is not certain:

    - float to integer: truncation, undefined for NaN, inf and values outside the target range;
    - NaN between float types: payloads differ (ONNX Runtime makes float64 NaN a canonical float16 NaN);
    - rounding that depends on the path: ONNX Runtime converts float64 to float16 through float32, where
      numpy rounds once; an integer too wide for the target rounds once or twice. The result must be the
      same whichever way is taken.
    """
    to = np.dtype(target.numpy())
    with np.errstate(all="ignore"):
        if src in _FLOAT_BITS and target in _INT_RANGE:
            wide = values.astype(np.float64)
            low, high = _INT_RANGE[target]
            whole = np.trunc(wide)
            if not np.isfinite(wide).all() or (whole < float(low)).any() or (whole >= float(high + 1)).any():
                return None
            return wide.astype(to)
        direct = values.astype(to)
        if target not in _FLOAT_BITS:
            return direct  # to integers and bool: wraps and x != 0, the same everywhere
        if src in _FLOAT_BITS and np.isnan(values.astype(np.float64)).any():
            return None
        through = [np.float64] if target != _D.DOUBLE else []
        through += [np.float32] if _FLOAT_BITS[target] < _FLOAT_BITS[_D.FLOAT] else []
        same = all(values.astype(step).astype(to).tobytes() == direct.tobytes() for step in through)
        return direct if same else None


def _remove_cast(node: ir.Node, source: ir.Value) -> Callable[[], bool]:
    """Readers of the no-op Cast's output read its input instead."""

    def repair() -> bool:
        if not rewrite.is_attached(node) or node.inputs[0] is not source:
            return False
        _bypass(node, source)
        return True

    return repair


def _remove_round_trip(first: ir.Node, second: ir.Node, origin: ir.Value) -> Callable[[], bool]:
    """Readers of `second` read `origin`; `first` goes too once nothing else reads it."""

    def repair() -> bool:
        attached = rewrite.is_attached(first) and rewrite.is_attached(second)
        if not attached or second.inputs[0] is not first.outputs[0] or first.inputs[0] is not origin:
            return False
        _bypass(second, origin)
        middle = first.outputs[0]
        if not middle.uses() and not middle.is_graph_output():
            rewrite.remove_node(first)
        return True

    return repair


def _bypass(node: ir.Node, source: ir.Value) -> None:
    """Remove `node`, its readers reading `source`. A subgraph output computed from a node of an outer
    graph gets an Identity inside the subgraph: a graph's outputs must be its own values."""
    output = node.outputs[0]
    producer = source.producer()
    if output.is_graph_output() and producer is not None and producer.graph is not node.graph:
        identity = ir.Node("", "Identity", [source], num_outputs=1, name=node.name)
        node.graph.insert_before(node, identity)
        source = identity.outputs[0]
        source.type, source.shape = output.type, output.shape
    rewrite.replace_value(output, source)
    rewrite.remove_node(node)


def _fold_cast(node: ir.Node, source: ir.Value, target: ir.DataType) -> Callable[[], bool]:
    """Replace the Cast by the converted constant; drop the source constant once nothing reads it."""

    def repair() -> bool:
        tensor = const_tensor(source)
        if not rewrite.is_attached(node) or node.inputs[0] is not source or tensor is None:
            return False
        converted = _convert(tensor.numpy(), tensor.dtype, target)
        if converted is None:
            return False
        output = node.outputs[0]
        folded = rewrite.store_constant(node, output, converted, as_initializer=_is_initializer_of(source, node.graph))
        rewrite.replace_value(output, folded)
        rewrite.remove_node(node)
        _drop_if_unused(source)
        return True

    return repair


def _is_initializer_of(value: ir.Value, graph: ir.Graph | None) -> bool:
    return isinstance(graph, ir.Graph) and graph.initializers.get(value.name or "") is value


def _drop_if_unused(value: ir.Value) -> None:
    """Remove a constant (initializer or Constant node) nothing reads any more."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    producer = value.producer()
    if producer is not None:
        rewrite.remove_node(producer)
    else:
        rewrite.remove_initializer(value)
