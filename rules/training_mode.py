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
    re-export. `graphdoctor fix --unsafe-fixes` puts the graph in inference mode in place (unsafe: outputs
    change, which is the point):
    - BatchNormalization loses `training_mode` (opset 14+) or gets `is_test=1` (opset 6 and earlier), and its
      extra outputs go: readers of the updated running mean and variance read the running statistics
      inputs instead, which is what they are in eval mode (nothing updates them). Before opset 14, a node
      whose saved batch mean or variance (outputs 4 and 5) is read is left alone: eval mode has no value
      for them.
    - Dropout is removed, its readers reading its input (inference Dropout is an identity). A mask that is
      read becomes a constant all-true tensor when the input's shape is static (and at most 2^24 elements);
      otherwise the Dropout stays with its `training_mode` input dropped (False). A Dropout of opset 6 or
      earlier whose mask is read is left alone: that mask is not defined in inference mode.
    A `training_mode` fed by a graph input stops mattering: the input stays, so callers do not break.

Options
    max_listed (10): more BatchNormalization nodes of one kind than this are one finding naming the first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.format import format_number
from graphdoctor.analysis.graph import node_label, opset_version
from graphdoctor.engine import RuleContext
from graphdoctor.rewrite import is_attached, remove_node, replace_value
from graphdoctor.rule import Finding, FixSafety, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "check"]

