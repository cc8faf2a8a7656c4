"""A GPU verdict is only given by a backend that ran on the GPU: what can be checked without one.

On this machine: the profile parser on a real profiled ONNX Runtime run, native output kept off stdout, the
provider lists and precision texts, and compare's handling of a backend that finds out while running that it
cannot keep its word, or cannot run the original either. With onnxruntime-gpu (the real 255 MB wheel, in a
venv of its own: `make gpu-fallback-venv`, or GRAPHDOCTOR_ORT_GPU_PYTHON naming a python that has it), the
whole CLI on a machine without a GPU: no GPU backend is reported as having run, each says why, and
`--format json` stays JSON; with a second ONNX Runtime distribution's metadata beside it, the mix is named.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fixtures.handmade import save
from graphdoctor.verify.backends import Backend, BackendUnavailable, get_backend, gpu
from graphdoctor.verify.backends.onnxruntime import _PROVIDERS, OnnxruntimeBackend, _provider_list
from graphdoctor.verify.compare import verify_models
from graphdoctor.verify.metrics import PRESETS
from tests.verify.builders import UNKNOWN_OP, linear

ROOT = Path(__file__).resolve().parents[2]
X = np.arange(12, dtype=np.float32).reshape(3, 4)
# ONNX Runtime 1.31.1's own lines, as captured from onnxruntime-gpu on this machine (no CUDA libraries)
TENSORRT_BANNER = """*************** EP Error ***************
EP Error /onnxruntime_src/onnxruntime/python/onnxruntime_pybind_state.cc:729 void onnxruntime::python::\
RegisterTensorRTPluginsAsCustomOps(PySessionOptions&, const onnxruntime::ProviderOptions&) Please install \
TensorRT libraries as mentioned in the GPU requirements page, make sure they're in the PATH or LD_LIBRARY_PATH, \
and that your GPU is supported.
 when using [('TensorrtExecutionProvider', {'trt_fp16_enable': 'False'}), 'CUDAExecutionProvider']
Falling back to ['CUDAExecutionProvider', 'CPUExecutionProvider'] and retrying.
****************************************"""
LOADER_ERROR = (
    "2026-12-02 19:24:20.411857490 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] "
    "/onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 onnxruntime::Provider& "
    "onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library "
    "libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file"
)


def test_kernel_placement_reads_a_real_profile(tmp_path: Path):
    model = save(linear(), tmp_path / "linear.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # MatMul and Add stay two
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "run")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    for _ in range(2):  # a node run twice counts once
        session.run(None, {"x": X})
    counts = gpu.kernel_placement(Path(session.end_profiling()))
    assert counts == {"CPUExecutionProvider": 2}
    assert gpu.placement_text(counts) == "2 kernels: 2 on CPU"


def test_placement_text_names_the_providers_largest_first():
    counts = {"CPUExecutionProvider": 2, "CUDAExecutionProvider": 50, "TensorrtExecutionProvider": 1}
    assert gpu.placement_text(Counter(counts)) == ("53 kernels: 50 on CUDA, 2 on CPU, 1 on TensorRT")


def test_native_output_never_reaches_stdout(capfd):
    with gpu.native_output_to_log("a provider") as native:
        os.write(1, b"*** EP Error *** Falling back\n")
        os.write(2, b"warning on stderr\n")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert native.text.splitlines() == ["*** EP Error *** Falling back", "warning on stderr"]
    os.write(1, b"after\n")  # the descriptors are back
    assert capfd.readouterr().out == "after\n"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (TENSORRT_BANNER, "Please install TensorRT libraries as mentioned in the GPU requirements page, make sure"),
        (LOADER_ERROR, "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13"),
        ("all fine\n", ""),
    ],
)
def test_failure_line_keeps_what_failed_without_source_locations(text, line):
    assert gpu.failure_line(text).startswith(line)


def test_gpu_providers_ask_for_full_fp32_and_list_their_fallbacks():
    cuda, tensorrt = _PROVIDERS["onnxruntime-cuda"], _PROVIDERS["onnxruntime-tensorrt"]
    assert _provider_list(cuda) == [("CUDAExecutionProvider", {"use_tf32": "0"})]
    (name, options), fallback = _provider_list(tensorrt)
    assert (name, options["trt_fp16_enable"], fallback) == (
        "TensorrtExecutionProvider",
        "False",
        "CUDAExecutionProvider",
    )
    assert options["trt_timing_cache_enable"] == "True" and Path(options["trt_timing_cache_path"]).is_dir()
    assert "trt_engine_cache_enable" not in options  # ONNX Runtime's engine cache is not keyed on the weights
    assert "TF32 off" in cuda.precision and "TF32 off" in get_backend("onnxruntime-tensorrt").precision
    assert get_backend("onnxruntime-cuda").on_gpu and not get_backend("onnxruntime-cpu").on_gpu


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu here")
def test_gpu_providers_of_the_cpu_wheel_are_unavailable_with_the_reason():
    reason = get_backend("onnxruntime-cuda").unavailable_reason()
    assert reason.startswith("CUDAExecutionProvider is not in this onnxruntime build")


class _FallsBackToCpu(Backend):
    """What ONNX Runtime's CUDA provider does without a GPU: creates the session on the CPU."""

    name, precision, on_gpu = "gpu-that-fell-back", "the model's dtypes, on the GPU", True

    def run(self, model, inputs, outputs=None):
        raise BackendUnavailable("ONNX Runtime created the session without CUDAExecutionProvider")


