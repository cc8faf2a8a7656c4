"""GD013 tensorrt-unsupported: each check on a hand-made model, linted per target.

For every check a model that breaks it and one that keeps it: where the target's parser refuses the model,
the finding (message id, severity, node, and what it names: the attribute or input, and the first version
that accepts it); where the parser builds it, nothing at warning or error. The expectations are read from
onnx-tensorrt's importers and checkers (8.6-GA, 10.0-GA, 10.1-GA) and the 10.x support tables; where the
two disagree, the source wins (the last tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx
import pytest

from fixtures.handmade import model_from_text
from graphdoctor.rule import Finding, Severity

ALL = ("tensorrt-8.6", "tensorrt-10", "tensorrt-10.3", "tensorrt-11")
SINCE_10 = ("tensorrt-10", "tensorrt-10.3", "tensorrt-11")
# The targets an opset 18-20 model builds on without a warning: 8.6 documents opsets up to 17.
TRT8 = ("tensorrt-8.6",)
TRT10 = ("tensorrt-10", "tensorrt-10.0", "tensorrt-10.3")


def graph(signature: str, body: str, opset: int = 17, inits: str = "", domains: str = "", check: bool = True):
    """A one-graph model in ONNX text syntax; `domains` adds opset imports (', "com.example" : 1')."""
    header = f'<ir_version: 10, opset_import: ["" : {opset}{domains}]>'
    initializers = f"<{inits}>" if inits else ""
    return model_from_text(f"{header}\ng {signature} {initializers} {{\n{body}\n}}", check=check)


def unary(op: str, opset: int = 17, attrs: str = "", x: str = "float[2,3]", y: str = "float[2,3]"):
    """One node `op`, named after it in lower case ('hardmax'), from x to y."""
    attributes = f"<{attrs}>" if attrs else ""
    return graph(f"({x} x) => ({y} y)", f"[{op.lower()}] y = {op}{attributes}(x)", opset)


@dataclass(frozen=True)
class Case:
    """A model, the finding the `reported_by` targets give for it, and the targets that stay silent on it
    (nothing at warning or error)."""

    name: str
    model: onnx.ModelProto
    message_id: str
    node: str | None
    reported_by: tuple[str, ...]
    silent_for: tuple[str, ...] = ()
    names: Mapping[str, str] = field(default_factory=dict)  # placeholder -> a text it contains
    since: str | None = None  # the first TensorRT version that accepts it, named in `accepted`
    severity: Severity = Severity.ERROR
    value: str | None = None  # for dtype findings: the value the finding names


@pytest.fixture
def gd013(lint_proto):
    def run(model: onnx.ModelProto, target: str) -> list[Finding]:
        return lint_proto(model, "GD013", target=target)

    return run


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity >= Severity.WARNING]


def the_finding(findings: list[Finding], case: Case) -> Finding:
    matches = [
        f
        for f in findings
        if f.message_id == case.message_id
        and f.node == case.node
        and (case.value is None or f.data["name"] == case.value)
    ]
    assert len(matches) == 1, [(f.message_id, f.node, f.message) for f in findings]
    return matches[0]


# --- 1. ops without an importer ------------------------------------------------------------------------------

UNIQUE = unary("Unique", x="float[4]", y="float[N]")
SEQUENCE = graph(
    "(float[2] x) => (float[2] y)",
    """[construct] s = SequenceConstruct(x, x)
    [at] y = SequenceAt(s, zero)""",
    inits="int64 zero = {0}",
)
MATMUL_INTEGER = graph("(int8[2,3] a, int8[3,4] b) => (int32[2,4] y)", "[matmul] y = MatMulInteger(a, b)")
OPTIONAL = graph(
    "(float[2] x) => (float[2] y)",
    """[wrap] o = Optional(x)
    [unwrap] y = OptionalGetElement(o)""",
    opset=18,
)
STRING_NORMALIZER = unary("StringNormalizer", attrs='case_change_action="LOWER"', x="string[2]", y="string[2]")
BITWISE = graph("(int32[4] a, int32[4] b) => (int32[4] y)", "[bits] y = BitwiseAnd(a, b)", opset=18)
HARDMAX = unary("Hardmax")
GELU = unary("Gelu", opset=20)
CASTLIKE = graph("(float[2] x, int32[2] like) => (int32[2] y)", "[cast] y = CastLike(x, like)", opset=15)
HANN = graph("(int64 size) => (float[N] w)", "[hann] w = HannWindow(size)")

# Supported ops doing what the refused ones above were asked to.
MATMUL = graph("(float[2,3] a, float[3,4] b) => (float[2,4] y)", "[matmul] y = MatMul(a, b)")
BOOL_AND = graph("(bool[4] a, bool[4] b) => (bool[4] y)", "[and] y = And(a, b)")


def no_importer(name, model, node, reported_by=ALL, silent_for=(), since=None) -> Case:
    op = next(n.op_type for n in model.graph.node if n.name == node)
    return Case(name, model, "no-importer", node, reported_by, silent_for, {"op": op}, since)


OPS = [
    no_importer("unique", UNIQUE, "unique"),
    no_importer("sequence-construct", SEQUENCE, "construct"),
    no_importer("sequence-at", SEQUENCE, "at"),
    no_importer("matmul-integer", MATMUL_INTEGER, "matmul"),
    no_importer("optional", OPTIONAL, "wrap"),
    no_importer("optional-get-element", OPTIONAL, "unwrap"),
    no_importer("string-normalizer", STRING_NORMALIZER, "stringnormalizer"),
    no_importer("bitwise-and", BITWISE, "bits"),
    no_importer("hardmax", HARDMAX, "hardmax", ("tensorrt-8.6",), SINCE_10, since="9.2"),
    no_importer("gelu", GELU, "gelu", ("tensorrt-8.6",), TRT10, since="10.0"),
    no_importer("castlike", CASTLIKE, "cast", ("tensorrt-8.6",), TRT10, since="10.0"),
    no_importer("hann-window", HANN, "hann", ("tensorrt-10.3",), ("tensorrt-10.4", "tensorrt-10"), since="10.4"),
    Case(
        "hann-window-before-10.4",
        HANN,
        "earlier-minor",
        "hann",
        ("tensorrt-10",),
        names={"text": "HannWindow has no importer in TensorRT 10.0 (TensorRT 10.4 and later", "earliest": "10.0"},
        severity=Severity.INFO,
    ),
]

# --- 2. custom domains and functions -------------------------------------------------------------------------

MY_OP = graph("(float[2] x) => (float[2] y)", "[mine] y = com.example.MyOp(x)", domains=', "com.example" : 1')
EFFICIENT_NMS = graph(
    "(float[1,100,4] boxes, float[1,100,2] scores)"
    " => (int32[1,1] num, float[1,10,4] kept, float[1,10] kept_scores, int32[1,10] classes)",
    "[nms] num, kept, kept_scores, classes = TRT.EfficientNMS_TRT<max_output_boxes=10>(boxes, scores)",
    domains=', "TRT" : 1',
)
MS_GELU = graph("(float[2] x) => (float[2] y)", "[gelu] y = com.microsoft.Gelu(x)", domains=', "com.microsoft" : 1')
FUNCTION_CALL = model_from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
g (float[2] x) => (float[2] y) {
    [call] y = local.Double(x)
}
<domain: "local", opset_import: ["" : 17]>
Double (x) => (y) {
    y = Add(x, x)
}""")

