"""GD002 fixes: no-op Casts and lossless round trips removed, Casts of constants folded; lossy round trips kept.
Every fix is bit-exact on ONNX Runtime, leaves no finding it could fix, and is idempotent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.handmade import save
from graphdoctor import api
from graphdoctor.engine import FixPolicy, apply_fixes, select_rules
from graphdoctor.rule import Finding, FixSafety, load_rules
from tests.fix.conftest import assert_bit_exact, fix_proto
from tests.rules.test_redundant_cast import graph, round_trip

RULE = "GD002"
RNG = np.random.default_rng(2)
FLOAT_IN = {"x": RNG.standard_normal(2).astype(np.float32)}
F16_IN = {"x": RNG.standard_normal(2).astype(np.float16)}
FIXABLE = {"same_dtype", "same_dtype_fusion", "same_dtype_index", "lossless_round_trip", "constant_cast"}


def fixed(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]):
    """Fix, check the outputs bit for bit, and check that a second fix changes nothing."""
    result, fixes = fix_proto(proto, RULE)
    assert_bit_exact(proto, result, feeds)
    assert fix_proto(result, RULE)[1] == [], "not idempotent"
    return result, fixes


def lint(proto: onnx.ModelProto, tmp_path: Path) -> list[Finding]:
    return api.lint(save(proto, tmp_path / "fixed.onnx"), select=[RULE]).findings


def ops(proto: onnx.ModelProto | onnx.GraphProto) -> list[str]:
    graph_proto = proto.graph if isinstance(proto, onnx.ModelProto) else proto
    return [n.op_type for n in graph_proto.node]


def repairs(fixes) -> dict[str, int]:
    return dict(fixes[0].repairs) if fixes else {}


# --- no-op Casts -----------------------------------------------------------------------------------------------


def test_same_type_cast_between_matmul_and_add_is_removed(tmp_path):
    model = graph(
        "float[1,4] x, float[4,4] w, float[4] b",
        "float[1,4] y",
        "[mm] t = MatMul(x, w)\n[c1] u = Cast <to = 1> (t)\n[add] y = Add(u, b)",
    )
    feeds = {"x": RNG.standard_normal((1, 4)).astype(np.float32), "w": RNG.standard_normal((4, 4)).astype(np.float32)}
    feeds["b"] = RNG.standard_normal(4).astype(np.float32)
    result, [fixes] = fixed(model, feeds)
    assert ops(result) == ["MatMul", "Add"]
    assert (dict(fixes.repairs), fixes.nodes_removed, fixes.safety) == ({"same_dtype_fusion": 1}, 1, {FixSafety.SAFE})
    assert lint(result, tmp_path) == []


def test_same_type_cast_producing_a_graph_output_keeps_the_name():
    model = graph("float[2] x", "float[2] y", "[neg] t = Neg(x)\n[c1] y = Cast <to = 1> (t)")
    result, _ = fixed(model, FLOAT_IN)
    assert ops(result) == ["Neg"]
    assert result.graph.node[0].output == ["y"] and [o.name for o in result.graph.output] == ["y"]


def test_same_type_cast_from_a_graph_input_to_a_graph_output_becomes_identity():
    """Both names are part of the interface: an Identity carries the input to the output."""
    model = graph("int64[2] x", "int64[2] y", "[c1] y = Cast <to = 7> (x)")
    result, _ = fixed(model, {"x": np.array([3, -4], np.int64)})
    assert ops(result) == ["Identity"]


def test_same_type_castlike_is_removed(tmp_path):
    model = graph("float16[2] x, float16[2] like", "float16[2] y", "[cl] t = CastLike(x, like)\n[neg] y = Neg(t)")
    result, _ = fixed(model, F16_IN | {"like": F16_IN["x"]})
    assert ops(result) == ["Neg"] and result.graph.node[0].input == ["x"]
    assert lint(result, tmp_path) == []


def test_same_type_cast_inside_an_if_branch():
    """The branch's output is computed by a node of the outer graph: an Identity inside the branch returns it."""
    model = graph(
        "bool c, float[2] x",
        "float[2] y",
        "[neg] n = Neg(x)\n"
        "[cond] y = If (c) <then_branch = then () => (float[2] a) { [inner] a = Cast <to = 1> (n) },"
        " else_branch = other () => (float[2] b) { [keep] b = Abs(x) }>",
    )
    for flag in (True, False):
        result, _ = fixed(model, FLOAT_IN | {"c": np.array(flag)})
    branch = result.graph.node[1].attribute[0].g
    assert ops(branch) == ["Identity"] and branch.node[0].input == ["n"] and branch.output[0].name == "a"


