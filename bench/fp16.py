"""Benchmark `graphdoctor fix --fp16` against NVIDIA ModelOpt AutoCast and onnxconverter-common.

    .venv/bin/python bench/fp16.py --install-peers          # once: AutoCast into .venv, old ONNX Runtimes
    .venv/bin/python bench/fp16.py                          # every model, the four default converters
    .venv/bin/python bench/fp16.py --quick                  # smoke test: the small models, 1 run each
    .venv/bin/python bench/fp16.py --models resnet50,yolo --converters graphdoctor,autocast --runs 5

Converters (research/fp16-autocast.md): graphdoctor verified (`fix --fp16`, the default), graphdoctor
`--no-verify` (the conversion alone), AutoCast (`python -m modelopt.onnx.autocast --low_precision_type fp16
--keep_io_types`), onnxconverter-common (`convert_float_to_float16(m, keep_io_types=True)`); opt-in: ONNX
Runtime's fork of onnxconverter-common, onnxslim, onnxsim, and graphdoctor keeping onnxconverter-common's FP32
ops (the same Casts to place: the same work).

Each conversion runs N times, each in a fresh process under `/usr/bin/time -v` with a memory cap (medians of
wall time and peak RSS), and so does each model's floor: one plain ONNX Runtime CPU session of the FP32 model,
run once on the judging inputs, what any check of it pays at least. A table of ratios follows, with issue 16's
targets marked: verified within 2× of `--no-verify` (resnet50, vit_b_16, bert), `--no-verify` no slower than
onnxconverter-common (yolo, mobilenet_v3_large), both on wall time; and verified over the floor.

Each output is judged in more capped child processes, so that a converter's broken model is a table entry,
never a crashed bench: does it load and run with default session options on the installed ONNX Runtime and
on old ones (each in its own venv), how far are its outputs from the FP32 model's under graphdoctor's FP16
emulation and on ONNX Runtime CPU, how many nodes it kept FP32, how many Casts it added, and how much of the
float weight bytes it stores as FP16.

Writes bench/results/fp16.md (the tables, with date, machine and versions) and bench/results/fp16.json (every
run and every judgement); `--quick` writes fp16-quick.md/.json instead, so a smoke run never replaces them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fp16_models import OWN_MODELS, fixture_names, model_path
from measure import (
    MIB,
    Limits,
    Series,
    describe_environment,
    format_number,
    format_size,
    format_target,
    inputs_command,
    last_json,
    load_average,
    measure,
    median_ratio,
    package_version,
    render_environment,
    reporter,
    run_bench,
    session_command,
    session_judge,
    shorten,
    write_raw,
)
from models import CACHE, ModelUnavailable, model_size

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.prefix) / "bin"  # the venv running this script; not resolved, or the venv would be lost
SCRATCH = CACHE / "fp16"  # converted models (deleted once judged) and each model's inputs
RUNTIMES = ROOT / ".cache" / "bench-ort"  # one venv per old ONNX Runtime version: RUNTIMES/<version>

# ModelOpt pins onnxruntime~=1.24, so many of its users run 1.24; DESIGN.md promises 1.20+
OLD_RUNTIMES = ("1.24.4", "1.20.1")
MODELOPT = "nvidia-modelopt==0.47.0"
# what `modelopt.onnx.autocast` imports (research/fp16-autocast.md), without modelopt's own pins: its
# requirements pull CUDA 13 wheels, cupy and onnxruntime-gpu~=1.24 (onnx, onnxruntime and a CPU torch are
# already in .venv)
AUTOCAST_IMPORTS = (
    "onnx-graphsurgeon",
    "onnxconverter-common",
    "polygraphy",
    "onnxslim",
    "onnxscript",
    "ml_dtypes",
    "pydantic",
    "rich",
    "tqdm",
    "PyYAML",
    "omegaconf",
    "pulp",
    "regex",
    "safetensors",
    "scipy",
    "nvidia-ml-py",
    "lief",
    "cppimport",
    "ninja",
)

BASE_MODELS = (
    "resnet50",
    "convnext_tiny",
    "vit_b_16",
    "bert",
    "bert_base_opset14",
    "bert_opset14",
    "bert_opset17",
    "yolo",
    "mobilenet_v3_large",
    "efficientnet_b0",
    *(name for name in OWN_MODELS if name.startswith("chain")),
    "large",
)
QUICK_MODELS = ("bert_opset14", "bert_opset17", "mobilenet_v3_large", "chain775")
# dims of the generated inputs: graphdoctor's --shape, and what every output is judged on (other dynamic dims:
# graphdoctor's defaults, batch 1, sequence 128, 224 for height and width)
SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "yolo": {"images": (1, 3, 320, 320)},
    "bert": {"input_ids": (1, 128), "attention_mask": (1, 128)},
    "bert_base_opset14": {"input_ids": (1, 128), "attention_mask": (1, 128)},
    "dynamo_bert": {"input_ids": (2, 16), "attention_mask": (2, 16)},  # its position table holds 64 tokens
    "large": {"x": (1, 4096)},
}
BIG_MODEL_BYTES = 150 * 1000**2  # one run above this size
# no >2 GB support (research/fp16.md §2.7): onnxslim loads everything into one proto and would only fail late
SKIPS = {("onnxslim", "large"): "no >2 GB support (it serializes one proto); skipped to stay under the memory cap"}


def is_dynamo_fixture(name: str) -> bool:
    """The fixtures of the dynamo exporter and T5 (dynamo_*, t5_*, *_dynamo) join the default models."""
    return name.startswith(("dynamo_", "t5_")) or name.endswith("_dynamo")


@dataclasses.dataclass(frozen=True)
class Converter:
    """A converter as the table names it, its command for (model name, input path, output path), and why it
    cannot run here ("" when it can)."""

    name: str
    key: str  # for --converters
    command: Callable[[str, Path, Path], list[str]]
    missing: Callable[[], str] = lambda: ""


def _graphdoctor(*extra: str) -> Callable[[str, Path, Path], list[str]]:
    """--shape only where the model runs: with it `--no-verify` would still measure activation ranges."""

    def command(name: str, path: Path, out: Path) -> list[str]:
        runs = "--no-verify" not in extra
        shapes = [f"--shape={k}:{'x'.join(map(str, v))}" for k, v in SHAPES.get(name, {}).items() if runs]
        return [str(BIN / "graphdoctor"), "fix", str(path), "-o", str(out), "--fp16", *shapes, *extra]

    return command


def _occ_blocked_ops() -> str:
    """onnxconverter-common's default FP32 op list, its ai.onnx ops: the row that keeps the same regions FP32
    (the chains' Max, yolo's Resize) compares the same work."""
    import onnx
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST

    return ",".join(op for op in DEFAULT_OP_BLOCK_LIST if onnx.defs.has(op))


def _graphdoctor_as_occ(name: str, path: Path, out: Path) -> list[str]:
    return _graphdoctor("--no-verify", f"--keep-fp32={_occ_blocked_ops()}")(name, path, out)


def _autocast(name: str, path: Path, out: Path) -> list[str]:
    """AutoCast as its documentation runs it, FP32 I/O; its reference runs use ONNX Runtime CPU by default."""
    options = ["--onnx_path", str(path), "--output_path", str(out), "--low_precision_type", "fp16", "--keep_io_types"]
    return [str(BIN / "python"), "-m", "modelopt.onnx.autocast", *options]


def _autocast_missing() -> str:
    if importlib.util.find_spec("modelopt") is None:
        return "nvidia-modelopt is not installed: run `bench/fp16.py --install-peers` first"
    return ""


def _peer(key: str) -> Callable[[str, Path, Path], list[str]]:
    """A peer's conversion in a process of its own that imports the peer and nothing of this harness (whose
    imports cost onnxconverter-common's row 0.06 s on yolov8n)."""
    script = Path(__file__).with_name("peer_fp16.py")
    return lambda name, path, out: [str(BIN / "python"), str(script), key, str(path), str(out)]


