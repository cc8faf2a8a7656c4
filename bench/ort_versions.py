"""Load and run ONNX models on several ONNX Runtime versions, each with default session options.

    .venv/bin/python bench/ort_versions.py --install 1.20.0,1.24.4         # venvs built once, then reused
    .venv/bin/python bench/ort_versions.py --ort-venv /tmp/ort124 --ort-venv /tmp/ort120
    .venv/bin/python bench/ort_versions.py --ort-venv /tmp/ort124 model.onnx other.onnx --shape images:1x3x640x640

DESIGN.md promises that a converted model loads on the ONNX Runtime versions users deploy (1.20 and newer) with
default options, and the runtime's optimizer differs between versions: ONNX Runtime 1.24.4 refuses FP16
models that 1.20 and 1.32 load. Without model files, the models are graphdoctor's `--fp16` output
(`api.fix(..., fp16=Fp16Options())`, verified as the CLI verifies) of the cached fixtures bert_opset14,
bert_opset17, resnet50 and yolo, and of every dynamo_* fixture already built. Model files given are run as
they are.

Each runtime is a Python with onnxruntime and numpy: this interpreter (always, as the newest one at hand), the
venvs of `--ort-venv`, and those `--install` builds with pip under .cache/ort-versions/VERSION. Every runtime
runs in a child process of its own (its Python runs LOADER, which reads the model paths and input shapes as
JSON); a child that dies takes only the model it was on with it. Inputs are random: floats normal, token ids
below the fixtures' vocabulary, masks all ones; symbolic dims take the fixtures' sample sizes, or `--shape`.

Prints a markdown table, model by runtime: `runs`, `loads; run fails` or `fails to load`, each failure's first
line as a footnote. Exit 0 when every model runs everywhere, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "ort-versions"
DEFAULT_FIXTURES = ("bert_opset14", "bert_opset17", "resnet50", "yolo")
DYNAMO_PREFIX = "dynamo_"
VOCAB = 1000  # fixtures.torch_exports.VOCAB: token ids beyond it index past the embedding
CHILD_TIMEOUT_S = 600
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # ONNX Runtime colours its log lines

__all__ = ["LOADER", "Outcome", "Runtime", "check_models", "input_specs", "install_runtime", "runtime_at"]

# Runs in the runtime's own Python (onnxruntime and numpy only). stdin: {"vocab": N, "models": [{"path": P,
# "inputs": [{"name", "dtype", "shape"}]}]}; stdout: one JSON line per model, printed as soon as it is known.
LOADER = r"""
import json, sys
import numpy as np
import onnxruntime as ort

def feed(spec, vocab, rng):
    dtype, shape = np.dtype(spec["dtype"]), spec["shape"]
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b" or "mask" in spec["name"]:
        return np.ones(shape, dtype)
    return rng.integers(0, vocab, shape).astype(dtype)

def first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__

job = json.load(sys.stdin)
for model in job["models"]:
    result = {"path": model["path"], "loads": False, "runs": False, "error": None}
    try:
        session = ort.InferenceSession(model["path"], providers=["CPUExecutionProvider"])
        result["loads"] = True
        rng = np.random.default_rng(0)
        session.run(None, {spec["name"]: feed(spec, job["vocab"], rng) for spec in model["inputs"]})
        result["runs"] = True
    except Exception as error:
        result["error"] = first_line(error)
    print(json.dumps(result), flush=True)
