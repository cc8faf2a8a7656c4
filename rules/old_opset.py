"""GD008 old-opset: opsets that make exports fragile or leave out the fused ops deployment needs.

What it finds
    - LayerNorms decomposed into ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div because the model's ai.onnx opset
      is below 17, which has no LayerNormalization (torch decomposes `nn.LayerNorm` there);
    - `Upsample` nodes (deprecated since opset 10) and `Resize` at opset 10, whose only coordinate mapping is
      "asymmetric": PyTorch's `interpolate(mode="bilinear", align_corners=False)` does not match it, and
      torch warns so when it exports at opset 10 or below;
    - an ai.onnx opset below 7, which onnxruntime does not guarantee;
    - an opset newer than the installed onnxruntime knows (it refuses to load the model: an error).
    The opsets each TensorRT version reads are GD013's (target-aware). A clean export at opset 17 to 24
    reports nothing.

Why it matters
    A decomposed LayerNorm is seven kernels where one would do, its eps is a constant tensor that FP16
    converters rewrite (GD004), and its variance is computed in whatever precision the primitives run in:
    TensorRT itself warns "Running layernorm after self-attention in FP16 may cause overflow. Exporting the
    model to the latest available ONNX opset (later than opset 17) to use the INormalizationLayer, or forcing
    layernorm layers to run in FP32 precision can help with preserving accuracy." Opset-10 resizing gives
    different pixels from PyTorch. Opsets outside a runtime's range fail to load, or load into legacy paths.

How to fix
    Export again with `torch.onnx.export(..., opset_version=17)` or later (18 for the dynamo exporter's
    default). For Resize/Upsample, opset 11 or later gives Resize with `coordinate_transformation_mode`
    matching PyTorch's. For an opset the runtime does not know, export at a lower one or upgrade the runtime.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import onnx_ir as ir

from graphdoctor.analysis.graph import node_label, opset_version
from graphdoctor.analysis.normalization import normalizations
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "check"]

LAYER_NORMALIZATION_OPSET = 17  # LayerNormalization joined ai.onnx in opset 17
RESIZE_COORDINATES_OPSET = 11  # Resize-11 added coordinate_transformation_mode
ORT_MIN_OPSET = 7  # onnxruntime "supports ONNX opsets ... opset version 7 and higher"
ORT_SAFE_OPSET = 21  # every onnxruntime graphdoctor supports (>= 1.18) knows opset 21: no need to import it
_EXAMPLES = 3

META = RuleMeta(
    code="GD008",
    name="old-opset",
    kind=RuleKind.PROBLEM,
    severity=Severity.WARNING,
    summary="opsets that decompose LayerNorm, use old Resize/Upsample, or fall outside the runtimes' range",
    messages={
        "decomposed_layernorm": Message(
            "{count} LayerNorm(s) are exported as ReduceMean/Sub/Pow/Add/Sqrt/Div chains because opset {opset}"
            " has no LayerNormalization: {nodes}",
            help="export with opset_version=17 or later to get LayerNormalization: one fused op that TensorRT"
            " runs with INormalizationLayer, eps kept as a float attribute, fewer FP16 pitfalls",
        ),
        "upsample": Message(
            "{count} Upsample node(s), deprecated since opset 10 (model: opset {opset}): {nodes}; its 'linear'"
            " mode uses asymmetric coordinates, unlike PyTorch's interpolate(align_corners=False)",
            help="export with opset_version=11 or later to get Resize with coordinate_transformation_mode",
        ),
        "resize_opset10": Message(
            "{count} Resize node(s) at opset {opset}, whose Resize only has asymmetric coordinates: {nodes};"
            " bilinear resizing differs from PyTorch's interpolate(align_corners=False)",
            help="export with opset_version=11 or later: Resize then carries coordinate_transformation_mode"
            " (half_pixel, align_corners, ...) and matches PyTorch",
        ),
        "too_old": Message(
            "the model imports ai.onnx opset {opset}: onnxruntime only guarantees opset 7 and later",
            help="export again with a current opset (17 or later)",
        ),
        "newer_than_runtime": Message(
            "the model imports ai.onnx opset {opset}, newer than the installed onnxruntime {ort_version} knows"
            " (up to {ort_max}): it refuses to load the model",
            help="export with opset_version={ort_max} or lower, or upgrade onnxruntime",
            severity=Severity.ERROR,
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    opset = opset_version(model)
    if opset is None:
        return  # no ai.onnx ops at all
    yield from _opset_range(opset, ctx)
    yield from _decomposed_layernorms(opset, ctx)
    yield from _resizing(opset, ctx)


def _opset_range(opset: int, ctx: RuleContext) -> Iterator[Finding]:
    if opset < ORT_MIN_OPSET:
        yield ctx.report("too_old", opset=opset)
        return
    runtime = _onnxruntime_opsets() if opset > ORT_SAFE_OPSET else None
    if runtime is not None and opset > runtime[1]:
        yield ctx.report("newer_than_runtime", opset=opset, ort_version=runtime[0], ort_max=runtime[1])


def _decomposed_layernorms(opset: int, ctx: RuleContext) -> Iterator[Finding]:
    """Decomposed LayerNorms over the trailing axes: what `nn.LayerNorm` becomes below opset 17."""
    if opset >= LAYER_NORMALIZATION_OPSET:
        return
    candidates = [n for n in normalizations(ctx.analysis) if n.is_decomposed and n.kind == "LayerNormalization"]
    if any(a >= 0 for n in candidates for a in n.axes or ()):
        ctx.analysis.types_inferred  # noqa: B018 - positive axes need the input's rank
    found = [n for n in candidates if n.reduces_trailing_axes()]
    if found:
        nodes = [n.node for n in found]
        yield _grouped("decomposed_layernorm", nodes, ctx, opset=opset)


def _resizing(opset: int, ctx: RuleContext) -> Iterator[Finding]:
    upsample = list(ctx.analysis.nodes("Upsample"))
    if upsample:
        yield _grouped("upsample", upsample, ctx, opset=opset)
    if opset < RESIZE_COORDINATES_OPSET:
        resize = list(ctx.analysis.nodes("Resize"))
        if resize:
            yield _grouped("resize_opset10", resize, ctx, opset=opset)


def _grouped(message_id: str, nodes: list[ir.Node], ctx: RuleContext, **data: object) -> Finding:
    """One finding for many nodes of one cause: located at the first, naming a few, counting all."""
    names = [node_label(n) for n in nodes]
    listed = ", ".join(f"'{name}'" for name in names[:_EXAMPLES])
    more = len(names) - _EXAMPLES
    return ctx.report(
        message_id,
        node=nodes[0],
        count=len(nodes),
        nodes=listed + (f" and {more} more" if more > 0 else ""),
        node_names=names,
        **data,
    )


@functools.cache
def _onnxruntime_opsets() -> tuple[str, int] | None:
    """(version, newest ai.onnx opset) of the installed onnxruntime; None when it is not installed.

    onnxruntime refuses models stamped with an ai.onnx opset above the newest one its operator schemas know
    (measured with 1.32: opset 28 loads, 29 fails in ValidateOpsetForDomain).
    """
    try:
        import onnxruntime
        from onnxruntime.capi import _pybind_state

        schemas = _pybind_state.get_all_operator_schema()  # private, but what onnxruntime's own doc tools use
    except (ImportError, AttributeError):
        return None
    newest = max((s.since_version for s in schemas if s.domain in ("", "ai.onnx")), default=None)
    return None if newest is None else (onnxruntime.__version__, int(newest))
