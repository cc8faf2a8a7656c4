"""GD001 fixes: clamp-safe sentinels stored clamped to INT32 (still INT64), and shape arithmetic on static
shapes folded into constants. Every fix is bit-exact on ONNX Runtime, leaves no finding it could fix, and is
idempotent; bounds and out-of-range values are never touched."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, numpy_helper

from fixtures.handmade import model_from_text, save
from graphdoctor import api
from graphdoctor.engine import FixPolicy, apply_fixes, select_rules
from graphdoctor.rule import Finding, FixSafety, load_rules
from tests.fix.conftest import assert_bit_exact, fix_proto
from tests.rules.test_int64_weights import (
    CLAMP_BOUNDS,
    FLIP,
    GATHER_INDEX,
    HEADER,
    I32_MAX,
    I32_MIN,
    I64_MAX,
    MASK_FILL,
    SLICE_AND_ARITHMETIC,
    SLICE_END,
    THROUGH_PLUMBING,
    WHILE_LOOP,
    by_message,
    graph,
)

RULE = "GD001"
TRT8 = "tensorrt-8.6"  # the INT32 cast, and so the sentinel clamping, exists on TensorRT 8.x only
RNG = np.random.default_rng(1)


def fixed(proto: onnx.ModelProto, *feeds: dict[str, np.ndarray]):
    """Fix, check the outputs bit for bit on every feed, and check that a second fix changes nothing."""
    result, fixes = fix_proto(proto, RULE, target=TRT8)
    for feed in feeds:
        assert_bit_exact(proto, result, feed)
    assert fix_proto(result, RULE, target=TRT8)[1] == [], "not idempotent"
    return result, fixes


def lint(proto: onnx.ModelProto, tmp_path: Path) -> dict[str, list[Finding]]:
    return by_message(api.lint(save(proto, tmp_path / "fixed.onnx"), select=[RULE], target=TRT8).findings)


def floats(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def initializer(proto: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == name))


def ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


# --- sentinels ----------------------------------------------------------------------------------------------------


def test_slice_end_int64_max_is_clamped_and_stays_int64(tmp_path):
    result, [fixes] = fixed(SLICE_END, {"x": floats(3, 8)}, {"x": floats(1, 8)})
    ends = next(t for t in result.graph.initializer if t.name == "ends")
    assert ends.data_type == TensorProto.INT64
    assert numpy_helper.to_array(ends).tolist() == [I32_MAX]
    assert (dict(fixes.repairs), fixes.safety, fixes.nodes_removed) == ({"sentinel": 1}, {FixSafety.SAFE}, 0)
    findings = lint(result, tmp_path)
    assert set(findings) == {"fit"} and findings["fit"][0].data["count"] == 3


def test_flip_sentinel_in_a_constant_node(tmp_path):
    result, _ = fixed(FLIP, {"x": floats(2, 8)})
    ends = next(n for n in result.graph.node if n.output[0] == "ends")
    assert [a.name for a in ends.attribute] == ["value"]
    assert numpy_helper.to_array(ends.attribute[0].t).tolist() == [I32_MIN]
    assert set(lint(result, tmp_path)) == {"fit"}


def test_sentinel_through_cast_and_concat():
    result, _ = fixed(THROUGH_PLUMBING, {"x": floats(2, 5, 8)}, {"x": floats(1, 3, 8)})
    assert initializer(result, "big").tolist() == [I32_MAX]


def test_loop_trip_count_is_clamped_and_keeps_the_int64_the_spec_requires():
    result, _ = fixed(WHILE_LOOP, {"n": np.array(3, np.int64)})
    trips = next(t for t in result.graph.initializer if t.name == "trips")
    assert trips.data_type == TensorProto.INT64  # Loop's M must be INT64
    assert numpy_helper.to_array(trips).tolist() == I32_MAX


def test_constant_of_shape_fill_used_as_slice_ends():
    model = graph(
        "(float[N,8] x) => (float[N,?] y)",
        "int64[1] one = {1}, int64[1] starts = {2}, int64[1] axes = {1}",
        f"""[fill] ends = ConstantOfShape <value = int64[1] {{{I64_MAX}}}> (one)
        [slice_tail] y = Slice(x, starts, ends, axes)""",
    )
    result, _ = fixed(model, {"x": floats(2, 8)})
    fill = next(n for n in result.graph.node if n.name == "fill").attribute[0].t
    assert (fill.data_type, numpy_helper.to_array(fill).tolist()) == (TensorProto.INT64, [I32_MAX])


@pytest.mark.parametrize(
    "model",
    [CLAMP_BOUNDS, MASK_FILL, GATHER_INDEX, SLICE_AND_ARITHMETIC],
    ids=["bounds", "mask-fill", "gather-index", "slice-and-arithmetic"],
)
def test_bounds_and_out_of_range_values_are_never_changed(tmp_path, model):
    findings = lint(model, tmp_path)
    unfixed = findings.get("sentinel_bound", []) + findings.get("out_of_range", [])
    assert unfixed and all(f.repair is None for f in unfixed)
    assert fix_proto(model, RULE, target=TRT8)[1] == []


def test_out_of_range_help_says_fix_cannot_repair_it(tmp_path):
    [error] = lint(MASK_FILL, tmp_path)["out_of_range"]
    assert "`graphdoctor fix` cannot repair it" in error.help


def test_sentinel_shared_with_a_bound_is_left_alone(tmp_path):
    model = graph(
        "(float[N,8] x, int64[N] k) => (float[N,?] y, int64[N] z)",
        f"int64[1] starts = {{1}}, int64[1] big = {{{I64_MAX}}}",
        """[slice] y = Slice(x, starts, big)
        [cap] z = Min(k, big)""",
    )
    [bound] = lint(model, tmp_path)["sentinel_bound"]
    assert (bound.node, bound.repair) == ("cap", None)
    assert fix_proto(model, RULE, target=TRT8)[1] == []


# --- static shape arithmetic ----------------------------------------------------------------------------------------

RESHAPE_BY_SHAPE = graph(  # x.reshape(x.shape[0], -1) on a static input
    "(float[2,3,4] x) => (float[2,12] y)",
    "int64 zero = {0}, int64[1] axes = {0}, int64[1] minus_one = {-1}",
    """[shape] s = Shape(x)
    [first_dim] d = Gather<axis = 0>(s, zero)
    [unsqueeze] u = Unsqueeze(d, axes)
    [concat] c = Concat<axis = 0>(u, minus_one)
    [reshape] y = Reshape(x, c)""",
)


def test_shape_gather_unsqueeze_concat_on_a_static_input_is_folded(tmp_path):
    [finding] = lint(RESHAPE_BY_SHAPE, tmp_path)["static_shape_arithmetic"]
    assert (finding.node, finding.values, finding.data["count"]) == ("concat", ("c",), 4)
    assert finding.data["ops"] == "Shape, Gather, Unsqueeze, Concat"
    assert finding.data["result"] == "int64[2] {2, -1}"
    assert "static shape of 'x' (float32[2,3,4]) for Reshape 'reshape'" in finding.message
    result, [fixes] = fixed(RESHAPE_BY_SHAPE, {"x": floats(2, 3, 4)})
    assert ops(result) == ["Reshape"] and list(result.graph.node[0].input) == ["x", "c"]
    assert [t.name for t in result.graph.initializer] == ["c"]  # zero, axes, minus_one went with the nodes
    assert initializer(result, "c").tolist() == [2, -1]
    assert (dict(fixes.repairs), fixes.nodes_removed) == ({"static_shape_arithmetic": 1}, 4)
    assert "static_shape_arithmetic" not in lint(result, tmp_path)


PARTLY_DYNAMIC = graph(  # x.reshape(-1, x.shape[1], x.shape[2] * x.shape[3]) with a dynamic batch
    "(float[N,3,4,5] x) => (float[N,3,20] y)",
    "int64 one = {1}, int64[1] axes = {0}, int64[1] minus_one = {-1}",
    """[shape_all] s = Shape(x)
    [channels] c = Gather<axis = 0>(s, one)
    [channels_1d] c1 = Unsqueeze(c, axes)
    [shape_hw] hw = Shape<start = -2>(x)
    [area] a = ReduceProd<keepdims = 1>(hw)
    [target] t = Concat<axis = 0>(minus_one, c1, a)
    [batch] b = Gather<axis = 0>(s, axes)
    [reshape] r = Reshape(x, t)
    [batch_f] bf = Cast<to = 1>(b)
    [scale] y = Mul(r, bf)""",
)


def test_static_dims_of_a_partly_dynamic_shape_are_folded_the_dynamic_ones_kept(tmp_path):
    [finding] = lint(PARTLY_DYNAMIC, tmp_path)["static_shape_arithmetic"]
    assert (finding.node, finding.data["result"]) == ("target", "int64[3] {-1, 3, 20}")
    result, _ = fixed(PARTLY_DYNAMIC, {"x": floats(2, 3, 4, 5)}, {"x": floats(7, 3, 4, 5)})
    assert ops(result) == ["Shape", "Gather", "Reshape", "Cast", "Mul"]  # the batch dim still comes from Shape
    assert initializer(result, "t").tolist() == [-1, 3, 20]


def test_slice_of_a_partly_dynamic_shape_and_constant_nodes_fold_together(tmp_path):
    """x.reshape(-1, *x.shape[1:]) as a Slice of the shape, with its -1 an Unsqueeze of a Constant node."""
    model = graph(
        "(float[N,3,4] x) => (float[N,3,4] y)",
        "int64[1] one = {1}, int64[1] end = {3}, int64[1] axes = {0}",
        """minus = Constant <value = int64 {-1}> ()
        [minus_1d] m = Unsqueeze(minus, axes)
        [shape] s = Shape(x)
        [tail] t = Slice(s, one, end)
        [target] c = Concat<axis = 0>(m, t)
        [reshape] y = Reshape(x, c)""",
    )
    [finding] = lint(model, tmp_path)["static_shape_arithmetic"]
    assert (finding.data["ops"], finding.data["result"]) == ("Shape, Slice, Concat", "int64[3] {-1, 3, 4}")
    result, [fixes] = fixed(model, {"x": floats(2, 3, 4)}, {"x": floats(5, 3, 4)})
    assert ops(result) == ["Reshape"] and [t.name for t in result.graph.initializer] == ["c"]
    assert fixes.nodes_removed == 5


@pytest.mark.parametrize("start", [0, 1, -1])
def test_dynamic_dims_are_never_folded(tmp_path, start):
    model = graph(
        "(float[N,M] x) => (int64[?] y)",
        "int64[1] two = {2}",
        f"""[shape] s = Shape<start = {start}>(x)
        [double] y = Mul(s, two)""",
    )
    assert "static_shape_arithmetic" not in lint(model, tmp_path)
    assert fix_proto(model, RULE, target=TRT8)[1] == []


def test_integer_division_truncates_like_onnx_runtime():
    model = graph(  # -(x.shape[1]) // 2 as an ONNX Div: truncates toward zero, -3 / 2 == -1
        "(float[2,3] x) => (int64 y)",
        "int64 one = {1}, int64 two = {2}",
        """[shape] s = Shape(x)
        [dim] d = Gather<axis = 0>(s, one)
        [negate] n = Neg(d)
        [halve] y = Div(n, two)""",
    )
    result, _ = fixed(model, {"x": floats(2, 3)})
    assert ops(result) == ["Constant"] and result.graph.node[0].output == ["y"]
    assert numpy_helper.to_array(result.graph.node[0].attribute[0].t).tolist() == -1


def test_division_by_zero_is_not_folded(tmp_path):
    model = graph(
        "(float[2,3] x) => (int64[2] y)",
        "int64[2] zero = {0, 0}",
        "[shape] s = Shape(x)\n[divide] y = Div(s, zero)",
    )
    [finding] = lint(model, tmp_path)["static_shape_arithmetic"]  # the Shape alone folds; the Div stays
    assert finding.node == "shape"
    result, _ = fix_proto(model, RULE, target=TRT8)
    assert ops(result) == ["Div"]


LARGE_FILL = graph(  # torch.zeros_like-style ConstantOfShape(x.shape) of an INT64 tensor: 96 KiB
    "(float[1,3,64,64] x) => (float[1,3,64,64] y)",
    "",
    """[shape] s = Shape(x)
    [ones] o = ConstantOfShape<value = int64[1] {1}>(s)
    [to_float] f = Cast<to = 1>(o)
    [add] y = Add(x, f)""",
)


def test_size_guard_keeps_a_large_constant_of_shape(tmp_path):
    [finding] = lint(LARGE_FILL, tmp_path)["static_shape_arithmetic"]
    assert (finding.node, finding.data["result"]) == ("shape", "int64[4] {1, 3, 64, 64}")
    result, _ = fixed(LARGE_FILL, {"x": floats(1, 3, 64, 64)})
    assert ops(result) == ["ConstantOfShape", "Cast", "Add"]
    assert [(t.name, list(t.dims)) for t in result.graph.initializer] == [("s", [4])]


def test_fold_max_bytes_option_lets_the_large_fill_fold():
    model = ir.serde.deserialize_model(LARGE_FILL)
    rules = select_rules(load_rules(), [RULE])
    fixes, converged = apply_fixes(
        model, rules, FixPolicy(), rule_options={"int64-weights": {"fold_max_bytes": 1 << 17}}
    )
    assert converged and dict(fixes[0].repairs) == {"static_shape_arithmetic": 1}
    assert [n.op_type for n in model.graph] == ["Cast", "Add"]  # the float result of the Cast is not folded


def test_static_shape_returned_as_a_graph_output():
    model = graph("(float[2,3] x) => (int64[2] s, float[2,3] y)", "", "[shape] s = Shape(x)\n[neg] y = Neg(x)")
    result, _ = fixed(model, {"x": floats(2, 3)})
    assert ops(result) == ["Constant", "Neg"] and result.graph.node[0].output == ["s"]


def test_shape_arithmetic_inside_a_subgraph_is_left_alone(tmp_path):
    model = model_from_text(f"""{HEADER}
