"""Benchmark `graphdoctor verify --layerwise` against `polygraphy run --onnxrt --onnx-outputs '*'`.

    .venv/bin/python bench/verify.py                          # resnet50, whisper_tiny_encoder, bert, yolo; 3 runs
    .venv/bin/python bench/verify.py --models resnet50 --runs 1
    .venv/bin/python bench/verify.py --model-file mine=model.onnx --shape mine=input:1x3x224x224

Every model is verified against itself on ONNX Runtime CPU, at the same input shapes for every tool. First
the floor: a fresh process that imports onnxruntime, creates one plain CPU session of the model (default
options) and runs it once on graphdoctor's own generated inputs, what any check of the model pays at least;
every row's ratio to it is a column of its own, and issue 16's targets are judged on the layer-wise row's
(wall ≤ 4× the floor, peak RSS ≤ 2×). Then two groups of rows, each with graphdoctor as the baseline of its
ratios:
- layer-wise: `graphdoctor verify M M --layerwise` (both runs, every shared tensor compared, a slice at a
  time) against `polygraphy run M --onnxrt --onnx-outputs '*'` (one run, every tensor fetched at once,
  nothing compared), the same with `--save-outputs` (the JSON a comparison needs) and with `--load-outputs`
  of that JSON (the comparison: the second half of polygraphy's two-step layer-wise workflow), and the
  first of these once more with torch hidden (polygraphy imports torch whenever it is installed: as on a
  machine without torch);
- outputs only: `graphdoctor verify M M` against `polygraphy run M --onnxrt`.

The tools run round-robin, one run of each per round, so load that drifts on a shared machine hits them
alike. Writes bench/out/verify.md (the table) and bench/out/verify.json (every run, the environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from measure import (
    MIB,
    Judge,
    Limits,
    Run,
    Series,
    describe_environment,
    format_number,
    format_size,
    format_target,
    hidden_torch_env,
    inputs_command,
    last_json,
    load_average,
    measure,
    median_ratio,
    render_environment,
    reporter,
    run_bench,
    session_command,
    session_judge,
    write_raw,
)
from models import KNOWN_MODELS, ModelUnavailable, model_path, model_size

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = Path(sys.prefix) / "bin"  # the venv running this script; not resolved, or the venv would be lost

DEFAULT_MODELS = ("resnet50", "whisper_tiny_encoder", "bert", "yolo")
DEFAULT_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "resnet50": {"input": (1, 3, 224, 224)},
    "whisper_tiny_encoder": {"input_features": (1, 80, 3000)},
    "mobilenet_v3_large": {"input": (1, 3, 224, 224)},
    "yolo": {"images": (1, 3, 320, 320)},
    "bert": {"input_ids": (1, 128), "attention_mask": (1, 128)},
    "large": {"x": (1, 4096)},
}
TARGET_MODEL = "resnet50"
TARGET_BYTES = 1000**3  # "layer-wise verify of resnet50 keeps peak RSS under 1 GB"
FLOOR_WALL, FLOOR_RSS = 4.0, 2.0  # issue 16: layer-wise verify of a model against itself, over its floor
FLOOR, LAYERWISE, OUTPUTS = "floor", "layer-wise", "outputs only"
# `sh` writes graphdoctor's JSON report to a file and execs it: the measured process is graphdoctor itself
REDIRECT = ("/bin/sh", "-c", 'out=$1; shift; exec "$@" > "$out"', "sh")


@dataclasses.dataclass
class BenchModel:
    name: str
    path: Path
    size_bytes: int
    shapes: dict[str, tuple[int, ...]]
    inputs_error: str = ""  # why the floor's inputs could not be written
    loads: list[float] = dataclasses.field(default_factory=list)  # 1-min load average as each round starts


@dataclasses.dataclass(frozen=True)
class Tool:
    """One command of the table; `group` picks the graphdoctor row its ratios are against."""

    key: str  # for --tools
    name: str
    group: str
    command: Callable[[BenchModel, Path], list[str]]  # (model, scratch folder) -> argv
    env: Callable[[], dict[str, str]] | None = None
    judge: Judge | None = None  # measure's default judge (exit 0 is ok) unless given

    @property
    def is_graphdoctor(self) -> bool:
        return self.key.startswith("graphdoctor")


def _graphdoctor(key: str, layerwise: bool) -> Callable[[BenchModel, Path], list[str]]:
    """`graphdoctor verify MODEL MODEL --format json`, the report going to `KEY.json` in the scratch folder."""

    def command(model: BenchModel, scratch: Path) -> list[str]:
        shapes = [arg for name, dims in model.shapes.items() for arg in ("--shape", f"{name}:{_dims(dims, 'x')}")]
        report = scratch / f"{key}.json"
        argv = [str(BIN / "graphdoctor"), "verify", str(model.path), str(model.path), *shapes, "--format", "json"]
        return [*REDIRECT, str(report), *argv, *(["--layerwise"] if layerwise else [])]

    return command


def _polygraphy(*extra: str, all_tensors: bool = True) -> Callable[[BenchModel, Path], list[str]]:
    """`polygraphy run MODEL --onnxrt`, every tensor marked as an output unless `all_tensors` is False;
    `{saved}` in `extra` becomes the path of the saved-outputs JSON in the scratch folder."""

    def command(model: BenchModel, scratch: Path) -> list[str]:
        shapes = [f"{name}:[{_dims(dims, ',')}]" for name, dims in model.shapes.items()]
        marks = ["--onnx-outputs", "*"] if all_tensors else []
        rest = [arg.format(saved=scratch / SAVED_OUTPUTS) for arg in extra]
        return [str(BIN / "polygraphy"), "run", str(model.path), "--onnxrt", *marks, "--input-shapes", *shapes, *rest]

    return command


def _floor(model: BenchModel, scratch: Path) -> list[str]:
    """One plain ONNX Runtime session and run of the model, on the inputs graphdoctor generates for it."""
    return session_command(BIN / "python", model.path, scratch / FLOOR_INPUTS)


def _dims(dims: tuple[int, ...], separator: str) -> str:
    return separator.join(str(d) for d in dims)


SAVED_OUTPUTS = "polygraphy-outputs.json"
FLOOR_INPUTS = "floor-inputs.npz"
TOOLS = (
    Tool("floor", "floor: ORT session + 1 run", FLOOR, _floor, judge=session_judge),
    Tool(
        "graphdoctor-layerwise",
        "graphdoctor verify --layerwise",
        LAYERWISE,
        _graphdoctor("graphdoctor-layerwise", True),
    ),
    Tool("polygraphy-layerwise", "polygraphy run --onnx-outputs '*'", LAYERWISE, _polygraphy()),
    Tool(
        "polygraphy-save",
        "polygraphy run --onnx-outputs '*' --save-outputs F",
        LAYERWISE,
        _polygraphy("--save-outputs", "{saved}"),
    ),
    Tool(
        "polygraphy-compare",
        "polygraphy run --onnx-outputs '*' --load-outputs F",
        LAYERWISE,
        _polygraphy("--load-outputs", "{saved}"),
    ),
    Tool(
        "polygraphy-layerwise-notorch",
        "polygraphy run --onnx-outputs '*' (torch hidden)",
        LAYERWISE,
        _polygraphy(),
        hidden_torch_env,
    ),
    Tool("graphdoctor-outputs", "graphdoctor verify", OUTPUTS, _graphdoctor("graphdoctor-outputs", False)),
    Tool("polygraphy-outputs", "polygraphy run --onnxrt", OUTPUTS, _polygraphy(all_tensors=False)),
)
DEFAULT_TOOLS = tuple(tool.key for tool in TOOLS)


@dataclasses.dataclass
class Row:
    """One (model, tool) result; `series` is None when the model could not be had or the tool not run."""

    model: str
    tool: Tool | None
    series: Series | None
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)  # from the reports the run wrote
    skipped: str = ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limits = Limits(timeout_s=args.timeout, address_space_bytes=int(args.mem_limit_gib * 1024 * MIB))
    tools = [tool for tool in TOOLS if tool.key in args.tools]
    started, load_before = datetime.datetime.now(datetime.timezone.utc), load_average()
    source_before = source_fingerprint()
    rows: list[Row] = []
    models: list[BenchModel] = []
    for name in args.models:
        try:
            model = resolve_model(name, args.model_files, args.shapes)
        except ModelUnavailable as error:
            _progress(f"{name}: skipped: {error}")
            rows.append(Row(name, None, None, skipped=str(error)))
            continue
        models.append(model)
        rows += bench_model(model, tools, args.runs, limits)
    environment = describe_environment(started, load_before, limits)
    environment["graphdoctor_source"] = {"before": source_before, "after": source_fingerprint()}
    markdown = render_markdown(rows, models, environment)
    print(markdown)
    write_outputs(rows, models, environment, markdown, args.out)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        help=f"comma-separated, of {', '.join(KNOWN_MODELS)} and the --model-file names"
        f" (default: {','.join(DEFAULT_MODELS)}, or the --model-file ones)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and model (default: %(default)s)")
    parser.add_argument("--tools", default=",".join(DEFAULT_TOOLS), help=f"of {[t.key for t in TOOLS]}")
    parser.add_argument("--model-file", action="append", default=[], metavar="NAME=PATH", help="bench any model")
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="MODEL=INPUT:DIMS",
        help="input shape for every tool, e.g. mine=input:1x3x224x224 (repeat per input; replaces the defaults"
        f" of that model: {DEFAULT_SHAPES})",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run (default: %(default)s)")
    parser.add_argument("--mem-limit-gib", type=float, default=16.0, help="address space per run (RLIMIT_AS)")
    parser.add_argument("--out", type=Path, default=OUT, help="where verify.md and verify.json go")
    args = parser.parse_args(argv)
    args.tools = {key.strip() for key in args.tools.split(",") if key.strip()}
    unknown = args.tools - {tool.key for tool in TOOLS}
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if "polygraphy-compare" in args.tools:
        args.tools.add("polygraphy-save")  # it compares against the JSON that row writes
    groups = {tool.group for tool in TOOLS if tool.key in args.tools}
    args.tools |= {tool.key for tool in TOOLS if tool.is_graphdoctor and tool.group in groups}  # the ratios need it
    if "graphdoctor-layerwise" in args.tools:
        args.tools.add("floor")  # the targets are judged against it
    args.model_files = dict(_parse_model_file(item, parser) for item in args.model_file)
    args.shapes = _parse_shapes(args.shape, parser)
    default_models = ",".join(args.model_files or DEFAULT_MODELS)
    args.models = [name.strip() for name in (args.models or default_models).split(",") if name.strip()]
    return args


def _parse_model_file(item: str, parser: argparse.ArgumentParser) -> tuple[str, Path]:
    name, sep, path = item.partition("=")
    if not sep or not Path(path).is_file():
        parser.error(f"--model-file wants NAME=PATH to an existing file, got '{item}'")
    return name, Path(path)


def _parse_shapes(items: list[str], parser: argparse.ArgumentParser) -> dict[str, dict[str, tuple[int, ...]]]:
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for item in items:
        model, _, spec = item.partition("=")
        name, _, dims = spec.rpartition(":")
        try:
            parsed = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            parsed = ()
        if not model or not name or not parsed:
            parser.error(f"--shape wants MODEL=INPUT:DIMS such as mine=input:1x3x224x224, got '{item}'")
        shapes.setdefault(model, {})[name] = parsed
    return shapes


def resolve_model(name: str, files: dict[str, Path], shapes: dict[str, dict[str, tuple[int, ...]]]) -> BenchModel:
    path = files[name] if name in files else model_path(name)
    model_shapes = shapes.get(name, DEFAULT_SHAPES.get(name, {}))
    return BenchModel(name, path, model_size(path), model_shapes)


# --- running ------------------------------------------------------------------------------------------------


def bench_model(model: BenchModel, tools: list[Tool], runs: int, limits: Limits) -> list[Row]:
    """Every tool on one model, round-robin: run i of every tool before run i+1 of any. A tool stops at its
    first failure (failures here are deterministic: a timeout, out of memory, a model a tool cannot run)."""
    with tempfile.TemporaryDirectory(prefix="gd-bench-verify-") as folder:
        scratch = Path(folder)
        if any(tool.key == "floor" for tool in tools):
            model.inputs_error = write_floor_inputs(model, scratch / FLOOR_INPUTS, limits)
        rows = {tool.key: Row(model.name, tool, Series(tool.command(model, scratch), [])) for tool in tools}
        for round_ in range(1, runs + 1):
            model.loads.append(os.getloadavg()[0])
            for tool in tools:
                row = rows[tool.key]
                if row.series.runs and not row.series.ok:
                    continue
                _progress(f"{model.name} ({format_size(model.size_bytes)}): {tool.name}, run {round_}/{runs}")
                row.series.runs.append(run_tool(tool, row.series.command, model, scratch, limits))
                if row.series.runs[-1].ok:
                    row.facts.update(read_facts(tool, scratch, row.facts))
    return list(rows.values())


def write_floor_inputs(model: BenchModel, target: Path, limits: Limits) -> str:
    """graphdoctor's generated inputs at the bench's shapes (what its rows feed), unmeasured; "" or why not."""
    run = measure(inputs_command(model.path, target, model.shapes), 1, limits).runs[0]
    answer = last_json(run.output_tail) or {}
    return "" if target.exists() else answer.get("error") or run.reason or "no inputs written"


def run_tool(tool: Tool, command: list[str], model: BenchModel, scratch: Path, limits: Limits) -> Run:
    executable = command[len(REDIRECT) + 1] if command[0] == REDIRECT[0] else command[0]
    if not Path(executable).exists():
        return Run(0.0, None, None, False, f"{Path(executable).name} is not installed in {BIN.parent}")
    if tool.key == "polygraphy-compare" and not (scratch / SAVED_OUTPUTS).exists():
        return Run(0.0, None, None, False, "no saved outputs to compare with (the --save-outputs row failed)")
    if tool.key == "floor" and model.inputs_error:
        return Run(0.0, None, None, False, f"no inputs: {model.inputs_error}")
    return measure(command, 1, limits, judge=tool.judge, env=tool.env() if tool.env else None).runs[0]


def read_facts(tool: Tool, scratch: Path, known: dict[str, Any]) -> dict[str, Any]:
    """What a successful run wrote: graphdoctor's verdict and counts, the size of polygraphy's JSON."""
    if tool.is_graphdoctor:
        report = scratch / f"{tool.key}.json"
        return graphdoctor_facts(report) if report.exists() else {"report": "missing"}
    if tool.key == "polygraphy-save":
        saved = scratch / SAVED_OUTPUTS
        facts = {"json_bytes": saved.stat().st_size}
        if "tensors" not in known:  # the same every run
            facts["tensors"] = count_saved_tensors(saved)
        return facts
    return {}


def graphdoctor_facts(report: Path) -> dict[str, Any]:
    """The verdict, what was compared, and in how many runs (from `verify --format json`)."""
    try:
        document = json.loads(report.read_text())["verify"]
    except (OSError, ValueError, KeyError) as error:
        return {"report": f"unreadable: {error}"}
    verdict = document["verdicts"][0] if document.get("verdicts") else {}
    facts: dict[str, Any] = {
        "passed": document.get("passed"),
        "status": verdict.get("status"),
        "outputs_compared": len(verdict.get("outputs", [])),
        "inputs": document.get("inputs"),
        "report_bytes": report.stat().st_size,
        "seconds_inside": document.get("seconds"),
    }
    layerwise = verdict.get("details", {}).get("layerwise")
    if layerwise is not None:
        keys = ("tensors_compared", "tensors_beyond_tolerance", "runs", "max_tensors_per_run", "max_bytes_per_run")
        how = ("in_graph", "fetched", "in_graph_unavailable")
        facts["layerwise"] = {key: layerwise.get(key) for key in (*keys, *how, "skipped", "error", "seconds")}
    return facts


def count_saved_tensors(path: Path) -> int:
    """Arrays in polygraphy's saved RunResults: each is one `"array": "<base64>"` entry (read in chunks, the
    file can be hundreds of MB)."""
    marker, count, tail = b'"array": "', 0, b""
    with path.open("rb") as file:
        while chunk := file.read(16 * MIB):
            data = tail + chunk
            count += data.count(marker)
            tail = data[-(len(marker) - 1) :]  # shorter than a marker: one split across chunks counts once
    return count


# --- reporting ----------------------------------------------------------------------------------------------


def render_markdown(rows: list[Row], models: list[BenchModel], environment: dict) -> str:
    """The table, the inputs each model ran at, the target, then where the numbers came from."""
    lines = [
        "| model | tool | median wall s | median CPU s | median peak RSS MiB | ratio vs graphdoctor (time, memory)"
        " | ratio vs floor (time, memory) | notes |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    baselines = {
        (row.model, row.tool.group): row.series for row in rows if row.tool is not None and row.tool.is_graphdoctor
    }
    floors = _floors(rows)
    facts = {(row.model, row.tool.key): row.facts for row in rows if row.tool is not None}
    for row in rows:
        baseline = baselines.get((row.model, row.tool.group)) if row.tool else None
        lines.append(_table_line(row, baseline, floors.get(row.model), facts))
    lines += [
        "",
        "Ratios: each peer over graphdoctor's row of its group (layer-wise, outputs only) on the same model; each"
        " row over the model's floor (a fresh process: import onnxruntime, one default CPU session, one run).",
    ]
    lines += ["Inputs (every tool, the same shapes):"]
    lines += [
        f"- {m.name} ({format_size(m.size_bytes)}): {_describe_shapes(m.shapes)}; 1-min load average as each"
        f" round started: {', '.join(f'{load:.2f}' for load in m.loads)}"
        for m in models
    ]
    lines += ["", *render_targets(rows), "", render_environment(environment), "", _render_source(environment)]
    return "\n".join(lines) + "\n"


def _render_source(environment: dict) -> str:
    source = environment["graphdoctor_source"]
    if source["before"] == source["after"]:
        return f"graphdoctor source (graphdoctor/**/*.py) sha256 {source['before']}, unchanged during the run."
    return (
        f"WARNING: graphdoctor's source changed during the run (sha256 {source['before']} → {source['after']}):"
        " the graphdoctor rows may mix two versions; run again."
    )


def _floors(rows: list[Row]) -> dict[str, Series]:
    return {row.model: row.series for row in rows if row.tool is not None and row.tool.key == "floor"}


def _table_line(row: Row, baseline: Series | None, floor: Series | None, facts: dict) -> str:
    if row.tool is None or row.series is None:
        return f"| {row.model} | — | — | — | — | — | — | skipped: {row.skipped} |"
    series = row.series
    notes = "; ".join(filter(None, [_notes(row, facts), _status(series)]))
    return (
        f"| {row.model} | {row.tool.name} | {format_number(series.median_wall_s, 2)}"
        f" | {format_number(series.median_cpu_s, 2)} |"
        f" {format_number(series.median_peak_rss_mib, 0)} | {_ratios(series, baseline)} |"
        f" {_ratios(series, floor)} | {notes} |"
    )


def _status(series: Series) -> str:
    count = len(series.runs)
    runs = f"{count} run{'s' if count != 1 else ''}"
    return f"ok ({runs})" if series.ok else f"failed: {series.reason} (run {count})"


def _notes(row: Row, facts: dict) -> str:
    """Tensors compared, the verdict, JSON sizes: what each tool did for its time and memory."""
    key, own = row.tool.key, row.facts
    saved = facts.get((row.model, "polygraphy-save"), {})
    fetched = f"{saved['tensors']} tensors fetched" if "tensors" in saved else "every tensor fetched"
    if key == "floor":
        return "one CPU session (default options), one run on graphdoctor's inputs, nothing compared"
    if key == "graphdoctor-layerwise":
        return _graphdoctor_layerwise_notes(own)
    if key == "graphdoctor-outputs":
        if "passed" not in own:
            return own.get("report", "")
        verdict = "passed" if own["passed"] else "differs"
        count = own["outputs_compared"]
        return f"{count} output{'s' if count != 1 else ''} compared, {verdict}"
    if key in ("polygraphy-layerwise", "polygraphy-layerwise-notorch"):
        return f"{fetched} at once, none compared (one runner)"
    if key == "polygraphy-save":
        if "json_bytes" not in own:
            return ""
        return f"{fetched}, JSON written: {format_size(own['json_bytes'])}"
    if key == "polygraphy-compare":
        return f"{fetched.replace(' fetched', '')} compared with the saved JSON (loaded whole)"
    if key == "polygraphy-outputs":
        return "outputs only, none compared (one runner)"
    return ""


def _graphdoctor_layerwise_notes(facts: dict) -> str:
    layerwise = facts.get("layerwise")
    if layerwise is None:
        return facts.get("report", "no layer-wise details in the report")
    if layerwise.get("error"):
        return f"layer-wise error: {layerwise['error']}"
    skipped = ", ".join(f"{count} {why}" for why, count in (layerwise.get("skipped") or {}).items())
    verdict = "passed" if facts.get("passed") else "differs"
    return (
        f"{layerwise['tensors_compared']} tensors compared ({layerwise['tensors_beyond_tolerance']} beyond"
        f" tolerance{'; skipped ' + skipped if skipped else ''}): {_layerwise_method(layerwise)},"
        f" {verdict}; report {format_size(facts['report_bytes'])}"
    )


def _layerwise_method(layerwise: dict) -> str:
    """How they were compared: statistics in one session, fetched in slices, or both."""
    in_graph, fetched = layerwise.get("in_graph", 0), layerwise.get("fetched", layerwise["tensors_compared"])
    slices = (
        f"{fetched} fetched in {layerwise['runs'] - (1 if in_graph else 0)} slice runs of at most"
        f" {layerwise['max_tensors_per_run']} ({format_size(layerwise['max_bytes_per_run'])} fetched)"
    )
    if not in_graph:
        return slices
    both = f"{in_graph} by statistics in one session of both models"
    return f"{both}, {slices}" if fetched else both


def _ratios(series: Series, baseline: Series | None) -> str:
    if series is baseline:
        return "1.00× / 1.00×"
    if baseline is None or not baseline.ok or not series.runs or series.median_wall_s is None:
        return "—"
    time_ratio = _ratio(series.median_wall_s, baseline.median_wall_s)
    memory_ratio = _ratio(series.median_peak_rss_mib, baseline.median_peak_rss_mib)
    prefix = "≥ " if not series.ok else ""  # a failed peer's numbers stop where it failed
    return f"{prefix}{time_ratio} / {memory_ratio}"


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.1f}×" if value is not None and base else "—"


def _describe_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    if not shapes:
        return "the tools' defaults for dynamic dims (no --shape given)"
    return ", ".join(f"{name} {_dims(dims, '×')}" for name, dims in shapes.items())


def source_fingerprint() -> str:
    """A hash of graphdoctor's own source: a tree edited while the bench ran measured two versions."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "graphdoctor").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def render_targets(rows: list[Row]) -> list[str]:
    """Issue 3's promise (layer-wise verify of resnet50 keeps peak RSS under 1 GB), then issue 16's per model."""
    return ["Targets:", *_memory_target(rows), *_floor_targets(rows)]