"""

_VERSION_PROBE = "import onnxruntime; print(onnxruntime.__version__)"


@dataclass(frozen=True)
class Runtime:
    """A Python with onnxruntime: where it is and which version it holds."""

    python: Path
    version: str

    @property
    def label(self) -> str:
        return f"onnxruntime {self.version}"


@dataclass(frozen=True)
class Outcome:
    """What one runtime did with one model."""

    loads: bool
    runs: bool
    error: str | None  # the first line of the runtime's error


@dataclass(frozen=True)
class ModelJob:
    """A model file to run and the inputs to feed it (name, numpy dtype, concrete shape)."""

    label: str
    path: Path
    inputs: tuple[dict[str, object], ...]
    problem: str | None = None  # why there is no model to run (its conversion failed)


class BenchError(Exception):
    """A runtime or model this script cannot use: one line, exit 2."""


class ConversionFailed(Exception):
    """graphdoctor did not write a fixture's FP16 model: its row says why, in every runtime's column."""


# --- runtimes -------------------------------------------------------------------------------------------------


def runtime_at(path: Path) -> Runtime:
    """The runtime of a venv folder or of a Python executable; BenchError if it has no onnxruntime."""
    python = path / "bin" / "python" if path.is_dir() else path
    if not python.exists():
        raise BenchError(f"{path}: neither a venv (no bin/python) nor a Python executable")
    probe = subprocess.run([str(python), "-c", _VERSION_PROBE], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{python}: cannot import onnxruntime ({reason})")
    return Runtime(python, probe.stdout.strip())


def install_runtime(version: str, cache: Path = CACHE) -> Runtime:
    """A venv holding onnxruntime==version under cache/version, built with pip when missing or incomplete."""
    venv = cache / version
    python = venv / "bin" / "python"
    if python.exists():
        try:
            runtime = runtime_at(venv)
        except BenchError:
            runtime = None
        if runtime is not None and runtime.version == version:
            return runtime
    print(f"ort_versions: installing onnxruntime {version} into {venv} ...", file=sys.stderr, flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    _checked([sys.executable, "-m", "venv", "--clear", str(venv)], f"create the venv {venv}")
    _checked([str(python), "-m", "pip", "install", "--quiet", f"onnxruntime=={version}", "numpy"], f"pip {version}")
    return runtime_at(venv)


def _checked(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise BenchError(f"could not {what}: {reason}")


# --- models ---------------------------------------------------------------------------------------------------


def input_specs(path: Path, shapes: Mapping[str, tuple[int, ...]], sample_dims: Mapping[str, int]) -> list[dict]:
    """The graph inputs to feed (initializers listed as inputs excluded), with every dim made concrete: the
    `shapes` given for that input, else each symbolic dim from `sample_dims` (1 when it names none there)."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (OSError, DecodeError) as error:
        raise BenchError(f"{path}: not a readable ONNX model ({error})") from error
    initializers = {init.name for init in graph.initializer}
    specs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") else sample_dims.get(d.dim_param, 1) for d in tensor_type.shape.dim
        ]
        shape = list(shapes.get(value.name, dims))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        specs.append({"name": value.name, "dtype": dtype, "shape": shape})
    return specs


def default_fixture_names() -> list[str]:
    """The four fixtures every run covers, then every dynamo_* fixture already built and up to date (building
    one takes minutes of torch export, not what a portability check should start)."""
    from fixtures import torch_exports

    dynamo = [n for n in torch_exports.NAMES if n.startswith(DYNAMO_PREFIX) and torch_exports.is_fresh(n)]
    return [*DEFAULT_FIXTURES, *dynamo]