DOMAINS = [
    Case("custom-op", MY_OP, "plugin", "mine", ALL, names={"domain": "com.example", "op": "MyOp"}),
    Case(
        "bundled-plugin",
        EFFICIENT_NMS,
        "bundled-plugin",
        "nms",
        ALL,
        ALL,
        {"op": "EfficientNMS_TRT"},
        severity=Severity.INFO,
    ),
    Case(
        "microsoft-gelu",
        MS_GELU,
        "domain-ignored",
        "gelu",
        SINCE_10,
        names={"domain": "com.microsoft", "op": "Gelu"},
        severity=Severity.WARNING,
    ),
    Case("microsoft-gelu-8.6", MS_GELU, "plugin", "gelu", ("tensorrt-8.6",), names={"domain": "com.microsoft"}),
    Case("function", FUNCTION_CALL, "function", "call", ("tensorrt-8.6",), SINCE_10, {"op": "Double"}, "9.0"),
]

# --- 3-4. Resize and pooling ---------------------------------------------------------------------------------


def resize(attrs: str, scales: str = "1.0, 1.0, 2.0, 2.0", y: str = "float[1,1,4,4]", opset: int = 17):
    """Resize of float[1,1,2,2] with constant scales (or, with `sizes` in attrs, constant sizes)."""
    if "keep_aspect_ratio_policy" in attrs:
        return graph(
            f"(float[1,1,2,2] x) => ({y} y)",
            f'[resize] y = Resize<{attrs}, axes=[2, 3]>(x, "", "", sizes)',
            opset,
            "int64[2] sizes = {4, 4}",
        )
    roi = "roi" if "tf_crop_and_resize" in attrs else '""'
    return graph(
        f"(float[1,1,2,2] x) => ({y} y)",
        f"[resize] y = Resize<{attrs}>(x, {roi}, scales)",
        opset,
        f"float[4] scales = {{{scales}}}, float[8] roi = {{0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0}}",
    )


def refused(name, model, node, subject, reported_by=ALL, silent_for=(), since=None, **names) -> Case:
    return Case(name, model, "refused", node, reported_by, silent_for, {"subject": subject, **names}, since)


def ignored(name, model, node, subject, reported_by=ALL, since=None) -> Case:
    """An attribute the importer does not read: the engine builds, computing something else."""
    return Case(name, model, "ignored", node, reported_by, (), {"subject": subject}, since)