def _floor_targets(rows: list[Row]) -> list[str]:
    """Issue 16: layer-wise verify of a model against itself within 4× its floor's wall time and 2× its peak RSS,
    judged on the medians."""
    floors = _floors(rows)
    lines = []
    for row in rows:
        if row.tool is None or row.tool.key != "graphdoctor-layerwise":
            continue
        floor = floors.get(row.model)
        wall = median_ratio(row.series, floor, "wall_s")
        rss = median_ratio(row.series, floor, "peak_rss_mib")
        lines.append(
            f"- {row.model} layer-wise over its floor: wall {format_target(wall, FLOOR_WALL)}, peak RSS"
            f" {format_target(rss, FLOOR_RSS)} (medians: {_medians(row.series)} against {_medians(floor)})"
        )
    return lines


def _medians(series: Series | None) -> str:
    if series is None or not series.ok:
        return "not measured" if series is None else f"failed: {series.reason}"
    return f"{format_number(series.median_wall_s, 2)} s, {format_number(series.median_peak_rss_mib, 0)} MiB"


def _memory_target(rows: list[Row]) -> list[str]:
    """Issue 3: judged on the largest peak of the runs, not the median: 'keeps under' holds only if no run
    went over."""
    lines = []
    for row in rows:
        if row.model != TARGET_MODEL or row.tool is None or row.tool.key != "graphdoctor-layerwise":
            continue
        peaks = [run.peak_rss_mib for run in row.series.runs if run.peak_rss_mib is not None]
        worst = max(peaks, default=None)
        met = row.series.ok and worst is not None and worst * MIB < TARGET_BYTES
        lines.append(
            f"- {TARGET_MODEL} layer-wise peak RSS < 1 GB: {'met' if met else 'MISSED'} (largest of"
            f" {len(peaks)} runs {format_number(worst, 0)} MiB,"
            f" median {format_number(row.series.median_peak_rss_mib, 0)} MiB;"
            f" 1 GB = {TARGET_BYTES / MIB:.1f} MiB)"
        )
    if not lines:
        lines.append(f"- {TARGET_MODEL} layer-wise peak RSS < 1 GB: not measured in this run")
    return lines


def write_outputs(rows: list[Row], models: list[BenchModel], environment: dict, markdown: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "verify.md").write_text(markdown)
    raw = {
        "environment": environment,
        "models": [
            {
                "name": m.name,
                "path": str(m.path),
                "size_bytes": m.size_bytes,
                "shapes": m.shapes,
                "inputs_error": m.inputs_error,
                "loads": m.loads,
            }
            for m in models
        ],
        "results": [
            {
                "model": row.model,
                "tool": row.tool.name if row.tool else None,
                "key": row.tool.key if row.tool else None,
                "group": row.tool.group if row.tool else None,
                "skipped": row.skipped,
                "facts": row.facts,
            }
            | (row.series.to_json() if row.series else {})
            for row in rows
        ],
    }
    write_raw(out, "verify", raw)


_progress = reporter("verify")

if __name__ == "__main__":
    run_bench("verify", main)
