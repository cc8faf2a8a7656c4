"""GD007 fp16-range: float constants, and with sample inputs activations, that FP16 cannot hold.

What it finds
    Initializers, Constant nodes and ConstantOfShape fill values, read in bounded memory, with
    - values beyond FP16's range (|v| ≥ 65520 rounds to inf; FP16's largest finite number is 65504): a warning
      naming the tensor, how many values and the worst one;
    - nonzero values that flush to 0 in FP16 (|v| ≤ 2^-25 ≈ 2.98e-08): a warning for small constants (a scale,
      a threshold: up to `max_small_size` values), and for large weights when at least `flush_fraction` of
      their nonzero values flush (an info; a warning when most of them do). Trained weights rarely hold such
      values, so a clean model reports nothing.
    Attention-mask fill values (-3.4e38 = float32's lowest, -1e9, ... feeding Where/Add on the way to Softmax)
    saturate on purpose and get one info, not a warning. Normalization eps constants are GD004's, not
    reported here.

    Activations need sample inputs (`graphdoctor lint --inputs x.npz`, or `--shape images:1x3x640x640` to
    generate them): the FP32 model runs once on ONNX Runtime's CPU provider, a slice of tensors at a time,
    and every float32 tensor of the main graph is checked:
    - tensors holding values beyond FP16's range: a warning naming the producing node, the worst value and how
      many elements become inf. Only where the overflow starts is reported (a tensor none of whose node's
      inputs overflow); the tensors computed from it are counted in the message;
    - tensors whose nonzero values mostly flush to 0 in FP16 (at least `activation_flush_fraction` of them:
      an info; a warning from 90%).
    Attention masks saturating on purpose are not findings: negative-only overflow in a tensor that reaches
    a Softmax through mask-shaped ops (Where, Add, Sub, Mul, Expand, Cast, ...) and whose large values come
    from a constant or input holding them. Without sample inputs only constants are checked.

Why it matters
    Converting to FP16 turns such values into inf or 0, or the converter clamps them without saying so
    (onnxconverter-common clamps to ±1e4, a 50% error on 20000; onnxruntime's converter to ±65504). A scale
    that becomes 0 or inf changes every value it touches; an activation that becomes inf turns into NaN at
    the next normalization or Softmax. ONNX Runtime's CPU provider runs most FP16 ops in FP32, so a CPU check
    of the converted model hides all of this; a GPU (TensorRT, CUDA) shows it.

How to fix
    Keep the nodes that read these constants, or that compute the overflowing activations, in FP32 (`graphdoctor
    fix --fp16` does, and reports every value it would otherwise change), or rescale the model so the values
    fit (fold a large scale into the next weight; normalize before, not after, a large product). Check the
    result without a GPU with `graphdoctor verify model.onnx --backend fp16-emulation`.

Options
    flush_fraction (0.01): share of a large weight's nonzero values that must flush to 0 for it to be reported.
    max_small_size (16): constants with at most this many values are "small": any flushed value is reported.
    activation_flush_fraction (0.5): share of an activation's nonzero values that must flush to 0 for it to be
    reported (with sample inputs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.constants import const_tensor, iter_constant_values
from graphdoctor.analysis.format import format_dtype, format_number, format_shape
from graphdoctor.analysis.graph import node_label
from graphdoctor.analysis.normalization import normalizations
from graphdoctor.analysis.ranges import FP16_FLUSH, FP16_OVERFLOW, TensorRange, feeds_softmax, is_mask_saturation
from graphdoctor.analysis.tensor_data import iter_chunks
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, Message, RuleKind, RuleMeta, Severity
from graphdoctor.verify.ranges import SOURCE, sample_ranges

__all__ = ["META", "Options", "check"]

_FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE)
_CHUNK_BYTES = 4 * 1024 * 1024  # the scan holds about 2 chunks at once (data and magnitudes)
_MOSTLY = 0.9  # an activation flushing at least this share of its nonzero values is a warning


@dataclass(frozen=True)
class Options:
    flush_fraction: float = 0.01
    max_small_size: int = 16
    activation_flush_fraction: float = 0.5


META = RuleMeta(
    code="GD007",
    name="fp16-range",
    kind=RuleKind.PROBLEM,
    severity=Severity.WARNING,
    summary="float constants (and, with sample inputs, activations) beyond FP16's range or flushing to zero",
    options=Options(),
    needs_inputs=True,
    messages={
        "overflow": Message(
            "constant '{name}' {type} has {count} value(s) beyond FP16's range (worst {worst}): they become inf"
            " in FP16, or converters clamp them silently (onnxconverter-common to ±1e4, onnxruntime's to ±65504)",
            help="keep the nodes that read it in FP32 under --fp16 (`graphdoctor fix --fp16` does), or rescale"
            " the model so the constant fits (fold the scale into the next weight)",
        ),
        "mask_fill": Message(
            "{count} attention-mask fill constant(s) hold {worst}, e.g. '{example}': in FP16 they become -inf,"
            " which masks the same scores; that saturation is intended",
            help="nothing to do unless whole rows can be masked (fully padded sequences): then every score is"
            " -inf and FP16 Softmax returns NaN where FP32 returned a uniform row; keep the mask Add and Softmax"
            " in FP32 for such inputs",
            severity=Severity.INFO,
        ),
        "flush_small": Message(
            "{flushed} of {size} value(s) of constant '{name}' {type} become 0 in FP16 (smallest nonzero |v| ="
            " {smallest}; FP16 flushes magnitudes up to 2.98e-08)",
            help="a scale, threshold or offset of 0 changes the result: keep the nodes that read it in FP32 under"
            " --fp16, or fold the value into a neighbouring weight",
        ),
        "flush_weight": Message(
            "{flushed} of {nonzero} nonzero values ({percent}%) of '{name}' {type} become 0 in FP16 (|v| ≤ 2.98e-08)",
            help="near-zero weights flushing is usually harmless; when a whole layer lives at this scale"
            " (e.g. LayerScale), keep it in FP32 under --fp16 or rescale it",
            severity=Severity.INFO,
        ),
        "activation_overflow": Message(
            "{op_type} '{node_name}' computes '{tensor}' {type} with {count} of {size} value(s) beyond FP16's range"
            " on the sample inputs (worst {worst}, {source}): they become inf in FP16{downstream}",
            help="keep this node and what follows up to the next normalization in FP32 under --fp16, or rescale"
            " (normalize before the large product); check with `graphdoctor verify --backend fp16-emulation`",
        ),
        "activation_flush": Message(
            "{flushed} of {nonzero} nonzero values ({percent}%) of '{tensor}' {type}, computed by {op_type}"
            " '{node_name}', become 0 in FP16 on the sample inputs (|x| ≤ 2.98e-08; largest |x| {max_abs},"
            " {source})",
            help="if later ops divide by or rescale this tensor, keep its producer in FP32 under --fp16, or"
            " rescale the model so it lives in FP16's range",
            severity=Severity.INFO,
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    options: Options = ctx.options
    skip = {id(n.eps_value) for n in normalizations(ctx.analysis) if n.eps_value is not None}
    masks: list[tuple[ir.Value, _Stats]] = []
    for value, tensor, type_ in _float_constants(ctx):
        if id(value) in skip:
            continue
        stats = _scan(tensor)
        if stats.overflow and stats.worst < 0 and feeds_softmax(value):
            masks.append((value, stats))
            continue
        yield from _findings(value, type_, stats, options, ctx)
    if masks:
        yield _mask_finding(masks, ctx)
    ranges = sample_ranges(ctx.analysis)
    if ranges is not None:
        yield from _activation_findings(model, ranges, options, ctx)


# --- reading ------------------------------------------------------------------------------------------------


@dataclass
class _Stats:
    """What one pass over a tensor's values learns; worst and smallest are only set when something is found."""

    size: int = 0
    nonzero: int = 0
    overflow: int = 0  # finite values that become inf
    flushed: int = 0  # nonzero values that become 0
    worst: float = 0.0  # the overflowing value of largest magnitude, with its sign
    smallest: float = np.inf  # the smallest magnitude among the flushed values


