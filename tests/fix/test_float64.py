"""GD010 fix: float64 computations become float32 inside the graph, the I/O signature stays, and what cannot be
converted (values beyond float32's range, functions, custom ops, sequences) is left as it was, with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor import api
from tests.fix.conftest import fix_proto, run_ort

RULE = "GD010"
HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
DOUBLE = onnx.TensorProto.DOUBLE

# Every source of float64 at once: a DOUBLE input and output, a DOUBLE initializer and Constant, a Cast to
# DOUBLE, ConstantOfShape with a DOUBLE value, and an If whose branches compute in float64.
MIXED = model_from_text(f"""{HEADER}
g (float[N] x, double[N] w, bool c) => (double[N] y, float[N] z, double[N] u, int64[N] i)
    <double[1] k = {{2.5}}, double[2] edges = {{-inf, inf}}> {{
    half = Constant<value = double[1] {{0.5}}>()
    s = Shape(x)
    ones = ConstantOfShape<value = double[1] {{3.0}}>(s)
    d = Cast<to=11>(x)
    e = Add(d, half)
    f = Add(e, ones)
    g1 = Mul(f, w)
    y = Mul(g1, k)
    z = Cast<to=1>(y)
    u = If(c) <then_branch = t () => (double[N] a) {{ a = Mul(w, k) }},
               else_branch = o () => (double[N] b) {{
                   quarter = Constant<value = double[1] {{0.25}}>()
                   lo = ReduceMin(edges)
                   clipped = Max(w, lo)
                   b = Add(clipped, quarter) }}>
    i = Cast<to=7>(w)
}}""")
MIXED_FEEDS = {
    "x": np.array([1.1, 2.2, -3.3, 1e-3], np.float32),
    "w": np.array([0.1, 1e-3, 7.7, 2.9999999999]),
}


def fix_once(proto: onnx.ModelProto, **kwargs) -> tuple[onnx.ModelProto, dict[str, int], int]:
    """The fixed model, its repair counts and bytes saved; asserts that fixing it again changes nothing."""
    fixed, fixes = fix_proto(proto, RULE, unsafe=True, **kwargs)
    again, second = fix_proto(fixed, RULE, unsafe=True)
    assert second == [] and again == fixed
    return fixed, {k: v for f in fixes for k, v in f.repairs.items()}, sum(f.bytes_saved for f in fixes)


def lint(proto: onnx.ModelProto, tmp_path, name: str = "model.onnx"):
    return api.lint(save(proto, tmp_path / name), select=[RULE]).findings


def assert_close(original: onnx.ModelProto, fixed: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    """Same outputs within float32 rounding, with the same names, dtypes and shapes."""
    assert [o.name for o in original.graph.output] == [o.name for o in fixed.graph.output]
    for before, after in zip(run_ort(original, feeds), run_ort(fixed, feeds), strict=True):
        assert before.dtype == after.dtype and before.shape == after.shape
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)


def double_sources(proto: onnx.ModelProto) -> list[str]:
    """What still makes float64 inside the graph, subgraphs included: tensors, Casts and dtype attributes."""
    found = [t.name for t in proto.graph.initializer if t.data_type == DOUBLE]

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            for attr in node.attribute:
                is_tensor = attr.type == onnx.AttributeProto.TENSOR
                if (is_tensor and attr.t.data_type == DOUBLE) or (attr.name in ("to", "dtype") and attr.i == DOUBLE):
                    found.append(f"{node.name}.{attr.name}")
                elif attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(proto.graph)
    return found


def test_mixed_model_computes_in_float32_and_keeps_its_signature(tmp_path):
    fixed, repairs, saved = fix_once(MIXED)
    assert repairs == {"graph_io": 3, "cast": 1, "dtype_attr": 1, "weight": 1}
    assert (
        saved == 5 * 4
    )  # k, edges (2), half, quarter: 8 bytes each become 4 (ConstantOfShape's value is no initializer)
    signature = [(v.name, v.type.tensor_type.elem_type) for v in (*fixed.graph.input, *fixed.graph.output)]
    assert signature == [(v.name, v.type.tensor_type.elem_type) for v in (*MIXED.graph.input, *MIXED.graph.output)]
    # Only the casts back to the float64 outputs remain.
    assert sorted(double_sources(fixed)) == sorted(
        f"{n.name}.to" for n in fixed.graph.node if n.op_type == "Cast" and n.output[0] in ("y", "u")
    )
    for branch in (True, False):
        assert_close(MIXED, fixed, {**MIXED_FEEDS, "c": np.array(branch)})
    # The DOUBLE input is cast once for its readers; a Cast reading it keeps reading float64 (rounds once).
    [to_int] = [n for n in fixed.graph.node if n.output == ["i"]]
    assert list(to_int.input) == ["w"]
    assert run_ort(fixed, {**MIXED_FEEDS, "c": np.array(True)})[3].tolist() == [0, 0, 7, 2]
    # TensorRT still rejects the float64 I/O and the Casts back to it: reported, with no repair offered.
    after = lint(fixed, tmp_path)
    assert sorted(f.message_id for f in after) == ["cast", "cast", "graph_io", "graph_io", "graph_io"]
    assert all(f.repair is None for f in after)


def test_without_unsafe_fixes_nothing_changes():
    fixed, fixes = fix_proto(MIXED, RULE)
    assert fixes == [] and double_sources(fixed) == double_sources(MIXED)


def test_cast_to_double_feeding_an_output_is_cast_back_under_the_output_name(tmp_path):
    model = model_from_text(f"""{HEADER}
