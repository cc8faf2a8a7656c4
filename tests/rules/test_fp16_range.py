"""GD007 fp16-range: constants that overflow or flush in FP16; masks and eps constants are not its business."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures.handmade import model_from_text
from graphdoctor import api
from graphdoctor.rule import Severity

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def values(array) -> str:
    return ", ".join(repr(float(v)) for v in np.asarray(array, np.float32).reshape(-1))


def weighted(weight: np.ndarray) -> onnx.ModelProto:
    """y = x * w with `w` a float32 initializer."""
    n = weight.size
    return model_from_text(f"""{HEADER}
g (float[N,{n}] x) => (float[N,{n}] y) <float[{n}] w = {{{values(weight)}}}> {{
    y = Mul(x, w)
}}""")


def scaled(scale: float) -> onnx.ModelProto:
    """y = x * scale with `scale` a Constant node."""
    return model_from_text(f"""{HEADER}
g (float[N,4] x) => (float[N,4] y) {{
    scale = Constant<value = float {{{scale!r}}}>()
    y = Mul(x, scale)
}}""")


def masked_softmax(fill: float, via: str = "where") -> onnx.ModelProto:
    """Attention scores masked before Softmax: `Where(mask, fill, scores)` or `scores + (1 - mask) * fill`."""
    constant = f"fill = Constant<value = float {{{fill!r}}}>()"
    if via == "where":
        lines = [constant, "masked = Where(mask, fill, scores)"]
    else:
        lines = [
            "one = Constant<value = float {1.0}>()",
            constant,
            "m = Cast<to=1>(mask)",
            "inverted = Sub(one, m)",
            "bias = Mul(inverted, fill)",
            "masked = Add(scores, bias)",
        ]
    body = "".join(f"\n    {line}" for line in lines)
    return model_from_text(f"""{HEADER}
g (float[N,8] scores, bool[N,8] mask) => (float[N,8] y) {{{body}
    y = Softmax<axis=-1>(masked)
}}""")


# nonzero but tiny values in 1 of 1000 weights: below the 1% default
rng = np.random.default_rng(0)
SPARSE_TINY = rng.standard_normal(1000).astype(np.float32)
SPARSE_TINY[7] = 1e-9
MOSTLY_TINY = np.full(64, 1e-9, np.float32)
MOSTLY_TINY[:8] = 0.5
SOME_TINY = rng.standard_normal(100).astype(np.float32)
SOME_TINY[:5] = 1e-10

DECOMPOSED_LAYERNORM = model_from_text("""<ir_version: 8, opset_import: ["" : 14]>
g (float[N,8] x) => (float[N,8] y) {
    mean = ReduceMean<axes=[-1]>(x)
    d = Sub(x, mean)
    two = Constant<value = float {2.0}>()
    sq = Pow(d, two)
    var = ReduceMean<axes=[-1]>(sq)
    eps = Constant<value = float {1e-12}>()
    ve = Add(var, eps)
    sd = Sqrt(ve)
    y = Div(d, sd)
}""")

NEGATIVE_INFINITY = model_from_text(f"""{HEADER}
g (float[N,4] x) => (float[N,4] y) <float[1] floor = {{-inf}}> {{
    y = Max(x, floor)
}}""")

VALID = [
    pytest.param(weighted(rng.standard_normal(64).astype(np.float32)), id="normal-weights"),
    pytest.param(weighted(np.array([65504.0, -65504.0, 1.0], np.float32)), id="fp16-max-fits"),
    pytest.param(weighted(SPARSE_TINY), id="0.1%-tiny-weights"),
    pytest.param(scaled(1e-7), id="scale-1e-7-is-subnormal-not-zero"),
    pytest.param(masked_softmax(-10000.0), id="mask-fill-within-range"),
    pytest.param(DECOMPOSED_LAYERNORM, id="eps-constant-is-gd004s"),
    pytest.param(NEGATIVE_INFINITY, id="inf-stays-inf"),
]


@pytest.mark.parametrize("model", VALID)
def test_valid(lint_proto, model):
    assert lint_proto(model, "GD007") == []


def test_weight_beyond_fp16_range(lint_proto):
    [finding] = lint_proto(weighted(np.array([1.0, -1e5, 70000.0, 2.0], np.float32)), "GD007")
    assert (finding.message_id, finding.severity) == ("overflow", Severity.WARNING)
    assert finding.values == ("w",)
    assert (finding.data["count"], finding.data["worst"], finding.data["worst_value"]) == (2, "-1e+05", -1e5)
    assert "'w' float32[4] has 2 value(s) beyond FP16's range" in finding.message


def test_scalar_that_flushes_to_zero(lint_proto):
    [finding] = lint_proto(scaled(1e-10), "GD007")
    assert (finding.message_id, finding.severity) == ("flush_small", Severity.WARNING)
    assert finding.values == ("scale",)
    assert (finding.data["flushed"], finding.data["size"], finding.data["smallest"]) == (1, 1, "1e-10")


def test_constant_in_a_subgraph_is_located_there(lint_proto):
    model = model_from_text(f"""{HEADER}