RESIZE_VALID = {
    "half-pixel": resize('mode="linear", coordinate_transformation_mode="half_pixel"'),
    "align-corners": resize('mode="linear", coordinate_transformation_mode="align_corners"'),
    "cubic-innermost-2": resize('mode="cubic"'),
    "linear-innermost-3": resize('mode="linear"', "1.0, 2.0, 2.0, 2.0", "float[1,2,4,4]"),
}
# Resize-18's antialias and keep_aspect_ratio_policy are refused by 10.x's checkers (onnxOpCheckers.cpp); 8.6's
# importer never reads them: the engine builds and resizes without them.
RESIZE = [
    refused(
        "resize-tf-crop-and-resize",
        resize('mode="linear", coordinate_transformation_mode="tf_crop_and_resize"'),
        "resize",
        "coordinate_transformation_mode='tf_crop_and_resize'",
    ),
    refused("resize-antialias", resize('mode="linear", antialias=1', opset=18), "resize", "antialias=1", TRT10),
    ignored("resize-antialias-8.6", resize('mode="linear", antialias=1', opset=18), "resize", "antialias=1", TRT8),
    ignored(
        "resize-keep-aspect-ratio-8.6",
        resize('keep_aspect_ratio_policy="not_larger"', opset=18),
        "resize",
        "keep_aspect_ratio_policy='not_larger'",
        TRT8,
    ),
    refused(
        "resize-keep-aspect-ratio",
        resize('keep_aspect_ratio_policy="not_larger"', opset=18),
        "resize",
        "keep_aspect_ratio_policy='not_larger'",
        TRT10,
    ),
    refused(
        "resize-cubic-3-dims",
        resize('mode="cubic"', "1.0, 2.0, 2.0, 2.0", "float[1,2,4,4]"),
        "resize",
        "scales [1.0, 2.0, 2.0, 2.0] (cubic)",
    ),
    refused(
        "resize-linear-4-dims",
        resize('mode="linear"', "2.0, 2.0, 2.0, 2.0", "float[2,2,4,4]"),
        "resize",
        "scales [2.0, 2.0, 2.0, 2.0] (linear)",
    ),
]

MAXPOOL_VALID = graph(
    "(float[1,1,4,4] x) => (float[1,1,2,2] y)", "[pool] y = MaxPool<kernel_shape=[2,2], strides=[2,2]>(x)"
)
POOL_1D = graph("(float[1,1,8] x) => (float[1,1,7] y)", "[pool] y = MaxPool<kernel_shape=[2]>(x)")
POOLING = [
    refused(
        "maxpool-indices",
        graph(
            "(float[1,1,4,4] x) => (float[1,1,2,2] y, int64[1,1,2,2] indices)",
            "[pool] y, indices = MaxPool<kernel_shape=[2,2], strides=[2,2]>(x)",
        ),
        "pool",
        "output 1 'indices' (Indices)",
    ),
    refused(
        "maxpool-dilations",
        graph("(float[1,1,5,5] x) => (float[1,1,3,3] y)", "[pool] y = MaxPool<kernel_shape=[2,2], dilations=[2,2]>(x)"),
        "pool",
        "dilations=[2, 2]",
    ),
    refused(
        "maxpool-4d-kernel",
        graph("(float[1,1,3,3,3,3] x) => (float[1,1,2,2,2,2] y)", "[pool] y = AveragePool<kernel_shape=[2,2,2,2]>(x)"),
        "pool",
        "kernel_shape [2, 2, 2, 2] (4-D)",
    ),
]

# --- 5-6. inputs that must be constant, TopK -----------------------------------------------------------------


def reduce_mean(axes: str, inits: str = "", extra: str = "", signature: str = "float[2,3] x, int64[1] axes"):
    """ReduceMean-18 of float[2,3] over `axes` (a graph input unless `inits`/`extra` make it)."""
    return graph(f"({signature}) => (float[2,1] y)", f"{extra}\n    [mean] y = ReduceMean(x, {axes})", 18, inits)


MEAN_AXES_INPUT = reduce_mean("axes")
MEAN_AXES_INITIALIZER = reduce_mean("axes", "int64[1] axes = {1}", signature="float[2,3] x")
MEAN_AXES_RESHAPED = reduce_mean(
    "axes", "int64[1] raw = {1}, int64[1] flat = {-1}", "[flatten] axes = Reshape(raw, flat)", "float[2,3] x"
)
# CumSum is no op `graphdoctor fix` folds: what it computes from constants stays for polygraphy or onnxsim.
MEAN_AXES_CUMSUM = reduce_mean(
    "axes", "int64[1] raw = {1}, int64 first = {0}", "[accumulate] axes = CumSum(raw, first)", "float[2,3] x"
)
CUMSUM_AXIS_INPUT = graph("(float[2,3] x, int64 axis) => (float[2,3] y)", "[cumsum] y = CumSum(x, axis)")
CUMSUM_AXIS_INITIALIZER = graph(
    "(float[2,3] x) => (float[2,3] y)", "[cumsum] y = CumSum(x, axis)", inits="int64 axis = {1}"
)
ONEHOT_DEPTH_INPUT = graph(
    "(int64[3] indices, int64 depth) => (float[3,N] y)",
    "[onehot] y = OneHot(indices, depth, on_off)",
    inits="float[2] on_off = {0.0, 1.0}",
)
ONEHOT_DEPTH_INITIALIZER = graph(
    "(int64[3] indices) => (float[3,4] y)",
    "[onehot] y = OneHot(indices, depth, on_off)",
    inits="int64 depth = {4}, float[2] on_off = {0.0, 1.0}",
)


