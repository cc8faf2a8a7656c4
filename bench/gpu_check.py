"""The GPU check: one command that proves, on a machine with an NVIDIA GPU, what the CPU machines cannot.

    make gpu-check                        # a venv of its own with '.[gpu,tensorrt]', then this script
    make gpu-check WHEELS=/path/to/wheels # the same offline: the extras from that folder of wheels
    python bench/gpu_check.py             # in an environment that has the GPU stack already

Steps, each under what is left of a 9-minute budget (--budget), so the whole check ends within 10 minutes on
an H100/H200 even when an engine build hangs:
1. The environment: the GPU (nvidia-smi), ONNX Runtime and its providers, TensorRT, and each GPU backend's
   availability with its reason.
2. The GPU tests (tests/verify: the backends, native TensorRT, the GPU-honesty checks), with a time limit.
3. resnet50 (torchvision, random weights; built here when missing, torch being on the GPU image) and the
   YOLO model (the ultralytics fixture where ultralytics is installed, else examples/yolo_demo.onnx), each
   FP32 as exported and FP16 as `graphdoctor fix --fp16 --no-verify` writes it, verified against the FP32
   original on onnxruntime-cuda, onnxruntime-tensorrt and native tensorrt: verdict, placement (kernels per
   provider, or TensorRT's layer precisions), the precision the backend states, and the wall time.

Prints a Markdown table and writes it to bench/out/gpu_check.md. Exit 0 when every check that could run
passed, 1 otherwise; a backend that is not available is a row saying why, not a failure of the check.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
WORK = ROOT / ".cache" / "gpu-check"
GPU_BACKENDS = ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
GPU_TESTS = (
    "tests/verify/test_backends.py",
    "tests/verify/test_tensorrt_backend.py",
    "tests/verify/test_gpu_honesty.py",
)
SHAPES = {"resnet50": {"input": (1, 3, 224, 224)}, "yolo": {"images": (1, 3, 320, 320)}}


@dataclass
class Row:
    model: str
    precision: str
    backend: str
    status: str
    placement: str
    states: str
    seconds: float


class Budget:
    """Seconds left of the whole check; each step gets what is left, never more."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole check (default: 540)")
    parser.add_argument("--skip-tests", action="store_true", help="only the table")
    options = parser.parse_args()
    budget = Budget(options.budget)
    print(_environment())
    tests_ok = options.skip_tests or _run_tests(budget)
    rows = _table_rows(budget)
    table = _render(rows)
    print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_check.md").write_text(_environment() + "\n\n" + table + "\n")
    failed = [row for row in rows if row.status in ("failed", "error")]
    return 0 if tests_ok and not failed else 1


def _environment() -> str:
    """The GPU, the runtimes and each GPU backend's availability, as lines."""
    from graphdoctor.verify.backends import get_backend

    lines = [f"GPU: {_nvidia_smi()}"]
    try:
        import onnxruntime as ort

        lines.append(f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}")
    except ImportError as error:
        lines.append(f"onnxruntime: not importable ({error})")
    for name in GPU_BACKENDS:
        reason = get_backend(name).unavailable_reason()
        lines.append(f"{name}: {'available' if reason is None else 'unavailable: ' + reason}")
    return "\n".join(lines)


def _nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi"
    run = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False, timeout=60)
    return run.stdout.strip() or run.stderr.strip()


def _run_tests(budget: Budget) -> bool:
    present = [test for test in GPU_TESTS if (ROOT / test).exists()]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *present]
    print("$", " ".join(command), flush=True)
    try:
        return subprocess.run(command, cwd=ROOT, check=False, timeout=min(240.0, budget.left())).returncode == 0
    except subprocess.TimeoutExpired:
        print("the GPU tests ran out of their time", flush=True)
        return False


def _models() -> dict[str, Path]:
    """resnet50 from the fixtures (torchvision), the YOLO fixture or the bundled YOLO-style example."""
    import importlib.util

    sys.path.insert(0, str(ROOT))
    from fixtures import torch_exports

    models = {"resnet50": torch_exports.path("resnet50")}
    has_ultralytics = importlib.util.find_spec("ultralytics") is not None
    models["yolo"] = torch_exports.path("yolo") if has_ultralytics else ROOT / "examples" / "yolo_demo.onnx"
    return models


def _fp16(model: Path, name: str) -> Path:
    from graphdoctor import api
    from graphdoctor.fp16 import Fp16Options

    WORK.mkdir(parents=True, exist_ok=True)
    target = WORK / f"{name}.fp16.onnx"
    api.fix(model, target, fp16=Fp16Options(), verify=False)
    return target


def _table_rows(budget: Budget) -> list[Row]:
    from graphdoctor import api

    rows = []
    for name, model in _models().items():
        candidates = {"FP32": model, "FP16": _fp16(model, name)}
        for precision, candidate in candidates.items():
            for backend in GPU_BACKENDS:
                if budget.left() < 30:
                    rows.append(Row(name, precision, backend, "not run", "", "the check's time budget ran out", 0.0))
                    continue
                start = time.perf_counter()
                result = api.verify(model, candidate, backends=[backend], shapes=SHAPES[name])
                [verdict] = result.verdicts
                states = verdict.reason if verdict.status != "passed" else verdict.precision
                rows.append(
                    Row(
                        name, precision, backend, verdict.status, verdict.placement, states, time.perf_counter() - start
                    )
                )
    return rows


def _render(rows: list[Row]) -> str:
    head = "| model | candidate | backend | verdict | placement | precision stated / reason | wall s |"
    body = [
        f"| {r.model} | {r.precision} | {r.backend} | {r.status} | {r.placement or '—'} | {_cell(r.states)} "
        f"| {r.seconds:.1f} |"
        for r in rows
    ]
    return "\n".join([head, "|---|---|---|---|---|---|---:|", *body])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:240]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
