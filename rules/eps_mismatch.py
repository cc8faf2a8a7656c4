"""GD004 eps-mismatch: normalization epsilons that differ between layers of one kind, or vanish in FP16.

What it finds
    (a) Layers of one kind (BatchNormalization, LayerNorm, InstanceNorm, GroupNorm, RMSNorm) that do not
    share one epsilon: "3 of 57 BatchNormalization nodes use eps=1e-05; 54 use 0.001", naming the minority.
    When no value holds a majority, the split itself is reported, with no side called the outlier.
    (b) Epsilons that FP16 cannot hold. Below 2^-25 (≈ 2.98e-08, e.g. BERT's 1e-12) an eps rounds to 0 in
    FP16: a warning where it is a constant tensor of a decomposed LayerNorm/RMSNorm (what torch exports below
    opset 17), an info where it is the float attribute of a fused op. An eps constant below 6.1e-05 (2^-14)
    becomes an FP16 subnormal: an info, with the value it will have, when that is 5% off or more.
    Fused ops and the decomposed ReduceMean/Sub/Pow/ReduceMean/Add(eps)/Sqrt/Div pattern are both covered;
    identical layers are reported once per (kind, eps), with a count.

Why it matters
    eps is part of the trained function. A runtime or a reimplementation that applies one eps to every layer
    diverges from PyTorch wherever the model used another: TensorRTX's YOLOv7 port did exactly that. Mixed
    values usually mean some layers came from another codebase or a pretrained block, and nobody checked.
    In FP16, `var + eps` with eps = 0 divides by zero on every row whose variance is zero (padding, constant
    inputs): inf/NaN. FP16 converters rewrite eps constants silently (onnxconverter-common to 1.19e-07,
    onnxruntime's converter to 5.96e-08, onnxsim to 0); a fused op's float attribute is never touched.

How to fix
    For (a), confirm each layer's eps against the training code and make sure every runtime or port uses the
    per-layer values. For (b), re-export at opset 17 or later so LayerNorm becomes `LayerNormalization`
    (eps a float attribute; opset 23 for `RMSNormalization`), or keep these nodes in FP32 when converting:
    `graphdoctor fix --fp16` does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.format import format_number
from graphdoctor.analysis.graph import node_label
from graphdoctor.analysis.normalization import Normalization, normalizations
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "check"]

FP16_FLUSH = 2.0**-25  # |x| <= this rounds to 0 in FP16 (round to nearest even)
FP16_MIN_NORMAL = 2.0**-14  # below it FP16 is subnormal: fewer significant bits
# A subnormal eps is reported when FP16 moves it by this much: nn.LayerNorm's 1e-05 (0.1% off) or LLaMA's
# 1e-06 (1.3%) change nothing visible, while 1e-07 becomes 1.19e-07 (19%).
SUBNORMAL_ERROR = 0.05
_EXAMPLES = 3  # node names listed in a message before "and N more"
# the fused op (and the opset that introduced it) a decomposed pattern of each kind can become
_FUSED_FORM = {"LayerNormalization": 17, "RMSNormalization": 23}

_SAME_KIND_HELP = (
    "check these layers' eps against the training code and keep per-layer values everywhere the model is"
    " re-implemented or converted: a port that uses one eps for all layers (as TensorRTX's YOLOv7 did) diverges"
    " from PyTorch; mixed values usually mean a layer came from another codebase or a pretrained block"
)

META = RuleMeta(
    code="GD004",
    name="eps-mismatch",
    kind=RuleKind.PROBLEM,
    severity=Severity.WARNING,
    summary="normalization epsilons that differ between layers of one kind, or underflow in FP16",
    messages={
        "outlier": Message(
            "{count} of {total} {what} use eps={eps}; {majority_count} use {majority}: {nodes}",
            help=_SAME_KIND_HELP,
        ),
        "split": Message(
            "{total} {what} use {distinct} different eps values, none of them by a majority: {groups}",
            help=_SAME_KIND_HELP,
        ),
        "underflow_tensor": Message(
            "eps={eps} of {subject} is a constant tensor, e.g. in '{example}': it is 0 in FP16, so rows with zero"
            " variance (padding, constant inputs) divide by zero and give inf/NaN once this runs in FP16",
            help="FP16 converters rewrite this constant silently (onnxconverter-common to 1.19e-07, onnxruntime's"
            " converter to 5.96e-08, onnxsim to 0): keep these nodes in FP32 (`graphdoctor fix --fp16` does), or"
            " {reexport}",
        ),
        "underflow_attribute": Message(
            "epsilon={eps} of {subject}, e.g. '{example}', is 0 in FP16: safe while the op computes its"
            " statistics in FP32, as the attribute stays float32 whatever the converter does",
            help="under --fp16, keep these nodes in FP32 or check that the backend's FP16 kernel accumulates in FP32"
            " (onnxruntime's CPU LayerNormalization does); a kernel computing var + eps in FP16 divides by zero",
            severity=Severity.INFO,
        ),
        "subnormal_tensor": Message(
            "eps={eps} of {subject} is a constant tensor, e.g. in '{example}': below FP16's smallest normal"
            " number (6.1e-05), it becomes the subnormal {fp16} in FP16 ({error}% off)",
            help="usually harmless; if FP16 outputs drift, keep these nodes in FP32 or {reexport}",
            severity=Severity.INFO,
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    found = normalizations(ctx.analysis)
    by_kind: dict[str, list[Normalization]] = defaultdict(list)
    for norm in found:
        by_kind[norm.kind].append(norm)
    for norms in by_kind.values():
        yield from _mismatches(norms, ctx)
    yield from _fp16_findings(found, ctx)


def _eps_key(eps: float) -> float:
    """eps rounded to 6 significant digits: float32 1e-05 (9.99999974738e-06) and 1e-05 read and group as one."""
    return float(f"{eps:.6g}")


# --- (a) one kind, several values ---------------------------------------------------------------------------


def _mismatches(norms: list[Normalization], ctx: RuleContext) -> Iterator[Finding]:
    """An 'outlier' finding per minority value when one value has a majority, else one 'split' finding."""
    groups: dict[float, list[Normalization]] = defaultdict(list)
    for norm in norms:
        groups[_eps_key(norm.eps)].append(norm)
    if len(groups) < 2:
        return
    total = len(norms)
    what = _what(norms)
    majority, majority_norms = max(groups.items(), key=lambda item: len(item[1]))
    if 2 * len(majority_norms) > total:
        for eps, group in groups.items():
            if eps == majority:
                continue
            yield ctx.report(
                "outlier",
                node=group[0].node,
                count=len(group),
                total=total,
                what=what,
                eps=eps,
                majority=majority,
                majority_count=len(majority_norms),
                nodes=_list_nodes(group),
                node_names=[node_label(n.node) for n in group],
            )
        return
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    smallest = ordered[-1][1]
    yield ctx.report(
        "split",
        node=smallest[0].node,
        total=total,
        what=what,
        distinct=len(groups),
        groups="; ".join(f"{eps} ×{len(group)} ({_list_nodes(group)})" for eps, group in ordered),
        counts={eps: len(group) for eps, group in ordered},
    )


def _what(norms: list[Normalization]) -> str:
    """'BatchNormalization nodes' when all are that op; 'LayerNorms' when fused and decomposed forms mix."""
    kind = norms[0].kind
    if all(n.op == kind for n in norms):
        return f"{kind} nodes"
    return kind.replace("Normalization", "Norm") + "s"


def _list_nodes(norms: list[Normalization]) -> str:
    names = [f"'{node_label(n.node)}'" for n in norms[:_EXAMPLES]]
    more = len(norms) - _EXAMPLES
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


# --- (b) FP16 -----------------------------------------------------------------------------------------------


def _fp16_findings(norms: Iterable[Normalization], ctx: RuleContext) -> Iterator[Finding]:
    """One finding per (message, form, eps): BERT's 25 identical LayerNorms make one line, with a count."""
    groups: dict[tuple[str, str, float], list[Normalization]] = defaultdict(list)
    for norm in norms:
        message_id = _fp16_message(norm)
        if message_id is not None:
            groups[(message_id, norm.form, _eps_key(norm.eps))].append(norm)
    for (message_id, form, eps), group in groups.items():
        first = group[0]
        fp16 = float(np.float16(first.eps))
        eps_values = list(dict.fromkeys(n.eps_value for n in group if n.eps_value is not None))
        yield ctx.report(
            message_id,
            node=first.node,
            values=eps_values,
            count=len(group),
            subject=_subject(len(group), form, first.is_decomposed),
            form=form,
            eps=eps,
            example=node_label(first.node),
            fp16=format_number(fp16),
            error=f"{abs(fp16 - first.eps) / first.eps * 100:.1f}",
            reexport=_reexport_advice(first.kind),
            node_names=[node_label(n.node) for n in group],
        )


def _subject(count: int, form: str, decomposed: bool) -> str:
    """'5 decomposed LayerNorms', '1 LayerNormalization node'."""
    noun = form if decomposed else f"{form} node"
    return f"{count} {noun}" + ("s" if count > 1 else "")


def _fp16_message(norm: Normalization) -> str | None:
    """Which FP16 message applies to this eps, if any: flushed to zero, or subnormal and visibly rounded."""
    if not norm.eps > 0:
        return None  # 0 or negative is already a problem in FP32, not an FP16 one
    if norm.eps <= FP16_FLUSH:
        return "underflow_tensor" if norm.eps_location == "tensor" else "underflow_attribute"
    if norm.eps_location == "tensor" and norm.eps < FP16_MIN_NORMAL:
        error = abs(float(np.float16(norm.eps)) - norm.eps) / norm.eps
        return "subnormal_tensor" if error >= SUBNORMAL_ERROR else None
    return None


def _reexport_advice(kind: str) -> str:
    opset = _FUSED_FORM.get(kind)
    if opset is None:
        return "use a fused normalization op, whose eps is a float attribute"
    return f"re-export at opset {opset} or later so that eps becomes {kind}'s float attribute"
