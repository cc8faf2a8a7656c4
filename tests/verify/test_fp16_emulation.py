"""The fp16-emulation backend on real ONNX Runtime sessions: every tensor holds what FP16 storage would hold
(rounded, inf beyond 65504, 0 below 2^-25), constants are clamped as converters clamp them, the Cast pairs
survive ONNX Runtime's optimizer, and a failing verdict names the node where FP16 overflow starts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor import api
from graphdoctor.analysis.types import infer_types
from graphdoctor.verify.backends import get_backend
from graphdoctor.verify.fp16_emulation import PRECISION, Fp16EmulationBackend, emulate_fp16
from tests.conftest import exported_with_inputs

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
F32 = np.float32
TINY = 2.0**-24  # FP16's smallest subnormal

Run = Callable[..., tuple[int, str, str]]


def run_emulated(tmp_path: Path, proto: onnx.ModelProto, outputs=None, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    path = save(proto, tmp_path / "model.onnx")
    return Fp16EmulationBackend().run(path, inputs, outputs)


def test_registered_and_available():
    backend = get_backend("fp16-emulation")
    assert (backend.name, backend.computes_fp16, backend.precision) == ("fp16-emulation", True, PRECISION)
    assert backend.unavailable_reason() is None  # the self-test: x*x + 2^-9 with x = 1, 300 gives [1 + 2^-9, inf]


def test_x_squared_over_100_overflows_as_on_a_gpu(tmp_path: Path):
    """DESIGN.md's probe: ONNX Runtime's CPU provider returns 900 for an FP16 model; FP16 gives inf."""
    proto = model_from_text(f"""{HEADER}
g (float[3] x) => (float[3] y) <float c = {{100.0}}> {{
    t = Mul(x, x)
    y = Div(t, c)
}}""")
    out = run_emulated(tmp_path, proto, x=np.array([300.0, 2.0, -1.0], F32))
    expected = (np.float16(4.0) / np.float16(100.0), np.float16(1.0) / np.float16(100.0))
    assert np.isinf(out["y"][0]) and out["y"][1:].tolist() == [float(e) for e in expected]


def test_every_tensor_is_rounded_at_fp16s_exact_thresholds(tmp_path: Path):
    proto = model_from_text(f"""{HEADER}
g (float[6] x) => (float[6] y) {{
    y = Identity(x)
}}""")
    edge = float(np.nextafter(F32(2.0**-25), F32(1)))
    x = np.array([65519.0, 65520.0, 2.0**-25, edge, 1.0001, -70000.0], F32)
    out = run_emulated(tmp_path, proto, ["y", "y__gd_fp32"], x=x)
    assert out["y"].tolist() == [65504.0, np.inf, 0.0, TINY, 1.0, -np.inf]
    assert out["y"].dtype == np.float32
    assert out["y__gd_fp32"].tolist() == [65504.0, np.inf, 0.0, TINY, 1.0, -np.inf]  # its input was rounded


def test_intermediate_tensors_keep_their_names(tmp_path: Path):
    """Layer-wise comparison fetches `t` and gets what an FP16 model holds; `t__gd_fp32` is before rounding."""
    proto = model_from_text(f"""{HEADER}