def topk(k: int, attrs: str = "") -> onnx.ModelProto:
    attributes = f"<{attrs}>" if attrs else ""
    return graph(
        f"(float[1,5000] x) => (float[1,{k}] values, int64[1,{k}] indices)",
        f"[topk] values, indices = TopK{attributes}(x, k)",
        inits=f"int64[1] k = {{{k}}}",
    )


def not_constant(name, model, node, subject, what, reported_by=ALL, silent_for=(), since=None, **names) -> Case:
    names = {"subject": subject, "what": what, **names}
    return Case(name, model, "not-constant", node, reported_by, silent_for, names, since)


CONSTANT_INPUTS = [
    not_constant("reducemean-axes-input", MEAN_AXES_INPUT, "mean", "input 1 'axes' (axes)", "a graph input"),
    not_constant(
        "reducemean-axes-computed",
        MEAN_AXES_CUMSUM,
        "mean",
        "input 1 'axes' (axes)",
        "computed from constants",
        advice="--fold-constants",  # the help: fold with polygraphy or onnxsim
    ),
    # What `graphdoctor fix` can fold is reported as foldable, with the fix (tests/fix/ tests the fix itself).
    Case(
        "reducemean-axes-reshaped",
        MEAN_AXES_RESHAPED,
        "foldable",
        "mean",
        ALL,
        names={"subject": "input 1 'axes' (axes)", "what": "computed from constants"},
    ),
    not_constant("cumsum-axis-input", CUMSUM_AXIS_INPUT, "cumsum", "input 1 'axis' (axis)", "a graph input"),
    not_constant("onehot-depth-input", ONEHOT_DEPTH_INPUT, "onehot", "input 1 'depth' (depth)", "a graph input"),
    refused("topk-k-4000", topk(4000), "topk", "K=4000"),
    Case(
        "topk-unsorted",
        topk(100, "sorted=0"),
        "note",
        "topk",
        ALL,
        ALL,
        {"subject": "sorted=0"},
        severity=Severity.INFO,
    ),
]

# --- 7-9. ScatterND, ScatterElements, GridSample, LayerNormalization, Loop, If --------------------------------


def scatter(op: str, attrs: str = "") -> onnx.ModelProto:
    attributes = f"<{attrs}>" if attrs else ""
    indices = "int64[1,1] indices" if op == "ScatterND" else "int64[1] indices"
    return graph(
        f"(float[4] data, {indices}, float[1] updates) => (float[4] y)",
        f"[scatter] y = {op}{attributes}(data, indices, updates)",
        16,
    )


LAYERNORM_VALID = graph(
    "(float[2,4] x) => (float[2,4] y)",
    "[ln] y = LayerNormalization(x, scale, bias)",
    inits="float[4] scale = {1.0, 1.0, 1.0, 1.0}, float[4] bias = {0.0, 0.0, 0.0, 0.0}",
)
LOOP_BODY = """body = loop_body (int64 i, bool c, float[2] v) => (bool c_out, float[2] v_out, float[2] s) {
        c_out = Identity(c)
        v_out = Add(v, v)
        s = Identity(v)
    }"""
LOOP_DYNAMIC = graph(
    "(int64 n, float[2] x) => (float[2] out, float[N,2] scans)",
    f"""cond = Constant<value = bool {{1}}>()
    [loop] out, scans = Loop<{LOOP_BODY}>(n, cond, x)""",
)
LOOP_CONSTANT = graph(
    "(float[2] x) => (float[2] out, float[3,2] scans)",
    f"""cond = Constant<value = bool {{1}}>()
    [loop] out, scans = Loop<{LOOP_BODY}>(n, cond, x)""",
    inits="int64 n = {3}",
)


def if_branches(else_output: str, else_body: str) -> onnx.ModelProto:
    """If whose then branch returns x (float[2]) and whose else branch computes b from x by `else_body`."""
    return graph(
        "(bool c, float[2] x) => (float[A] y)",
        f"""[branch] y = If<
        then_branch = then_g () => (float[2] a) {{ a = Identity(x) }},
        else_branch = else_g () => ({else_output} b) {{ {else_body} }}
    >(c)""",
    )