def test_same_type_cast_inside_a_loop_body():
    model = graph(
        "int64 n, float[2] x",
        "float[2] y",
        "[loop] y = Loop (n, , x) <body = body (int64 i, bool c, float[2] acc) => (bool c_out, float[2] next) {"
        " [keep_going] c_out = Identity(c)\n [inner] same = Cast <to = 1> (acc)\n [step] next = Add(same, same) }>",
        check=False,
    )
    result, _ = fixed(model, FLOAT_IN | {"n": np.array(3, np.int64)})
    assert ops(result.graph.node[0].attribute[0].g) == ["Identity", "Add"]


# --- round trips ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "mid"), [("float16", "float"), ("int32", "int64"), ("bool", "float"), ("uint8", "float")]
)
def test_lossless_round_trip_is_removed(tmp_path, src, mid):
    feeds = {"x": RNG.standard_normal(2).astype(np.float16) if src == "float16" else np.array([1, 0]).astype(src)}
    result, fixes = fixed(round_trip(src, mid), feeds)
    assert ops(result) == ["Identity"]  # x is a graph input, y a graph output: the interface keeps both
    assert repairs(fixes) == {"lossless_round_trip": 1}
    assert lint(result, tmp_path) == []


def test_lossless_round_trip_with_a_shared_middle_keeps_the_first_cast(tmp_path):
    result, _ = fixed(round_trip("float16", "float", shared=True), F16_IN)
    assert sorted(ops(result)) == ["Cast", "Identity", "Identity"]  # y = Identity(x), m = Identity(t)
    assert [n.name for n in result.graph.node if n.op_type == "Cast"] == ["first"]
    assert lint(result, tmp_path) == []


def test_float16_float32_chain_keeps_one_cast(tmp_path):
    """f16 → f32 → f16 → f32: the two round-trip findings overlap; one round leaves x → float32."""
    body = "[a] t1 = Cast <to = 1> (x)\n[b] t2 = Cast <to = 10> (t1)\n[c] y = Cast <to = 1> (t2)"
    model = graph("float16[2] x", "float[2] y", body)
    feeds = {"x": np.array([np.nan, 65504], np.float16)}
    result, fixes = fixed(model, feeds)
    assert ops(result) == ["Cast"] and result.graph.node[0].output == ["y"]
    assert fixes[0].nodes_removed == 2
    assert lint(result, tmp_path) == []


@pytest.mark.parametrize(
    ("src", "mid", "message"),
    [
        ("float", "float16", "rounding_round_trip"),
        ("float", "int64", "truncating_round_trip"),
        ("int32", "bool", "nonzero_round_trip"),
    ],
)
def test_lossy_round_trips_are_never_removed(tmp_path, src, mid, message):
    model = round_trip(src, mid)
    [finding] = lint(model, tmp_path)
    assert (finding.message_id, finding.fix, finding.repair) == (message, None, None)
    result, fixes = fix_proto(model, RULE)
    assert fixes == [] and ops(result) == ["Cast", "Cast"]


# --- constants ---------------------------------------------------------------------------------------------------


