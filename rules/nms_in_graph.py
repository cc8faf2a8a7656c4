"""GD012 nms-in-graph: NonMaxSuppression and TopK post-processing whose results differ across backends.

What it finds
    Every `NonMaxSuppression` node (a warning), and every `TopK` that does post-processing (info): one whose
    outputs reach a graph output, or a NonMaxSuppression, within `max_hops` nodes (3). The heuristic is
    deliberately simple: a TopK deep inside a network (mixture-of-experts routing, sampling inside a
    decoder layer) is many nodes away from the outputs and is not flagged; a TopK → Gather → output chain
    that picks the final detections or classes is. Nodes of other domains (TensorRT's EfficientNMS_TRT
    plugin, for instance) are not flagged: they are the fix.

Why it matters
    The ONNX NonMaxSuppression output `selected_indices` is `[N, 3]` with N known only at run time:
    TensorRT builds it with a data-dependent-shape layer (INMSLayer, TensorRT 8.5 and newer), and older
    TensorRT versions and many serving stacks cannot build it at all. Where it builds, the backends do not
    agree box for box:
    - the order of boxes with equal scores (ONNX Runtime keeps the lower index first; TensorRT leaves it
      unspecified), and ties are common once scores are rounded to FP16;
    - a score exactly equal to `score_threshold` (the ONNX spec keeps it; ONNX Runtime, measured, and
      TensorRT, documented, drop it);
    - TensorRT first keeps a limited number of top-scoring boxes per image across all classes (its TopK
      box limit) where ONNX considers every box per class, so crowded images lose boxes;
    - `max_output_boxes_per_class` absent or 0 selects no boxes at all.
    TopK has the same tie problem: ONNX orders equal values by lower index, TensorRT does not promise an
    order. Older TensorRT versions need a constant `k`, and TensorRT's TopK supports k up to 3840.

How to fix
    Verify detections on the target backend, not only in ONNX Runtime (`graphdoctor verify` with the
    TensorRT execution provider). Better, keep NMS out of the graph: export the raw boxes and scores
    (ultralytics: `model.export(format="onnx", nms=False)`) and run NMS in the application, or replace it
    with TensorRT's `EfficientNMS_TRT` plugin (fixed-size outputs, built for TensorRT). For TopK, make `k` a
    constant and expect ties to be ordered differently.

Options
    `max_hops` (3): how many nodes downstream of a TopK may lie between it and a graph output or a
    NonMaxSuppression for it to count as post-processing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx_ir as ir

from graphdoctor.analysis.format import format_number
from graphdoctor.analysis.graph import consumers, node_label
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "Options", "check"]

_TENSORRT_MAX_K = 3840


@dataclass(frozen=True)
class Options:
    max_hops: int = 3


META = RuleMeta(
    code="GD012",
    name="nms-in-graph",
    kind=RuleKind.PROBLEM,
    severity=Severity.WARNING,
    summary="NonMaxSuppression and TopK post-processing whose results differ between backends",
    options=Options(),
    messages={
        "nms": Message(
            "NonMaxSuppression in the graph ({params}): its [N,3] output has a data-dependent size, and"
            " ONNX Runtime and TensorRT disagree on ties, on scores equal to the threshold and on how many"
            " candidate boxes they consider{detail}",
            help="check the detections on the target backend; or export without NMS (ultralytics nms=False)"
            " and run it outside the model, or use TensorRT's EfficientNMS_TRT plugin",
        ),
        "topk": Message(
            "TopK (k={k}) selects results {near}: backends order equal values differently (ONNX: lower index"
            " first; TensorRT: unspecified){detail}",
            help="compare the selected indices on the target backend; expect ties to swap",
            severity=Severity.INFO,
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    for node in ctx.analysis.nodes("NonMaxSuppression"):
        yield _nms_finding(node, ctx)
    options: Options = ctx.options
    for node in ctx.analysis.nodes("TopK"):
        near = _postprocessing_target(node, options.max_hops)
        if near is not None:
            yield _topk_finding(node, near, ctx)


# --- NonMaxSuppression --------------------------------------------------------------------------

_NMS_INPUTS = ("max_output_boxes_per_class", "iou_threshold", "score_threshold")


def _nms_finding(node: ir.Node, ctx: RuleContext) -> Finding:
    values = {name: _input_value(node, 2 + i, ctx) for i, name in enumerate(_NMS_INPUTS)}
    params = [f"center_point_box={node.attributes.get_int('center_point_box', 0)}"]
    params += [f"{name}={_show(value)}" for name, value in values.items()]
    max_boxes = values["max_output_boxes_per_class"]
    detail = ""
    if max_boxes == 0:  # absent inputs read as 0: the spec's default selects nothing
        detail = "; max_output_boxes_per_class is 0 (or absent), so it selects no boxes at all"
    return ctx.report(
        "nms",
        node=node,
        values=node.outputs[:1],
        params=", ".join(params),
        detail=detail,
        **{name: value for name, value in values.items() if isinstance(value, int | float)},
    )


def _input_value(node: ir.Node, index: int, ctx: RuleContext) -> float | int | str:
    """A scalar input's constant value, the spec's default when absent, 'dynamic' when computed."""
    if index >= len(node.inputs) or node.inputs[index] is None:
        return "none" if index == 4 else 0  # no score threshold; max boxes and IoU threshold default to 0
    value = ctx.analysis.scalar(node.inputs[index])
    return "dynamic" if value is None else value


def _show(value: float | int | str) -> str:
    return format_number(value) if isinstance(value, int | float) else value


# --- TopK ---------------------------------------------------------------------------------------


def _postprocessing_target(node: ir.Node, max_hops: int) -> str | None:
    """What makes this TopK post-processing: the graph output or NonMaxSuppression it reaches, or None."""
    frontier = list(node.outputs)
    seen: set[int] = {id(node)}
    for _ in range(max_hops + 1):
        next_frontier: list[ir.Value] = []
        for value in frontier:
            if value.is_graph_output():
                return f"for graph output '{value.name}'"
            for consumer in consumers(value):
                if consumer.op_type == "NonMaxSuppression" and consumer.domain in ("", "ai.onnx"):
                    return f"for NonMaxSuppression '{node_label(consumer)}'"
                if id(consumer) not in seen:
                    seen.add(id(consumer))
                    next_frontier.extend(consumer.outputs)
        frontier = next_frontier
    return None


def _topk_finding(node: ir.Node, near: str, ctx: RuleContext) -> Finding:
    k = _topk_k(node, ctx)
    detail = ""
    if k is None:
        detail = "; k is computed at run time, which older TensorRT versions reject (they need a constant k)"
    elif k > _TENSORRT_MAX_K:
        detail = f"; k={k} exceeds the {_TENSORRT_MAX_K} TensorRT's TopK supports"
    return ctx.report(
        "topk",
        node=node,
        values=list(node.outputs),
        k="dynamic" if k is None else str(k),
        near=near,
        detail=detail,
    )


def _topk_k(node: ir.Node, ctx: RuleContext) -> int | None:
    """k from the input (opset 10+) or the attribute (opset 1); None when it is only known at run time."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        value = ctx.analysis.scalar(node.inputs[1])
        return int(value) if value is not None else None
    attr = node.attributes.get_int("k")
    return int(attr) if attr is not None else None