CONVERTERS = (
    Converter("graphdoctor fix --fp16", "graphdoctor", _graphdoctor()),
    Converter("graphdoctor --no-verify", "graphdoctor-noverify", _graphdoctor("--no-verify")),
    Converter("AutoCast --keep_io_types", "autocast", _autocast, _autocast_missing),
    Converter("onnxconverter-common", "occ", _peer("occ")),
    Converter("graphdoctor --no-verify, occ's FP32 ops kept", "graphdoctor-occ-ops", _graphdoctor_as_occ),
    Converter("onnxruntime.transformers.float16", "ort", _peer("ort")),
    Converter("onnxslim dtype=fp16", "onnxslim", _peer("onnxslim")),
    Converter("onnxsim quantize_fp16", "onnxsim", _peer("onnxsim")),
)
DEFAULT_CONVERTERS = ("graphdoctor", "graphdoctor-noverify", "autocast", "occ")
ORIGINAL = "FP32 original"  # the quality table's first row per model: what each ONNX Runtime makes of the input
FLOOR = "floor: ORT session + 1 run of FP32"  # the cost table's first row per model: what any check pays at least
VERIFY_TARGETS = ("resnet50", "vit_b_16", "bert")  # issue 16: verified within 2× of --no-verify (wall)
OCC_TARGETS = ("yolo", "mobilenet_v3_large")  # issue 16: --no-verify no slower than onnxconverter-common