class _GpuOnCpu(Backend):
    """A GPU backend's interface over ONNX Runtime CPU: what it cannot run, it cannot run for real."""

    name, precision, on_gpu = "gpu-stand-in", "the model's dtypes", True

    def run(self, model, inputs, outputs=None):
        return OnnxruntimeBackend("onnxruntime-cpu").run(model, inputs, outputs)


def test_a_backend_that_fell_back_is_skipped_with_its_reason_never_passed(tmp_path: Path):
    model = save(linear(), tmp_path / "linear.onnx")
    result = verify_models(
        model, model, [get_backend("onnxruntime-cpu"), _FallsBackToCpu()], {"x": X}, "t", PRESETS["fp32"]
    )
    cpu, fell_back = result.verdicts
    assert cpu.status == "passed"
    assert (fell_back.status, fell_back.outputs) == ("skipped", [])
    assert "without CUDAExecutionProvider" in fell_back.reason


def test_a_gpu_backend_that_cannot_run_the_original_either_judges_neither(tmp_path: Path):
    """The candidate holds an op the backend cannot run, and so does the original: not a fault of the change."""
    reference, candidate = save(UNKNOWN_OP, tmp_path / "a.onnx"), save(UNKNOWN_OP, tmp_path / "b.onnx")
    result = verify_models(
        reference, candidate, [_GpuOnCpu()], {"x": X}, "t", PRESETS["fp32"], reference_outputs={"y": X[:, :3]}
    )
    [verdict] = result.verdicts
    assert verdict.status == "skipped"
    assert "cannot run the original model either" in verdict.reason


def test_a_gpu_backend_that_runs_the_original_but_not_the_candidate_fails_it(tmp_path: Path):
    reference, candidate = save(linear(), tmp_path / "a.onnx"), save(UNKNOWN_OP, tmp_path / "b.onnx")
    [verdict] = verify_models(reference, candidate, [_GpuOnCpu()], {"x": X}, "t", PRESETS["fp32"]).verdicts
    assert (verdict.status, verdict.cannot_run) == ("error", "candidate")


# --- the real onnxruntime-gpu wheel on this CPU machine (opt-in: it is 255 MB) ---------------------------------


def _gpu_python() -> str | None:
    named = os.environ.get("GRAPHDOCTOR_ORT_GPU_PYTHON")
    default = ROOT / ".cache" / "ort-gpu-venv" / "bin" / "python"
    return named or (str(default) if default.exists() else None)


GPU_PYTHON = _gpu_python()
needs_ort_gpu = pytest.mark.skipif(GPU_PYTHON is None, reason="no python with onnxruntime-gpu (make gpu-fallback-venv)")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [GPU_PYTHON, "-m", "graphdoctor", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=300)


@needs_ort_gpu
def test_ort_gpu_without_a_gpu_reports_no_gpu_backend_as_run():
    model = "examples/yolo_demo.onnx"
    backends = ["--backend", "onnxruntime-cpu", "--backend", "onnxruntime-cuda", "--backend", "onnxruntime-tensorrt"]
    run = _cli("verify", model, *backends, "--shape", "images:1x3x320x320", "--format", "json")
    document = json.loads(run.stdout)  # stays JSON: the TensorRT provider's banner went to the log
    verdicts = {v["backend"]: v for v in document["verify"]["verdicts"]}
    assert verdicts["onnxruntime-cpu"]["status"] == "passed"
    for name in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        assert verdicts[name]["status"] == "skipped"
        assert "could not start" in verdicts[name]["reason"] and "fell back to CPU" in verdicts[name]["reason"]
        assert verdicts[name]["outputs"] == []
    assert run.returncode == 0 and "EP Error" not in run.stdout


