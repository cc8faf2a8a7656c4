"""Metrics and tolerance presets on crafted arrays: what passes each preset, what fails and why, and the
numbers behind a verdict (non-finite values, near-zero references, top-1 agreement); integer tensors, sequences,
optionals and maps; and verdicts on real ONNX Runtime runs: a model a backend cannot run is an error, never a
failure, and sequence outputs compare element by element."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from graphdoctor.errors import GraphDoctorError
from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend
from graphdoctor.verify.compare import verify_models
from graphdoctor.verify.metrics import PRESETS, compare_arrays, compare_values, tolerance_for

EXACT, FP32, FP16 = PRESETS["exact"], PRESETS["fp32"], PRESETS["fp16"]
RNG = np.random.default_rng(0)
REF = RNG.standard_normal((4, 256)).astype(np.float32)


def scaled(factor: float) -> np.ndarray:
    """REF with a relative error of `factor` on every element."""
    return (REF * (1 + factor)).astype(np.float32)


def test_exact_passes_only_bit_identical():
    assert compare_arrays("y", REF, REF.copy(), EXACT).passed
    one_ulp = REF.copy()
    one_ulp[0, 0] = np.nextafter(one_ulp[0, 0], np.float32(np.inf))
    result = compare_arrays("y", REF, one_ulp, EXACT)
    assert not result.passed
    assert result.reason == "0.10% of elements outside atol 0 + rtol 0·|ref|"  # 1 of 1024, within fp32 tolerance
    assert result.max_abs > 0 and result.worst_index == (0, 0)


def test_exact_treats_nan_as_equal_to_itself():
    ref = np.array([1.0, np.nan, np.inf], dtype=np.float32)
    assert compare_arrays("y", ref, ref.copy(), EXACT).passed


def test_fp32_passes_reordered_arithmetic_and_fails_real_changes():
    assert compare_arrays("y", REF, scaled(1e-6), FP32).passed
    changed = compare_arrays("y", REF, scaled(1e-3), FP32)
    assert not changed.passed
    assert "of elements outside atol 1e-05 + rtol 0.0001" in changed.reason
    assert changed.max_rel == pytest.approx(1e-3, rel=0.01)


def test_fp16_rounding_passes_fp16_but_not_fp32():
    rounded = REF.astype(np.float16).astype(np.float32)
    assert compare_arrays("y", REF, rounded, FP16).passed
    assert not compare_arrays("y", REF, rounded, FP32).passed


def test_fp16_allows_one_percent_of_outliers():
    few, many = REF.copy(), REF.copy()
    few.ravel()[:5] += 0.5  # 0.5% of 1024 elements
    many.ravel()[:30] += 0.5  # 2.9%
    assert compare_arrays("y", REF, few, FP16).passed
    result = compare_arrays("y", REF, many, FP16)
    assert not result.passed and result.reason.startswith("2.93% of elements outside")


def test_cosine_catches_what_the_elementwise_allowance_lets_through():
    flipped = REF.copy()
    flipped.ravel()[:10] *= -40  # under 1% of elements, but they dominate the vector
    result = compare_arrays("y", REF, flipped, FP16)
    assert result.mismatch < FP16.max_mismatch
    assert not result.passed and result.reason.startswith("cosine similarity")


def test_candidate_overflow_to_inf_fails():
    overflow = REF.copy()
    overflow[0, 0] = np.inf
    result = compare_arrays("y", REF, overflow, FP16)
    assert not result.passed
    assert result.reason == "1 more non-finite values (inf/NaN) than the reference"
    assert (result.ref_nonfinite, result.cand_nonfinite, result.max_abs) == (0, 1, float("inf"))


def test_matching_non_finite_values_agree():
    ref = np.array([1.0, np.nan, np.inf, -np.inf], dtype=np.float32)
    same = compare_arrays("y", ref, ref.copy(), FP32)
    assert same.passed and same.ref_nonfinite == same.cand_nonfinite == 3 and np.isfinite(same.max_abs)
    signs = compare_arrays("y", ref, np.array([1.0, np.nan, -np.inf, -np.inf], dtype=np.float32), FP32)
    assert not signs.passed and signs.mismatch == 0.25  # +inf against -inf is a mismatch


def test_relative_error_is_not_blown_up_by_zeros():
    ref = np.array([0.0, 1.0, -2.0, 0.0, 3.0], dtype=np.float32)
    cand = ref + np.float32(1e-7)
    result = compare_arrays("y", ref, cand, FP32)
    assert result.passed
    assert result.max_rel < 1e-4  # 1e-7 / (0 + 1e-3·rms), not 1e-7 / 0


def test_all_zero_reference_against_float_noise_passes():
    """A cosine of (0, 0, 0) against (1e-9, ...) is 0: noise, when every element is within atol."""
    result = compare_arrays("y", np.zeros(16, np.float32), np.full(16, 1e-9, np.float32), FP32)
    assert result.passed and result.cosine == 0.0


def test_top1_agreement_only_for_classifier_scores():
    scores = RNG.standard_normal((4, 10)).astype(np.float32)
    swapped = scores.copy()
    row = swapped[0]
    row[[row.argmax(), row.argmin()]] = row[[row.argmin(), row.argmax()]]
    compared = compare_arrays("logits", scores, swapped, FP32)
    assert compared.top1_agreement == 0.75
    assert compared.top5_overlap == pytest.approx(1 - 1 / 4 / 5)  # row 0's best left its top 5, its worst came in
    for shape in [(4, 9), (2, 4, 10), (40,)]:  # too few classes, not [N, C]
        values = RNG.standard_normal(shape).astype(np.float32)
        result = compare_arrays("y", values, values, FP32)
        assert result.top1_agreement is None and result.top5_overlap is None


def test_shape_mismatch_fails_with_both_shapes():
    result = compare_arrays("y", REF, REF[:2], FP32)
    assert not result.passed and result.reason == "shape [2, 256] differs from the reference's [4, 256]"


def test_integer_outputs_compare_exactly_under_every_preset():
    ids = np.array([[3, 1, 2]], dtype=np.int64)
    assert compare_arrays("idx", ids, ids.copy(), FP16).passed
    result = compare_arrays("idx", ids, np.array([[3, 2, 1]], dtype=np.int64), FP16)
    assert not result.passed and result.mismatch == pytest.approx(2 / 3)


def test_explicit_numbers_override_a_preset():
    custom = tolerance_for("fp32", atol=1e-2)
    assert (custom.name, custom.atol, custom.rtol, custom.min_cosine) == ("custom", 1e-2, 1e-4, 0.99999)
    assert tolerance_for("fp16") is FP16
    assert compare_arrays("y", REF, REF + np.float32(5e-3), custom).passed
    assert FP16.describe() == "fp16 (atol 0.01, rtol 0.01, cosine >= 0.999, up to 1% of elements outside)"
    assert EXACT.describe() == "exact (bit-identical)"
    with pytest.raises(GraphDoctorError, match="unknown tolerance preset 'fp8'"):
        tolerance_for("fp8")


# --- values that are not float tensors ----------------------------------------------------------------------


def test_integer_and_bool_tensors_say_how_many_elements_differ():
    ids = np.arange(16384, dtype=np.int64)
    moved = ids.copy()
    moved[::30] += 1
    result = compare_values("ids", ids, moved, FP16)
    assert not result.passed and result.kind == "integer tensor"
    assert result.reason == "integer tensor: 547 of 16384 elements differ (exact comparison)"
    mask = compare_values("mask", np.array([True, False]), np.array([True, True]), FP16)
    assert mask.reason == "bool tensor: 1 of 2 elements differ (exact comparison)"
    narrowed = compare_values("ids", ids, ids.astype(np.int32), FP16)  # an output's dtype is part of its contract
    assert not narrowed.passed and narrowed.reason == "integer tensor: dtype int32 differs from the reference's int64"


def test_sequences_compare_element_by_element():
    ref = [REF[:2], np.arange(3, dtype=np.int64)]
    assert compare_values("seq", ref, [REF[:2].copy(), np.arange(3, dtype=np.int64)], FP16).passed
    changed = compare_values("seq", ref, [REF[:2], np.array([0, 1, 3], dtype=np.int64)], FP16)
    assert not changed.passed and changed.kind == "sequence" and changed.shape == (2,)
    assert changed.reason == (
        "1 of 2 sequence elements differ; first, seq[1]: integer tensor: 1 of 3 elements differ (exact comparison)"
    )
    assert changed.worst_index == (1, 2)
    shorter = compare_values("seq", ref, ref[:1], FP16)
    assert not shorter.passed and shorter.reason == "a sequence of 1 elements; the reference's has 2"


def test_optionals_and_maps_compare_by_presence_and_keys():
    assert compare_values("opt", None, None, FP16).passed
    empty = compare_values("opt", REF, None, FP16)
    assert (
        not empty.passed
        and empty.reason == "the candidate's value is an empty optional, the reference's a float tensor"
    )
    assert compare_values("m", {1: np.float32(0.5)}, {1: np.float32(0.5)}, FP16).passed
    keys = compare_values("m", {1: np.float32(0.5)}, {2: np.float32(0.5)}, FP16)
    assert not keys.passed and keys.reason == "2 keys are in only one of the two maps"


# --- verify_models: a backend that cannot run a model is an error, not a failure ----------------------------


def layer_norm(scale_dtype: int) -> onnx.ModelProto:
    """LayerNormalization of a float32 input with a scale of `scale_dtype`: float16 is the type clash ONNX
    Runtime refuses to load (T bound to float and float16); built without the checker, as a buggy converter would."""
    scale = onnx.numpy_helper.from_array(np.ones(4, onnx.helper.tensor_dtype_to_np_dtype(scale_dtype)), "scale")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("LayerNormalization", ["x", "scale"], ["y"], name="ln")],
        "ln",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
        [scale],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def clash(tmp_path: Path) -> tuple[Path, Path]:
    good, bad = tmp_path / "good.onnx", tmp_path / "clash.onnx"
    onnx.save_model(layer_norm(onnx.TensorProto.FLOAT), good)
    onnx.save_model(layer_norm(onnx.TensorProto.FLOAT16), bad)
    return good, bad


def test_a_candidate_the_backend_cannot_run_is_an_error_verdict(clash: tuple[Path, Path]):
    good, bad = clash
    inputs = {"x": REF[:2, :4].copy()}
    result = verify_models(good, bad, [OnnxruntimeBackend("onnxruntime-cpu")], inputs, "test", FP16)
    (verdict,) = result.verdicts
    assert (verdict.status, verdict.cannot_run, verdict.ran, result.passed) == ("error", "candidate", False, False)
    assert verdict.reason.startswith("onnxruntime-cpu cannot run the candidate model: [ONNXRuntimeError]")
    assert "LayerNormalization) bound to different types (tensor(float) and tensor(float16)" in verdict.reason
    assert "cannot run clash.onnx" not in verdict.reason  # the runner's own wording is not repeated


def test_a_reference_the_oracle_cannot_run_is_an_error_verdict_not_an_exception(clash: tuple[Path, Path]):
    good, bad = clash
    inputs = {"x": REF[:2, :4].copy()}
    result = verify_models(bad, good, [OnnxruntimeBackend("onnxruntime-cpu")], inputs, "test", FP16)
    (verdict,) = result.verdicts
    assert (verdict.status, verdict.cannot_run, result.passed) == ("error", "reference", False)
    assert verdict.reason.startswith("onnxruntime-cpu cannot run the reference model: [ONNXRuntimeError]")


def test_sequence_outputs_are_compared_element_by_element_on_onnx_runtime(tmp_path: Path):
    def split(offset: float) -> onnx.ModelProto:
        """y = SplitToSequence(x + [0, 0, 0, offset]) along axis 0, in 2-row parts: only the last part moves."""
        shift = onnx.numpy_helper.from_array(np.array([[0.0], [0.0], [0.0], [offset]], np.float32), "shift")
        nodes = [
            onnx.helper.make_node("Add", ["x", "shift"], ["shifted"], name="add"),
            onnx.helper.make_node("SplitToSequence", ["shifted", "parts"], ["y"], name="split", axis=0),
        ]
        parts = onnx.numpy_helper.from_array(np.array([2, 2], np.int64), "parts")
        sequence = onnx.helper.make_value_info(
            "y", onnx.helper.make_sequence_type_proto(onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, None))
        )
        x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 256])
        graph = onnx.helper.make_graph(nodes, "split", [x], [sequence], [shift, parts])
        return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)

    paths = []
    for name, offset in (("ref", 0.0), ("same", 1e-4), ("moved", 0.5)):
        paths.append(tmp_path / f"{name}.onnx")
        onnx.save_model(split(offset), paths[-1])
    backend, inputs = OnnxruntimeBackend("onnxruntime-cpu"), {"x": REF}
    same = verify_models(paths[0], paths[1], [backend], inputs, "test", FP16).verdicts[0]
    assert same.status == "passed" and same.outputs[0].kind == "sequence" and same.outputs[0].max_abs > 0
    moved = verify_models(paths[0], paths[2], [backend], inputs, "test", FP16).verdicts[0]
    assert moved.status == "failed"
    assert moved.outputs[0].reason.startswith("1 of 2 sequence elements differ; first, y[1]: ")