g (bool c, float[4] x) => (float[4] y) {{
    y = If(c) <then_branch = then_g () => (float[4] t) {{
        s = Constant<value = float {{1e-10}}>()
        t = Mul(x, s)
    }}, else_branch = else_g () => (float[4] e) {{
        e = Identity(x)
    }}>
}}""")
    [finding] = lint_proto(model, "GD007")
    assert (finding.message_id, finding.values, finding.graph) == ("flush_small", ("s",), "If_0.then_branch")


def test_weight_mostly_flushed_is_a_warning(lint_proto):
    [finding] = lint_proto(weighted(MOSTLY_TINY), "GD007")
    assert (finding.message_id, finding.severity) == ("flush_weight", Severity.WARNING)
    assert (finding.data["flushed"], finding.data["nonzero"], finding.data["percent"]) == (56, 64, "87.5")


def test_weight_partly_flushed_is_an_info(lint_proto):
    [finding] = lint_proto(weighted(SOME_TINY), "GD007")
    assert (finding.message_id, finding.severity) == ("flush_weight", Severity.INFO)
    assert finding.data["flushed"] == 5


def test_flush_fraction_option(lint_proto):
    options = {"fp16-range": {"flush_fraction": 0.001}}
    [finding] = lint_proto(weighted(SPARSE_TINY), "GD007", rule_options=options)
    assert finding.data["flushed"] == 1


@pytest.mark.parametrize("via", ["where", "add"])
@pytest.mark.parametrize("fill", [float(np.finfo(np.float32).min), -1e9])
def test_attention_mask_fill_is_only_an_info(lint_proto, via, fill):
    [finding] = lint_proto(masked_softmax(fill, via), "GD007")
    assert (finding.message_id, finding.severity) == ("mask_fill", Severity.INFO)
    assert finding.values == ("fill",)


def test_large_negative_constant_off_the_softmax_path_is_an_overflow(lint_proto):
    model = model_from_text(f"""{HEADER}
g (float[N,4] x, int64[2] shape) => (float[N,4] y) {{
    fill = ConstantOfShape<value = float[1] {{-1e9}}>(shape)
    y = Add(x, fill)
}}""")
    [finding] = lint_proto(model, "GD007")
    assert finding.message_id == "overflow"
    assert "(the float32 fill of ConstantOfShape)" in finding.message


def test_external_weight_is_read_in_bounded_memory(tmp_path: Path):
    """48 MB of external float32 data, one overflowing value at the very end: found, without 48 MB of numpy."""
    weight = np.ones(12 * 1024 * 1024, np.float32)
    weight[-1] = 1e6
    model = model_from_text(
        f"""{HEADER}