def constant_model(array: np.ndarray, to: int, *, as_node: bool = False, readers: int = 1) -> onnx.ModelProto:
    """c (initializer, or Constant node) → Cast(to) → Identity → y; `readers` > 1 adds Identity readers of c."""
    tensor = numpy_helper.from_array(array, "c")
    nodes = [helper.make_node("Constant", [], ["c"], name="k", value=tensor)] if as_node else []
    nodes += [helper.make_node("Cast", ["c"], ["t"], name="cast", to=to), helper.make_node("Identity", ["t"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", to, list(array.shape))]
    for i in range(1, readers):
        nodes.append(helper.make_node("Identity", ["c"], [f"o{i}"], name=f"other{i}"))
        outputs.append(helper.make_tensor_value_info(f"o{i}", tensor.data_type, list(array.shape)))
    g = helper.make_graph(nodes, "g", [], outputs, [] if as_node else [tensor])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def finite_values(dtype: np.dtype, size: int = 64) -> np.ndarray:
    if np.issubdtype(dtype, np.floating):
        return np.concatenate([RNG.standard_normal(size - 4) * 300, [0.0, -0.0, 65504.0, 1e-7]]).astype(dtype)
    if dtype == np.bool_:
        return RNG.integers(0, 2, size).astype(bool)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, size, dtype=dtype, endpoint=True)


CONVERSIONS = [
    (np.int64, TensorProto.FLOAT),
    (np.int64, TensorProto.INT32),  # wraps, as ONNX Runtime's Cast does
    (np.int64, TensorProto.UINT8),
    (np.int32, TensorProto.FLOAT16),
    (np.uint64, TensorProto.DOUBLE),
    (np.float32, TensorProto.FLOAT16),  # round to nearest even, subnormals and overflow to inf included
    (np.float64, TensorProto.FLOAT),
    (np.float32, TensorProto.DOUBLE),
    (np.float16, TensorProto.FLOAT),
    (np.float32, TensorProto.BOOL),
    (np.int8, TensorProto.BOOL),
    (np.bool_, TensorProto.FLOAT16),
    (np.bool_, TensorProto.INT64),
]


@pytest.mark.parametrize(("dtype", "to"), CONVERSIONS, ids=lambda p: getattr(p, "__name__", str(p)))
def test_cast_of_an_initializer_is_folded_bit_exactly(tmp_path, dtype, to):
    model = constant_model(finite_values(np.dtype(dtype)), to)
    result, fixes = fixed(model, {})
    assert ops(result) == ["Identity"]
    [init] = result.graph.initializer
    assert (init.name, init.data_type) == ("t", to)  # the source is gone: nothing else read it
    assert repairs(fixes) == {"constant_cast": 1}
    assert lint(result, tmp_path) == []


def test_float_to_int_in_range_is_folded():
    values = np.array([2.7, -2.7, 126.99, -128.0, 0.5], np.float32)
    result, _ = fixed(constant_model(values, TensorProto.INT8), {})
    assert numpy_helper.to_array(result.graph.initializer[0]).tolist() == [2, -2, 126, -128, 0]


def test_bfloat16_is_folded_with_round_to_nearest_even():
    """float32 → bfloat16 → float32 on a constant (ONNX Runtime returns no bfloat16 to numpy): both folded."""
    values = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, -3.0e38, 1e-40], np.float32)  # two ties, one large, one tiny
    model = constant_model(values, TensorProto.BFLOAT16)
    model.graph.node[1].CopyFrom(helper.make_node("Cast", ["t"], ["y"], name="back", to=TensorProto.FLOAT))
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    result, fixes = fixed(model, {})
    assert ops(result) == ["Constant"] and not result.graph.initializer
    assert repairs(fixes) == {"constant_cast": 2}
    folded = numpy_helper.to_array(result.graph.node[0].attribute[0].t)
    assert folded[:2].tolist() == [1.0, 1.015625]  # both ties went to the even neighbour


def test_cast_of_a_constant_node_becomes_a_constant_node():
    model = constant_model(np.array([1.5, -2.25], np.float64), TensorProto.FLOAT, as_node=True)
    result, _ = fixed(model, {})
    assert ops(result) == ["Constant", "Identity"] and not result.graph.initializer
    assert numpy_helper.to_array(result.graph.node[0].attribute[0].t).dtype == np.float32


def test_castlike_of_a_constant_is_folded():
    model = graph(
        "float16[2] x", "float16[2] y", "[cl] wf = CastLike(w, x)\n[add] y = Add(x, wf)", "<float[2] w = {0.1, 3.0}>"
    )
    result, _ = fixed(model, F16_IN)
    assert ops(result) == ["Add"]
    assert [(i.name, i.data_type) for i in result.graph.initializer] == [("wf", TensorProto.FLOAT16)]


def test_cast_of_a_constant_producing_a_graph_output():
    model = graph(
        "float[2] x",
        "float[2] wf, float[2] y",
        "[c1] wf = Cast <to = 1> (w)\n[add] y = Add(x, wf)",
        "<int64[2] w = {1, 2}>",
    )
    result, _ = fixed(model, FLOAT_IN)
    assert ops(result) == ["Constant", "Add"] and result.graph.node[0].output == ["wf"]
    assert not result.graph.initializer


