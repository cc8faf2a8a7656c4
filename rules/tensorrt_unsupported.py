"""GD013 tensorrt-unsupported: what the target TensorRT's ONNX parser refuses, known before the GPU box.

What it finds
    For a TensorRT target (`--target tensorrt-8.6 | tensorrt-10 | tensorrt-10.N | tensorrt-11`; nothing for
    `onnxruntime`), every node and value that version's parser or the layers it builds refuse:

    - ops with no importer in that version (Unique, the Sequence and Optional ops, MatMulInteger,
      ConvInteger, QLinear*, string ops, Bitwise*, the loss ops; Hardmax, CastLike, Gelu and Mish on 8.6;
      DeformConv before 10.1, the window ops before 10.4, STFT before 10.5, Attention, RMSNormalization,
      RotaryEmbedding and TensorScatter before 10.15), naming the first version that imports them;
    - custom-domain ops, which need a plugin of that name: those TensorRT ships in libnvinfer_plugin
      (EfficientNMS_TRT, ROIAlign_TRT, ModulatedDeformConv2d, ...) are info; a custom-domain op that shares
      a name with a builtin is imported by the builtin importer, domain ignored (warning); calls of
      model-local functions on 8.6, which imports none;
    - attributes and inputs the importers check: Resize coordinate transformations (tf_crop_and_resize,
      half_pixel_symmetric), antialias, keep_aspect_ratio_policy, partial axes with run-time scales, linear
      or cubic resizing beyond the innermost 3 or 2 dims; pooling beyond 3-D, dilations other than 1,
      MaxPool's Indices output, LpPool p; Reduce `axes`, CumSum `axis`, OneHot `depth`, Squeeze and
      Unsqueeze `axes`, Q/DQ zero points, STFT frame_step and window that are not build-time constants
      (and Slice `axes` before 10.3, Pad `axes` before 10.4), saying which input it is and what it is
      instead; TopK with K of 3840 or more (sorted=0 is info: the result comes sorted); ScatterND
      reduction, ScatterElements reduction on 8.6; GridSample beyond 4-D; LayerNormalization declaring Mean
      or InvStdDev; Loop scan outputs with a trip count that is not constant; If branches of different
      ranks; Squeeze without axes on dynamic dims; Hardmax on a dynamic axis; EyeLike not 2-D static;
      Depth/SpaceToDepth not 4-D; Einsum with upper-case subscripts (and, on 8.6, ellipsis or diagonals);
      LSTM input_forget or layout; bidirectional RNN/GRU/LSTM with different activations per direction;
      Mod with fmod=0 on floats; integer MatMul, Gemm, Conv, ConvTranspose and PRelu; non-zero or UINT8
      zero points; Attention with caches or extra outputs; Constant with sparse or string values;
    - dtypes TensorRT cannot hold: STRING, INT16, UINT16/32/64, complex, FP8 other than E4M3FN, UINT4 and FP4
      anywhere; INT8, INT4 and FP8 outside QuantizeLinear/DequantizeLinear; UINT8 except as network input
      or output (and cast at once); BFLOAT16 on 8.6;
    - attributes the importer does not read, so that the engine builds and computes something else (error):
      8.6's Resize antialias and keep_aspect_ratio_policy and ScatterND/ScatterElements reduction, and the
      recurrent layers' `layout`;
    - ai.onnx opsets outside the range the version documents (warning: below 7 the parser itself warns
      that it may not work; above, ops whose signature changed are read by rules written for older forms).

    For a family target (`tensorrt-10`, which checks what the newest 10.x read accepts) it also says, as
    info, what the family's first minor (10.0) still refuses. Constants are what the importer holds as
    weights: initializers and Constant nodes (for Squeeze/Unsqueeze on 10.15 also Shape of static dims);
    an input computed from constants by nodes nobody folded is reported as such, with the fix. DOUBLE is
    GD010's; Dropout and BatchNormalization training modes are GD006's.

    With `lint --deep`, where `tensorrt` imports and CUDA starts, it also runs `trt.OnnxParser` on the
    file and reports each parser error at its node, and every disagreement with the static checks (a node
    the checks refused that the parser took, or a parser error no check foresaw). Elsewhere it says that
    it checked statically.

Why it matters
    `trtexec --onnx=model.onnx` finds these one at a time, on the GPU machine, after the export, with lines
    such as "No importer registered for op: Unique. Attempting to import as plugin", "Assertion failed:
    inputs.at(1).is_weights()" or "TensorRT does not support UINT8 types for intermediate tensors!".
    JetPack 5 devices still run 8.6, JetPack 6 10.3: what one version builds another refuses.

How to fix
    `graphdoctor fix` (safe: bit-exact) folds an input that must be constant and is computed from constants
    (integer results up to 1 KiB, evaluated by ONNX's reference runtime: the Reshape'd axes of torch's
    unoptimized dynamo exports) into an initializer, and removes the nodes only it needed. For the rest,
    each finding says what to do: re-export with supported settings (align_corners, antialias=False,
    explicit squeeze dims), fold larger constants (`polygraphy surgeon sanitize --fold-constants`), replace
    the op with supported ones, quantize in symmetric QDQ form, or provide a TensorRT plugin of the op's
    name (`trtexec --staticPlugins=/--dynamicPlugins=lib.so`). `graphdoctor rules --target NAME` and this text
    list what each target refuses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np
import onnx_ir as ir

from graphdoctor import folding, rewrite
from graphdoctor.analysis.graph import consumers, iter_graph_sites, node_label, opset_version
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, FixSafety, Message, RuleKind, RuleMeta, Severity
from graphdoctor.targets import Target, version_text
from graphdoctor.targets import tensorrt as trt_facts
from graphdoctor.targets.tensorrt_importer import CHECKED, NodeView, Rejection, computed_from_constants, node_rejections

__all__ = ["META", "check", "describe_target"]

_ONNX_DOMAINS = ("", "ai.onnx")
_FOLD_BUDGET = 1024  # bytes: the constants TensorRT needs are axes, depths and counts
_REMOVABLE = folding.FOLDABLE_OPS | {"Shape", "Size", "Constant"}  # side-effect free: removed once unread
_QDQ = ("QuantizeLinear", "DequantizeLinear")

META = RuleMeta(
    code="GD013",
    name="tensorrt-unsupported",
    kind=RuleKind.PROBLEM,
    severity=Severity.ERROR,
    summary="what the target TensorRT's ONNX parser refuses: ops, attributes, non-constant inputs, dtypes, opsets",
    messages={
        "no-importer": Message(
            "{op} has no importer in {target}{accepted}: the parser looks for a plugin named '{op}' and the build"
            " fails",
            help="{advice}",
        ),
        "unlisted": Message(
            "{op} is not in the tables read for {target} (TensorRT 10.15's and older): whether its parser imports"
            " it is not known here",
            help="run `graphdoctor lint --deep` where TensorRT and a GPU are, or check NVIDIA's operator list",
            severity=Severity.WARNING,
        ),
        "plugin": Message(
            "{domain}::{op} is a custom op: {target} builds it only with a plugin '{op}' (version {version})"
            " registered",
            help="load the plugin (trtexec --staticPlugins or --dynamicPlugins=libplugin.so; trt.get_plugin_registry"
            " in Python), or export the op as standard ONNX ops",
        ),
        "bundled-plugin": Message(
            "{domain}::{op} is imported as the plugin '{op}' that ships with TensorRT (libnvinfer_plugin)",
            help="trtexec loads it; in Python call trt.init_libnvinfer_plugins(logger, '') before parsing",
            severity=Severity.INFO,
        ),
        "domain-ignored": Message(
            "{domain}::{op} is imported by the builtin ai.onnx {op} importer: TensorRT ignores the domain, so the"
            " node must mean what ai.onnx's {op} means",
            help="export it in the ai.onnx domain, or rename it and provide a plugin",
            severity=Severity.WARNING,
        ),
        "function": Message(
            "calls the model-local function {domain}::{op}: {target} imports no ONNX functions{accepted}",
            help="inline the functions (onnx.inliner.inline_local_functions) before building",
        ),
        "refused": Message("{op} {subject}: {reason}; {target} refuses it{accepted}", help="{advice}"),
        "not-constant": Message(
            "{op} {subject} is {what}: {reason}; {target} refuses it{accepted}",
            help="{advice}",
        ),
        "foldable": Message(
            "{op} {subject} is {what}: {reason}; {target} refuses it{accepted}",
            help="fold it: `graphdoctor fix` (safe) stores {folded} as a constant and removes the nodes only it needed",
            fix=FixSafety.SAFE,
        ),
        "ignored": Message(
            "{op} {subject}: {reason}; {target}'s importer does not read it, so the engine builds and computes"
            " something else than the model says{accepted}",
            help="{advice}",
        ),
        "note": Message("{op} {subject}: {reason}", help="{advice}", severity=Severity.INFO),
        "dtype": Message("'{name}' is {dtype}: {reason}{accepted}", help="{advice}"),
        "opset-range": Message(
            "ai.onnx opset {opset} is outside opsets {first}-{last}, the range {target} documents: ops whose"
            " signature changed since are imported by rules written for their older form",
            help="export at an opset in {first}-{last} (torch.onnx.export(..., opset_version={last}))",
            severity=Severity.WARNING,
        ),
        "earlier-minor": Message(
            "older {major}.x only: {text}",
            help="nothing to do for the newest {major}.x; if the engine is built with an older one (JetPack 6"
            " ships 10.3), lint with its exact target (--target tensorrt-{earliest}, say)",
            severity=Severity.INFO,
        ),
        "parser": Message(
            "TensorRT {version}'s parser refuses this node: {error}{unforeseen}",
            help="see the static findings on this node, if any; else the parser's message",
        ),
        "disagree": Message(
            "the static check refused this node ({static}) but TensorRT {version}'s parser accepted it",
            help="the tables are wrong here: report it to graphdoctor with the model",
            severity=Severity.WARNING,
        ),
        "static-only": Message(
            "checked statically: TensorRT's parser did not run ({reason})",
            help="run `graphdoctor lint --deep` on a machine with TensorRT and a GPU to compare with the parser",
            severity=Severity.INFO,
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    target = ctx.analysis.target
    if not target.is_tensorrt:
        return
    _ = ctx.analysis.types_inferred  # ranks, dims and dtypes of intermediate values, inferred once
    findings = list(_static_findings(model, ctx, target))
    earliest = target.earliest()
    if earliest is not None:
        seen = {(f.node, f.values, f.message_id) for f in findings}
        findings += [
            _earlier(f, earliest)
            for f in _static_findings(model, ctx, earliest)
            if f.severity >= Severity.WARNING and (f.node, f.values, f.message_id) not in seen
        ]
    yield from findings
    if ctx.analysis.deep:
        from graphdoctor.verify.tensorrt_parser import compare_with_parser

        yield from compare_with_parser(ctx, findings)


def _static_findings(model: ir.Model, ctx: RuleContext, target: Target) -> Iterator[Finding]:
    yield from _opset_findings(model, ctx, target)
    opset = opset_version(model) or 1
    functions = {(f.domain, f.name) for f in model.functions.values()}
    for node in ctx.analysis.nodes():
        if (node.domain, node.op_type) in functions:
            yield from _function_call(node, ctx, target)
        elif node.domain in _ONNX_DOMAINS:
            yield from _onnx_node(node, ctx, target, opset)
        else:
            yield from _custom_node(node, ctx, target)
    yield from _dtype_findings(model, ctx, target)


def _accepted(target: Target, since: tuple[int, int] | None) -> str:
    return trt_facts.describe_versions(target, since)


def _opset_findings(model: ir.Model, ctx: RuleContext, target: Target) -> Iterator[Finding]:
    opset = opset_version(model)
    if opset is None:
        return
    first, last = trt_facts.opset_range(target)
    if not first <= opset <= last:
        yield ctx.report("opset-range", opset=opset, first=first, last=last, target=target.label)


def _function_call(node: ir.Node, ctx: RuleContext, target: Target) -> Iterator[Finding]:
    if not target.accepts_from((9, 0)):  # Changelog 9.0 EA: ONNX local functions
        yield ctx.report(
            "function",
            node=node,
            domain=node.domain or "ai.onnx",
            op=node.op_type,
            target=target.label,
            accepted=_accepted(target, (9, 0)),
        )


def _onnx_node(node: ir.Node, ctx: RuleContext, target: Target, opset: int) -> Iterator[Finding]:
    since = trt_facts.importer_since(node.op_type)
    if since is None and node.op_type in trt_facts.BUNDLED_PLUGINS:
        yield ctx.report("bundled-plugin", node=node, domain="ai.onnx", op=node.op_type)
        return
    if since is None and target.version >= (11, 0) and not trt_facts.is_known_op(node.op_type):
        yield ctx.report("unlisted", node=node, op=node.op_type, target=target.label)
        return
    if not target.accepts_from(since):
        advice = trt_facts.UNSUPPORTED_ADVICE.get(
            node.op_type,
            f"replace {node.op_type} with supported ops at export, or write a plugin named '{node.op_type}'",
        )
        if since is not None:
            advice = f"target TensorRT {version_text(since)} or later, or {advice}"
        yield ctx.report(
            "no-importer",
            node=node,
            op=node.op_type,
            target=target.label,
            accepted=_accepted(target, since),
            advice=advice,
        )
        return
    for rejection in node_rejections(node, NodeView(target, opset)):
        yield _rejection_finding(ctx, node, target, rejection)


def _rejection_finding(ctx: RuleContext, node: ir.Node, target: Target, rejection: Rejection) -> Finding:
    common = dict(
        node=node,
        op=node.op_type,
        subject=rejection.subject,
        reason=rejection.reason,
        advice=rejection.advice or "re-export without it",
    )
    if rejection.info:
        return ctx.report("note", **common)
    accepted = _accepted(target, rejection.accepted_from)
    if rejection.ignored:
        return ctx.report("ignored", target=target.label, accepted=accepted, **common)
    if rejection.not_constant:
        folded = _folded(ctx.analysis.model, rejection.value)
        if folded is not None:
            return ctx.report(
                "foldable",
                what=rejection.not_constant,
                target=target.label,
                accepted=accepted,
                folded=_preview(folded),
                repair=_fold(rejection.value, folded, ctx.analysis.model.graph),
                **common,
            )
        return ctx.report("not-constant", what=rejection.not_constant, target=target.label, accepted=accepted, **common)
    return ctx.report("refused", target=target.label, accepted=accepted, **common)


def _folded(model: ir.Model, value: ir.Value | None) -> np.ndarray | None:
    """The value of an input computed from constants, when ONNX's reference runtime folds it (integer
    results within 1 KiB: axes, depths, counts)."""
    if value is None or not computed_from_constants(value):
        return None
    versions = (opset_version(model) or 1, model.ir_version)
    return folding.constant_value(value, versions, _FOLD_BUDGET)


def _fold(value: ir.Value, array: np.ndarray, main_graph: ir.Graph):
    """Store the input as an initializer (a Constant node in a subgraph or function, where the importer
    takes those as weights too), then remove the nodes that computed only it."""

    def repair() -> bool:
        producer = value.producer()
        if producer is None or not rewrite.is_attached(producer):
            return False
        constant = rewrite.store_constant(producer, value, array, as_initializer=producer.graph is main_graph)
        rewrite.replace_value(value, constant)
        folding.remove_dead(producer, _REMOVABLE)
        return True

    return repair


def _preview(array: np.ndarray) -> str:
    values = ", ".join(str(v) for v in array.reshape(-1)[:8].tolist())
    return f"{{{values}{', ...' if array.size > 8 else ''}}}"


def _custom_node(node: ir.Node, ctx: RuleContext, target: Target) -> Iterator[Finding]:
    facts = dict(node=node, domain=node.domain, op=node.op_type)
    if node.op_type in trt_facts.BUNDLED_PLUGINS:
        yield ctx.report("bundled-plugin", **facts)
    elif target.accepts_from(trt_facts.importer_since(node.op_type)):
        yield ctx.report("domain-ignored", **facts)
    else:
        version = node.attributes.get("plugin_version")
        yield ctx.report("plugin", target=target.label, version=version.value if version else "1", **facts)


def _dtype_findings(model: ir.Model, ctx: RuleContext, target: Target) -> Iterator[Finding]:
    graph_outputs = {id(value) for graph, _ in iter_graph_sites(model) for value in graph.outputs}
    for value in _typed_values(model):
        limit = trt_facts.dtype_limit(value.dtype, target)
        if limit is None:
            continue
        kind, since = limit
        problem = _dtype_problem(value, kind, since, target, id(value) in graph_outputs)
        if problem is not None:
            reason, advice, accepted = problem
            place = value.producer() or next(iter(consumers(value)), None)
            yield ctx.report(
                "dtype",
                node=place,
                values=[value],
                name=value.name,
                dtype=value.dtype.name,
                reason=reason,
                advice=advice,
                accepted=accepted,
            )


def _typed_values(model: ir.Model) -> Iterator[ir.Value]:
    """Each tensor value once: graph inputs, initializers, node outputs, of every graph and function."""
    seen: set[int] = set()
    for graph, _ in iter_graph_sites(model):
        values: Iterable[ir.Value] = graph.inputs
        if isinstance(graph, ir.Graph):
            values = [*graph.inputs, *graph.initializers.values()]
        for value in [*values, *(out for node in graph for out in node.outputs)]:
            if id(value) not in seen and value.dtype is not None and isinstance(value.type, ir.TensorType | None):
                seen.add(id(value))
                yield value


def _dtype_problem(value: ir.Value, kind: str, since, target: Target, is_output: bool):
    """(reason, advice, accepted) when `value`'s dtype is refused where it is; None when it is allowed."""
    dtype = value.dtype.name
    if kind == "never" or not target.accepts_from(since):
        return (
            f"{target.label} has no {dtype}",
            "compute in a supported type (float32, int32, int64, bool)",
            _accepted(target, since),
        )
    readers = consumers(value)
    if kind == "quantized":
        producer = value.producer()
        if (producer is not None and producer.op_type in _QDQ) or (readers and all(n.op_type in _QDQ for n in readers)):
            return None
        return (
            f"TensorRT holds {dtype} only between QuantizeLinear and DequantizeLinear",
            "keep quantized values inside Q/DQ pairs (QDQ format)",
            "",
        )
    intermediate = value.producer() is not None and not is_output
    refusing = [n for n in readers if n.op_type in trt_facts.REFUSE_UINT8_INPUT and n.domain in _ONNX_DOMAINS]
    if intermediate:
        return (
            "TensorRT holds UINT8 only as a network input or output",
            "compute in int32 or float and cast to UINT8 only for an output",
            "",
        )
    if refusing:
        return (
            f"TensorRT takes UINT8 network inputs only to cast them; {refusing[0].op_type} '{node_label(refusing[0])}'"
            " reads it directly",
            "Cast it to float or int32 first (x.float() in the model code)",
            "",
        )
    return None


