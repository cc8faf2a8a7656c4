"""`graphdoctor verify` end to end on real ONNX Runtime runs: exit codes (0 agree, 1 differ, 2 usage or input
error with one line on stderr), the JSON report, and backends skipped with their reasons."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from fixtures import torch_exports
from fixtures.handmade import save
from tests.verify.builders import UNKNOWN_OP, linear

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    return {
        "reference": save(linear(), tmp_path / "reference.onnx"),
        "same": save(linear(), tmp_path / "same.onnx"),
        "perturbed": save(linear(0.05), tmp_path / "perturbed.onnx"),
        "rounded": save(linear(1e-6), tmp_path / "rounded.onnx"),  # within fp32, not bit-identical
        "unknown_op": save(UNKNOWN_OP, tmp_path / "unknown_op.onnx"),
    }


def test_identical_models_exit_zero(gd: Run, models):
    code, out, err = gd("verify", models["reference"], models["same"])
    assert (code, err) == (0, "")
    assert "onnxruntime-cpu: PASSED" in out
    assert "PASSED on onnxruntime-cpu (passed)" in out


def test_perturbed_weight_exits_one(gd: Run, models):
    code, out, _ = gd("verify", models["reference"], models["perturbed"])
    assert code == 1
    assert "onnxruntime-cpu: FAILED" in out
    assert "FAIL y[1, 3]" in out


def test_preset_decides_what_a_tiny_change_is(gd: Run, models):
    assert gd("verify", models["reference"], models["rounded"])[0] == 0
    assert gd("verify", models["reference"], models["rounded"], "--preset", "exact")[0] == 1
    assert gd("verify", models["reference"], models["perturbed"], "--atol", "1")[0] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--inputs", "{bad_npz}"), "cannot read inputs"),
        (("--backend", "onnxruntime-tpu"), "unknown backend 'onnxruntime-tpu' (choose from"),
        (("--shape", "pixels:1x4"), "--shape names unknown input(s) ['pixels']"),
        (("--shape", "x:1xq"), "expected NAME:DIMS"),
        (("--torch", "{bad_npz}"), "--torch compares REFERENCE with the program it was exported from"),
        (("--preset", "fp8"), "Invalid value for '--preset'"),
    ],
)
def test_usage_and_input_errors_exit_two_with_one_line(gd: Run, models, tmp_path: Path, args, message):
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"PK\x03\x04 truncated")
    code, out, err = gd("verify", models["reference"], models["same"], *(a.format(bad_npz=bad_npz) for a in args))
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and err.startswith("graphdoctor: error: ")
    assert message in err


def test_missing_model_exits_two(gd: Run, tmp_path: Path):
    code, _, err = gd("verify", tmp_path / "nowhere.onnx")
    assert code == 2 and "nowhere.onnx: no such file" in err


def test_json_names_backend_and_precision_of_every_verdict(gd: Run, models):
    code, out, _ = gd(
        "verify", models["reference"], models["same"], "--format", "json",
        "--backend", "onnxruntime-cpu", "--backend", "onnxruntime-cuda", "--backend", "tensorrt",
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)["verify"]
    assert report["passed"] is True and report["reference_runner"] == "onnxruntime-cpu"
    assert report["tolerance"]["name"] == "fp32"
    assert report["inputs"] == {"x": {"dtype": "float32", "shape": [1, 4]}}
    verdicts = {v["backend"]: v for v in report["verdicts"]}
    assert list(verdicts) == ["onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"]
    assert all(v["precision"] for v in verdicts.values())
    assert verdicts["onnxruntime-cpu"]["status"] == "passed"
    assert verdicts["onnxruntime-cpu"]["outputs"][0]["name"] == "y"
    for skipped in ("onnxruntime-cuda", "tensorrt"):
        if verdicts[skipped]["status"] == "skipped":  # where no GPU is present
            assert verdicts[skipped]["reason"] and verdicts[skipped]["outputs"] == []


def test_json_of_a_failure_is_strict_json(gd: Run, models):
    code, out, _ = gd("verify", models["reference"], models["perturbed"], "--format", "json")
    assert code == 1
    report = json.loads(out)["verify"]  # strict: no NaN or Infinity tokens
    [verdict] = report["verdicts"]
    assert report["passed"] is False and verdict["status"] == "failed"
    assert verdict["reason"].startswith("1 of 1 outputs differ beyond fp32")
    [output] = verdict["outputs"]
    assert output["passed"] is False and output["max_abs"] > 1e-3 and output["reason"]


def test_no_backend_that_can_run_exits_two(gd: Run, models):
    code, _, err = gd("verify", models["reference"], "--backend", "onnxruntime-cuda", "--backend", "tensorrt")
    if code != 2:
        pytest.skip("a GPU backend ran here")
    assert err.startswith("graphdoctor: error: no backend could run: onnxruntime-cuda: ")
    assert len(err.strip().splitlines()) == 1


def test_a_backend_that_cannot_run_the_candidate_is_an_error_verdict(gd: Run, models):
    code, out, err = gd("verify", models["reference"], models["unknown_op"], "--format", "json")
    assert code == 2 and "no backend could run" in err
    [verdict] = json.loads(out)["verify"]["verdicts"]
    assert verdict["status"] == "error"
    assert verdict["reason"].startswith("onnxruntime-cpu cannot run the candidate model: ")
    assert "onnxruntime-cpu: onnxruntime-cpu" not in err  # the backend named once


def test_saved_inputs_replay_the_same_report(gd: Run, models, tmp_path: Path):
    saved = tmp_path / "inputs.npz"
    pair = ("verify", models["reference"], models["perturbed"], "--format", "json")
    first = gd(*pair, "--seed", "7", "--save-inputs", saved)
    again = gd(*pair, "--inputs", saved)
    assert first[0] == again[0] == 1
    outputs = [json.loads(run[1])["verify"]["verdicts"][0]["outputs"] for run in (first, again)]
    assert outputs[0] == outputs[1]


@pytest.mark.torch
def test_real_export_with_a_perturbed_weight_fails(gd: Run, tmp_path: Path):
    reference = torch_exports.path("training_mode")
    proto = onnx.load(reference)
    weight = next(init for init in proto.graph.initializer if init.name == "0.weight")
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) + np.float32(0.05), weight.name))
    candidate = save(proto, tmp_path / "perturbed.onnx")
    assert gd("verify", reference, reference)[0] == 0
    code, out, _ = gd("verify", reference, candidate, "--shape", "input:2x3x32x32")
    assert code == 1 and "FAIL logits[2, 10]" in out


def test_verify_imports_neither_torch_nor_tensorrt(models):
    """Without --torch, verify stays on the light path even when a TensorRT backend is asked for."""
    code = (
        "import sys; from graphdoctor.cli import main\n"
        "try: main(['verify', sys.argv[1], '--backend', 'onnxruntime-cpu', '--backend', 'tensorrt'])\n"
        "except SystemExit: pass\n"
        "print('HEAVY', [m for m in ('torch', 'tensorrt') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(models["reference"])], capture_output=True, text=True)
    assert "HEAVY []" in out.stdout


def test_string_outputs_are_compared_element_by_element(gd: Run, tmp_path: Path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"], name="id")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.STRING, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.STRING, [2])],
    )
    model = save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), tmp_path / "s.onnx")
    code, out, err = gd("verify", model, "--preset", "exact")
    assert (code, err) == (0, "") and "ok   y[2]" in out


def test_a_failed_run_is_one_line_without_onnxruntimes_own_log(tmp_path: Path):
    """ONNX Runtime logs a failed kernel in colour on stderr before raising; only our line may be there."""
    demo = Path(__file__).resolve().parents[2] / "examples" / "yolo_demo.onnx"
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from graphdoctor.cli import main; main()",
            "verify",
            str(demo),
            "--shape",
            "images:1x3x64x65",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("graphdoctor: error: no backend could run: ")
    assert "cannot run the reference model" in completed.stderr
    assert len(completed.stderr.splitlines()) == 1, completed.stderr