# The importers of 10.0 to 10.6 refuse any `reduction` attribute, 'none' too; 10.15's table only reductions other
# than none, which is what GD013 assumes for 10.15.
SCATTERND_NONE = scatter("ScatterND", 'reduction="none"')
IF_UNSQUEEZED = if_branches("float[1,2]", "zero = Constant<value = int64[1] {0}>()\n b = Unsqueeze(x, zero)")
IF_NEGATED = if_branches("float[2]", "b = Neg(x)")
STRUCTURE = [
    refused("scatternd-add", scatter("ScatterND", 'reduction="add"'), "scatter", "reduction='add'", SINCE_10),
    ignored("scatternd-add-8.6", scatter("ScatterND", 'reduction="add"'), "scatter", "reduction='add'", TRT8),
    refused(
        "scatternd-none-10.1",
        SCATTERND_NONE,
        "scatter",
        "reduction='none'",
        ("tensorrt-10.1",),
        ("tensorrt-10",),
        since="10.15",
    ),
    Case(
        "scatternd-none-before-10.15",
        SCATTERND_NONE,
        "earlier-minor",
        "scatter",
        ("tensorrt-10",),
        names={"text": "reduction='none'"},
        severity=Severity.INFO,
    ),
    Case(
        "scatterelements-add",
        scatter("ScatterElements", 'reduction="add"'),
        "ignored",
        "scatter",
        TRT8,
        ("tensorrt-10", "tensorrt-10.0"),
        {"subject": "reduction='add'"},
        since="10.0",
    ),
    refused(
        "gridsample-5d",
        graph(
            "(float[1,1,2,2,2] x, float[1,2,2,2,3] grid) => (float[1,1,2,2,2] y)",
            "[sample] y = GridSample(x, grid)",
            20,
        ),
        "sample",
        "input 0 of rank 5",
    ),
    refused(
        "layernorm-3-outputs",
        graph(
            "(float[2,4] x) => (float[2,4] y, float[2,1] mean, float[2,1] inv_std)",
            "[ln] y, mean, inv_std = LayerNormalization(x, scale, bias)",
            inits="float[4] scale = {1.0, 1.0, 1.0, 1.0}, float[4] bias = {0.0, 0.0, 0.0, 0.0}",
        ),
        "ln",
        "outputs 'mean', 'inv_std'",
    ),
    refused("loop-scan-dynamic-trip-count", LOOP_DYNAMIC, "loop", "1 scan output(s)"),
    refused(
        "if-branch-ranks",
        IF_UNSQUEEZED,
        "branch",
        "output 0 of rank 1 (then) and 2 (else)",
        SINCE_10,
        ("tensorrt-8.6",),  # 8.6 asks for broadcastable shapes
    ),
]

# --- 10-11. Squeeze, Unsqueeze, Slice, Pad ------------------------------------------------------------------

SQUEEZE_AXES_INPUT = graph("(float[1,3] x, int64[1] axes) => (float[3] y)", "[squeeze] y = Squeeze(x, axes)")
UNSQUEEZE_SHAPE_AXES = graph(
    "(float[2,3] x, float[1] t) => (float[2,1,3] y)",
    """[dims] axes = Shape(t)
    [unsqueeze] y = Unsqueeze(x, axes)""",
)
SLICE_AXES_INPUT = graph(
    "(float[4,4] x, int64[1] axes) => (float[A,B] y)",
    "[slice] y = Slice(x, starts, ends, axes)",
    inits="int64[1] starts = {0}, int64[1] ends = {2}",
)


def pad(axes_input: bool) -> onnx.ModelProto:
    """Pad-18 of float[4,4] by one on each side of one axis, `axes` a graph input or an initializer."""
    inits = "int64[2] pads = {1, 1}" + ("" if axes_input else ", int64[1] axes = {1}")
    signature = "float[4,4] x, int64[1] axes" if axes_input else "float[4,4] x"
    return graph(f"({signature}) => (float[A,B] y)", '[pad] y = Pad(x, pads, "", axes)', 18, inits)


