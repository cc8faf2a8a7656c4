"""Benchmark `graphdoctor fix` against onnxsim, onnxslim, onnxoptimizer, onnxscript's optimizer, graphsurgeon.

    .venv/bin/python bench/fix.py                      # the four models; 3 runs (1 on the >2 GB model)
    .venv/bin/python bench/fix.py --models tied,transformer_dynamo --tools graphdoctor,onnxsim --runs 1
    .venv/bin/python bench/fix.py --model-file mine=model.onnx --models mine

Each tool rewrites each model into an empty folder, in a fresh process, N times, round-robin (run i of every
tool before run i + 1 of any). The table gives, per model, the original's size, then for every tool the size
on disk of what it wrote (model plus external data), the median wall time and peak RSS, and whether the
output computes bit-exactly what the original computes: both run on ONNX Runtime CPU with graph
optimizations disabled, on the same generated inputs, each in a child process of its own (a >2 GB model
costs gigabytes to run). graphdoctor runs twice: with its verification gate (the default) and with
`--no-verify`, so the gate's cost can be read off.

Writes bench/out/fix.md (the table) and bench/out/fix.json (every run, sizes, comparisons, the environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from measure import (
    MIB,
    Limits,
    Run,
    Series,
    default_judge,
    describe_environment,
    format_number,
    format_size,
    load_average,
    measure,
    package_version,
    render_environment,
    reporter,
    run_bench,
    run_once,
    write_raw,
)
from models import FIX_MODELS, KNOWN_MODELS, ModelUnavailable, is_large, model_path, model_size
from verify import REDIRECT, source_fingerprint

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = Path(sys.prefix) / "bin"  # the venv running this script; not resolved, or the venv would be lost

PEER_PACKAGES = ("onnxsim", "onnxslim", "onnxoptimizer", "onnxscript")
SMALL_RUNS, LARGE_RUNS = 3, 1
OUTPUT_NAME = "model.onnx"  # what every tool writes into its empty folder (external data beside it)
SEED = 0
SAMPLE_DIMS = {"batch": 2, "sequence": 16}  # symbolic dims of the generated inputs; any other is 1
TOKEN_IDS = 1000  # integer inputs are drawn below this (the tied fixture's vocabulary)
TIED_MODEL = "tied"  # the model where graphdoctor --dedup-transposed must be strictly smaller than every peer

# Each peer as a user calls it from Python, in a fresh interpreter: argv is IN OUT LARGE ("1": over 2 GB, the
# output goes to external data through the tool's own option). Every one takes the path, not a ModelProto,
# where its API can: a >2 GB model does not fit a ModelProto.
ONNXSIM = """
import sys, onnxsim
onnxsim.simplify(sys.argv[1], output_path=sys.argv[2])  # external data above its 100MB threshold
"""
ONNXSLIM = """
import sys, onnxslim
onnxslim.slim(sys.argv[1], sys.argv[2], save_as_external_data=sys.argv[3] == "1")
"""
ONNXOPTIMIZER = """
import os, sys, onnx, onnxoptimizer
from onnxoptimizer import onnx_opt_cpp2py_export as C
passes = onnxoptimizer.get_fuse_and_elimination_passes()  # its default; holds eliminate_duplicate_initializer
if sys.argv[3] == "1":  # optimize(ModelProto) cannot serialize >2 GB: the C++ path API, as its own fallback does
    C.optimize_from_path(sys.argv[1], sys.argv[2], passes, os.path.basename(sys.argv[2]) + ".data")
else:
    onnx.save(onnxoptimizer.optimize(onnx.load(sys.argv[1]), passes), sys.argv[2])