@dataclasses.dataclass(frozen=True)
class CostRatio:
    """A column pair of the ratio table: `over`'s median wall time and peak RSS over `base`'s (converter names,
    or FLOOR), and issue 16's target on the wall-time ratio for the models it names."""

    label: str
    over: str
    base: str
    limit: float | None = None
    targets: tuple[str, ...] = ()


NAMES = {converter.key: converter.name for converter in CONVERTERS}
COST_RATIOS = (
    CostRatio("verified / --no-verify", NAMES["graphdoctor"], NAMES["graphdoctor-noverify"], 2.0, VERIFY_TARGETS),
    CostRatio("--no-verify / onnxconverter-common", NAMES["graphdoctor-noverify"], NAMES["occ"], 1.0, OCC_TARGETS),
    CostRatio("verified / floor", NAMES["graphdoctor"], FLOOR),
)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """An ONNX Runtime to load outputs on: the one in .venv, or an old one in its own venv."""

    version: str
    python: Path

    @property
    def installed(self) -> bool:
        return self.python.exists()


def runtimes() -> list[Runtime]:
    current = Runtime(package_version("onnxruntime"), BIN / "python")
    return [current, *(Runtime(version, RUNTIMES / version / "bin" / "python") for version in OLD_RUNTIMES)]


@dataclasses.dataclass
class Model:
    """A model to convert, and the seeded inputs (.npz) every judgement of its outputs uses."""

    name: str
    path: Path
    size_bytes: int
    inputs: Path | None
    inputs_error: str = ""