def _earlier(finding: Finding, earliest: Target) -> Finding:
    """A refusal of the family's first minor that the newest minor lifts: the same place, as info."""
    message = META.messages["earlier-minor"]
    data = {"text": finding.message, "earliest": version_text(earliest.version), "major": earliest.version[0]}
    return dataclasses.replace(
        finding,
        fix=None,  # nothing to repair for the target itself
        repair=None,
        severity=message.severity,
        message=message.text.format(**data),
        help=message.help.format(**data),
        message_id="earlier-minor",
        data=data,
    )


def describe_target(target: Target) -> list[str]:
    """What the target's parser refuses: ops, checks, dtypes, opsets."""
    if not target.is_tensorrt:
        return ["nothing: GD013 checks TensorRT targets"]
    never = sorted(trt_facts.UNSUPPORTED_ADVICE)
    later = sorted(
        (since, op) for op in trt_facts.imported_ops() if not target.accepts_from(since := trt_facts.importer_since(op))
    )
    first, last = trt_facts.opset_range(target)
    lines = [f"ops no version imports: {', '.join(never)}; custom-domain ops without a plugin"]
    if later:
        lines.append(
            "ops imported only by later versions: " + ", ".join(f"{op} ({version_text(v)})" for v, op in later)
        )
    if not target.accepts_from((9, 0)):
        lines.append("calls of model-local functions (imported from 9.0)")
    lines += [f"{ops}: {what}" for ops, what in CHECKED.items()]
    never_types = ["STRING, INT16, UINT16, UINT32, UINT64, complex, FP8 other than E4M3FN, UINT4, FP4"]
    if not target.accepts_from((9, 0)):
        never_types.append("BFLOAT16, FP8 (from 9.0), INT4 (from 10.0)")
    elif not target.accepts_from((10, 0)):
        never_types.append("INT4 (from 10.0)")
    lines.append(f"dtypes: {'; '.join(never_types)}; INT8/INT4/FP8 outside Q/DQ; UINT8 except as network I/O")
    lines.append(f"opsets: outside {first}-{last} a warning (below 7 the parser itself warns)")
    return lines