PAD_AXES_INPUT = pad(axes_input=True)
SHAPES = [
    not_constant("squeeze-axes-input", SQUEEZE_AXES_INPUT, "squeeze", "input 1 'axes' (axes)", "a graph input"),
    refused(
        "squeeze-dynamic-no-axes",
        unary("Squeeze", x="float[N,1,3]", y="float[N,3]"),
        "squeeze",
        "no axes, on an input with dynamic dims",
    ),
    Case(  # a Shape of static dims is known before run time: `graphdoctor fix` folds it for 10.1
        "unsqueeze-shape-axes-10.1",
        UNSQUEEZE_SHAPE_AXES,
        "foldable",
        "unsqueeze",
        ("tensorrt-10.1",),
        ("tensorrt-10.15", "tensorrt-10"),  # 10.15 resolves the Shape of static dims
        {"subject": "input 1 'axes' (axes)", "what": "by Shape 'dims'"},
    ),
    Case(
        "unsqueeze-shape-axes-before-10.15",
        UNSQUEEZE_SHAPE_AXES,
        "earlier-minor",
        "unsqueeze",
        ("tensorrt-10",),
        names={"text": "Unsqueeze input 1 'axes'"},
        severity=Severity.INFO,
    ),
    not_constant(
        "slice-axes-input",
        SLICE_AXES_INPUT,
        "slice",
        "input 3 'axes' (axes)",
        "a graph input",
        ("tensorrt-8.6", "tensorrt-10.2"),
        ("tensorrt-10.3", "tensorrt-10"),
        since="10.3",
    ),
    Case(
        "slice-axes-input-before-10.3",
        SLICE_AXES_INPUT,
        "earlier-minor",
        "slice",
        ("tensorrt-10",),
        names={"text": "(TensorRT 10.3 and later accept it)"},
        severity=Severity.INFO,
    ),
    not_constant(
        "pad-axes-input",
        PAD_AXES_INPUT,
        "pad",
        "input 3 'axes' (axes)",
        "a graph input",
        ("tensorrt-10.3",),
        ("tensorrt-10.4", "tensorrt-10"),
        since="10.4",
    ),
    refused("pad-axes-input-8.6", PAD_AXES_INPUT, "pad", "input 3 'axes' (axes)", TRT8, since="10.0"),
    Case(
        "pad-axes-input-before-10.4",
        PAD_AXES_INPUT,
        "earlier-minor",
        "pad",
        ("tensorrt-10",),
        names={"text": "(TensorRT 10.4 and later accept it)"},
        severity=Severity.INFO,
    ),
]

# --- 12-13. shapes, subscripts, recurrences, integer math ---------------------------------------------------


def einsum(equation: str, a: str = "float[2,3]", b: str = "float[3,4]", y: str = "float[2,4]"):
    return graph(f"({a} a, {b} b) => ({y} y)", f'[einsum] y = Einsum<equation="{equation}">(a, b)')


def recurrent(op: str, attrs: str, x: str = "float[2,1,3]") -> onnx.ModelProto:
    """A one-layer `op` with hidden size 2 over input size 3; weights are graph inputs."""
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op] * 2
    directions = 2 if "bidirectional" in attrs else 1
    return graph(
        f"({x} x, float[{directions},{gates},3] w, float[{directions},{gates},2] r) => (float[A,B,C,D] y)",
        f"[{op.lower()}] y = {op}<hidden_size=2, {attrs}>(x, w, r)",
    )


def binary(op: str, dtype: str, attrs: str = "") -> onnx.ModelProto:
    attributes = f"<{attrs}>" if attrs else ""
    return graph(f"({dtype}[4] a, {dtype}[4] b) => ({dtype}[4] y)", f"[{op.lower()}] y = {op}{attributes}(a, b)")


EINSUM_VALID = einsum("ij,jk->ik")
EYELIKE_DYNAMIC = unary("EyeLike", x="float[N,3]", y="float[N,3]")
LSTM_VALID = recurrent("LSTM", 'direction="forward"')
RNN_VALID = recurrent("RNN", 'direction="bidirectional", activations=["Tanh", "Tanh"]')
LAYOUTS = [
    refused("hardmax-dynamic-axis", unary("Hardmax", x="float[2,N]", y="float[2,N]"), "hardmax", "axis -1", SINCE_10),
    refused("eyelike-dynamic", EYELIKE_DYNAMIC, "eyelike", "input of shape"),
    refused(
        "depthtospace-3d",
        graph("(float[4,2,2] x) => (float[A,B,C] y)", "[d2s] y = DepthToSpace<blocksize=2>(x)", check=False),
        "d2s",
        "input 0 of rank 3",
    ),
    refused(
        "einsum-ellipsis",
        einsum("...ij,...jk->...ik", "float[2,2,3]", "float[2,3,4]", "float[2,2,4]"),
        "einsum",
        "'...ij,...jk->...ik'",
        ("tensorrt-8.6",),
        SINCE_10,
        since="10.0",
    ),
    refused("einsum-upper-case", einsum("IJ,JK->IK"), "einsum", "'IJ,JK->IK'"),
    ignored("lstm-layout", recurrent("LSTM", "layout=1", x="float[1,2,3]"), "lstm", "layout=1"),
    refused(
        "rnn-activations-per-direction",
        recurrent("RNN", 'direction="bidirectional", activations=["Tanh", "Relu"]'),
        "rnn",
        "activations ['Tanh', 'Relu']",
    ),
    refused("mod-float", binary("Mod", "float"), "mod", "fmod=0"),
    refused(
        "matmul-int32",
        graph("(int32[2,3] a, int32[3,4] b) => (int32[2,4] y)", "[matmul] y = MatMul(a, b)"),
        "matmul",
        "input 0 'a' (INT32)",
    ),
]

# --- 14-15. quantization and dtypes --------------------------------------------------------------------------