g (float[2] x) => (float[2] y) <float k = {{1.0001}}> {{
    t = Add(x, x)
    y = Mul(t, k)
}}""")
    out = run_emulated(tmp_path, proto, ["t", "t__gd_fp32", "y"], x=np.array([1000.1, 3.0], F32))
    assert out["t"].tolist() == [2000.0, 6.0]  # 2000.2 is not an FP16 number; 2000 is
    assert out["t__gd_fp32"].tolist() == [2000.0, 6.0]  # computed from x rounded to 1000
    assert out["y"].tolist() == [2000.0, 6.0]  # k = 1.0001 is stored as 1.0


def test_constants_are_clamped_like_converters_clamp_them(tmp_path: Path):
    """1e5 → 65504 and 1e-10 → 2^-24 (ONNX Runtime's converter, TensorRT), not inf and 0; 0 and -inf stay."""
    proto = model_from_text(f"""{HEADER}
g (float[4] x) => (float[4] y, float[4] z) <float[4] w = {{100000.0, 1e-10, 0.0, -inf}}> {{
    y = Mul(x, w)
    c = Constant<value = float[4] {{-3.4e38, 2e-9, 1.0, 0.5}}>()
    z = Mul(x, c)
}}""")
    out = run_emulated(tmp_path, proto, x=np.ones(4, F32))
    assert out["y"].tolist() == [65504.0, TINY, 0.0, -np.inf]
    assert out["z"].tolist() == [-65504.0, TINY, 1.0, 0.5]


def rewritten(proto: onnx.ModelProto) -> tuple[ir.Model, object]:
    model = ir.serde.deserialize_model(proto)
    infer_types(model)
    return model, emulate_fp16(model)


def reader_of(model: ir.Model, op_type: str, index: int) -> str:
    node = next(n for n in model.graph if n.op_type == op_type)
    return node.inputs[index].name


def test_resize_scales_and_range_stay_fp32():
    """Inputs that must be float32 read the unrounded constant; ops without an FP16 form are not rounded."""
    proto = model_from_text("""<ir_version: 8, opset_import: ["" : 13]>
g (float[1,1,4,4] x) => (float[1,1,8,8] y, float[?] r)
  <float[4] scales = {1.0, 1.0, 2.0, 2.0}, float start = {0.0}, float limit = {3.0}, float delta = {1.0}> {
    y = Resize<mode = "nearest">(x, , scales)
    r = Range(start, limit, delta)
}""")
    model, emulation = rewritten(proto)
    assert reader_of(model, "Resize", 2) == "scales"
    assert reader_of(model, "Resize", 0) == "x__gd_rounded"
    assert [reader_of(model, "Range", i) for i in range(3)] == ["start", "limit", "delta"]
    assert emulation.kept_fp32 == 1 and "r" not in [r.tensor for r in emulation.rounded]
    assert [o.name for o in model.graph.outputs] == ["y", "r"]


def test_layernorm_statistics_outputs_are_not_rounded():
    """LayerNormalization's Mean/InvStdDev outputs are float32-only in its schema; Y is rounded."""
    proto = model_from_text(f"""{HEADER}
g (float[2,4] x) => (float[2,4] y, float[2,1] mean) <float[4] gamma = {{1.0, 1.0, 1.0, 1.0}}> {{
    y, mean = LayerNormalization<axis = -1>(x, gamma)
}}""")
    _, emulation = rewritten(proto)
    assert [r.tensor for r in emulation.rounded] == ["x__gd_rounded", "y"]
    assert emulation.kept_fp32 == 1


def test_subgraph_tensors_are_rounded(tmp_path: Path):
    proto = model_from_text(f"""{HEADER}
g (bool c, float[2] x) => (float[2] y) {{
    y = If(c) <then_branch = then_g () => (float[2] t) {{
        t = Mul(x, x)
    }}, else_branch = else_g () => (float[2] e) {{
        e = Identity(x)
    }}>
}}""")
    out = run_emulated(tmp_path, proto, c=np.array(True), x=np.array([300.0, 1000.1], F32))
    assert out["y"].tolist() == [np.inf, np.inf]
    out = run_emulated(tmp_path, proto, c=np.array(False), x=np.array([300.0, 1000.1], F32))
    assert out["y"].tolist() == [300.0, 1000.0]


def fp16_model() -> onnx.ModelProto:
    """What a converter keeping I/O in FP32 writes: Cast in, FLOAT16 weights and ops, one node kept in FP32
    ('big'), a FLOAT16 output 'h' and a float32 output 'y'."""
    proto = model_from_text(
        f"""{HEADER}
g (float[N,4] x) => (float[N,4] y, float16[N,4] h) {{
    xh = Cast<to = 10>(x)
    t = Mul(xh, w)
    kept = Cast<to = 1>(t)
    big = Mul(kept, kept)
    back = Cast<to = 10>(big)
    h = Sqrt(back)
    y = Cast<to = 1>(h)
}}""",
        check=False,
    )
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array([300, 2, 1, 0.5], np.float16), "w"))
    return proto