def _float_constants(ctx: RuleContext) -> Iterator[tuple[ir.Value, ir.TensorProtocol, str]]:
    """(value, tensor, type as written in messages) of every readable float32/float64 initializer, Constant
    output and ConstantOfShape fill value, in every graph."""
    for graph, _ in ctx.analysis.graph_sites:
        for value in iter_constant_values(graph):
            tensor = const_tensor(value)
            if tensor is not None and tensor.dtype in _FLOAT_TYPES and ctx.analysis.is_readable(tensor):
                yield value, tensor, format_dtype(tensor.dtype) + format_shape(tensor.shape)
        for node in graph:
            if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx") and node.outputs:
                fill = node.attributes.get_tensor("value")
                if fill is not None and fill.dtype in _FLOAT_TYPES:
                    yield node.outputs[0], fill, f"(the {format_dtype(fill.dtype)} fill of ConstantOfShape)"


def _scan(tensor: ir.TensorProtocol) -> _Stats:
    """Count overflowing and flushed values chunk by chunk: memory stays flat for a weight of any size."""
    stats = _Stats()
    for chunk in iter_chunks(tensor, chunk_bytes=_CHUNK_BYTES):
        magnitude = np.abs(chunk)
        stats.size += chunk.size
        zeros = int(np.count_nonzero(magnitude == 0))  # comparisons: cheaper than counting floats directly
        stats.nonzero += chunk.size - zeros  # NaN counts as nonzero, and is neither overflow nor flushed
        if magnitude.size and np.fmax.reduce(magnitude) >= FP16_OVERFLOW:
            _add_overflow(stats, chunk, magnitude)
        flushed = int(np.count_nonzero(magnitude <= FP16_FLUSH)) - zeros
        if flushed:
            stats.flushed += flushed
            stats.smallest = min(stats.smallest, float(magnitude[(magnitude <= FP16_FLUSH) & (magnitude > 0)].min()))
    return stats