def qdq(zero_point: str) -> onnx.ModelProto:
    """QuantizeLinear then DequantizeLinear of float[4] with scale 0.1 and the zero point `zero_point`."""
    return graph(
        "(float[4] x) => (float[4] y)",
        """[q] q = QuantizeLinear(x, scale, zp)
    [dq] y = DequantizeLinear(q, scale, zp)""",
        inits=f"float scale = {{0.1}}, {zero_point}",
    )


def casts(*dtypes: int, x: str = "float[4]", y: str = "float[4]") -> onnx.ModelProto:
    """Casts of x through `dtypes` in turn; the node casting to dtype d is named 'to_<d>', its output 'v<d>'."""
    lines, previous = [], "x"
    for index, dtype in enumerate(dtypes):
        output = "y" if index == len(dtypes) - 1 else f"v{dtype}"
        lines.append(f"[to_{dtype}] {output} = Cast<to={dtype}>({previous})")
        previous = output
    return graph(f"({x} x) => ({y} y)", "\n    ".join(lines))


INT8, UINT8, INT16, BFLOAT16, FLOAT = 3, 2, 5, 16, 1
QDQ_SYMMETRIC = qdq("int8 zp = {0}")
INT8_WEIGHTS = graph(
    "(float[4] x) => (float[4] y)",
    """[dq] w = DequantizeLinear(weights, scale)
    [mul] y = Mul(x, w)""",
    inits="int8[4] weights = {1, 2, 3, 4}, float scale = {0.1}",
)
UINT8_INPUT_CAST = casts(FLOAT, x="uint8[4]")
UINT8_OUTPUT = casts(UINT8, y="uint8[4]")


def dtype(name, model, node, value, reported_by=ALL, silent_for=(), since=None, **names) -> Case:
    return Case(name, model, "dtype", node, reported_by, silent_for, names, since, value=value)


DTYPES = [
    refused("qdq-zero-point-non-zero", qdq("int8 zp = {3}"), "q", "1 of 1 zero points non-zero"),
    refused("qdq-zero-point-uint8", qdq("uint8 zp = {0}"), "q", "UINT8 zero point"),
    dtype(
        "string-input",
        graph("(string[2] s) => (string[2] y)", "[copy] y = Identity(s)"),
        "copy",
        "s",
        dtype="STRING",
    ),
    dtype("int8-outside-qdq", casts(INT8, FLOAT), "to_3", "v3", reason="only between QuantizeLinear"),
    dtype(
        "uint8-input-read-by-concat",
        graph("(uint8[2] image) => (uint8[4] y)", "[concat] y = Concat<axis=0>(image, image)"),
        "concat",
        "image",
        reason="Concat 'concat' reads it directly",
    ),
    dtype("uint8-intermediate", casts(UINT8, FLOAT), "to_2", "v2", reason="only as a network input or output"),
    dtype("bfloat16", casts(BFLOAT16, FLOAT), "to_16", "v16", ("tensorrt-8.6",), SINCE_10, "9.0", dtype="BFLOAT16"),
    dtype("int16", casts(INT16, FLOAT), "to_5", "v5", dtype="INT16"),
]

# --- 16-17. opsets, Constant ---------------------------------------------------------------------------------

OPSETS = [
    # below 7 the parser warns "not guaranteed to work" and parses on (ModelImporter.cpp)
    Case("opset-6", unary("Relu", opset=6), "opset-range", None, ALL, names={"opset": "6"}, severity=Severity.WARNING),
    Case(
        "opset-18",
        unary("Relu", opset=18),
        "opset-range",
        None,
        ("tensorrt-8.6",),
        TRT10,
        {"opset": "18", "first": "7", "last": "17"},
        severity=Severity.WARNING,
    ),
    Case(
        "opset-25",
        unary("Relu", opset=25),
        "opset-range",
        None,
        ("tensorrt-10",),
        ("tensorrt-11",),
        {"opset": "25", "last": "24"},
        severity=Severity.WARNING,
    ),
    refused(
        "constant-value-string",
        graph("() => (string s)", '[text] s = Constant<value_string = "hello">()'),
        "text",
        "attribute value_string",
    ),
]

CASES = OPS + DOMAINS + RESIZE + POOLING + CONSTANT_INPUTS + STRUCTURE + SHAPES + LAYOUTS + DTYPES + OPSETS