def test_an_fp16_model_rounds_its_fp16_tensors_only(tmp_path: Path):
    """FLOAT16 tensors are rounded: t = 300 * 300 overflows; float32 ones are not: 'big' holds 2000² = 4e6,
    no FP16 number, until the converter's Cast back to FLOAT16 overflows it too."""
    x = np.array([[300.0, 1000.1, 1.0, 3.0]], F32)
    out = run_emulated(tmp_path, fp16_model(), ["y", "h", "t", "big"], x=x)
    assert out["t"].tolist() == [[np.inf, 2000.0, 1.0, 1.5]]
    assert out["big"].tolist() == [[np.inf, 4e6, 1.0, 2.25]]
    assert out["h"].dtype == np.float16 and out["h"].tolist() == [[np.inf, np.inf, 1.0, 1.5]]
    assert out["y"].dtype == np.float32 and out["y"].tolist() == out["h"].tolist()


def test_an_fp16_models_overflow_is_located_where_the_cpu_provider_sees_none(tmp_path: Path):
    """DESIGN.md's probe as a converted model, against its FP32 original: (x*x)/100 with x = 300. ONNX
    Runtime CPU runs both FP16 ops in FP32 and drops the round trip between them (900, passes); emulated,
    x*x is inf in FP16 storage, and the Mul is named."""
    reference = model_from_text(f"""{HEADER}
g (float[N,2] x) => (float[N,2] y) <float c = {{100.0}}> {{
    t = Mul(x, x)
    y = Div(t, c)
}}""")
    candidate = model_from_text(
        f"""{HEADER}
g (float[N,2] x) => (float[N,2] y) {{
    xh = Cast<to = 10>(x)
    t = Mul(xh, xh)
    u = Div(t, c)
    y = Cast<to = 1>(u)
}}""",
        check=False,
    )
    candidate.graph.initializer.append(onnx.numpy_helper.from_array(np.array(100, np.float16), "c"))
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.array([[300.0, 2.0]], F32))
    result = api.verify(
        save(reference, tmp_path / "fp32.onnx"),
        save(candidate, tmp_path / "fp16.onnx"),
        backends=["onnxruntime-cpu", "fp16-emulation"],
        inputs=inputs,
    )
    cpu, emulated = result.verdicts
    assert cpu.status == "passed" and cpu.outputs[0].max_abs < 0.1  # 900: FP16 overflow is invisible there
    assert emulated.status == "failed"
    assert (emulated.details["fp16_overflow"]["node"], emulated.details["fp16_overflow"]["tensor"]) == ("Mul_1", "t")


def test_external_weights_are_referenced_not_copied(tmp_path: Path):
    """The rewritten model points at the original's data file: Python never holds the 4 MiB weight."""
    weight = np.random.default_rng(0).standard_normal((1024, 1024)).astype(F32)
    proto = model_from_text(
        f"""{HEADER}
g (float[N,1024] x) => (float[N,1024] y) {{
    y = MatMul(x, w)
}}""",
        check=False,
    )
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    path = tmp_path / "external.onnx"
    onnx.save_model(proto, path, save_as_external_data=True, location="external.onnx.data", size_threshold=1024)
    backend = Fp16EmulationBackend()
    x = np.random.default_rng(1).standard_normal((2, 1024)).astype(F32)
    out = backend.run(path, {"x": x})
    assert backend.prepare(path).proto.ByteSize() < 64 * 1024
    expected = (x.astype(np.float16).astype(F32) @ weight.astype(np.float16).astype(F32)).astype(np.float16)
    np.testing.assert_allclose(out["y"], expected.astype(F32), rtol=2e-3, atol=2e-3)


# --- the verdict --------------------------------------------------------------------------------------------

OVERFLOW_THEN_LAYERNORM = model_from_text(f"""{HEADER}
g (float[N,8] x) => (float[N,8] y) <float scale = {{100000.0}}, float[8] gamma = {{1, 1, 1, 1, 1, 1, 1, 1}}> {{
    big = Mul(x, scale)
    y = LayerNormalization<axis = -1>(big, gamma)
}}""")


