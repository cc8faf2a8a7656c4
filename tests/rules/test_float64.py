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
    assert by_id["cast"].severity == Severity.ERROR
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