g (float[{weight.size}] x) => (float[{weight.size}] y) {{
    y = Mul(x, w)
}}""",
        check=False,
    )
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    del weight
    path = tmp_path / "big.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="big.onnx.data", size_threshold=1024)
    del model
    tracemalloc.start()
    try:
        findings = api.lint(path, select=["GD007"]).findings
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(f.message_id, f.data["worst_value"]) for f in findings] == [("overflow", 1e6)]
    assert peak < 24 * 1024 * 1024  # a few MiB at a time, never the 48 MiB tensor


# --- real exports -------------------------------------------------------------------------------------------


def exported(name: str) -> Path:
    from fixtures import torch_exports

    return torch_exports.path(name)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["bert_opset14", "bert_opset17"])
def test_bert_attention_mask_is_recognised(name):
    [finding] = api.lint(exported(name), select=["GD007"]).findings
    assert (finding.message_id, finding.severity) == ("mask_fill", Severity.INFO)
    assert finding.data["worst"] == "-3.403e+38"


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "yolo", "yolo_bn_eps"])
def test_clean_exports(name):
    assert api.lint(exported(name), select=["GD007"]).findings == []


# --- activations, with sample inputs ------------------------------------------------------------------------

OVERFLOWING = model_from_text(f"""{HEADER}
g (float[N,8] x) => (float[N,8] y) <float k = {{1000.0}}, float[8] gamma = {{1, 1, 1, 1, 1, 1, 1, 1}}> {{
    big = Mul(x, k)
    bigger = Add(big, big)
    y = LayerNormalization<axis=-1>(bigger, gamma)
}}""")


SHRUNK = model_from_text(f"""{HEADER}
g (float[N,4] x) => (float[N,4] y) <float k = {{1e-6}}> {{
    small = Mul(x, k)
    y = Div(small, k)
}}""")


def with_inputs(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "inputs.npz"
    np.savez(path, **arrays)
    return path


def test_activation_overflow_is_reported_where_it_starts(lint_proto, tmp_path: Path):
    x = np.zeros((2, 8), np.float32)
    x[0, :3] = [100.0, -200.0, 1.0]
    [finding] = lint_proto(OVERFLOWING, "GD007", inputs=with_inputs(tmp_path, x=x))
    assert (finding.message_id, finding.severity, finding.node) == ("activation_overflow", Severity.WARNING, "Mul_0")
    assert finding.values == ("big",)
    assert (finding.data["count"], finding.data["size"], finding.data["worst_value"]) == (2, 16, -200000.0)
    assert finding.data["downstream_count"] == 1  # 'bigger' overflows because 'big' does
    assert "'big' float32[2,8] with 2 of 16 value(s) beyond FP16's range" in finding.message
    assert "measured in FP32 on ONNX Runtime CPU" in finding.message
    assert "1 tensor(s) computed from it overflow too" in finding.message


def test_activations_need_sample_inputs(lint_proto):
    assert lint_proto(OVERFLOWING, "GD007") == []


def test_generated_inputs_from_shapes(lint_proto):
    """Standard-normal inputs: |x| > 65.52 never happens at this size, so x * 1000 stays in range."""
    assert lint_proto(OVERFLOWING, "GD007", shapes={"x": (4, 8)}) == []


def test_activation_flushing_to_zero(lint_proto, tmp_path: Path):
    """x * 1e-6 then back: the product's values are at most 2e-8, which FP16 flushes to 0."""
    x = np.array([[0.01, 0.02, 0.001, 0.0]], np.float32)
    [finding] = lint_proto(SHRUNK, "GD007", inputs=with_inputs(tmp_path, x=x))
    assert (finding.message_id, finding.node, finding.severity) == ("activation_flush", "Mul_0", Severity.WARNING)
    assert (finding.data["flushed"], finding.data["nonzero"], finding.data["percent"]) == (3, 3, "100.0")
    assert "'small' float32[1,4], computed by Mul 'Mul_0', become 0 in FP16" in finding.message


def test_activation_flush_fraction_option(lint_proto, tmp_path: Path):
    x = np.array([[0.01, 0.01, 0.01, 1.0]], np.float32)  # 3 of 4 products flush: 75%, an info
    inputs = with_inputs(tmp_path, x=x)
    [finding] = lint_proto(SHRUNK, "GD007", inputs=inputs)
    assert (finding.message_id, finding.severity, finding.data["percent"]) == (
        "activation_flush",
        Severity.INFO,
        "75.0",
    )
    options = {"fp16-range": {"activation_flush_fraction": 0.8}}
    assert lint_proto(SHRUNK, "GD007", inputs=inputs, rule_options=options) == []


def test_saturating_attention_mask_activations_are_not_findings(lint_proto, tmp_path: Path):
    """The -3.4e38 fill overflows in the Where output too; only the constant's info is reported."""
    scores = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    mask = np.ones((2, 8), bool)
    mask[1, 4:] = False
    inputs = with_inputs(tmp_path, scores=scores, mask=~mask)
    findings = lint_proto(masked_softmax(float(np.finfo(np.float32).min)), "GD007", inputs=inputs)
    assert [f.message_id for f in findings] == ["mask_fill"]


@pytest.mark.torch
def test_bert_opset17_lint_shape_has_no_activation_findings(capsys):
    """`graphdoctor lint --shape` on a real export: the attention mask is an info, nothing overflows."""
    from graphdoctor.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["lint", str(exported("bert_opset17")), "--select", "GD007", "--shape", "input_ids:2x16"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "attention-mask fill" in out and "1 finding (1 info)" in out


@pytest.mark.torch
@pytest.mark.parametrize("name", ["bert_opset14", "bert_opset17", "resnet50", "yolo"])
def test_real_exports_on_sample_inputs(name, tmp_path: Path):
    """Padded BERT masks saturate on purpose; the CNNs stay in range: no activation findings."""
    from fixtures import torch_exports

    path = exported(name)
    inputs = with_inputs(tmp_path, **torch_exports.sample_inputs(path))
    findings = api.lint(path, select=["GD007"], inputs=inputs).findings
    assert not [f for f in findings if f.message_id.startswith("activation")]