g (bool c, float[2,3] x) => (int64[2] y) {{
    [branch] y = If(c) <
        then_branch = then_g () => (int64[2] t) {{ [inner_shape] t = Shape(x) }},
        else_branch = else_g () => (int64[2] e) {{ e = Constant <value = int64[2] {{0, 0}}> () }}
    >
}}""")
    assert "static_shape_arithmetic" not in lint(model, tmp_path)


def test_fixable_messages_declare_safe_and_the_others_none():
    [rule] = select_rules(load_rules(), [RULE])
    declared = {key: message.fix for key, message in rule.meta.messages.items()}
    assert declared == {
        "fit": None,
        "sentinel": FixSafety.SAFE,
        "sentinel_bound": None,
        "out_of_range": None,
        "static_shape_arithmetic": FixSafety.SAFE,
    }


# --- real exports ---------------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("name", ["bert_opset14", "bert_opset17"])
def test_bert_expand_patterns_fold_and_dynamic_dims_stay(tmp_path, name):
    """TorchScript's expand writes Shape(shape tensor) → ConstantOfShape → Mul(-1) → Equal → Where: the length
    of a shape tensor is static even when batch and sequence are not."""
    from fixtures import torch_exports

    path = torch_exports.path(name)
    original = onnx.load(path)
    other_size = {
        "input_ids": RNG.integers(0, torch_exports.VOCAB, (3, 9)),
        "attention_mask": np.ones((3, 9), np.int64),
    }
    result, [fixes] = fixed(original, torch_exports.sample_inputs(path), other_size)
    assert dict(fixes.repairs) == {"static_shape_arithmetic": 6}
    removed = Counter(ops(original)) - Counter(ops(result))
    assert removed == {"Shape": 3, "ConstantOfShape": 3, "Mul": 3, "Constant": 3}  # the Constants: Mul's -1
    assert (fixes.nodes_removed, fixes.bytes_saved) == (12, -104)  # 6 small INT64 constants replace 3 scalars
    assert set(lint(result, tmp_path)) == {"fit"}


@pytest.mark.torch
@pytest.mark.parametrize("name", ["yolo", "resnet50", "mobilenet_v3_large", "efficientnet_b0"])
def test_exports_without_static_shape_arithmetic_are_unchanged(name):
    """YOLO reads only its dynamic dims (batch, height, width); the torchvision exports compute no shapes."""
    from fixtures import torch_exports

    assert fix_proto(onnx.load(torch_exports.path(name)), RULE)[1] == []


@pytest.mark.torch
def test_torchscript_export_with_a_dynamic_batch(tmp_path):
    """Slicing sentinels and shape arithmetic as the TorchScript exporter writes them with a dynamic batch:
    the sentinels are clamped, `x.shape[1] // 2` (a static dim) folded, `x.size(0)` kept."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def forward(self, x):
            flat = x[:, 1:].flip(-1).reshape(x.size(0), -1)
            return flat * (x.shape[1] // 2), x[:, -2:]

    path = tmp_path / "static.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            Net(),
            (torch.zeros(2, 4, 6),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    original = onnx.load(path)
    before = lint(original, tmp_path)
    assert {"sentinel", "static_shape_arithmetic"} <= set(before)
    result, [fixes] = fixed(original, {"x": floats(2, 4, 6)}, {"x": floats(5, 4, 6)})
    assert dict(fixes.repairs) == {"sentinel": 3, "static_shape_arithmetic": 1}  # 3 slices; x.shape[1] // 2
    assert fixes.nodes_removed == 7
    assert ops(result).count("Shape") == ops(original).count("Shape") - 1  # x.size(0) stays: the batch is dynamic
    assert set(lint(result, tmp_path)) == {"fit"}