_MAX_MASK_ELEMENTS = 1 << 24  # 16 MiB of bools; larger read masks keep the Dropout, in inference mode
_EVAL_HELP = "call model.eval() before torch.onnx.export, or pass training=torch.onnx.TrainingMode.EVAL"
_FIX = "; `graphdoctor fix --unsafe-fixes` "
_RUNNING_STATS = "(readers of the updated running mean and variance read the running statistics inputs, as eval does)"
_READ_MASK = (
    "; a read mask becomes a constant all-true, or, when the input's shape is not static, the Dropout stays with"
    " training_mode dropped"
)
_BATCH_STATS = (
    "it normalizes with each batch's own mean and variance, not the learned running statistics, so outputs depend"
    " on the batch; ONNX Runtime does this, TensorRT ignores it and uses the running statistics"
)
_RANDOM = (
    "it zeroes {ratio} of its input at random on every run; TensorRT refuses to parse it, and ONNX Runtime drops"
    " it only with graph optimizations on"
)
_SAVED_STATS_READ = (
    "; but it leaves {refused_count} node(s) alone, e.g. '{refused_node}', whose saved batch mean or variance"
    " (outputs 4-5) is read: eval mode has no value for them"
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
    fix_changes_outputs=True,  # inference mode is the point: `fix` verifies the rest against it
    options=Options(),
    messages={
        "bn_training_mode": Message(
            "BatchNormalization '{bn}'{others}: training_mode=1; " + _BATCH_STATS,
            help=_EVAL_HELP + _FIX + "removes training_mode and the extra outputs " + _RUNNING_STATS,
        ),
        "bn_training_outputs": Message(
            "BatchNormalization '{bn}'{others}: {count} outputs, the training form in opset {opset}; " + _BATCH_STATS,
            help=_EVAL_HELP + _FIX + "keeps only the first output " + _RUNNING_STATS + "{refused}",
        ),
        "bn_is_test": Message(
            "BatchNormalization '{bn}'{others}: is_test=0{default} in opset {opset}, training mode; " + _BATCH_STATS,
            help=_EVAL_HELP + _FIX + "sets is_test=1 and keeps only the first output " + _RUNNING_STATS + "{refused}",
        ),
        "dropout_training_mode": Message(
            "Dropout '{dropout}': training_mode is True ('{mode}'); " + _RANDOM,
            help=_EVAL_HELP + _FIX + "removes the Dropout (in inference it is an identity)" + _READ_MASK,
        ),
        "dropout_is_test": Message(
            "Dropout '{dropout}': is_test=0{default} in opset {opset}, training mode; " + _RANDOM,
            help=_EVAL_HELP + _FIX + "removes the Dropout (in inference it is an identity){refused}",
        ),
        "dropout_runtime_mode": Message(
            "Dropout '{dropout}': training_mode comes from {source}; a caller can switch random dropout on, and"
            " TensorRT only parses a constant training_mode",
            help=_EVAL_HELP + _FIX + "removes the Dropout: no caller can switch it on (the input stays)" + _READ_MASK,
            severity=Severity.WARNING,
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    batch_norms: dict[str, list[tuple[ir.Node, int, dict[str, object]]]] = {}
    for node in ctx.analysis.nodes(("BatchNormalization", "Dropout")):
        opset = node.version or opset_version(model) or 0
        if node.op_type == "Dropout":
            finding = _check_dropout(node, opset, ctx)
            if finding is not None:
                yield finding
        elif (hit := _batch_norm_training(node, opset)) is not None:
            batch_norms.setdefault(hit[0], []).append((node, opset, hit[1]))
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
    message_id: str, hits: list[tuple[ir.Node, int, dict[str, object]]], ctx: RuleContext
) -> Iterator[Finding]:
    """One finding per node; past `max_listed`, one finding naming the first and counting the rest."""
    if message_id == "bn_is_test" or len(hits) <= ctx.options.max_listed:
        for node, opset, data in hits:
            yield _report_batch_norm_group(message_id, [(node, opset)], ctx, bn=node_label(node), others="", **data)
        return
    first, _, data = hits[0]
    yield _report_batch_norm_group(
        message_id,
        [(node, opset) for node, opset, _ in hits],
        ctx,
        bn=node_label(first),
        others=f" and {len(hits) - 1} more like it",
        nodes=[node_label(node) for node, _, _ in hits],
        **data,
    )


def _report_batch_norm_group(
    message_id: str, group: list[tuple[ir.Node, int]], ctx: RuleContext, **data: object
) -> Finding:
    """A finding for these nodes, repairing those whose extra outputs have an inference-mode value."""
    fixable = [(node, opset) for node, opset in group if not _reads_saved_stats(node, opset)]
    refused = [node for node, opset in group if _reads_saved_stats(node, opset)]
    note = ""
    if refused:
        note = _SAVED_STATS_READ.format(refused_count=len(refused), refused_node=node_label(refused[0]))
    return ctx.report(
        message_id,
        node=group[0][0],
        values=[node.outputs[0] for node, _ in group],
        refused=note,
        repair=_repair_all([_batch_norm_repair(node, opset) for node, opset in fixable]) if fixable else None,
        **data,
    )


def _reads_saved_stats(node: ir.Node, opset: int) -> bool:
    """Before opset 14, outputs 4-5 are the batch's own mean and variance: eval mode has nothing to give them."""
    return opset < 14 and any(_is_read(value) for value in node.outputs[3:])


def _is_read(value: ir.Value) -> bool:
    return bool(value.uses()) or value.is_graph_output()


def _repair_all(repairs: list[Callable[[], bool]]) -> Callable[[], bool]:
    def repair() -> bool:
        return any([repair() for repair in repairs])  # a list: every repair runs

    return repair


def _batch_norm_repair(node: ir.Node, opset: int) -> Callable[[], bool]:
    """Inference mode: the mode attribute set, and the extra outputs gone. In eval mode nothing updates the
    running statistics, so the updated mean and variance outputs are the running statistics inputs."""

    def repair() -> bool:
        if not is_attached(node) or _batch_norm_training(node, opset) is None:
            return False
        for output, running in zip(node.outputs[1:3], node.inputs[3:5], strict=False):
            if _is_read(output) and running is not None:
                replace_value(output, running)
        node.resize_outputs(1)
        if opset >= 14:
            node.attributes.pop("training_mode", None)
        elif opset < 7:
            node.attributes["is_test"] = ir.AttrInt64("is_test", 1)
        return True

    return repair


def _check_dropout(node: ir.Node, opset: int, ctx: RuleContext) -> Finding | None:
    label = node_label(node)
    if opset >= 12:
        return _check_dropout_mode_input(node, label, ctx)
    if opset < 7 and node.attributes.get_int("is_test", 0) == 0:
        ratio = _percent(node.attributes.get_float("ratio", 0.5))
        default = "" if "is_test" in node.attributes else " (the default)"
        mask_read = len(node.outputs) > 1 and _is_read(node.outputs[1])
        refused = "; not this one: its mask is read, and opset 6 defines no mask in inference mode"
        return ctx.report(
            "dropout_is_test",
            node=node,
            values=node.outputs[:1],
            dropout=label,
            default=default,
            opset=opset,
            ratio=ratio,
            refused=refused if mask_read else "",
            repair=None if mask_read else _dropout_repair(node),
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
            repair=_dropout_repair(node),
        )
    elif (producer := mode.producer()) is not None and producer.op_type != "Constant":
        source = f"'{mode.name}', computed by {producer.op_type} '{node_label(producer)}'"
    else:
        return None  # a constant whose data cannot be read (GD014 reports it)
    return ctx.report(
        "dropout_runtime_mode", node=node, values=[mode], dropout=label, source=source, repair=_dropout_repair(node)
    )


def _dropout_repair(node: ir.Node) -> Callable[[], bool]:
    """Inference Dropout is an identity whose mask is all true: remove it, or, when a read mask's shape is not
    static, keep it with training_mode dropped (its default, False)."""

    def repair() -> bool:
        if not is_attached(node):
            return False
        mask = node.outputs[1] if len(node.outputs) > 1 and _is_read(node.outputs[1]) else None
        data = node.inputs[0]
        if mask is not None and not _is_storable(data.shape):
            node.resize_inputs(2 if node.inputs[1] is not None else 1)
            return True
        if mask is not None:
            replace_value(mask, _all_true(node, mask, data.shape))
        replace_value(node.outputs[0], data)
        remove_node(node)
        return True

    return repair


def _is_storable(shape: ir.Shape | None) -> bool:
    """Whether an all-true mask of this shape can be stored as a Constant: static, and no larger than
    `_MAX_MASK_ELEMENTS` (declared dims may say 10^12: trusting them would allocate a terabyte)."""
    return shape is not None and shape.is_static() and math.prod(shape.numpy()) <= _MAX_MASK_ELEMENTS


def _all_true(node: ir.Node, mask: ir.Value, shape: ir.Shape) -> ir.Value:
    """A Constant all-true mask of `shape`, placed before `node` and named after the mask it replaces."""
    tensor = ir.tensor(np.ones(tuple(shape.numpy()), dtype=np.bool_), name=f"{mask.name}_inference")
    constant = ir.Node("", "Constant", [], attributes=[ir.AttrTensor("value", tensor)], num_outputs=1)
    output = constant.outputs[0]
    output.name, output.type, output.shape = tensor.name, ir.TensorType(ir.DataType.BOOL), ir.Shape(shape.numpy())
    node.graph.insert_before(node, constant)
    return output


def _percent(ratio: float | int | None) -> str:
    """'30%' of the input, or 'part' when the ratio is not a readable constant."""
    if ratio is None:
        return "part"
    return f"{format_number(float(ratio) * 100)}%"