@dataclasses.dataclass
class Row:
    """One (model, converter): its conversion runs and the judgement of its output; `skipped` when not run."""

    model: str
    size_bytes: int | None
    converter: str
    series: Series | None = None
    output_bytes: int | None = None
    loads: dict[str, dict] = dataclasses.field(default_factory=dict)  # by ONNX Runtime version
    accuracy: dict = dataclasses.field(default_factory=dict)  # by backend, and "error"
    structure: dict = dataclasses.field(default_factory=dict)  # nodes kept FP32, Casts added, FP16 share
    skipped: str = ""


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in CHILD_COMMANDS:
        return CHILD_COMMANDS[sys.argv[1]](*sys.argv[2:])
    args = parse_args(argv)
    if args.install_peers:
        return install_peers()
    limits = Limits(timeout_s=args.timeout, address_space_bytes=int(args.mem_limit_gib * 1024 * MIB))
    converters = [c for c in CONVERTERS if c.key in args.converters]
    started, load_before = datetime.datetime.now(datetime.timezone.utc), load_average()
    rows = []
    for name in args.models:
        rows += bench_model(name, converters, args.runs, limits)
    environment = describe_environment(started, load_before, limits)
    environment["versions"] |= {
        name: package_version(name) for name in ("nvidia-modelopt", "onnxconverter-common", "onnxslim", "onnxsim")
    }
    environment["runtimes"] = {r.version: str(r.python) if r.installed else "not installed" for r in runtimes()}
    markdown = render_markdown(rows, environment)
    print(markdown)
    write_outputs(rows, environment, markdown, args.out, "fp16-quick" if args.quick else "fp16")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated (default: the base models and every dynamo fixture)")
    parser.add_argument("--converters", default=",".join(DEFAULT_CONVERTERS), help="comma-separated (%(default)s)")
    parser.add_argument("--runs", type=int, help="conversions per converter and model (default: 3, 1 over 150 MB)")
    parser.add_argument("--quick", action="store_true", help=f"1 run on the small models ({','.join(QUICK_MODELS)})")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run (default: %(default)s)")
    parser.add_argument("--mem-limit-gib", type=float, default=12.0, help="address space per run (RLIMIT_AS)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where fp16.md and fp16.json go")
    parser.add_argument("--install-peers", action="store_true", help="install AutoCast and the old ONNX Runtimes")
    args = parser.parse_args(argv)
    known = {c.key for c in CONVERTERS}
    args.converters = [key.strip() for key in args.converters.split(",") if key.strip()]
    unknown = set(args.converters) - known
    if unknown:
        parser.error(f"unknown converters: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    if args.quick:
        args.runs = args.runs or 1
    if args.models is not None:
        args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    elif not args.install_peers:
        args.models = [*(QUICK_MODELS if args.quick else BASE_MODELS), *_dynamo_fixtures()]
    return args


def _dynamo_fixtures() -> list[str]:
    try:
        return [name for name in fixture_names() if is_dynamo_fixture(name)]
    except ModelUnavailable as error:
        _progress(f"cannot list the fixtures, so no dynamo model runs: {error}")
        return []


# --- installing the peers (--install-peers) ----------------------------------------------------------------


def install_peers() -> int:
    """Idempotent: AutoCast into .venv (only adding packages, checked by a dry run first), then one venv per
    old ONNX Runtime. Exit 1 when a step fails, with the reason."""
    steps = [_install_autocast, *(lambda v=version: _install_runtime(v) for version in OLD_RUNTIMES)]
    failures = [failure for step in steps if (failure := step())]
    for failure in failures:
        _progress(f"install failed: {failure}")
    return 1 if failures else 0


def _install_autocast() -> str:
    """`pip install --no-deps nvidia-modelopt` plus what its ONNX path imports. ModelOpt's pins (onnxruntime
    ~1.24, CUDA wheels) are never applied, and a dry run refuses any install that would change a package the
    tests use: .venv keeps its onnxruntime, onnx, numpy and torch."""
    if _imports(BIN / "python", "modelopt.onnx.autocast"):
        _progress(f"AutoCast: already installed ({package_version('nvidia-modelopt')})")
        return ""
    changed = _packages_changed_by(AUTOCAST_IMPORTS)
    if changed:
        return f"AutoCast's imports would change installed packages ({', '.join(changed)}); not installed"
    _progress("AutoCast: installing its imports, then nvidia-modelopt without its dependencies ...")
    for arguments in (list(AUTOCAST_IMPORTS), ["--no-deps", MODELOPT]):
        if (failure := _pip(BIN / "python", arguments)) != "":
            return f"AutoCast: {failure}"
    return "" if _imports(BIN / "python", "modelopt.onnx.autocast") else "AutoCast: installed, but does not import"


def _packages_changed_by(requirements: tuple[str, ...]) -> list[str]:
    """Installed packages that `pip install REQUIREMENTS` would replace, as 'name old → new' (pip's dry run)."""
    report = SCRATCH / "pip-report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    failure = _pip(BIN / "python", ["--dry-run", "--report", str(report), *requirements])
    if failure:
        return [f"dry run failed: {failure}"]
    installs = json.loads(report.read_text())["install"]
    planned = {item["metadata"]["name"]: item["metadata"]["version"] for item in installs}
    present = {name: package_version(name) for name in planned}
    return [f"{name} {present[name]} → {new}" for name, new in planned.items() if present[name] != "not installed"]


def _install_runtime(version: str) -> str:
    python = RUNTIMES / version / "bin" / "python"
    if _imports(python, "onnxruntime", version):
        _progress(f"onnxruntime {version}: already installed in {python.parents[1]}")
        return ""
    _progress(f"onnxruntime {version}: creating {python.parents[1]} ...")
    shutil.rmtree(python.parents[1], ignore_errors=True)
    created = subprocess.run([sys.executable, "-m", "venv", str(python.parents[1])], check=False)
    if created.returncode != 0:
        return f"onnxruntime {version}: venv creation failed (exit {created.returncode})"
    failure = _pip(python, [f"onnxruntime=={version}", "numpy"])
    if failure:
        return f"onnxruntime {version}: {failure}"
    return "" if _imports(python, "onnxruntime", version) else f"onnxruntime {version}: installed, does not import"


def _imports(python: Path, module: str, version: str = "") -> bool:
    """Whether `python` imports `module` (at `version`, when given)."""
    if not python.exists():
        return False
    check = f"import {module} as m; assert not {version!r} or m.__version__ == {version!r}"
    return subprocess.run([str(python), "-c", check], capture_output=True, check=False).returncode == 0


def _pip(python: Path, arguments: list[str]) -> str:
    """`python -m pip install ARGUMENTS`; "" on success, else pip's last error line."""
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return ""
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line] or result.stderr.splitlines()
    return errors[-1] if errors else f"pip exit {result.returncode}"


