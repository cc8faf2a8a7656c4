"""The benchmarks' floor (one plain ONNX Runtime session and one run, bench/measure.py) on a two-node model, and
the marking of issue 16's targets in bench/verify.py's and bench/fp16.py's tables on constructed numbers.

The script runs without GNU time here (the benches need it, the tests do not): its answer and the judge that
decides whether a floor run counts are what can break."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from fixtures.handmade import model_from_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fp16
import measure
import verify
from measure import Run, Series

TWO_NODES = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4] x, int64[1,4] ids) => (float[1,4] y) {
    r = Relu(x)
    f = Cast <to = 1> (ids)
    y = Add(r, f)
}"""


def run_session(tmp_path: Path, model_bytes: bytes, width: int = 4) -> tuple[int, list[str]]:
    """The floor's command as the benches run it, minus GNU time: exit status and output lines."""
    model, inputs = tmp_path / "model.onnx", tmp_path / "inputs.npz"
    model.write_bytes(model_bytes)
    np.savez(inputs, x=np.linspace(-1, 2, width, dtype=np.float32)[None], ids=np.ones((1, 4), np.int64))
    result = subprocess.run(
        measure.session_command(sys.executable, model, inputs), capture_output=True, text=True, timeout=60
    )
    return result.returncode, result.stdout.splitlines()


def series(wall_s: float, rss_mib: float, ok: bool = True) -> Series:
    return Series(["x"], [Run(wall_s, rss_mib, 0 if ok else 1, ok, "" if ok else "exit 1: boom")])


def test_floor_runs_a_model_and_counts(tmp_path: Path) -> None:
    returncode, lines = run_session(tmp_path, model_from_text(TWO_NODES).SerializeToString())
    assert returncode == 0
    assert measure.last_json(lines) == {"loads": True, "runs": True, "finite": True}
    assert measure.session_judge(returncode, lines) == ""


def test_floor_of_a_model_that_does_not_load_fails_with_the_reason(tmp_path: Path) -> None:
    returncode, lines = run_session(tmp_path, b"not an onnx model")
    assert returncode == 0  # the script answers; the judge decides
    reason = measure.session_judge(returncode, lines)
    assert reason.startswith("load: ") and "ONNXRuntimeError" in reason


def test_floor_that_loads_but_cannot_run_fails(tmp_path: Path) -> None:
    returncode, lines = run_session(tmp_path, model_from_text(TWO_NODES).SerializeToString(), width=3)
    assert measure.last_json(lines)["loads"] is True
    assert measure.session_judge(returncode, lines).startswith("run: ")


def test_ratio_and_target_marks() -> None:
    assert measure.median_ratio(series(8.0, 300), series(2.0, 150), "wall_s") == 4.0
    assert measure.judge_target(4.0, 4.0) == "met"
    assert measure.judge_target(4.01, 4.0) == "not met"
    assert measure.format_target(4.004, 4.0) == "4.00× (≤ 4×: not met)"  # shown rounded, judged exact
    assert measure.median_ratio(series(8.0, 300, ok=False), series(2.0, 150), "wall_s") is None
    assert measure.format_target(None, 2.0) == "— (≤ 2×: not measured)"


def test_verify_marks_layerwise_against_the_floor_per_model() -> None:
    floor, layerwise = (next(t for t in verify.TOOLS if t.key == key) for key in ("floor", "graphdoctor-layerwise"))
    rows = [
        verify.Row("fast", floor, series(1.0, 200)),
        verify.Row("fast", layerwise, series(3.9, 400)),
        verify.Row("heavy", floor, series(1.0, 200)),
        verify.Row("heavy", layerwise, series(4.5, 401)),
        verify.Row("alone", layerwise, series(2.0, 100)),
    ]
    lines = verify.render_targets(rows)
    by_model = {line.split()[1]: line for line in lines if "over its floor" in line}
    assert "wall 3.90× (≤ 4×: met), peak RSS 2.00× (≤ 2×: met)" in by_model["fast"]
    assert "wall 4.50× (≤ 4×: not met), peak RSS 2.00× (≤ 2×: not met)" in by_model["heavy"]  # 2.005 > 2
    assert "not measured" in by_model["alone"]


def test_fp16_marks_its_targets_only_where_they_apply() -> None:
    def row(model: str, converter: str, wall_s: float) -> fp16.Row:
        return fp16.Row(model, 1, converter, series(wall_s, 100))

    verified, no_verify, occ = (fp16.NAMES[key] for key in ("graphdoctor", "graphdoctor-noverify", "occ"))
    rows = [
        row("resnet50", fp16.FLOOR, 1.0),
        row("resnet50", verified, 4.0),
        row("resnet50", no_verify, 2.0),
        row("yolo", verified, 3.0),
        row("yolo", no_verify, 1.2),
        row("yolo", occ, 0.5),
    ]
    resnet50, yolo = (line.split(" | ") for line in fp16._ratio_lines(rows))
    assert resnet50[1] == "2.00× (≤ 2×: met)" and resnet50[3] == "—"  # no onnxconverter-common row
    assert resnet50[5] == "4.00×"  # verified / floor: no target, no mark
    assert yolo[1] == "2.50×"  # verified / --no-verify is no target on yolo
    assert yolo[3] == "2.40× (≤ 1×: not met)"