def test_overflow_in_an_intermediate_fails_and_names_the_node(gd: Run, tmp_path: Path):
    """Done means (issue 3): x * 1e5 then LayerNormalization, verified against itself. FP32 renormalises
    the large values; in FP16 they are inf before the LayerNorm sees them."""
    path = save(OVERFLOW_THEN_LAYERNORM, tmp_path / "overflow.onnx")
    code, out, _ = gd("verify", path, "--backend", "onnxruntime-cpu", "--backend", "fp16-emulation", "--format", "json")
    assert code == 1
    cpu, emulated = json.loads(out)["verify"]["verdicts"]
    assert (cpu["backend"], cpu["status"]) == ("onnxruntime-cpu", "passed")
    assert "FP16 overflow is invisible" in cpu["precision"]
    assert (emulated["backend"], emulated["status"]) == ("fp16-emulation", "failed")
    overflow = emulated["details"]["fp16_overflow"]
    assert (overflow["node"], overflow["op_type"], overflow["tensor"]) == ("Mul_0", "Mul", "big")
    assert overflow["max_abs"] > 65504 and overflow["overflow"] > 0
    assert "FP16 overflow starts at Mul 'Mul_0' output 'big'" in emulated["reason"]


def test_text_report_names_the_node(gd: Run, tmp_path: Path):
    path = save(OVERFLOW_THEN_LAYERNORM, tmp_path / "overflow.onnx")
    code, out, _ = gd("verify", path, "--backend", "fp16-emulation")
    assert code == 1
    assert "fp16-emulation: FAILED (FP16 storage emulated on CPU" in out
    assert "FP16 overflow starts at Mul 'Mul_0' output 'big'" in out


def test_within_range_model_passes(tmp_path: Path):
    proto = model_from_text(f"""{HEADER}
g (float[N,8] x) => (float[N,8] y) <float scale = {{10.0}}, float[8] gamma = {{1, 1, 1, 1, 1, 1, 1, 1}}> {{
    big = Mul(x, scale)
    y = LayerNormalization<axis = -1>(big, gamma)
}}""")
    path = save(proto, tmp_path / "fine.onnx")
    result = api.verify(path, backends=["fp16-emulation"], shapes={"x": (4, 8)})
    [verdict] = result.verdicts
    assert verdict.status == "passed" and verdict.tolerance.name == "fp16"
    assert 0 < verdict.outputs[0].max_abs < 1e-2  # rounded, not bit-identical: the emulation did something
    assert verdict.details == {}


# --- real exports -------------------------------------------------------------------------------------------


@pytest.mark.torch
def test_resnet50_passes_at_the_fp16_preset(tmp_path: Path):
    path, inputs = exported_with_inputs("resnet50", tmp_path)
    result = api.verify(path, backends=["fp16-emulation"], inputs=inputs)
    [verdict] = result.verdicts
    [logits] = verdict.outputs
    assert verdict.status == "passed" and verdict.tolerance.name == "fp16"
    assert logits.top1_agreement == 1.0 and logits.cosine > 0.9999
    assert 1e-3 < logits.max_abs < 0.1  # FP16 rounding shows (measured 0.026), within tolerance


@pytest.mark.torch
@pytest.mark.parametrize("name", ["bert_opset14", "bert_opset17"])
def test_bert_with_eps_1e_12_passes(name: str, tmp_path: Path):
    """eps 1e-12 is clamped to 2^-24 like converters do (opset 14: a constant) or stays an attribute (17);
    the -3.4e38 mask fill becomes -65504: no NaN on padded rows."""
    path, inputs = exported_with_inputs(name, tmp_path)
    result = api.verify(path, backends=["fp16-emulation"], inputs=inputs)
    [verdict] = result.verdicts
    assert verdict.status == "passed"
    assert all(c.cand_nonfinite == 0 and c.cosine > 0.9999 for c in verdict.outputs)


def test_scales_from_a_constant_node_stay_fp32(tmp_path: Path):
    """torch exports Resize scales as a Constant node: 1.3333 is not an FP16 number, and rounding it would
    change the output's size."""
    proto = model_from_text("""<ir_version: 8, opset_import: ["" : 13]>
g (float[1,1,3,3] x) => (float[1,1,4,4] y) {
    scales = Constant<value = float[4] {1.0, 1.0, 1.3333334, 1.3333334}>()
    y = Resize<mode = "nearest">(x, , scales)
}""")
    model, _ = rewritten(proto)
    assert reader_of(model, "Resize", 2) == "scales__gd_fp32"
    out = run_emulated(tmp_path, proto, x=np.arange(9, dtype=F32).reshape(1, 1, 3, 3))
    assert out["y"].shape == (1, 1, 4, 4)