# --- benchmarking one model ---------------------------------------------------------------------------------


def bench_model(name: str, converters: list[Converter], runs: int | None, limits: Limits) -> list[Row]:
    """The FP32 model on every runtime, then every converter on it; a model that cannot be had is one row."""
    try:
        path = model_path(name)
    except ModelUnavailable as error:
        _progress(f"{name}: skipped: {error}")
        return [Row(name, None, "—", skipped=str(error))]
    model = prepare_model(name, path, limits)
    count = runs or (1 if model.size_bytes > BIG_MODEL_BYTES else 3)
    original = Row(name, model.size_bytes, ORIGINAL, loads=check_loads(model, path, limits))
    rows = [original, bench_floor(model, count, limits)]
    for converter in converters:
        skipped = SKIPS.get((converter.key, name)) or converter.missing()
        if skipped:
            rows.append(Row(name, model.size_bytes, converter.name, skipped=skipped))
            continue
        _progress(f"{name} ({format_size(model.size_bytes)}): {converter.name} × {count}")
        rows.append(bench_converter(model, converter, count, limits))
    return rows


def prepare_model(name: str, path: Path, limits: Limits) -> Model:
    """Generate the model's inputs once (graphdoctor's generator, seed 0), for every judgement of it."""
    inputs = SCRATCH / name / "inputs.npz"
    inputs.unlink(missing_ok=True)  # a rebuilt model must not meet old inputs
    inputs.parent.mkdir(parents=True, exist_ok=True)
    answer = _child_json(inputs_command(path, inputs, SHAPES.get(name, {})), limits)
    if answer.get("error") or not inputs.exists():
        return Model(name, path, model_size(path), None, answer.get("error", "no inputs written"))
    return Model(name, path, model_size(path), inputs)


def bench_floor(model: Model, runs: int, limits: Limits) -> Row:
    """The FP32 model in one plain ONNX Runtime session, run once on the judging inputs, in fresh processes."""
    if model.inputs is None:
        return Row(model.name, model.size_bytes, FLOOR, skipped=f"no inputs: {model.inputs_error}")
    _progress(f"{model.name} ({format_size(model.size_bytes)}): {FLOOR} × {runs}")
    command = session_command(BIN / "python", model.path, model.inputs)
    return Row(model.name, model.size_bytes, FLOOR, measure(command, runs, limits, judge=session_judge))


def bench_converter(model: Model, converter: Converter, runs: int, limits: Limits) -> Row:
    """Convert `runs` times into a fresh directory, judge the last output, then delete it (they are big)."""
    directory = SCRATCH / model.name / converter.key
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    out = directory / f"{model.name}.fp16.onnx"
    series = measure(converter.command(model.name, model.path, out), runs, limits)
    row = Row(model.name, model.size_bytes, converter.name, series)
    if out.exists():
        row.output_bytes = sum(file.stat().st_size for file in directory.iterdir())
        row.loads = check_loads(model, out, limits)
        row.accuracy = check_accuracy(model, out, limits)
        row.structure = _child_json([str(BIN / "python"), __file__, "structure", str(model.path), str(out)], limits)
    shutil.rmtree(directory, ignore_errors=True)
    return row