g (float[N,4] x) => (double[N,4] y) <double[1] k = {{2.5}}> {{
    d = Cast<to=11>(x)
    y = Mul(d, k)
}}""")
    fixed, repairs, _ = fix_once(model)
    assert repairs == {"graph_io": 1, "cast": 1, "weight": 1}
    assert [(n.op_type, list(n.output)) for n in fixed.graph.node] == [
        ("Cast", ["d"]),
        ("Mul", ["y_float32"]),
        ("Cast", ["y"]),
    ]
    assert_close(model, fixed, {"x": np.array([[0.1, 0.2, 0.3, 1e6]], np.float32)})
    assert sorted(f.message_id for f in lint(fixed, tmp_path)) == ["cast", "graph_io"]  # TensorRT still rejects y


def test_already_converted_io_offers_no_repair(tmp_path):
    """A DOUBLE input read only by a Cast to float32 is what the fix leaves: nothing to do, no repair offered."""
    model = model_from_text(f"""{HEADER}
g (double[N] x) => (float[N] y) {{
    y = Cast<to=1>(x)
}}""")
    [finding] = lint(model, tmp_path)
    assert finding.message_id == "graph_io" and finding.repair is None
    assert fix_proto(model, RULE, unsafe=True)[1] == []


def test_dtype_attributes_ask_for_float():
    model = model_from_text(f"""{HEADER}
g (float[N] x) => (float[N] y, float[3,3] eye32) {{
    r = RandomUniformLike<dtype=11, low=0.5, high=0.5>(x)
    e = Add(r, r)
    y = Cast<to=1>(e)
    z = Constant<value = float[3,3] {{0,0,0,0,0,0,0,0,0}}>()
    eye = EyeLike<dtype=11, k=1>(z)
    eye32 = Cast<to=1>(eye)
}}""")
    fixed, repairs, _ = fix_once(model)
    assert repairs == {"dtype_attr": 2} and double_sources(fixed) == []
    assert_close(model, fixed, {"x": np.zeros(5, np.float32)})


def test_loop_carried_float64_becomes_float32():
    model = model_from_text(f"""{HEADER}
g (float[N] x, int64 n) => (float[N] y) <double[1] k = {{1.1}}> {{
    d = Cast<to=11>(x)
    t = Constant<value = bool {{1}}>()
    out = Loop(n, t, d) <body = body (int64 i, bool cin, double[N] acc) => (bool cout, double[N] acc2) {{
        cout = Identity(cin)
        acc2 = Mul(acc, k)
    }}>
    y = Cast<to=1>(out)
}}""")
    fixed, repairs, _ = fix_once(model)
    assert repairs == {"cast": 1, "weight": 1}
    body = fixed.graph.node[2].attribute[0].g
    assert [v.type.tensor_type.elem_type for v in body.input[2:]] == [onnx.TensorProto.FLOAT]
    assert_close(model, fixed, {"x": np.array([1.0, -2.5], np.float32), "n": np.array(4)})


def test_constants_beyond_float32_range_are_left_with_their_computation(tmp_path):
    """1e300 would become inf: its region stays float64, with the reason in the help; an unrelated region converts."""
    model = model_from_text(f"""{HEADER}
