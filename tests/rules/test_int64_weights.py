"""GD001 int64-weights: fitting constants summarised, clamp-safe sentinels info, corrupted values errors."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import onnx
import pytest

from fixtures.handmade import model_from_text
from graphdoctor import api
from graphdoctor.rule import Finding, Severity

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
I64_MAX, I64_MIN = 2**63 - 1, -(2**63)
I32_MAX, I32_MIN = 2**31 - 1, -(2**31)


def graph(signature: str, initializers: str, body: str) -> onnx.ModelProto:
    inits = f"<{initializers}>" if initializers else ""
    return model_from_text(f"{HEADER}\ng {signature} {inits} {{\n{body}\n}}")


def by_message(findings: list[Finding]) -> dict[str, list[Finding]]:
    grouped: dict[str, list[Finding]] = {}
    for finding in findings:
        grouped.setdefault(finding.message_id, []).append(finding)
    return grouped


# --- VALID: nothing outside INT32 ----------------------------------------------------------------------------

NO_INT64 = graph("(float[N,4] x) => (float[N,4] y)", "float[1] k = {2.0}", "[mul] y = Mul(x, k)")

SHAPE_CONSTANTS = graph(
    "(float[N,4] x) => (float[N,1,4] y)",
    "int64[2] shape = {-1, 4}, int64[1] axes = {1}",
    """[reshape] r = Reshape(x, shape)
    [unsqueeze] y = Unsqueeze(r, axes)""",
)

DEAD_OUT_OF_RANGE = graph(
    "(float[N,4] x) => (float[N,4] y)",
    f"int64[1] unused = {{{I64_MAX}}}",
    "[identity] y = Identity(x)",
)

SHAPE_OF_OUT_OF_RANGE = graph(  # Shape reads the dims, never the values
    "(float[N,4] x) => (int64[1] y)",
    f"int64[1] big = {{{I64_MAX}}}",
    "[shape] y = Shape(big)",
)


@pytest.fixture
def lint_proto(lint_proto):
    """The INT32 cast exists on TensorRT 8.x only: these tests target 8.6 unless they say otherwise."""
    return functools.partial(lint_proto, target="tensorrt-8.6")


def test_no_int64_constants(lint_proto):
    assert lint_proto(NO_INT64, "GD001") == []


def test_fitting_constants_are_one_info_summary(lint_proto):
    [finding] = lint_proto(SHAPE_CONSTANTS, "GD001")
    assert finding.message_id == "fit"
    assert finding.severity == Severity.INFO
    assert finding.values == ("shape", "axes")
    assert (finding.data["count"], finding.data["total"], finding.data["size_bytes"]) == (2, 2, 24)
    assert finding.message.startswith("all 2 INT64 constants (24 B) fit in INT32")
    assert "harmless" in finding.message


@pytest.mark.parametrize("model", [DEAD_OUT_OF_RANGE, SHAPE_OF_OUT_OF_RANGE], ids=["unused", "shape-only"])
def test_out_of_range_values_nobody_reads_are_not_reported(lint_proto, model):
    findings = lint_proto(model, "GD001")
    assert [f.message_id for f in findings if f.message_id != "static_shape_arithmetic"] == []


# --- INVALID, info: clamp-safe sentinels --------------------------------------------------------------------

SLICE_END = graph(
    "(float[N,8] x) => (float[N,?] y)",
    f"int64[1] starts = {{1}}, int64[1] ends = {{{I64_MAX}}}, int64[1] axes = {{1}}",
    "[slice_tail] y = Slice(x, starts, ends, axes)",
)

FLIP = graph(  # torch.flip as the TorchScript exporter writes it: Constant nodes, ends INT64_MIN, step -1
    "(float[N,8] x) => (float[N,8] y)",
    "",
    f"""starts = Constant <value = int64[1] {{-1}}> ()
    ends = Constant <value = int64[1] {{{I64_MIN}}}> ()
    axes = Constant <value = int64[1] {{1}}> ()
    steps = Constant <value = int64[1] {{-1}}> ()
    [flip] y = Slice(x, starts, ends, axes, steps)""",
)

THROUGH_PLUMBING = graph(  # x[:, :n-1, 2:]: the INT64_MAX end is concatenated with a computed one
    "(float[N,M,8] x) => (float[N,?,?] y)",
    f"int64[1] big = {{{I64_MAX}}}, int64 one = {{1}}, int64[2] starts = {{0, 2}}, int64[2] axes = {{1, 2}}",
    """[shape] s = Shape(x)
    [gather_dim] m = Gather<axis = 0>(s, one)
    [minus_one] e = Sub(m, one)
    axes_zero = Constant <value = int64[1] {0}> ()
    [unsqueeze_end] e1 = Unsqueeze(e, axes_zero)
    [cast_big] big64 = Cast<to = 7>(big)
    [concat_ends] ends = Concat<axis = 0>(e1, big64)
    [slice_2d] y = Slice(x, starts, ends, axes)""",
)

CLAMP_BOUNDS = graph(
    "(int64[N] x) => (int64[N] y, int64[N] z)",
    f"int64 hi = {{{I64_MAX}}}, int64 lo = {{{I64_MIN}}}, int64 zero = {{0}}",
    """[min_cap] y = Min(x, hi)
    [clip_floor] z = Clip(x, lo, zero)""",
)


WHILE_LOOP = graph(  # a while loop: trip count INT64_MAX, the condition ends it
    "(int64 n) => (int64 out)",
    f"int64 trips = {{{I64_MAX}}}, bool go = {{1}}, int64 limit = {{100}}",
    """[while_loop] out = Loop(trips, go, n) <body = body_g (int64 i, bool c, int64 acc) => (bool more, int64 next) {
        [step] next = Add(acc, i)
        [below] more = Less(next, limit)
    }>""",
)

NMS_EVERY_BOX = graph(  # torchvision's batched_nms as the TorchScript exporter writes it: keep every box
    "(float[1,6,4] boxes, float[1,1,6] scores) => (int64[K,3] keep)",
    f"int64[1] max_boxes = {{{I64_MAX}}}, float[1] iou = {{0.5}}",
    "[nms] keep = NonMaxSuppression(boxes, scores, max_boxes, iou)",
)

WRONG_WAY_BOUND = graph(  # Max(x, INT64_MAX) is INT64_MAX; clamped, it becomes INT32_MAX
    "(int64[N] x) => (int64[N] y)",
    f"int64 hi = {{{I64_MAX}}}",
    "[max_hi] y = Max(x, hi)",
)


def test_slice_end_sentinel_is_info_naming_the_slice(lint_proto):
    findings = by_message(lint_proto(SLICE_END, "GD001"))
    [sentinel] = findings["sentinel"]
    assert sentinel.severity == Severity.INFO
    assert sentinel.node == "slice_tail"
    assert sentinel.values == ("ends",)
    assert sentinel.data["value"] == I64_MAX
    assert sentinel.data["clamped"] == I32_MAX
    assert sentinel.data["role"] == "the ends"
    assert "INT64 initializer 'ends' holds 9223372036854775807" in sentinel.message
    assert "Slice 'slice_tail'" in sentinel.message
    [summary] = findings["fit"]
    assert (summary.data["count"], summary.data["total"]) == (2, 3)
    assert summary.message.startswith("2 of 3 INT64 constants (16 B) fit in INT32")


def test_flip_sentinel_in_a_constant_node(lint_proto):
    findings = by_message(lint_proto(FLIP, "GD001"))
    [sentinel] = findings["sentinel"]
    assert (sentinel.node, sentinel.values) == ("flip", ("ends",))
    assert sentinel.data["kind"] == "Constant"
    assert (sentinel.data["value"], sentinel.data["clamped"]) == (I64_MIN, I32_MIN)
    assert findings["fit"][0].data["count"] == 3


def test_sentinel_reaches_slice_through_cast_and_concat(lint_proto):
    findings = by_message(lint_proto(THROUGH_PLUMBING, "GD001"))
    [sentinel] = findings["sentinel"]
    assert sentinel.node == "slice_2d"
    assert sentinel.values == ("big",)
    assert sentinel.data["via"] == " (via Cast 'cast_big', Concat 'concat_ends')"
    assert set(findings) == {"sentinel", "fit"}


def test_bounds_that_clamping_cannot_change_are_sentinels(lint_proto):
    findings = by_message(lint_proto(CLAMP_BOUNDS, "GD001"))
    sentinels = {f.node: f for f in findings["sentinel_bound"]}
    assert set(sentinels) == {"min_cap", "clip_floor"}
    assert sentinels["min_cap"].data["role"] == "a bound"
    assert sentinels["clip_floor"].data["role"] == "the min"
    assert "out_of_range" not in findings and "sentinel" not in findings
    assert all(f.repair is None and "`graphdoctor fix` leaves it" in f.help for f in sentinels.values())


def test_while_loop_trip_count_is_a_sentinel(lint_proto):
    findings = by_message(lint_proto(WHILE_LOOP, "GD001"))
    [sentinel] = findings["sentinel"]
    assert (sentinel.node, sentinel.values, sentinel.data["role"]) == ("while_loop", ("trips",), "the trip count")


def test_nms_box_limit_is_a_sentinel(lint_proto):
    """INT64_MAX boxes per class, clamped to INT32_MAX, still keeps every box."""
    [sentinel] = by_message(lint_proto(NMS_EVERY_BOX, "GD001"))["sentinel"]
    assert (sentinel.node, sentinel.data["role"]) == ("nms", "max_output_boxes_per_class")


def test_bound_that_clamping_changes_is_an_error(lint_proto):
    [error] = lint_proto(WRONG_WAY_BOUND, "GD001")
    assert (error.message_id, error.node) == ("out_of_range", "max_hi")


# --- INVALID, error: values the cast corrupts ---------------------------------------------------------------

GATHER_INDEX = graph(
    "(float[8,4] table) => (float[1,4] y)",
    "int64[1] row = {4294967296}",  # 2^32: clamps to INT32_MAX, wraps to 0
    "[lookup] y = Gather<axis = 0>(table, row)",
)

MASK_FILL = graph(
    "(int64[N] scores, bool[N] keep) => (int64[N] y)",
    f"int64 fill = {{{I64_MIN}}}",
    "[mask] y = Where(keep, scores, fill)",
)

HUGE_SHAPE = graph(  # ConstantOfShape's input must be INT64 by the spec
    "(float[1] x) => (float[?] y)",
    "int64[1] shape = {3000000000}",
    """[zeros] z = ConstantOfShape(shape)
    [add] y = Add(z, x)""",
)

RANGE_LIMIT = graph(
    "(int64 start) => (int64[?] y)",
    f"int64 limit = {{{I64_MAX}}}, int64 step = {{1}}",
    "[range] y = Range(start, limit, step)",
)

FILL_ATTRIBUTE = graph(  # an out-of-range ConstantOfShape fill value
    "(int64[N] x) => (bool[N] y)",
    "",
    f"""[shape] s = Shape(x)
    [fill] f = ConstantOfShape <value = int64[1] {{{I64_MIN}}}> (s)
    [equal] y = Equal(x, f)""",
)

SLICE_AND_ARITHMETIC = graph(  # one tensor, two uses: the harmful one decides
    "(float[N,8] x, int64[1] k) => (float[N,?] y, int64[1] z)",
    f"int64[1] starts = {{1}}, int64[1] big = {{{I64_MAX}}}",
    """[slice] y = Slice(x, starts, big)
    [plus] z = Add(k, big)""",
)

OUTPUT_CONSTANT = graph(
    "(float[1] x) => (float[1] y, int64[1] big)",
    f"int64[1] big = {{{I64_MAX}}}",
    "[identity] y = Identity(x)",
)


def test_gather_index_out_of_range_is_an_error(lint_proto):
    findings = by_message(lint_proto(GATHER_INDEX, "GD001"))
    [error] = findings["out_of_range"]
    assert error.severity == Severity.ERROR
    assert (error.node, error.values) == ("lookup", ("row",))
    assert error.data["input"] == "indices"
    assert (error.data["value"], error.data["clamped"], error.data["wrapped"]) == (2**32, I32_MAX, 0)
    assert (error.data["outside"], error.data["size"]) == (1, 1)
    assert "feeds input 'indices' of Gather 'lookup'" in error.message
    assert "TensorRT clamps it to 2147483647" in error.message
    assert "may" not in error.help and "INT32 range" in error.help


def test_mask_fill_is_an_error(lint_proto):
    [error] = lint_proto(MASK_FILL, "GD001")
    assert (error.message_id, error.node, error.values) == ("out_of_range", "mask", ("fill",))
    assert (error.data["clamped"], error.data["wrapped"]) == (I32_MIN, 0)
    assert "torch.iinfo(torch.int32).min" in error.help


def test_spec_int64_input_says_keep_it_int64_in_the_file(lint_proto):
    [error] = lint_proto(HUGE_SHAPE, "GD001")
    assert (error.node, error.data["input"]) == ("zeros", "input")
    assert error.data["clamped"] == I32_MAX
    assert "ONNX requires INT64 for 'input' of ConstantOfShape" in error.help


def test_range_limit_is_an_error(lint_proto):
    findings = by_message(lint_proto(RANGE_LIMIT, "GD001"))
    [error] = findings["out_of_range"]
    assert (error.node, error.values, error.data["input"]) == ("range", ("limit",), "limit")
    assert findings["fit"][0].values == ("step",)


def test_constant_of_shape_fill_value_is_checked(lint_proto):
    [error] = lint_proto(FILL_ATTRIBUTE, "GD001")
    assert (error.message_id, error.node, error.values) == ("out_of_range", "equal", ("f",))
    assert error.data["kind"] == "ConstantOfShape value"
    assert error.data["name"] == "fill"


def test_harmful_use_wins_over_a_sentinel_use(lint_proto):
    findings = by_message(lint_proto(SLICE_AND_ARITHMETIC, "GD001"))
    [error] = findings["out_of_range"]
    assert (error.node, error.values, error.data["more"]) == ("plus", ("big",), "")
    assert "sentinel" not in findings


def test_constant_returned_as_graph_output_is_an_error(lint_proto):
    [error] = lint_proto(OUTPUT_CONSTANT, "GD001")
    assert (error.message_id, error.node, error.data["op"]) == ("out_of_range", None, "graph output")
    assert "graph output 'big'" in error.message


# --- subgraphs --------------------------------------------------------------------------------------------

SUBGRAPH_CAPTURE = model_from_text(f"""{HEADER}
g (bool c, float[8,4] table) => (float[1,4] y)
    <int64[1] row = {{{I64_MAX}}}, int64[1] zero = {{0}}, int64[1] one = {{1}}> {{
    [branch] y = If(c) <
        then_branch = then_g () => (float[1,4] t) {{ [inner_gather] t = Gather<axis = 0>(table, row) }},
        else_branch = else_g () => (float[1,4] e) {{ [inner_slice] e = Slice(table, zero, one) }}
    >
}}""")


BRANCH_RETURNS_SENTINEL = model_from_text(f"""{HEADER}
g (bool c, float[8,4] x) => (float[?,4] y) <int64[1] starts = {{1}}> {{
    [pick_end] end = If(c) <
        then_branch = then_g () => (int64[1] t) {{ t = Constant <value = int64[1] {{{I64_MAX}}}> () }},
        else_branch = else_g () => (int64[1] e) {{ e = Constant <value = int64[1] {{4}}> () }}
    >
    [slice_rows] y = Slice(x, starts, end)
}}""")


def test_sentinel_returned_by_an_if_branch(lint_proto):
    findings = by_message(lint_proto(BRANCH_RETURNS_SENTINEL, "GD001"))
    [sentinel] = findings["sentinel"]
    assert (sentinel.node, sentinel.values) == ("slice_rows", ("t",))
    assert sentinel.data["via"] == " (via If 'pick_end')"


def test_out_of_range_value_read_inside_a_subgraph(lint_proto):
    findings = by_message(lint_proto(SUBGRAPH_CAPTURE, "GD001"))
    [error] = findings["out_of_range"]
    assert (error.node, error.values) == ("inner_gather", ("row",))
    assert error.graph == "branch.then_branch"


# --- real exports ---------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("name", ["yolo", "bert_opset14", "bert_opset17"])
def test_real_exports_get_info_only(name):
    """TorchScript exports hold dozens of small INT64 shape constants: never a warning or an error."""
    from fixtures import torch_exports

    findings = api.lint(torch_exports.path(name), select=["GD001"], target="tensorrt-8.6").findings
    assert findings, "these exports hold INT64 shape constants"
    assert {f.severity for f in findings} == {Severity.INFO}
    [fit] = by_message(findings)["fit"]
    assert fit.data["count"] > 20


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_large", "efficientnet_b0"])
def test_clean_vision_exports(name):
    from fixtures import torch_exports

    findings = api.lint(torch_exports.path(name), select=["GD001"]).findings
    assert [f for f in findings if f.severity >= Severity.WARNING] == []


@pytest.mark.torch
def test_torchscript_slicing_sentinels_are_info(tmp_path: Path):
    """flip, x[:, 1:] and x[:, -2:] as the TorchScript exporter writes them: INT64_MAX/MIN Slice ends."""
    torch = pytest.importorskip("torch")

    class Slicer(torch.nn.Module):
        def forward(self, x):
            return x.flip(-1), x[:, 1:], x[:, -2:], x[:, : x.shape[1] - 1]

    path = tmp_path / "slices.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            Slicer(),
            (torch.zeros(1, 4, 6),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch", 1: "n"}},
        )
    findings = by_message(api.lint(path, select=["GD001"], target="tensorrt-8.6").findings)
    assert set(findings) == {"fit", "sentinel"}
    sentinels = findings["sentinel"]
    assert len(sentinels) == 3
    assert {f.data["value"] for f in sentinels} == {I64_MAX, -I64_MAX}
    assert all(f.data["role"] == "the ends" and f.severity == Severity.INFO for f in sentinels)


@pytest.mark.parametrize("target", ["tensorrt-10", "tensorrt-11", "onnxruntime"])
def test_targets_that_keep_int64_report_no_cast(lint_proto, target):
    """TensorRT 9.0 dropped the cast to INT32 and ONNX Runtime never had one: a Gather index beyond INT32,
    an error on 8.6, is nothing there; shape arithmetic on static shapes is still reported."""
    assert by_message(lint_proto(GATHER_INDEX, "GD001"))["out_of_range"]
    assert lint_proto(GATHER_INDEX, "GD001", target=target) == []
    assert lint_proto(SHAPE_CONSTANTS, "GD001", target=target) == []
