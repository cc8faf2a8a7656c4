"""GD010 float64: sources of DOUBLE are reported once each, with what follows from them."""

from __future__ import annotations

from fixtures.handmade import model_from_text
from graphdoctor.rule import Severity

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'

CAST_TO_DOUBLE = model_from_text(f"""{HEADER}
g (float[N,4] x) => (double[N,4] y) <double[1] k = {{2.5}}> {{
    d = Cast<to=11>(x)
    y = Mul(d, k)
}}""")

DOUBLE_INPUT = model_from_text(f"""{HEADER}
g (double[N] x) => (float[N] y) {{
    y = Cast<to=1>(x)
}}""")

RANDOM_DOUBLE = model_from_text(f"""{HEADER}
g (float[N] x) => (float[N] y) {{
    r = RandomNormalLike<dtype=11>(x)
    y = Cast<to=1>(r)
}}""")

FLOAT32_ONLY = model_from_text(f"""{HEADER}
g (float[N,4] x) => (float[N,4] y) <float[1] k = {{2.5}}> {{
    y = Mul(x, k)
}}""")


def test_valid_float32_model(lint_proto):
    assert lint_proto(FLOAT32_ONLY, "GD010") == []


def test_cast_output_and_weight(lint_proto):
    findings = lint_proto(CAST_TO_DOUBLE, "GD010")
    by_id = {f.message_id: f for f in findings}
    assert set(by_id) == {"graph_io", "cast", "weight"}
    assert by_id["cast"].node == "Cast_0"
    assert by_id["cast"].severity == Severity.WARNING  # TensorRT computes it in float32
    assert "1 float64 value(s) computed from it" in by_id["cast"].message
    assert by_id["graph_io"].values == ("y",)
    assert by_id["weight"].severity == Severity.WARNING
    assert by_id["weight"].data["count"] == 1
    assert by_id["weight"].nbytes == 4  # float64 -> float32 halves 8 bytes


def test_double_input(lint_proto):
    [finding] = lint_proto(DOUBLE_INPUT, "GD010")
    assert finding.message_id == "graph_io"
    assert finding.data["kind"] == "input"
    assert "float64[N]" in finding.message


def test_dtype_attribute(lint_proto):
    [finding] = lint_proto(RANDOM_DOUBLE, "GD010")
    assert finding.message_id == "dtype_attr"
    assert finding.node == "RandomNormalLike_0"


def test_constant_of_shape_with_a_double_value(lint_proto):
    model = model_from_text(f"""{HEADER}
g (float[N] x) => (float[N] y) {{
    s = Shape(x)
    z = ConstantOfShape<value = double[1] {{3.0}}>(s)
    y = Cast<to=1>(z)
}}""")
    [finding] = lint_proto(model, "GD010")
    assert (finding.message_id, finding.node) == ("dtype_attr", "ConstantOfShape_1")
    assert "(a float64 value)" in finding.message


def test_a_cast_to_double_computing_an_output_is_kept_by_the_fix(lint_proto):
    """It is what keeps the float64 output float64 for callers: reported, with no repair offered."""
    model = model_from_text(f"""{HEADER}
g (float[N] x) => (double[N] y) {{
    y = Cast<to=11>(x)
}}""")
    by_id = {f.message_id: f for f in lint_proto(model, "GD010")}
    assert set(by_id) == {"graph_io", "cast"}
    assert by_id["cast"].repair is None and "keeps it: it makes the float64 output 'y'" in by_id["cast"].help


def test_constants_beyond_float32_range(lint_proto):
    model = model_from_text(f"""{HEADER}
g (float[N] x) => (float[N] y) <double[2] big = {{1.0, -1e300}}, double[1] k = {{2.0}}> {{
    d = Cast<to=11>(x)
    e = Max(d, big)
    f = Mul(e, k)
    y = Cast<to=1>(f)
}}""")
    by_id = {f.message_id: f for f in lint_proto(model, "GD010")}
    assert set(by_id) == {"cast", "weight", "weight_range"}
    assert by_id["weight_range"].values == ("big",) and by_id["weight_range"].data["extreme"] == "-1e+300"
    assert by_id["weight_range"].severity == Severity.ERROR
    assert by_id["weight"].values == ("k",)  # in range, but its computation stays float64 with 'big'