def check_loads(model: Model, candidate: Path, limits: Limits) -> dict[str, dict]:
    """Load and run `candidate` on each ONNX Runtime, each in a capped child of its own venv."""
    results = {}
    for runtime in runtimes():
        if not runtime.installed:
            results[runtime.version] = {"error": "not installed: run `bench/fp16.py --install-peers`"}
        elif model.inputs is None:
            results[runtime.version] = {"error": f"no inputs: {model.inputs_error}"}
        else:
            command = session_command(runtime.python, candidate, model.inputs)
            result = _child_json(command, limits)
            if not result.get("runs"):  # does a lower optimization level get past it (a workaround to name)?
                extended = session_command(runtime.python, candidate, model.inputs, "ORT_ENABLE_EXTENDED")
                result["extended"] = _child_json(extended, limits)
            results[runtime.version] = result
    return results


def check_accuracy(model: Model, candidate: Path, limits: Limits) -> dict:
    if model.inputs is None:
        return {"error": f"no inputs: {model.inputs_error}"}
    return _child_json(
        [str(BIN / "python"), __file__, "accuracy", str(model.path), str(candidate), str(model.inputs)], limits
    )


def _child_json(command: list[str], limits: Limits) -> dict:
    """Run a child command once, capped; its answer is the last line of its output that is a JSON object."""
    run = measure(command, 1, limits).runs[0]
    answer = last_json(run.output_tail)
    return answer if answer is not None else {"error": f"child failed: {run.reason or 'no answer'}"}


# --- the child commands --------------------------------------------------------------------------------


def compare_accuracy(reference: str, candidate: str, inputs: str) -> int:
    """Print one JSON line: per backend (FP16 emulation, ONNX Runtime CPU), the verdict of graphdoctor's
    verify and its worst output (the lowest cosine): 1 − cosine, max abs error, non-finite values."""
    from graphdoctor.api import verify
    from graphdoctor.errors import GraphDoctorError

    try:
        result = verify(reference, candidate, backends=("fp16-emulation", "onnxruntime-cpu"), inputs=inputs)
    except GraphDoctorError as error:
        print(json.dumps({"error": _first_line(error)}))
        return 0
    answer = {}
    for verdict in result.verdicts:
        entry = {"status": verdict.status, "reason": _first_line(verdict.reason) if verdict.reason else ""}
        if verdict.outputs:
            worst = min(verdict.outputs, key=lambda c: c.cosine if c.cosine == c.cosine else -2.0)  # NaN first
            entry |= {
                "output": worst.name,
                "one_minus_cosine": 1.0 - worst.cosine,
                "max_abs": worst.max_abs,
                "nonfinite": worst.cand_nonfinite,
                "top1": worst.top1_agreement,
            }
        answer[verdict.backend] = entry
    print(json.dumps(answer))
    return 0


def describe_structure(original: str, converted: str) -> int:
    """Print one JSON line: nodes whose float outputs stay float32 (Casts the converter added excluded), Casts
    added (Cast nodes under names the original lacks), and the FP16 share of the float weight bytes."""
    import onnx

    before = onnx.load(original, load_external_data=False)
    after = onnx.shape_inference.infer_shapes(onnx.load(converted, load_external_data=False))
    original_casts = {node.name for graph in _graphs(before.graph) for node in graph.node if node.op_type == "Cast"}
    kept, added, unknown = 0, 0, 0
    for graph in _graphs(after.graph):
        types = _value_types(graph)
        for node in graph.node:
            if node.op_type == "Cast" and node.name not in original_casts:
                added += 1
                continue
            outputs = [types.get(name) for name in node.output if name]
            if onnx.TensorProto.FLOAT in outputs:
                kept += 1
            elif None in outputs:
                unknown += 1
    fp16, floats = _float_weight_bytes(after)
    share = fp16 / floats if floats else None
    print(json.dumps({"kept_fp32": kept, "casts_added": added, "untyped_nodes": unknown, "fp16_weight_share": share}))
    return 0