def convert_fixture(name: str, out_dir: Path, verify: bool, timeout_s: float) -> Path:
    """graphdoctor's FP16 output of a fixture: `graphdoctor fix FIXTURE --fp16 -o OUT`, run in a child process
    (a runtime that crashes inside the fix gate then costs one row, not the run). ConversionFailed when the
    command writes nothing."""
    from fixtures import torch_exports

    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{name}.fp16.onnx"
    output.unlink(missing_ok=True)  # an earlier run's file must not pass for this run's
    command = [sys.executable, "-m", "graphdoctor", "fix", str(torch_exports.path(name)), "--fp16", "-o", str(output)]
    print(f"ort_versions: {' '.join(command[2:])}", file=sys.stderr, flush=True)
    try:
        result = subprocess.run(
            [*command, *([] if verify else ["--no-verify"])],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired as expired:
        raise ConversionFailed(f"graphdoctor fix --fp16 ran past {timeout_s:.0f} s") from expired
    if result.returncode != 0 or not output.is_file():
        raise ConversionFailed(f"graphdoctor fix --fp16 wrote nothing: {_died(result.returncode, result.stderr)}")
    return output


# --- running --------------------------------------------------------------------------------------------------


def check_models(jobs: Iterable[ModelJob], runtime: Runtime, timeout_s: float = CHILD_TIMEOUT_S) -> dict[Path, Outcome]:
    """Every model on one runtime, in child processes of its Python: one child for all of them, and after a
    child dies (a crash inside the runtime, a timeout) a fresh one for the models it had not reached."""
    pending = [job for job in jobs if job.problem is None]
    outcomes: dict[Path, Outcome] = {}
    while pending:
        reported, failure = _run_loader(runtime, pending, timeout_s)
        outcomes.update(reported)
        pending = [job for job in pending if job.path not in outcomes]
        if failure is not None and pending:
            outcomes[pending.pop(0).path] = Outcome(loads=False, runs=False, error=failure)
    return outcomes


def _run_loader(runtime: Runtime, jobs: list[ModelJob], timeout_s: float) -> tuple[dict[Path, Outcome], str | None]:
    """(what the child reported, why it stopped early or None)."""
    request = {"vocab": VOCAB, "models": [{"path": str(job.path), "inputs": list(job.inputs)} for job in jobs]}
    try:
        child = subprocess.run(
            [str(runtime.python), "-c", LOADER],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        failure = (
            None if child.returncode == 0 else f"the runtime's process died ({_died(child.returncode, child.stderr)})"
        )
        stdout = child.stdout
    except subprocess.TimeoutExpired as expired:
        stdout, failure = _text(expired.stdout), f"the runtime ran past {timeout_s:.0f} s"
    reported = {}
    for line in stdout.splitlines():
        result = json.loads(line)
        reported[Path(result["path"])] = Outcome(result["loads"], result["runs"], result["error"])
    return reported, failure


def _died(returncode: int, stderr: str) -> str:
    """A child's end in one line: how it ended, and the last line it wrote to stderr."""
    how = f"signal {-returncode}" if returncode < 0 else f"exit {returncode}"
    lines = [line for line in (_ANSI.sub("", raw).strip() for raw in stderr.splitlines()) if line]
    last = lines[-1] if lines else ""
    return f"{how}{': ' + last if last else ''}"


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


# --- report ---------------------------------------------------------------------------------------------------


def render_table(jobs: list[ModelJob], runtimes: list[Runtime], outcomes: Mapping[tuple[Path, Path], Outcome]) -> str:
    """Markdown: one row per model, one column per runtime; each distinct error once, as a footnote."""
    notes: dict[str, int] = {}
    header = ["model", *(runtime.label for runtime in runtimes)]
    rows = [header, ["---"] * len(header)]
    for job in jobs:
        cells = [job.label]
        for runtime in runtimes:
            cells.append(_cell(job, outcomes.get((job.path, runtime.python)), notes))
        rows.append(cells)
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    if notes:
        lines.append("")
        lines.extend(f"[{number}] {error}" for error, number in notes.items())
    return "\n".join(lines)


def _cell(job: ModelJob, outcome: Outcome | None, notes: dict[str, int]) -> str:
    if outcome is not None and outcome.runs:
        return "runs"
    error = job.problem if outcome is None else outcome.error
    number = notes.setdefault(error or "no error reported", len(notes) + 1)
    if outcome is None:
        return f"not converted [{number}]"
    return f"loads; run fails [{number}]" if outcome.loads else f"fails to load [{number}]"


# --- command line ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="ONNX files (default: graphdoctor's FP16 fixtures)")
    parser.add_argument(
        "--ort-venv",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="a venv (or its python) holding onnxruntime and numpy; repeatable",
    )
    parser.add_argument(
        "--install",
        default="",
        metavar="VERSIONS",
        help="comma-separated onnxruntime versions to pip-install under .cache/ort-versions/",
    )
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:DIMS",
        help="an input's shape, e.g. images:1x3x640x640; repeatable",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=CACHE / "converted", help="where the fixtures' FP16 conversions are written"
    )
    parser.add_argument("--no-verify", action="store_true", help="convert the fixtures without the fix gate")
    parser.add_argument("--timeout", type=float, default=CHILD_TIMEOUT_S, help="seconds per runtime child")
    args = parser.parse_args(argv)
    try:
        args.shapes = dict(_parse_shape(item) for item in args.shape)
    except ValueError as error:
        parser.error(str(error))
    return args


def _parse_shape(item: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = item.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 0:
        raise ValueError(f"--shape {item!r}: expected NAME:DIMS such as images:1x3x640x640")
    return name, shape


def gather_runtimes(args: argparse.Namespace) -> list[Runtime]:
    """This interpreter's runtime, then the venvs given, then those installed; each Python once."""
    found = [runtime_at(Path(sys.executable))]
    found += [runtime_at(path) for path in args.ort_venv]
    found += [install_runtime(v.strip()) for v in args.install.split(",") if v.strip()]
    unique = {runtime.python.absolute(): runtime for runtime in reversed(found)}
    return sorted(unique.values(), key=lambda r: _version_key(r.version))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def gather_jobs(args: argparse.Namespace) -> list[ModelJob]:
    from fixtures.torch_exports import SAMPLE_DIMS

    if args.models:
        return [_job(path.name, path, args.shapes, SAMPLE_DIMS) for path in args.models]
    jobs = []
    for name in default_fixture_names():
        try:
            path = convert_fixture(name, args.out_dir, not args.no_verify, args.timeout)
        except ConversionFailed as failure:
            jobs.append(ModelJob(name, args.out_dir / f"{name}.fp16.onnx", (), problem=str(failure)))
            continue
        jobs.append(_job(name, path, args.shapes, SAMPLE_DIMS))
    return jobs


def _job(label: str, path: Path, shapes: Mapping[str, tuple[int, ...]], sample_dims: Mapping[str, int]) -> ModelJob:
    return ModelJob(label, path.absolute(), tuple(input_specs(path, shapes, sample_dims)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runtimes = gather_runtimes(args)
        jobs = gather_jobs(args)
    except BenchError as error:
        print(f"ort_versions: {error}", file=sys.stderr)
        return 2
    outcomes: dict[tuple[Path, Path], Outcome] = {}
    for runtime in runtimes:
        print(f"ort_versions: running {len(jobs)} model(s) on {runtime.label} ({runtime.python})", file=sys.stderr)
        for path, outcome in check_models(jobs, runtime, args.timeout).items():
            outcomes[(path, runtime.python)] = outcome
    print(render_table(jobs, runtimes, outcomes))
    everything_ran = all(o.runs for o in outcomes.values()) and not any(job.problem for job in jobs)
    return 0 if everything_ran else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # fixtures/ and graphdoctor/ from the checkout, as the other benches do
    sys.exit(main())
