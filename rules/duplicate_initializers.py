"""GD003 duplicate-initializers: the same tensor stored more than once, and tied weights stored as W and Wᵀ.

What it finds
    Initializers and Constant values, across the main graph, subgraphs and functions, that hold the same
    bytes with the same dtype and shape; and 2-D weights whose transpose is stored too (an embedding
    [V,D] and an output head [D,V] tied to it). Each group is reported once, with the bytes it wastes.
    Tensors smaller than `min-bytes` are skipped: small shape constants repeat in every export and cost
    nothing.

Why it matters
    Every copy is loaded, stored and shipped: files grow past the checkpoint's size (the 2 GB protobuf
    limit arrives sooner), engine builds and downloads take longer, and device memory holds the copy twice.
    The dynamo exporter keeps identical layers apart (its optimizer only merges tensors of up to 1024
    elements), and constant folding of `Transpose(W)` turns tied embeddings into two stored matrices
    (pytorch/pytorch#108342); simplifiers that fold constants make both worse.

How to fix
    `graphdoctor fix` merges byte-identical tensors into one (safe: outputs are bit-identical).
    For W and Wᵀ, `graphdoctor fix --dedup-transposed` keeps W and computes Wᵀ with one added Transpose
    node, so the file stores the matrix once. Exporting with the dynamo exporter keeps tied weights tied.

Options
    min-bytes (1024): ignore tensors smaller than this.
    warn-bytes (1048576): wasted bytes from which a group is a warning; smaller groups are info.
    transposed (true): also look for W/Wᵀ pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx_ir as ir

from graphdoctor.analysis.digests import StoredTensor, tensor_digests
from graphdoctor.analysis.format import format_bytes, format_dtype, format_shape
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, FixSafety, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "Options", "check"]

_LISTED = 3  # names quoted in a message; the rest are counted


@dataclass(frozen=True)
class Options:
    min_bytes: int = 1024  # smaller tensors are skipped: repeated shape constants are noise, not waste
    warn_bytes: int = 1024 * 1024  # wasted bytes from which a group is a warning
    transposed: bool = True  # look for W/Wᵀ pairs too


META = RuleMeta(
    code="GD003",
    name="duplicate-initializers",
    kind=RuleKind.SUGGESTION,
    severity=Severity.WARNING,
    summary="identical tensors stored more than once, tied weights stored as W and Wᵀ; bytes wasted",
    fix=FixSafety.SAFE,
    options=Options(),
    messages={
        "identical": Message(
            "{kind} '{name}' {type} is stored {count} times (also {others}): {wasted_size} wasted",
            help="`graphdoctor fix` merges them (safe)",
        ),
        "transposed": Message(
            "'{name}' {type} is the transpose of '{original}' {original_type}: {size} stored twice",
            help="store once and add a Transpose: `graphdoctor fix --dedup-transposed` (adds one node)",
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    options: Options = ctx.options
    digests = tensor_digests(ctx.analysis)
    for group in digests.identical_groups(options.min_bytes):
        yield _report_identical(ctx, group, options)
    if options.transposed:
        for original, transposed in digests.transposed_pairs(options.min_bytes):
            yield _report_transposed(ctx, original, transposed, options)


def _severity(wasted: int, options: Options) -> Severity:
    return Severity.WARNING if wasted >= options.warn_bytes else Severity.INFO


def _type(stored: StoredTensor) -> str:
    return f"{format_dtype(stored.dtype)}{format_shape(ir.Shape(stored.dims))}"


def _quoted(names: list[str]) -> str:
    """'a', 'b', 'c' and 5 more."""
    listed = ", ".join(f"'{name}'" for name in names[:_LISTED])
    return listed if len(names) <= _LISTED else f"{listed} and {len(names) - _LISTED} more"


def _report_identical(ctx: RuleContext, group: list[StoredTensor], options: Options) -> Finding:
    first = group[0]
    wasted = first.nbytes * (len(group) - 1)
    return ctx.report(
        "identical",
        node=first.node,
        values=[t.value for t in group],
        nbytes=wasted,
        severity=_severity(wasted, options),
        kind=first.kind,
        name=first.name,
        type=_type(first),
        count=len(group),
        others=_quoted([t.name for t in group[1:]]),
        wasted_size=format_bytes(wasted),
        wasted=wasted,
        tensor_nbytes=first.nbytes,
    )


def _report_transposed(ctx: RuleContext, original: StoredTensor, transposed: StoredTensor, options: Options) -> Finding:
    return ctx.report(
        "transposed",
        node=transposed.node,
        values=[transposed.value, original.value],
        nbytes=transposed.nbytes,
        severity=_severity(transposed.nbytes, options),
        name=transposed.name,
        type=_type(transposed),
        original=original.name,
        original_type=_type(original),
        size=format_bytes(transposed.nbytes),
        wasted=transposed.nbytes,
    )