def _graphs(graph):
    """`graph` and every subgraph in it (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                yield from _graphs(sub)


def _value_types(graph) -> dict[str, int]:
    """Element type of every tensor the graph declares (inputs, outputs, value_info, initializers)."""
    types = {init.name: init.data_type for init in graph.initializer}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


def _float_weight_bytes(model) -> tuple[int, int]:
    """(FP16 bytes, bytes of every float type) over initializers and Constant values, from dims alone."""
    import math

    import onnx

    float_types = (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    tensors = []
    for graph in _graphs(model.graph):
        tensors += graph.initializer
        tensors += [a.t for node in graph.node if node.op_type == "Constant" for a in node.attribute if a.HasField("t")]
    fp16 = floats = 0
    for tensor in tensors:
        if tensor.data_type in float_types:
            size = math.prod(tensor.dims) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            floats += size
            fp16 += size if tensor.data_type == onnx.TensorProto.FLOAT16 else 0
    return fp16, floats


def _first_line(error: Exception | str) -> str:
    return shorten(str(error), 200)


CHILD_COMMANDS: dict[str, Callable[..., int]] = {
    "accuracy": compare_accuracy,
    "structure": describe_structure,
}


# --- reporting ---------------------------------------------------------------------------------------------


def render_markdown(rows: list[Row], environment: dict) -> str:
    versions = list(environment["runtimes"])
    lines = [
        "Conversion (median of fresh processes):",
        "",
        "| model | FP32 size | converter | wall s | peak RSS MiB | output size (× FP32) | status |",
        "|---|---|---|---:|---:|---:|---|",
        *(_cost_line(row) for row in rows if row.converter != ORIGINAL),
        "",
        "Output: loads and runs with default session options on each ONNX Runtime; worst output's 1 − cosine and"
        " max abs error against the FP32 model under FP16 emulation and on ONNX Runtime CPU; nodes whose float"
        " outputs stay FP32 (the converter's Casts not counted); Casts added; FP16 share of the float weight bytes:",
        "",
        f"| model | converter | {' | '.join(f'ORT {v}' for v in versions)} | emulated 1 − cos | emulated max abs"
        " | CPU 1 − cos | CPU max abs | kept FP32 | Casts added | FP16 weight bytes |",
        f"|---|---|{'---|' * len(versions)}---:|---:|---:|---:|---:|---:|---:|",
        *(_quality_line(row, versions) for row in rows if _has_output(row) or row.converter == ORIGINAL),
        "",
        "Cost ratios (medians of the rows above; the targets, issue 16's, are on wall time; — where a row is"
        " missing or failed):",
        "",
        f"| model | {' | '.join(f'{ratio.label}: wall | {ratio.label}: peak RSS' for ratio in COST_RATIOS)} |",
        f"|---|{'---:|' * 2 * len(COST_RATIOS)}",
        *_ratio_lines(rows),
    ]
    notes = _failure_notes(rows)
    if notes:
        lines += ["", "Failures:", "", *notes]
    lines += ["", render_environment(environment) + " " + _runtimes_sentence(environment["runtimes"])]
    return "\n".join(lines) + "\n"


def _has_output(row: Row) -> bool:
    """A converter's row that ran (the floor converts nothing)."""
    return row.series is not None and row.converter != FLOOR


def _ratio_lines(rows: list[Row]) -> list[str]:
    """One line per model: each CostRatio's wall and peak RSS ratio, the wall one judged where a target applies."""
    series = {(row.model, row.converter): row.series for row in rows}
    lines = []
    for model in dict.fromkeys(row.model for row in rows):
        cells = []
        for ratio in COST_RATIOS:
            over, base = series.get((model, ratio.over)), series.get((model, ratio.base))
            wall, rss = (median_ratio(over, base, metric) for metric in ("wall_s", "peak_rss_mib"))
            judged = ratio.limit is not None and model in ratio.targets
            cells += [format_target(wall, ratio.limit) if judged else _times(wall), _times(rss)]
        lines.append(f"| {model} | {' | '.join(cells)} |")
    return lines