"""
ONNXSCRIPT = """
import os, sys, onnx_ir as ir, onnxscript.optimizer
model = ir.load(sys.argv[1])
onnxscript.optimizer.optimize(model)
ir.save(model, sys.argv[2], external_data=os.path.basename(sys.argv[2]) + ".data" if sys.argv[3] == "1" else None)
"""
GRAPHSURGEON = """
import os, sys, onnx, onnx_graphsurgeon as gs
graph = gs.import_onnx(onnx.load(sys.argv[1]))
graph.fold_constants().cleanup().toposort()
location = os.path.basename(sys.argv[2]) + ".data"
onnx.save(gs.export_onnx(graph), sys.argv[2], save_as_external_data=sys.argv[3] == "1", location=location)
"""


@dataclasses.dataclass(frozen=True)
class DataLimits(Limits):
    """Limits whose memory cap is RLIMIT_DATA (heap and private writable mappings: what could exhaust the
    shared machine), set by a shell that then execs the command, so GNU time still measures the tool itself.
    Not RLIMIT_AS: it also counts read-only file mappings, and onnx-ir maps the whole external data file once
    per tensor (80 × 2.3 GiB of address space on the large model, at about 100 MiB RSS), so an address-space
    cap would fail onnxscript's optimizer for the harness's sake, not the machine's."""

    data_bytes: int = 12 * 1024 * MIB

    def wrap(self, command: list[str]) -> list[str]:
        return ["/bin/sh", "-c", 'ulimit -d "$1"; shift; exec "$@"', "sh", str(self.data_bytes // 1024), *command]


@dataclasses.dataclass
class BenchModel:
    name: str
    path: Path
    size_bytes: int
    large: bool
    original: dict[str, Any] = dataclasses.field(default_factory=dict)  # node/initializer counts, or "error"


@dataclasses.dataclass(frozen=True)
class Tool:
    """A row of the table, and the command that rewrites a model into output_file() in a fresh process."""

    key: str  # for --tools
    name: str
    program: str  # in BIN
    command: Callable[[BenchModel, Path], list[str]]  # (model, scratch folder) -> argv writing output_file()

    @property
    def is_graphdoctor(self) -> bool:
        return self.key.startswith("graphdoctor")


def output_file(scratch: Path) -> Path:
    """Where every tool writes: an empty folder of its own per run, external data beside the model."""
    return scratch / "out" / OUTPUT_NAME


def _graphdoctor(key: str, *extra: str) -> Callable[[BenchModel, Path], list[str]]:
    """`graphdoctor fix MODEL -o OUT --dedup-transposed --format json` (the fix is opt-in: named on every
    model), `--external-data` above 2 GB (chosen there anyway; said, as every peer is told). The JSON report
    goes to KEY.json in the scratch folder, outside the output folder whose size is measured."""

    def command(model: BenchModel, scratch: Path) -> list[str]:
        large = ["--external-data"] if model.large else []
        options = ["-o", str(output_file(scratch)), "--dedup-transposed", *large, *extra, "--format", "json"]
        return [*REDIRECT, str(scratch / f"{key}.json"), str(BIN / "graphdoctor"), "fix", str(model.path), *options]

    return command


def _script(source: str) -> Callable[[BenchModel, Path], list[str]]:
    def command(model: BenchModel, scratch: Path) -> list[str]:
        large = "1" if model.large else "0"
        return [str(BIN / "python"), "-c", source, str(model.path), str(output_file(scratch)), large]

    return command


GRAPHDOCTOR = Tool("graphdoctor", "graphdoctor fix --dedup-transposed", "graphdoctor", _graphdoctor("graphdoctor"))
TOOLS = (
    GRAPHDOCTOR,
    Tool(
        "graphdoctor-no-verify",
        "graphdoctor fix --dedup-transposed --no-verify",
        "graphdoctor",
        _graphdoctor("graphdoctor-no-verify", "--no-verify"),
    ),
    Tool(
        "graphdoctor-strip",
        "graphdoctor fix --dedup-transposed --strip-metadata",
        "graphdoctor",
        _graphdoctor("graphdoctor-strip", "--strip-metadata"),
    ),
    Tool("onnxsim", "onnxsim.simplify(path, output_path=)", "python", _script(ONNXSIM)),
    Tool("onnxslim", "onnxslim.slim(path, out)", "python", _script(ONNXSLIM)),
    Tool("onnxoptimizer", "onnxoptimizer.optimize (fuse + elimination passes)", "python", _script(ONNXOPTIMIZER)),
    Tool("onnxscript", "onnxscript.optimizer.optimize(ir.load(path))", "python", _script(ONNXSCRIPT)),
    Tool("graphsurgeon", "onnx-graphsurgeon fold_constants + cleanup", "python", _script(GRAPHSURGEON)),
)
DEFAULT_TOOLS = tuple(tool.key for tool in TOOLS)


@dataclasses.dataclass
class Row:
    """One (model, tool) result: the timed runs, and what the first successful run wrote."""

    model: str
    tool: Tool | None
    series: Series | None
    size_bytes: int | None = None  # model + external data written by the first successful run
    comparison: dict[str, Any] = dataclasses.field(default_factory=dict)  # against the original, see compare()
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)  # graphdoctor's own reports, see add_facts()
    skipped: str = ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_model:
        return run_model(*args.run_model)
    limits = DataLimits(args.timeout, address_space_bytes=None, data_bytes=int(args.mem_limit_gib * 1024 * MIB))
    tools = [tool for tool in TOOLS if tool.key in args.tools]
    started, load_before = datetime.datetime.now(datetime.timezone.utc), load_average()
    source_before = source_fingerprint()
    rows: list[Row] = []
    models: list[BenchModel] = []
    for name in args.models:
        try:
            path = args.model_files[name] if name in args.model_files else model_path(name)
        except ModelUnavailable as error:
            _progress(f"{name}: skipped: {error}")
            rows.append(Row(name, None, None, skipped=str(error)))
            continue
        model = BenchModel(name, path, model_size(path), is_large(path))
        models.append(model)
        runs = args.runs or (LARGE_RUNS if model.large else SMALL_RUNS)
        rows += bench_model(model, tools, runs, limits)
    environment = describe_environment(started, load_before, limits)
    environment["data_limit_gib"] = args.mem_limit_gib
    environment["versions"] |= {name: package_version(name) for name in PEER_PACKAGES}
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
        f" (default: {','.join(FIX_MODELS)}, or the --model-file ones)",
    )
    parser.add_argument(
        "--runs", type=int, help=f"runs per tool and model (default: {SMALL_RUNS}, {LARGE_RUNS} on models over 2 GB)"
    )
    parser.add_argument("--tools", default=",".join(DEFAULT_TOOLS), help=f"of {[t.key for t in TOOLS]}")
    parser.add_argument("--model-file", action="append", default=[], metavar="NAME=PATH", help="bench any model")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run (default: %(default)s)")
    parser.add_argument(
        "--mem-limit-gib", type=float, default=12.0, help="heap per run, RLIMIT_DATA (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="where fix.md and fix.json go")
    # the comparison's child process: run MODEL on FEEDS (generated first when missing), save OUTPUTS
    parser.add_argument(
        "--run-model", nargs=3, type=Path, metavar=("MODEL", "FEEDS", "OUTPUTS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    args.tools = {key.strip() for key in args.tools.split(",") if key.strip()} | {GRAPHDOCTOR.key}  # the ratios
    unknown = args.tools - {tool.key for tool in TOOLS}
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    args.model_files = dict(_parse_model_file(item, parser) for item in args.model_file)
    default_models = ",".join(args.model_files or FIX_MODELS)
    args.models = [name.strip() for name in (args.models or default_models).split(",") if name.strip()]
    return args


def _parse_model_file(item: str, parser: argparse.ArgumentParser) -> tuple[str, Path]:
    name, sep, path = item.partition("=")
    if not sep or not Path(path).is_file():
        parser.error(f"--model-file wants NAME=PATH to an existing file, got '{item}'")
    return name, Path(path)


# --- running ------------------------------------------------------------------------------------------------


def bench_model(model: BenchModel, tools: list[Tool], runs: int, limits: DataLimits) -> list[Row]:
    """The original's outputs first, then every tool round-robin. Each run writes into a fresh folder that is
    deleted after it (a >2 GB output per tool would not fit the disk); the first successful run's output is
    measured and compared before that. A tool stops at its first failure (failures here are deterministic)."""
    with tempfile.TemporaryDirectory(prefix="gd-bench-fix-") as folder:
        scratch = Path(folder)
        feeds, reference = scratch / "feeds.npz", scratch / "reference.npz"
        _progress(f"{model.name} ({format_size(model.size_bytes)}): the original on ONNX Runtime CPU")
        model.original = _run_in_child(model.path, feeds, reference, limits)
        rows = {
            tool.key: Row(model.name, tool, Series(limits.wrap(tool.command(model, scratch)), [])) for tool in tools
        }
        for round_ in range(1, runs + 1):
            for tool in tools:
                row = rows[tool.key]
                if row.series.runs and not row.series.ok:
                    continue
                _progress(f"{model.name} ({format_size(model.size_bytes)}): {tool.name}, run {round_}/{runs}")
                run_tool(row, scratch, feeds, reference, limits)
    return list(rows.values())


def run_tool(row: Row, scratch: Path, feeds: Path, reference: Path, limits: DataLimits) -> None:
    """One timed run into an empty folder; the first successful output is sized and compared, then removed."""
    output = output_file(scratch)
    shutil.rmtree(output.parent, ignore_errors=True)
    output.parent.mkdir()
    executable = BIN / row.tool.program
    if not executable.exists():
        row.series.runs.append(Run(0.0, None, None, False, f"{executable.name} is not installed in {BIN.parent}"))
        return
    run = measure(row.series.command, 1, limits).runs[0]
    if run.ok and not output.is_file():
        run.ok, run.reason = False, f"exit 0 but no {OUTPUT_NAME} written"
    row.series.runs.append(run)
    if run.ok and row.size_bytes is None:
        row.size_bytes = folder_size(output.parent)
        row.comparison = compare(output, feeds, reference, scratch, limits)
    if run.ok and row.tool.is_graphdoctor:
        add_facts(row.facts, scratch / f"{row.tool.key}.json")
    shutil.rmtree(output.parent, ignore_errors=True)


def folder_size(folder: Path) -> int:
    """Every byte the tool wrote: the model and whatever external data files it put beside it."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def add_facts(facts: dict[str, Any], report: Path) -> None:
    """What graphdoctor says it did (from `fix --format json`): the repairs per rule of its first run, and of
    every run its own seconds and the gate's, whose medians sit beside the medians of the measured runs."""
    try:
        document = json.loads(report.read_text())["fix"]
    except (OSError, ValueError, KeyError) as error:
        facts["report"] = f"unreadable: {error}"
        return
    facts.setdefault("repairs", {f"{fix['code']} {fix['name']}": fix.get("repairs", {}) for fix in document["fixes"]})
    facts.setdefault("seconds_inside", []).append(document.get("seconds"))
    facts.setdefault("gate_seconds", []).append((document.get("verify") or {}).get("seconds"))


def compare(output: Path, feeds: Path, reference: Path, scratch: Path, limits: DataLimits) -> dict[str, Any]:
    """Run the output on the original's inputs in a child process, then compare with the original's outputs:
    `bit_exact` True only when every output has the same name, dtype, shape and bytes."""
    if not reference.exists():
        return {"error": "the original did not run, nothing to compare with"}
    outputs = scratch / "candidate.npz"
    facts = _run_in_child(output, feeds, outputs, limits)
    if "error" in facts:
        return facts
    with np.load(reference) as expected, np.load(outputs) as actual:
        facts |= _differences(dict(expected), dict(actual))
    outputs.unlink()
    return facts


def _differences(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> dict[str, Any]:
    if list(expected) != list(actual):
        return {"bit_exact": False, "mismatch": f"outputs {list(actual)} instead of {list(expected)}"}
    differences = []
    for name, want in expected.items():
        got = actual[name]
        if want.dtype != got.dtype or want.shape != got.shape:
            mismatch = f"{name} is {got.dtype}{list(got.shape)}, not {want.dtype}{list(want.shape)}"
            return {"bit_exact": False, "mismatch": mismatch}
        if want.tobytes() != got.tobytes():
            differences.append(_max_abs_diff(want, got))
    if not differences:
        return {"bit_exact": True}
    return {"bit_exact": False, "max_abs_diff": max(differences)}


def _max_abs_diff(want: np.ndarray, got: np.ndarray) -> float:
    """NaN-aware; 0.0 when only the bytes differ (signed zeros, NaN payloads)."""
    difference = np.abs(want.astype(np.float64) - got.astype(np.float64))
    finite = difference[~np.isnan(difference)]
    return float(finite.max()) if finite.size else 0.0


def _run_in_child(model: Path, feeds: Path, outputs: Path, limits: DataLimits) -> dict[str, Any]:
    """`bench/fix.py --run-model` under the same limits as the tools; its last line is a JSON of counts."""
    command = [sys.executable, __file__, "--run-model", str(model), str(feeds), str(outputs)]
    run = run_once(limits.wrap(command), limits, default_judge)
    if not run.ok:
        return {"error": run.reason}
    counts = next((line for line in reversed(run.output_tail) if line.startswith("{")), None)
    return json.loads(counts) if counts else {"error": "no counts printed"}


def run_model(model_file: Path, feeds_file: Path, outputs_file: Path) -> int:
    """(Child process) Run a model on ONNX Runtime CPU with every graph optimization off, so that what is
    compared is the file's graph, not what ONNX Runtime makes of it; print its node and initializer counts.
    The original's run finds no FEEDS yet and generates them; every output then runs on those."""
    import onnx
    import onnxruntime

    proto = onnx.load(str(model_file), load_external_data=False)
    counts = {"nodes": len(proto.graph.node), "initializers": len(proto.graph.initializer)}
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    if not feeds_file.exists():
        np.savez(feeds_file, **_generate_feeds(proto))
    del proto
    with np.load(feeds_file) as feeds:
        results = session.run(None, dict(feeds))
    np.savez(outputs_file, **{meta.name: value for meta, value in zip(session.get_outputs(), results, strict=True)})
    print(json.dumps(counts))
    return 0


def _generate_feeds(proto) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input: floats N(0, 1), integers token ids below TOKEN_IDS."""
    import onnx

    initializers = {tensor.name for tensor in proto.graph.initializer}
    rng = np.random.default_rng(SEED)
    feeds = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value or SAMPLE_DIMS.get(dim.dim_param, 1) for dim in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = rng.integers(0, TOKEN_IDS, shape).astype(dtype)
    return feeds


# --- reporting ----------------------------------------------------------------------------------------------


def render_markdown(rows: list[Row], models: list[BenchModel], environment: dict) -> str:
    """Per model: the original, then every tool; the targets; where the numbers came from."""
    lines = [
        "| model | tool | size on disk MiB | vs original | median wall s | median CPU s | median peak RSS MiB"
        " | ratio vs graphdoctor (time, memory) | bit-exact | nodes / initializers | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    baselines = {row.model: row for row in rows if row.tool is GRAPHDOCTOR}
    by_name = {model.name: model for model in models}
    shown: set[str] = set()
    for row in rows:
        model = by_name.get(row.model)
        if model is not None and row.model not in shown:  # the original above a model's first row
            shown.add(row.model)
            lines.append(_original_line(model))
        lines.append(_table_line(row, baselines.get(row.model), model))
    lines += [
        "",
        "Size on disk: the model file plus every external data file the tool wrote (MiB = 2^20 bytes)."
        " Ratios: size over the original's; time and peak RSS over graphdoctor's row (with its gate) on the same"
        " model. Bit-exact: the output computes"
        " the same bytes as the original on ONNX Runtime CPU (graph optimizations disabled) for the same generated"
        f" inputs (seed {SEED}; floats N(0, 1), integer ids below {TOKEN_IDS}; dims {SAMPLE_DIMS}, others 1);"
        " otherwise the largest absolute difference.",
        "",
        *render_targets(rows),
        "",
        _render_limits(render_environment(environment), environment),
        "",
        _render_source(environment),
    ]
    return "\n".join(lines) + "\n"


def _original_line(model: BenchModel) -> str:
    counts = _counts(model.original)
    return f"| {model.name} | (original) | {_mib(model.size_bytes)} | 1.00× | — | — | — | — | — | {counts} | |"


def _table_line(row: Row, baseline: Row | None, model: BenchModel | None) -> str:
    if row.tool is None or row.series is None:
        return f"| {row.model} | — | — | — | — | — | — | — | — | — | skipped: {row.skipped} |"
    series = row.series
    size_ratio = f"{row.size_bytes / model.size_bytes:.2f}×" if row.size_bytes is not None and model else "—"
    return (
        f"| {row.model} | {row.tool.name} | {_mib(row.size_bytes)} | {size_ratio}"
        f" | {format_number(series.median_wall_s, 2)} | {format_number(series.median_cpu_s, 2)}"
        f" | {format_number(series.median_peak_rss_mib, 0)} | {_ratios(series, baseline)} | {_exactness(row)}"
        f" | {_counts(row.comparison) if row.size_bytes is not None else '—'} | {_notes(row)} |"
    )


def _mib(size: int | None) -> str:
    """One unit and two decimals for every size: a dedup that saves 30 KB of 12 MB still shows."""
    return "—" if size is None else format_number(size / MIB, 2)


def _notes(row: Row) -> str:
    """graphdoctor's repairs per rule and how much of its time the gate took, then the run status."""
    facts = row.facts
    repairs = "; ".join(
        f"{rule}: {', '.join(f'{count} {kind}' for kind, count in kinds.items()) or 'repaired'}"
        for rule, kinds in facts.get("repairs", {}).items()
    )
    inside, gate = _median(facts.get("seconds_inside")), _median(facts.get("gate_seconds"))
    timing = f"median {inside:.2f} s inside" if inside is not None else ""
    if timing and gate is not None:
        timing += f", of which the gate {gate:.2f} s"
    return "; ".join(filter(None, [repairs, timing, facts.get("report", ""), _status(row.series)]))


def _median(values: list[float | None] | None) -> float | None:
    present = [value for value in values or [] if value is not None]
    return statistics.median(present) if present else None


def _exactness(row: Row) -> str:
    facts = row.comparison
    if not facts:
        return "—"
    if "error" in facts:
        return f"could not run: {facts['error']}"
    if facts["bit_exact"]:
        return "yes"
    if "mismatch" in facts:
        return f"no ({facts['mismatch']})"
    return f"no (max abs diff {facts['max_abs_diff']:.2e})"


def _counts(facts: dict[str, Any]) -> str:
    return f"{facts['nodes']} / {facts['initializers']}" if "nodes" in facts else "—"


def _status(series: Series) -> str:
    count = len(series.runs)
    runs = f"{count} run{'s' if count != 1 else ''}"
    return f"ok ({runs})" if series.ok else f"failed: {series.reason} (run {count})"


def _ratios(series: Series, baseline: Row | None) -> str:
    if baseline is not None and series is baseline.series:
        return "1.00× / 1.00×"
    if baseline is None or baseline.series is None or not baseline.series.ok or series.median_wall_s is None:
        return "—"
    time_ratio = _ratio(series.median_wall_s, baseline.series.median_wall_s)
    memory_ratio = _ratio(series.median_peak_rss_mib, baseline.series.median_peak_rss_mib)
    prefix = "≥ " if not series.ok else ""  # a failed peer's numbers stop where it failed
    return f"{prefix}{time_ratio} / {memory_ratio}"


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.1f}×" if value is not None and base else "—"


def render_targets(rows: list[Row]) -> list[str]:
    """What `fix` promises: graphdoctor's output is bit-exact on every model, and on the tied model, with
    --dedup-transposed, strictly smaller than every peer's output."""
    lines = ["Targets:"]
    for row in rows:
        if row.tool is not GRAPHDOCTOR:
            continue
        exact = row.comparison.get("bit_exact") is True
        lines.append(
            f"- {row.model}: graphdoctor's output bit-exact: {'met' if exact else 'MISSED'} ({_exactness(row)})"
        )
        if row.model == TIED_MODEL:
            lines.append(
                _tied_target(row, [peer for peer in rows if peer.model == row.model and peer.tool is not None])
            )
    return lines


def _tied_target(graphdoctor: Row, rows: list[Row]) -> str:
    peers = [row for row in rows if not row.tool.is_graphdoctor and row.size_bytes is not None]
    mine = graphdoctor.size_bytes
    met = mine is not None and bool(peers) and all(mine < peer.size_bytes for peer in peers)
    sizes = ", ".join(f"{row.tool.key} {row.size_bytes:,}" for row in peers) or "no peer output"
    written = f"graphdoctor {mine:,}" if mine is not None else "graphdoctor wrote nothing"
    verdict = "met" if met else "MISSED"
    claim = "graphdoctor --dedup-transposed strictly smaller than every peer"
    return f"- {TIED_MODEL}: {claim}: {verdict} (bytes: {written}; {sizes})"


def _render_limits(footer: str, environment: dict) -> str:
    """The shared footer states the RLIMIT_AS cap, off here: say which cap applied instead (DataLimits)."""
    cap = f"{environment['data_limit_gib']:g} GiB of heap (RLIMIT_DATA; no address-space limit)"
    return footer.replace(f"{environment['address_space_gib']:.0f} GiB address space", cap)


def _render_source(environment: dict) -> str:
    source = environment["graphdoctor_source"]
    if source["before"] == source["after"]:
        return f"graphdoctor source (graphdoctor/**/*.py) sha256 {source['before']}, unchanged during the run."
    return (
        f"WARNING: graphdoctor's source changed during the run (sha256 {source['before']} → {source['after']}):"
        " the graphdoctor rows may mix two versions; run again."
    )


def write_outputs(rows: list[Row], models: list[BenchModel], environment: dict, markdown: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fix.md").write_text(markdown)
    raw = {
        "environment": environment,
        "models": [dataclasses.asdict(model) for model in models],
        "results": [
            {
                "model": row.model,
                "tool": row.tool.name if row.tool else None,
                "key": row.tool.key if row.tool else None,
                "skipped": row.skipped,
                "size_bytes": row.size_bytes,
                "comparison": row.comparison,
                "facts": row.facts,
            }
            | (row.series.to_json() if row.series else {})
            for row in rows
        ],
    }
    write_raw(out, "fix", raw)


_progress = reporter("fix")

if __name__ == "__main__":
    run_bench("fix", main)