@needs_ort_gpu
def test_ort_gpu_fix_fp16_gate_runs_no_gpu_backend(tmp_path: Path):
    out = tmp_path / "yolo.fp16.onnx"
    run = _cli(
        "fix", "examples/yolo_demo.onnx", "--fp16", "-o", str(out), "--shape", "images:1x3x320x320", "--format", "json"
    )
    verdicts = json.loads(run.stdout)["fix"]["verify"]["verdicts"]
    assert run.returncode == 0 and out.exists()
    assert {v["backend"] for v in verdicts if v["status"] in ("passed", "failed")} <= {
        "fp16-emulation",
        "onnxruntime-cpu",
    }


def test_cpu_machine_python_is_this_one():
    """The opt-in tests run in a python of their own; this one has the CPU wheel only (not both)."""
    assert len(gpu.installed_versions(gpu.ORT_DISTRIBUTIONS)) == 1, sys.executable


def test_onnxruntime_gpu_metadata_beside_the_cpu_wheel_is_named(tmp_path: Path):
    """What pip leaves after `pip install onnxruntime` and `pip install onnxruntime-gpu` into one environment:
    two dist-infos beside one onnxruntime package folder (the files of the one installed last). The GPU
    backends say so instead of probing an accident. Laid out in a folder of its own, first on the path, with
    this environment's real onnxruntime package linked in."""
    import onnxruntime

    site = tmp_path / "site"
    for name, version in (("onnxruntime", "1.32.0"), ("onnxruntime_gpu", "1.31.1")):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
    (site / "onnxruntime").symlink_to(Path(onnxruntime.__file__).parent)
    env = {**os.environ, "PYTHONPATH": str(site)}
    command = [
        sys.executable,
        "-m",
        "graphdoctor",
        "verify",
        "examples/yolo_demo.onnx",
        "--shape",
        "images:1x3x320x320",
    ]
    backends = ["--backend", "onnxruntime-cpu", "--backend", "onnxruntime-cuda", "--format", "json"]
    run = subprocess.run([*command, *backends], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    cpu, cuda = json.loads(run.stdout)["verify"]["verdicts"]
    assert (run.returncode, cpu["status"], cuda["status"]) == (0, "passed", "skipped")
    assert f"onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1 are installed together in {site}" in cuda["reason"]
    assert "pip uninstall" in cuda["reason"]


def test_two_runtimes_in_different_folders_are_no_conflict():
    """A CPU wheel in the system's site-packages under a venv's onnxruntime-gpu: the venv's is imported."""
    assert gpu.broken_stack_reason("CUDAExecutionProvider") is None  # this environment: one runtime


def test_tensorrt_provider_precision_says_whether_tf32_is_off(monkeypatch):
    """The TensorRT provider has no TF32 option: NVIDIA_TF32_OVERRIDE=0 is set unless the user set it."""
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert "TF32 off through NVIDIA_TF32_OVERRIDE=0" in OnnxruntimeBackend("onnxruntime-tensorrt").precision
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0"
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "1")
    assert "TF32 as NVIDIA_TF32_OVERRIDE=1 allows" in OnnxruntimeBackend("onnxruntime-tensorrt").precision
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    OnnxruntimeBackend("onnxruntime-cpu")
    assert "NVIDIA_TF32_OVERRIDE" not in os.environ  # a CPU run leaves CUDA's environment alone


def test_tensorrt_workspace_option_reaches_the_backend_environment(gd, monkeypatch):
    monkeypatch.delenv("GRAPHDOCTOR_TENSORRT_WORKSPACE_MIB", raising=False)
    command = ["verify", "examples/yolo_demo.onnx", "--shape", "images:1x3x320x320", "--tensorrt-workspace", "512"]
    assert gd(*command)[0] == 0
    assert os.environ["GRAPHDOCTOR_TENSORRT_WORKSPACE_MIB"] == "512"
    assert gd(*command[:-1], "0")[0] == 2  # at least 1 MiB
