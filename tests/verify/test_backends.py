"""Backends: registration and selection, ONNX Runtime fetching any tensor (also with external data), what a
verdict counts as passed, and native TensorRT: unavailable with its reason here, run for real where a GPU and
the `tensorrt` package are present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures.handmade import save
from graphdoctor.errors import GraphDoctorError
from graphdoctor.verify.backends import BACKENDS, get_backend
from graphdoctor.verify.compare import BackendVerdict, VerifyResult, verify_models
from graphdoctor.verify.metrics import PRESETS
from tests.verify.builders import UNKNOWN_OP, linear

X = np.array([[1.0, 2.0, -1.0, 0.5], [0.0, -3.0, 2.0, 1.0], [4.0, 0.25, 0.0, -2.0]], dtype=np.float32)
W = np.array([0.5, -1.0, 0.25, 2.0, 0.75, -0.5, 1.5, -0.25, 1.0, -2.0, 0.125, 0.5], dtype=np.float32).reshape(4, 3)
TENSORRT_MISSING = get_backend("tensorrt").unavailable_reason()
needs_tensorrt = pytest.mark.skipif(TENSORRT_MISSING is not None, reason=f"native TensorRT: {TENSORRT_MISSING}")


def test_tensorrt_backends_are_registered_with_honest_precision():
    assert {"onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "tensorrt-fp16"} <= set(BACKENDS)
    fp32, fp16 = get_backend("tensorrt"), get_backend("tensorrt-fp16")
    assert (fp32.name, fp32.computes_fp16) == ("tensorrt", False)
    assert (fp16.name, fp16.computes_fp16) == ("tensorrt-fp16", True)
    assert fp32.precision in (
        "TensorRT FP32 engine (TF32 off)",
        "TensorRT strongly typed engine: the model's own dtypes (TF32 off)",  # TensorRT 11
    )
    assert fp16.precision == "TensorRT FP16 engine (layers may still run in FP32 where TensorRT chooses)"


def test_unknown_backend_lists_the_choices():
    with pytest.raises(GraphDoctorError, match=r"unknown backend 'trt' \(choose from .*tensorrt, tensorrt-fp16"):
        get_backend("trt")


def test_a_skipped_backend_is_a_verdict_with_its_reason(tmp_path: Path):
    model = save(linear(), tmp_path / "linear.onnx")
    backends = [get_backend("onnxruntime-cpu"), get_backend("tensorrt")]
    result = verify_models(model, model, backends, {"x": X}, "test", PRESETS["fp32"])
    cpu, trt = result.verdicts
    assert (cpu.backend, cpu.status) == ("onnxruntime-cpu", "passed")
    assert trt.backend == "tensorrt" and trt.precision.startswith("TensorRT")
    if TENSORRT_MISSING:
        assert (trt.status, trt.reason) == ("skipped", TENSORRT_MISSING)
    assert result.passed


def test_onnxruntime_fetches_intermediate_tensors(tmp_path: Path):
    model = save(linear(), tmp_path / "linear.onnx")
    fetched = get_backend("onnxruntime-cpu").run(model, {"x": X}, outputs=["m"])
    assert list(fetched) == ["m"]
    np.testing.assert_allclose(fetched["m"], X @ W, rtol=1e-6)


def test_onnxruntime_fetches_intermediates_of_an_external_data_model(tmp_path: Path):
    folder = tmp_path / "external"
    folder.mkdir()
    path = folder / "linear.onnx"
    onnx.save_model(linear(), path, save_as_external_data=True, location="linear.data", size_threshold=0)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(elsewhere)  # the weights resolve beside the model, not in the working folder
        fetched = get_backend("onnxruntime-cpu").run(path, {"x": X}, outputs=["m", "y"])
    np.testing.assert_allclose(fetched["y"] - fetched["m"], np.broadcast_to([0.1, -0.2, 0.3], (3, 3)), rtol=1e-6)


def verdict(status: str) -> BackendVerdict:
    return BackendVerdict(status, "test precision", status)


@pytest.mark.parametrize(
    ("statuses", "passed"),
    [
        (["passed"], True),
        (["passed", "skipped"], True),
        (["passed", "failed"], False),
        (["passed", "error"], False),  # e.g. TensorRT's parser rejects the model: not deployable, not a pass
        (["skipped"], False),  # nothing ran
        (["error"], False),
    ],
)
def test_what_counts_as_passed(statuses, passed):
    result = VerifyResult(Path("a"), Path("b"), PRESETS["fp32"], {}, "test", [verdict(s) for s in statuses], 0.0)
    assert result.passed is passed


@needs_tensorrt
@pytest.mark.parametrize("name", ["tensorrt", "tensorrt-fp16"])
def test_tensorrt_agrees_with_onnxruntime(tmp_path: Path, name):
    backend = get_backend(name)
    if reason := backend.unavailable_reason():
        pytest.skip(reason)
    model = save(linear(), tmp_path / "linear.onnx")  # dynamic batch: a profile fixed to 3
    tolerance = PRESETS["fp16" if backend.computes_fp16 else "fp32"]
    result = verify_models(model, model, [backend], {"x": X}, "test", tolerance)
    [tensorrt] = result.verdicts
    assert tensorrt.status == "passed", tensorrt.reason
    assert tensorrt.outputs[0].shape == (3, 3)


@needs_tensorrt
def test_tensorrt_parser_rejection_is_an_error_verdict_with_its_messages(tmp_path: Path):
    reference, candidate = save(linear(), tmp_path / "linear.onnx"), save(UNKNOWN_OP, tmp_path / "unknown.onnx")
    result = verify_models(reference, candidate, [get_backend("tensorrt")], {"x": X}, "test", PRESETS["fp32"])
    [tensorrt] = result.verdicts
    assert tensorrt.status == "error"
    assert tensorrt.reason.startswith("TensorRT's ONNX parser rejects unknown.onnx: ")
    assert not result.passed


@needs_tensorrt
def test_tensorrt_marks_intermediate_tensors_by_name(tmp_path: Path):
    backend = get_backend("tensorrt")
    model = save(linear(), tmp_path / "linear.onnx")
    fetched = backend.run(model, {"x": X}, outputs=["m", "x", "no_such_tensor"])
    assert sorted(fetched) == ["m", "x"]
    np.testing.assert_allclose(fetched["m"], X @ W, rtol=1e-5)
    assert backend.unmarked == ("no_such_tensor",)


def test_auto_tolerance_is_chosen_per_backend(tmp_path: Path):
    """An FP16 backend in the same run must not loosen the FP32 backend's verdict."""
    from graphdoctor import api
    from tests.verify.builders import linear

    model = save(linear(), tmp_path / "linear.onnx")
    result = api.verify(model, backends=["onnxruntime-cpu", "fp16-emulation"], shapes={"x": (2, 4)})
    tolerances = {v.backend: v.tolerance.name for v in result.verdicts}
    assert tolerances == {"onnxruntime-cpu": "fp32", "fp16-emulation": "fp16"}
    explicit = api.verify(model, backends=["onnxruntime-cpu", "fp16-emulation"], preset="exact", shapes={"x": (2, 4)})
    assert {v.tolerance.name for v in explicit.verdicts} == {"exact"}