g (float[N] x) => (float[N] y, float[N] y2) <double[1] big = {{-1e300}}, double[1] k = {{2.0}}> {{
    d = Cast<to=11>(x)
    e = Mul(d, k)
    y = Cast<to=1>(e)
    d2 = Cast<to=11>(x)
    f = Max(d2, big)
    y2 = Cast<to=1>(f)
}}""")
    findings = lint(model, tmp_path)
    [too_big] = [f for f in findings if f.message_id == "weight_range"]
    assert too_big.values == ("big",) and too_big.repair is None and "(such as -1e+300)" in too_big.message
    [stuck] = [f for f in findings if f.node == "Cast_3"]
    assert stuck.repair is None and "leaves it: 'big' holds -1e+300, beyond float32's range" in stuck.help
    fixed, repairs, _ = fix_once(model)
    assert repairs == {"cast": 1, "weight": 1}
    assert double_sources(fixed) == ["big", "Cast_3.to"]
    assert_close(model, fixed, {"x": np.array([1.0, -2.0], np.float32)})


def test_functions_are_left_alone_and_so_is_what_they_feed(tmp_path):
    model = model_from_text("""<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[N] x) => (float[N] y, float[N] y2) <double[1] k = {2.0}, double[1] k2 = {3.0}> {
    d = local.todouble(x)
    e = Mul(d, k)
    y = Cast<to=1>(e)
    d2 = Cast<to=11>(x)
    e2 = Mul(d2, k2)
    y2 = Cast<to=1>(e2)
}
<domain: "local", opset_import: ["" : 17]>
todouble (a) => (b) {
    a2 = Cast<to=11>(a)
    b = Identity(a2)
}""")
    findings = lint(model, tmp_path)
    [inside] = [f for f in findings if f.graph.startswith("function")]
    assert inside.repair is None and "does not retype functions" in inside.help
    [fed] = [f for f in findings if f.message_id == "weight" and f.values == ("k",)]
    assert fed.repair is None and "computed by local::todouble" in fed.help
    fixed, repairs, _ = fix_once(model)
    assert repairs == {"cast": 1, "weight": 1}
    assert [(n.op_type, list(n.attribute)) for n in fixed.functions[0].node] == [
        (n.op_type, list(n.attribute)) for n in model.functions[0].node
    ]
    assert sorted(t.name for t in fixed.graph.initializer if t.data_type == DOUBLE) == ["k"]
    assert_close(model, fixed, {"x": np.array([1.0, -2.0], np.float32)})


@pytest.mark.parametrize(
    ("reader", "reason"),
    [
        ("y = com.acme.Thing(e)", "by com.acme::Thing 'Thing_2', which it leaves as is"),
        ("s = SequenceConstruct(e, e)\n    y = ConcatFromSequence<axis=0>(s)", "sequences and optionals are not"),
    ],
)
def test_custom_ops_and_sequences_keep_their_float64(tmp_path, reader, reason):
    model = model_from_text(
        f"""<ir_version: 8, opset_import: ["" : 17, "com.acme" : 1]>
g (float[N] x) => (double[M] y) <double[1] k = {{2.0}}> {{
    d = Cast<to=11>(x)
    e = Mul(d, k)
    {reader}
}}""",
        check=False,
    )
    findings = [f for f in lint(model, tmp_path) if f.message_id != "graph_io"]
    assert {f.message_id for f in findings} == {"cast", "weight"}
    assert all(f.repair is None and reason in f.help for f in findings)


@pytest.mark.torch
def test_real_export_of_float64_preprocessing(tmp_path):
    """ImageNet normalization written with float64 tensors, as the TorchScript exporter writes it: Cast to
    DOUBLE, DOUBLE Constants, a DOUBLE output. Fixed, it runs in float32 with the same signature."""
    import warnings

    import torch
    from torch import nn

    class Preprocess(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
            normalized = (image.double() / 255.0 - mean) / std
            return self.conv(normalized.float()), normalized.sum(dim=(2, 3))

    torch.manual_seed(0)
    path = tmp_path / "preprocess.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Preprocess().eval(),
            (torch.zeros(1, 3, 8, 8),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["features", "sums"],
        )
    proto = onnx.load(path)
    fixed, repairs, saved = fix_once(proto)
    assert repairs == {"graph_io": 1, "cast": 1, "weight": 1} and saved == 7 * 4
    assert [n.output[0] for n in fixed.graph.node if n.op_type == "Cast" and n.attribute[0].i == DOUBLE] == ["sums"]
    feeds = {"image": np.random.default_rng(0).uniform(0, 255, (1, 3, 8, 8)).astype(np.float32)}
    for before, after in zip(run_ort(proto, feeds), run_ort(fixed, feeds), strict=True):
        assert before.dtype == after.dtype
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)  # float32 sums of 64 terms
    assert sorted(f.message_id for f in lint(fixed, tmp_path, "fixed.onnx")) == ["cast", "graph_io"]