def _times(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def _cost_line(row: Row) -> str:
    size = format_size(row.size_bytes)
    if row.series is None:
        return f"| {row.model} | {size} | {row.converter} | — | — | — | skipped: {row.skipped} |"
    series = row.series
    runs = f" ({len(series.runs)} run{'s' if len(series.runs) != 1 else ''})"
    done = "ran" if row.converter == FLOOR else "converted"
    status = done + runs if series.ok else f"**failed**: {series.reason}" + runs
    ratio = f" ({row.output_bytes / row.size_bytes:.2f}×)" if row.output_bytes and row.size_bytes else ""
    return (
        f"| {row.model} | {size} | {row.converter} | {format_number(series.median_wall_s, 2)} |"
        f" {format_number(series.median_peak_rss_mib, 0)} | {format_size(row.output_bytes)}{ratio} | {status} |"
    )


def _quality_line(row: Row, versions: list[str]) -> str:
    if row.series is not None and row.output_bytes is None:
        cells = ["no output"] * len(versions) + ["—"] * 7
        return f"| {row.model} | {row.converter} | {' | '.join(cells)} |"
    loads = [_load_cell(row.loads.get(version, {})) for version in versions]
    emulated, cpu = (row.accuracy.get(backend, {}) for backend in ("fp16-emulation", "onnxruntime-cpu"))
    structure = row.structure
    share = structure.get("fp16_weight_share")
    cells = [
        *loads,
        *_accuracy_cells(emulated, row),
        *_accuracy_cells(cpu, row),
        format_number(structure.get("kept_fp32"), 0),
        format_number(structure.get("casts_added"), 0),
        "—" if share is None else f"{share:.1%}",
    ]
    return f"| {row.model} | {row.converter} | {' | '.join(cells)} |"


def _load_cell(result: dict) -> str:
    """yes, or what failed at default options, and whether ORT_ENABLE_EXTENDED gets past it."""
    if result.get("runs"):
        return "yes" if result.get("finite", True) else "yes (non-finite outputs)"
    if result.get("loads"):
        failed = "**runs: no**"
    elif "loads" in result:
        failed = "**no**"
    else:
        return "**crashed**" + _extended(result) if _crashed(result) else "—"
    return failed + _extended(result)


def _extended(result: dict) -> str:
    extended = result.get("extended")
    return "" if extended is None else f" (EXTENDED: {'yes' if extended.get('runs') else 'no'})"


def _crashed(result: dict) -> bool:
    """A child killed by a signal (ONNX Runtime segfaulting on a model), not one that answered."""
    return "killed by" in result.get("error", "")


def _accuracy_cells(verdict: dict, row: Row) -> list[str]:
    if _crashed(row.accuracy):
        return ["**crashed**", "—"]
    if row.converter == ORIGINAL or "one_minus_cosine" not in verdict:
        return ["—", "—"]
    failed = " ✗" if verdict.get("status") == "failed" else ""
    if verdict.get("nonfinite"):
        return [f"{verdict['nonfinite']} non-finite{failed}", format_number(verdict["max_abs"], 4)]
    return [f"{verdict['one_minus_cosine']:.2e}{failed}", format_number(verdict["max_abs"], 4)]


def _failure_notes(rows: list[Row]) -> list[str]:
    """One line per thing that went wrong after conversion: a runtime's refusal, a verify error."""
    notes = []
    for row in rows:
        where = f"{row.model}, {row.converter}"
        for version, result in row.loads.items():
            if result.get("error") and not result["error"].startswith("not installed"):
                notes.append(f"- {where}, ORT {version}: {result['error']}")
        if row.accuracy.get("error"):
            notes.append(f"- {where}, verify: {row.accuracy['error']}")
        for backend in ("fp16-emulation", "onnxruntime-cpu"):
            verdict = row.accuracy.get(backend, {})
            if verdict.get("status") in ("error", "skipped") or (
                verdict.get("status") == "failed" and verdict["reason"]
            ):
                notes.append(f"- {where}, {backend} {verdict['status']}: {verdict['reason']}")
        if row.structure.get("error"):
            notes.append(f"- {where}, structure: {row.structure['error']}")
    return notes


def _runtimes_sentence(installed: dict[str, str]) -> str:
    parts = [f"{version} ({where})" for version, where in installed.items()]
    return f"Load checks on onnxruntime {', '.join(parts)}, CPU provider, default session options."


def write_outputs(rows: list[Row], environment: dict, markdown: str, out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(markdown)
    raw = {
        "environment": environment,
        "results": [
            {
                "model": row.model,
                "size_bytes": row.size_bytes,
                "converter": row.converter,
                "skipped": row.skipped,
                "output_bytes": row.output_bytes,
                "loads": row.loads,
                "accuracy": row.accuracy,
                "structure": row.structure,
            }
            | (row.series.to_json() if row.series else {})
            for row in rows
        ],
    }
    write_raw(out, stem, raw)


_progress = reporter("fp16")

if __name__ == "__main__":
    run_bench("fp16", main)
