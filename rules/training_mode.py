"""GD006 training-mode: BatchNormalization and Dropout exported in training mode.

What it finds
    - BatchNormalization with `training_mode=1` (opset 14 and later), with the extra mean/variance outputs
      that mark the training form in opsets 7 to 13, or with `is_test=0` (opset 6 and earlier, where 0 is
      the default).
    - Dropout whose `training_mode` input is a constant True (opset 12 and later), or with `is_test=0`
      (opset 6 and earlier): an error. A `training_mode` fed by a graph input or computed at run time: a
      warning, since a caller can switch dropout on.
    Dropout in inference mode is an identity and is not reported; opsets 7 to 11 have no way to ask for
    training mode.

Why it matters
    A BatchNormalization in training mode normalizes each batch with that batch's own mean and variance
    instead of the learned running statistics: an image's output depends on what else is in its batch
    (measured on ONNX Runtime: the same image gives different outputs in different batches). ONNX Runtime
    computes the batch statistics; TensorRT ignores the flag and uses the running statistics, so the two
    backends disagree. A Dropout in training mode zeroes a random part of its input on every run; TensorRT
    refuses to parse it, and ONNX Runtime drops it only when its graph optimizations are on, so results
    depend on the session options. Both come from exporting a model that was not in eval mode with
    `training=torch.onnx.TrainingMode.TRAINING` or `PRESERVE`.

How to fix
    Call `model.eval()` before `torch.onnx.export`, or pass `training=torch.onnx.TrainingMode.EVAL`, and
    re-export. `graphdoctor fix --unsafe-fixes` sets inference mode in place (unsafe: outputs change, which is
    the point).

Options
    max_listed (10): more BatchNormalization nodes of one kind than this are one finding naming the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx_ir as ir

from graphdoctor.analysis.format import format_number
from graphdoctor.analysis.graph import node_label, opset_version
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, FixSafety, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "check"]

_FIX_HELP = (
    "call model.eval() before torch.onnx.export, or pass training=torch.onnx.TrainingMode.EVAL;"
    " `graphdoctor fix --unsafe-fixes` sets inference mode (outputs change)"
)
_BATCH_STATS = (
    "it normalizes with each batch's own mean and variance, not the learned running statistics, so outputs depend"
    " on the batch; ONNX Runtime does this, TensorRT ignores it and uses the running statistics"
)
_RANDOM = (
    "it zeroes {ratio} of its input at random on every run; TensorRT refuses to parse it, and ONNX Runtime drops"
    " it only with graph optimizations on"
)


@dataclass(frozen=True)
class Options:
    max_listed: int = 10  # more BatchNormalization nodes of one kind than this: one finding naming the first


META = RuleMeta(
    code="GD006",
    name="training-mode",
    kind=RuleKind.PROBLEM,
    severity=Severity.ERROR,
    summary="BatchNormalization and Dropout exported in training mode: batch-dependent or random outputs",
    fix=FixSafety.UNSAFE,
    options=Options(),
    messages={
        "bn_training_mode": Message(
            "BatchNormalization '{bn}'{others}: training_mode=1; " + _BATCH_STATS,
            help=_FIX_HELP,
        ),
        "bn_training_outputs": Message(
            "BatchNormalization '{bn}'{others}: {count} outputs, the training form in opset {opset}; " + _BATCH_STATS,
            help=_FIX_HELP,
        ),
        "bn_is_test": Message(
            "BatchNormalization '{bn}'{others}: is_test=0{default} in opset {opset}, training mode; " + _BATCH_STATS,
            help=_FIX_HELP,
        ),
        "dropout_training_mode": Message(
            "Dropout '{dropout}': training_mode is True ('{mode}'); " + _RANDOM, help=_FIX_HELP
        ),
        "dropout_is_test": Message(
            "Dropout '{dropout}': is_test=0{default} in opset {opset}, training mode; " + _RANDOM, help=_FIX_HELP
        ),
        "dropout_runtime_mode": Message(
            "Dropout '{dropout}': training_mode comes from {source}; a caller can switch random dropout on, and"
            " TensorRT only parses a constant training_mode",
            help=_FIX_HELP,
            severity=Severity.WARNING,
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    batch_norms: dict[str, list[tuple[ir.Node, dict[str, object]]]] = {}
    for node in ctx.analysis.nodes(("BatchNormalization", "Dropout")):
        opset = node.version or opset_version(model) or 0
        if node.op_type == "Dropout":
            finding = _check_dropout(node, opset, ctx)
            if finding is not None:
                yield finding
        elif (hit := _batch_norm_training(node, opset)) is not None:
            batch_norms.setdefault(hit[0], []).append((node, hit[1]))
    for message_id, hits in batch_norms.items():
        yield from _report_batch_norms(message_id, hits, ctx)


def _batch_norm_training(node: ir.Node, opset: int) -> tuple[str, dict[str, object]] | None:
    """How this BatchNormalization asks for training mode, if it does: each opset era has its own way."""
    if opset >= 14:
        return ("bn_training_mode", {}) if node.attributes.get_int("training_mode", 0) == 1 else None
    if opset >= 7:  # the spec's "output case #1": Y, mean, var, saved_mean, saved_var
        count = sum(1 for value in node.outputs if value.name)
        return ("bn_training_outputs", {"count": count, "opset": opset}) if count > 1 else None
    if node.attributes.get_int("is_test", 0) == 0:  # opset < 7: is_test defaults to 0, training
        default = "" if "is_test" in node.attributes else " (the default)"
        return "bn_is_test", {"default": default, "opset": opset}
    return None


def _report_batch_norms(
    message_id: str, hits: list[tuple[ir.Node, dict[str, object]]], ctx: RuleContext
) -> Iterator[Finding]:
    """One finding per node; past `max_listed`, one finding naming the first and counting the rest."""
    if message_id == "bn_is_test" or len(hits) <= ctx.options.max_listed:
        for node, data in hits:
            yield ctx.report(message_id, node=node, values=node.outputs[:1], bn=node_label(node), others="", **data)
        return
    first, data = hits[0]
    yield ctx.report(
        message_id,
        node=first,
        values=[node.outputs[0] for node, _ in hits],
        bn=node_label(first),
        others=f" and {len(hits) - 1} more like it",
        nodes=[node_label(node) for node, _ in hits],
        **data,
    )


def _check_dropout(node: ir.Node, opset: int, ctx: RuleContext) -> Finding | None:
    label = node_label(node)
    if opset >= 12:
        return _check_dropout_mode_input(node, label, ctx)
    if opset < 7 and node.attributes.get_int("is_test", 0) == 0:
        ratio = _percent(node.attributes.get_float("ratio", 0.5))
        default = "" if "is_test" in node.attributes else " (the default)"
        return ctx.report(
            "dropout_is_test",
            node=node,
            values=node.outputs[:1],
            dropout=label,
            default=default,
            opset=opset,
            ratio=ratio,
        )
    return None  # opsets 7-11 have no training mode


def _check_dropout_mode_input(node: ir.Node, label: str, ctx: RuleContext) -> Finding | None:
    """Opset 12+: the optional third input decides; absent or constant False is inference mode."""
    mode = node.inputs[2] if len(node.inputs) > 2 else None
    if mode is None:
        return None
    if mode.is_graph_input() or (mode.producer() is None and mode.const_value is None):
        source = f"graph input '{mode.name}'"
    elif (value := ctx.analysis.scalar(mode)) is not None:
        if not value:
            return None
        ratio_input = node.inputs[1] if len(node.inputs) > 1 else None
        ratio = ctx.analysis.scalar(ratio_input) if ratio_input is not None else 0.5
        return ctx.report(
            "dropout_training_mode",
            node=node,
            values=[mode],
            dropout=label,
            mode=mode.name,
            ratio=_percent(ratio),
        )
    elif (producer := mode.producer()) is not None and producer.op_type != "Constant":
        source = f"'{mode.name}', computed by {producer.op_type} '{node_label(producer)}'"
    else:
        return None  # a constant whose data cannot be read (GD014 reports it)
    return ctx.report("dropout_runtime_mode", node=node, values=[mode], dropout=label, source=source)


def _percent(ratio: float | int | None) -> str:
    """'30%' of the input, or 'part' when the ratio is not a readable constant."""
    if ratio is None:
        return "part"
    return f"{format_number(float(ratio) * 100)}%"