def test_cast_of_an_outer_constant_inside_a_loop_body():
    model = graph(
        "int64 n, float[2] x",
        "float[2] y",
        "[loop] y = Loop (n, , x) <body = body (int64 i, bool c, float[2] acc) => (bool c_out, float[2] next) {"
        " [keep_going] c_out = Identity(c)\n [inner] wf = Cast <to = 1> (w)\n [step] next = Add(acc, wf) }>",
        "<int64[2] w = {1, 2}>",
        check=False,
    )
    result, _ = fixed(model, FLOAT_IN | {"n": np.array(3, np.int64)})
    assert ops(result.graph.node[0].attribute[0].g) == ["Identity", "Constant", "Add"]
    assert not result.graph.initializer  # the outer int64 copy went with its last reader


def test_small_shared_constant_is_copied():
    model = constant_model(np.arange(4, dtype=np.int64), TensorProto.FLOAT, readers=2)
    result, _ = fixed(model, {})
    assert sorted(i.name for i in result.graph.initializer) == ["c", "t"]


def test_large_shared_constant_is_left_alone(tmp_path):
    model = constant_model(np.arange(512, dtype=np.int64), TensorProto.FLOAT, readers=2)  # copy: 2 KiB
    [finding] = lint(model, tmp_path)
    assert finding.repair is None
    assert "leaves it: the copy would exceed fold_shared_max_bytes (1.0 KiB)" in finding.help
    assert fix_proto(model, RULE)[1] == []


def test_fold_shared_max_bytes_option():
    model = ir.serde.deserialize_model(constant_model(np.arange(4, dtype=np.int64), TensorProto.FLOAT, readers=2))
    rules = select_rules(load_rules(), [RULE])
    options = {"redundant-cast": {"fold_shared_max_bytes": 8}}
    assert apply_fixes(model, rules, FixPolicy(), rule_options=options) == ([], True)


@pytest.mark.parametrize(
    ("values", "to", "why"),
    [
        (np.array([np.nan, 1.0], np.float32), TensorProto.FLOAT16, "NaN payloads"),
        (np.array([3e9], np.float32), TensorProto.INT32, "out of range: undefined"),
        (np.array([-1.5], np.float32), TensorProto.UINT8, "negative to unsigned: undefined"),
        (np.array([np.inf], np.float64), TensorProto.INT64, "non-finite: undefined"),
        (np.array([1 + 2**-11 + 2**-40], np.float64), TensorProto.FLOAT16, "rounds differently through float32"),
        (np.array([2**62 + 2**38 + 1], np.int64), TensorProto.FLOAT, "rounds differently through float64"),
    ],
    ids=lambda p: p if isinstance(p, str) else None,
)
def test_ambiguous_conversions_are_not_folded(tmp_path, values, to, why):
    model = constant_model(values, to)
    [finding] = lint(model, tmp_path)
    assert finding.repair is None and "runtimes may convert some of its values differently" in finding.help, why
    assert fix_proto(model, RULE)[1] == []


def test_float8_is_not_folded(tmp_path):
    model = constant_model(np.array([1.0], np.float32), TensorProto.FLOAT8E4M3FN)
    [finding] = lint(model, tmp_path)
    assert finding.repair is None and "is not folded" in finding.help


def test_fixable_messages_declare_safe_and_lossy_ones_none():
    [rule] = select_rules(load_rules(), [RULE])
    declared = {key: message.fix for key, message in rule.meta.messages.items()}
    assert {key for key, fix in declared.items() if fix is FixSafety.SAFE} == FIXABLE
    assert {key for key, fix in declared.items() if fix is None} == set(declared) - FIXABLE


# --- real exports ------------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize(("name", "casts"), [("yolo", 6), ("bert_opset14", 5), ("bert_opset17", 5)])
def test_real_exports_lose_their_no_op_casts(tmp_path, name, casts):
    from fixtures import torch_exports

    path = torch_exports.path(name)
    original = onnx.load(path)
    result, fixes = fixed(original, torch_exports.sample_inputs(path))
    assert repairs(fixes) == {"same_dtype_index": casts}
    assert fixes[0].nodes_removed == casts
    assert Counter(ops(original))["Cast"] - Counter(ops(result))["Cast"] == casts
    assert lint(result, tmp_path) == []
    if name == "yolo":  # another image size: the removed Casts were no-ops on every shape
        feeds = {"images": RNG.standard_normal((2, 3, 96, 128)).astype(np.float32)}
        assert_bit_exact(original, result, feeds)