def _add_overflow(stats: _Stats, chunk: np.ndarray, magnitude: np.ndarray) -> None:
    """The rare slow path: finite values past FP16's range (inf stays inf, so it is no range problem)."""
    overflow = (magnitude >= FP16_OVERFLOW) & np.isfinite(magnitude)
    count = int(np.count_nonzero(overflow))
    if count:
        stats.overflow += count
        worst = float(chunk[overflow][np.argmax(magnitude[overflow])])
        if abs(worst) > abs(stats.worst):
            stats.worst = worst


# --- reporting ----------------------------------------------------------------------------------------------


def _findings(value: ir.Value, type_: str, stats: _Stats, options: Options, ctx: RuleContext) -> Iterator[Finding]:
    name = value.name or "?"
    if stats.overflow:
        yield ctx.report(
            "overflow",
            values=[value],
            name=name,
            type=type_,
            count=stats.overflow,
            worst=format_number(stats.worst),
            worst_value=stats.worst,
        )
    if not stats.flushed:
        return
    if stats.size <= options.max_small_size:
        yield ctx.report(
            "flush_small",
            values=[value],
            name=name,
            type=type_,
            flushed=stats.flushed,
            size=stats.size,
            smallest=format_number(stats.smallest),
        )
        return
    fraction = stats.flushed / stats.nonzero
    if fraction >= options.flush_fraction:
        yield ctx.report(
            "flush_weight",
            values=[value],
            severity=Severity.WARNING if fraction >= 0.5 else None,
            name=name,
            type=type_,
            flushed=stats.flushed,
            nonzero=stats.nonzero,
            percent=f"{fraction * 100:.1f}",
            fraction=fraction,
        )


def _mask_finding(masks: list[tuple[ir.Value, _Stats]], ctx: RuleContext) -> Finding:
    worst = min(stats.worst for _, stats in masks)
    return ctx.report(
        "mask_fill",
        values=[value for value, _ in masks],
        count=len(masks),
        worst=format_number(worst),
        example=masks[0][0].name or "?",
    )


# --- activations (with sample inputs) -----------------------------------------------------------------------


def _activation_findings(
    model: ir.Model, ranges: Mapping[str, TensorRange], options: Options, ctx: RuleContext
) -> Iterator[Finding]:
    """Overflow where it starts, and tensors that mostly flush to zero, in graph order."""
    values = {v.name: v for v in _main_graph_values(model) if v.name in ranges}
    overflowing = {
        name
        for name, value in values.items()
        if ranges[name].overflow and not is_mask_saturation(value, ranges, ctx.analysis)
    }
    for name, value in values.items():
        measured = ranges[name]
        node = value.producer()
        if name in overflowing and node is not None and not _overflowing_inputs(node, overflowing):
            yield _overflow_finding(value, node, measured, _downstream(value, overflowing), ctx)
        fraction = measured.flush_fraction
        if node is not None and measured.flushed and fraction >= options.activation_flush_fraction:
            yield _flush_finding(value, node, measured, ctx)


def _main_graph_values(model: ir.Model) -> Iterator[ir.Value]:
    yield from model.graph.inputs
    for node in model.graph:
        yield from node.outputs


def _overflowing_inputs(node: ir.Node, overflowing: set[str]) -> bool:
    return any(v is not None and v.name in overflowing for v in node.inputs)


def _downstream(value: ir.Value, overflowing: set[str]) -> int:
    """How many other overflowing tensors are computed from this one (the overflow propagating)."""
    seen, frontier, count = {id(value)}, [value], 0
    while frontier:
        current = frontier.pop()
        for use in current.uses():
            for output in use.node.outputs:
                if id(output) in seen:
                    continue
                seen.add(id(output))
                frontier.append(output)
                count += output.name in overflowing
    return count


def _overflow_finding(
    value: ir.Value, node: ir.Node, measured: TensorRange, downstream: int, ctx: RuleContext
) -> Finding:
    tail = f"; {downstream} tensor(s) computed from it overflow too" if downstream else ""
    return ctx.report(
        "activation_overflow",
        node=node,
        values=[value],
        op_type=node.op_type,
        node_name=node_label(node),
        tensor=value.name,
        type=_type_of(measured),
        count=measured.overflow,
        size=measured.size,
        worst=format_number(measured.worst),
        worst_value=measured.worst,
        source=SOURCE,
        downstream=tail,
        downstream_count=downstream,
    )


def _flush_finding(value: ir.Value, node: ir.Node, measured: TensorRange, ctx: RuleContext) -> Finding:
    fraction = measured.flush_fraction
    return ctx.report(
        "activation_flush",
        node=node,
        values=[value],
        severity=Severity.WARNING if fraction >= _MOSTLY else None,
        op_type=node.op_type,
        node_name=node_label(node),
        tensor=value.name,
        type=_type_of(measured),
        flushed=measured.flushed,
        nonzero=measured.nonzero,
        percent=f"{fraction * 100:.1f}",
        fraction=fraction,
        max_abs=format_number(measured.max_abs),
        source=SOURCE,
    )


def _type_of(measured: TensorRange) -> str:
    """`float32[2,16,128]`: the shape the sample inputs gave, which says more than `[batch,sequence,128]`."""
    return f"{measured.dtype}[{','.join(str(d) for d in measured.shape)}]"