# Models each check accepts, with the targets that build them.
VALID = {
    "matmul": (MATMUL, ALL),
    "and-instead-of-bitwise": (BOOL_AND, ALL),
    **{f"resize-{name}": (model, ALL) for name, model in RESIZE_VALID.items()},
    "maxpool": (MAXPOOL_VALID, ALL),
    "maxpool-1d": (POOL_1D, ALL),
    "reducemean-axes-initializer": (MEAN_AXES_INITIALIZER, SINCE_10),
    "cumsum-axis-initializer": (CUMSUM_AXIS_INITIALIZER, ALL),
    "onehot-depth-initializer": (ONEHOT_DEPTH_INITIALIZER, ALL),
    "topk-k-100": (topk(100), ALL),
    "scatternd": (scatter("ScatterND"), ALL),
    "gridsample-4d": (
        graph("(float[1,1,2,2] x, float[1,2,2,2] grid) => (float[1,1,2,2] y)", "[sample] y = GridSample(x, grid)", 16),
        ALL,
    ),
    "layernorm-1-output": (LAYERNORM_VALID, ALL),
    "loop-constant-trip-count": (LOOP_CONSTANT, ALL),
    "if-branch-same-ranks": (IF_NEGATED, ALL),
    "squeeze-axes-initializer": (
        graph("(float[1,3] x) => (float[3] y)", "[squeeze] y = Squeeze(x, axes)", inits="int64[1] axes = {0}"),
        ALL,
    ),
    "squeeze-static-no-axes": (unary("Squeeze", x="float[1,3]", y="float[3]"), ALL),
    "pad-axes-initializer": (pad(axes_input=False), TRT10),
    "hardmax-static-axis": (HARDMAX, SINCE_10),
    "eyelike-static": (unary("EyeLike", x="float[3,3]", y="float[3,3]"), ALL),
    "depthtospace-4d": (unary("DepthToSpace", attrs="blocksize=2", x="float[1,4,2,2]", y="float[1,1,4,4]"), ALL),
    "einsum-lower-case": (EINSUM_VALID, ALL),
    "lstm-layout-0": (LSTM_VALID, ALL),
    "rnn-same-activations": (RNN_VALID, ALL),
    "mod-int32": (binary("Mod", "int32"), ALL),
    "qdq-symmetric-int8": (QDQ_SYMMETRIC, ALL),
    "int8-weights-into-dequantize": (INT8_WEIGHTS, ALL),
    "uint8-input-cast-at-once": (UINT8_INPUT_CAST, ALL),
    "uint8-output": (UINT8_OUTPUT, ALL),
    "opset-17": (unary("Relu"), ALL),
}


def reported_params():
    return [pytest.param(case, target, id=f"{case.name}@{target}") for case in CASES for target in case.reported_by]


def silent_params():
    from_cases = [(case.name, case.model, target) for case in CASES for target in case.silent_for]
    from_valid = [(name, model, target) for name, (model, targets) in VALID.items() for target in targets]
    keyed = [(f"{name}@{target}", model, target) for name, model, target in from_cases + from_valid]
    return [pytest.param(model, target, id=key) for key, model, target in keyed]


@pytest.mark.parametrize(("case", "target"), reported_params())
def test_reported(gd013, case: Case, target: str):
    """The target's parser refuses the model: GD013 says where, what, and from which version it builds."""
    finding = the_finding(gd013(case.model, target), case)
    assert finding.severity == case.severity
    for placeholder, text in case.names.items():
        assert text in str(finding.data[placeholder]), finding.message
    accepted = finding.data.get("accepted", "")
    assert accepted == (f" (TensorRT {case.since} and later accept it)" if case.since else "")


@pytest.mark.parametrize(("model", "target"), silent_params())
def test_silent(gd013, model: onnx.ModelProto, target: str):
    """The target's parser builds the model: nothing at warning or error."""
    assert blocking(gd013(model, target)) == []


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in CASES])
def test_onnxruntime_target_reports_nothing(gd013, case: Case):
    """GD013 is about TensorRT's parser; ONNX Runtime runs what ONNX defines."""
    assert gd013(case.model, "onnxruntime") == []


# --- what onnx-tensorrt's source says where the tables are vague ---------------------------------------------


def test_scatternd_reduction_none_builds_on_8_6(gd013):
    """8.6's ScatterND importer never reads `reduction`: 'none' is what it builds anyway."""
    assert blocking(gd013(SCATTERND_NONE, "tensorrt-8.6")) == []


def test_pad_constant_axes_refused_on_8_6(gd013):
    """8.6's Pad importer refuses any `axes` input, an initializer too ("TensorRT does not support dynamic
    axes for pad!")."""
    findings = gd013(pad(axes_input=False), "tensorrt-8.6")
    assert [f.node for f in findings if f.message_id in ("refused", "not-constant")] == ["pad"]


def test_eyelike_names_its_dims(gd013):
    [finding] = [f for f in gd013(EYELIKE_DYNAMIC, "tensorrt-10") if f.node == "eyelike"]
    assert "input of shape [N,3]" in finding.message


def test_hardmax_opset_11_flattens_a_dynamic_dim_into_its_axis(gd013):
    """Below opset 13 the axis defaults to 1 and the importer flattens the dims from it into one: N*3 here."""
    findings = gd013(unary("Hardmax", opset=11, x="float[2,N,3]", y="float[2,N,3]"), "tensorrt-10")
    assert [f.node for f in findings if f.message_id == "refused"] == ["hardmax"]
