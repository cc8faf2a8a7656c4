"""GD016 malformed-model: tensors, attributes, types and opsets that contradict themselves or the ONNX spec.

What it finds
    What the protobuf parser accepts but no runtime can run, each named with its contradiction and numbers:
    - tensors whose payload contradicts their dims or data type ("initializer 'W' holds 6 float32 values but
      its dims [2] need 2"): raw_data of the wrong length or not a whole number of elements, values in the
      field of another type (int64_data in a FLOAT tensor), negative dims, data type 0; in initializers,
      Constants and every tensor attribute, of the main graph, subgraphs and function bodies, and in sparse
      initializers;
    - attributes of another type than the operator's schema declares for the model's opset (Cast `to` given
      as INTS, LayerNormalization `epsilon` as a STRING), required attributes missing, data-type attributes
      naming no data type or one the operator cannot produce (Cast to 0, to 99);
    - nodes with more or fewer inputs or outputs than their schema allows, and element types the schema's
      type constraints rule out (a Constant of strings read by an Add; an Identity from string to float32);
    - declared types no tensor has: element type 0, negative dims, more elements than int64 counts;
    - an ai.onnx opset of 0, or one beyond the newest the installed onnx defines (nothing can be checked);
    - nodes of a domain the model imports no opset of;
    - a Loop with neither a trip count nor a condition (the spec's `for (;;)`: every run hangs).

Why it matters
    ONNX Runtime and TensorRT refuse these models, often with a message that names no tensor ("Deserialize
    tensor failed", "Incompatible dimensions"), and tools that trust the dims crash on them or allocate what
    the dims claim (2^40 elements over an 8-byte payload). They come from hand-edited or truncated graphs,
    buggy converters and exporters, and fuzzers. `graphdoctor fix` and `verify` refuse a malformed model with
    this rule's first finding; `lint` reports every defect, and the other rules check what they can (a rule
    that still stops on a defect says so instead of its findings).

How to fix
    Re-export the model, or repair the named tensor, attribute or type at its source (the script or converter
    that wrote it). No automatic fix: which of the two contradicting facts is the right one (the dims or the
    payload, the declared type or the producer's) is not knowable from the file.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir

from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "check"]

_REEXPORT = "re-export the model, or repair it where it is written"
META = RuleMeta(
    code="GD016",
    name="malformed-model",
    kind=RuleKind.PROBLEM,
    severity=Severity.ERROR,
    summary="tensors whose payload contradicts their dims or dtype, attributes of the wrong type, impossible types",
    messages={
        "tensor": Message(
            "{defect}: runtimes refuse the tensor, and readers trusting its dims fail on it",
            help=f"{_REEXPORT}: the payload and the dims must agree",
        ),
        "attribute": Message(
            "{defect}: runtimes refuse the node", help=f"{_REEXPORT}: give the attribute its schema's type and value"
        ),
        "signature": Message(
            "{defect}: runtimes refuse the node", help=f"{_REEXPORT}: give the node the inputs its schema takes"
        ),
        "type": Message(
            "{defect}: runtimes refuse the model",
            help=f"{_REEXPORT}: declare the element type and dims the value has",
        ),
        "opset": Message(
            "{defect}: no operator of the model can be checked or run",
            help="export at an opset between 1 and the newest your runtime supports",
        ),
        "domain": Message(
            "{defect}: without an opset version the node has no meaning, and runtimes refuse the model",
            help="add the domain to the model's opset_import (re-export, or onnx.helper.make_opsetid)",
        ),
        "sparse": Message(
            "{defect}: runtimes refuse the sparse tensor",
            help=f"{_REEXPORT}: values [NNZ], indices [NNZ] or [NNZ, rank] in INT64",
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    for defect in ctx.analysis.defects:
        yield ctx.report(defect.kind, node=defect.node, values=defect.values, defect=defect.description)
