"""Benchmark `graphdoctor lint` against its peers: `polygraphy check lint` and `onnx.checker` (full check).

    .venv/bin/python bench/lint.py                            # all models, 5 runs (3 on the >2 GB model)
    .venv/bin/python bench/lint.py --models tiny,yolo,resnet50 --runs 3    # start-up and two real exports
    .venv/bin/python bench/lint.py --models resnet50,yolo --runs 2
    .venv/bin/python bench/lint.py --model-file mine=path/to/model.onnx --models mine

Each tool runs on each model in a fresh process, N times; the table shows medians of wall time and peak
RSS, and each peer's ratio to graphdoctor on the same model in the same run. A peer that fails (timeout,
out of memory, a crash, an error on a valid model) is a row with its reason, never a crashed bench.
`graphdoctor --version` is measured too: the start-up floor no model can go below.

polygraphy runs twice per model: as installed in this venv, where torch is installed and polygraphy imports
it, and from a venv of its own under .cache/ with what `check lint` imports but no torch, as a user without
torch has it (created on first use, reused after).

Writes bench/out/lint.md (the table) and bench/out/lint.json (every run, the environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from measure import (
    MIB,
    Limits,
    Run,
    Series,
    default_judge,
    describe_environment,
    format_number,
    format_size,
    hidden_torch_env,
    load_average,
    measure,
    render_environment,
    reporter,
    run_bench,
    run_once,
    write_raw,
)
from models import ALL_MODELS, ModelUnavailable, is_large, model_path, model_size

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = Path(sys.prefix) / "bin"  # the venv running this script; not resolved, or the venv would be lost
NO_TORCH_VENV = ROOT / ".cache" / "bench-polygraphy-notorch"  # polygraphy as a user without torch has it
# What `polygraphy check lint` imports, and ml_dtypes as setup.cfg pins it for graphdoctor: with 0.7.0 (what pip
# picks unpinned) every process that imports onnx pays about 0.5 s more, and the ratio would measure that.
NO_TORCH_PACKAGES = ("polygraphy", "onnx-graphsurgeon", "onnxruntime", "onnx", "ml_dtypes<0.7")
NO_TORCH_NAMES = tuple(requirement.partition("<")[0] for requirement in NO_TORCH_PACKAGES)
TINY_MODEL = ROOT / ".cache" / "bench" / "tiny.onnx"
TINY_MODEL_TEXT = """<ir_version: 8, opset_import: ["" : 17]>
tiny (float[1,4] x) => (float[1,4] y) {
    a = Relu(x)
    y = Add(a, x)
}"""
LINT_MODELS = ("tiny", *ALL_MODELS)

TINY_MODEL_TARGET_S = 0.5  # issue 14: start-up dominates, and it is what a pre-commit hook pays per call
SMALL_MODEL_TARGET_S = 1.0
SMALL_MODEL_BYTES = 200 * 1000**2
LARGE_MODEL_TARGET_BYTES = 500 * 1000**2
CHECKER_SCRIPT = "import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True)"


@dataclasses.dataclass(frozen=True)
class Tool:
    """A peer as the table names it, and how to run it on one model in a fresh process."""

    name: str
    key: str  # for --tools
    command: Callable[[Path], list[str]]
    env: Callable[[], dict[str, str]] | None = None


GRAPHDOCTOR = Tool(
    "graphdoctor lint",
    "graphdoctor",
    lambda path: [str(BIN / "graphdoctor"), "lint", str(path), "--exit-zero", "--format", "json"],
)
TOOLS = (
    GRAPHDOCTOR,
    Tool(
        "polygraphy check lint",
        "polygraphy",
        lambda path: [str(BIN / "polygraphy"), "check", "lint", str(path)],
    ),
    Tool("onnx.checker full_check", "checker", lambda path: [str(BIN / "python"), "-c", CHECKER_SCRIPT, str(path)]),
    Tool(
        "polygraphy check lint (venv without torch)",
        "polygraphy-venv",
        lambda path: [str(NO_TORCH_VENV / "bin" / "polygraphy"), "check", "lint", str(path)],
    ),
    Tool(
        "polygraphy check lint (torch hidden)",
        "polygraphy-notorch",
        lambda path: [str(BIN / "polygraphy"), "check", "lint", str(path)],
        hidden_torch_env,
    ),
)
DEFAULT_TOOLS = ("graphdoctor", "polygraphy", "polygraphy-venv", "checker")


@dataclasses.dataclass
class Row:
    """One (model, tool) result; `series` is None when the model or the tool could not be had."""

    model: str
    size_bytes: int | None
    tool: str
    series: Series | None
    skipped: str = ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limits = Limits(timeout_s=args.timeout, address_space_bytes=int(args.mem_limit_gib * 1024 * MIB))
    tools = [tool for tool in TOOLS if tool.key in args.tools]
    if "polygraphy-venv" in args.tools:
        install_no_torch_venv()
    started, load_before = datetime.datetime.now(datetime.timezone.utc), load_average()
    rows = [measure_startup(args.runs or 5, limits)]
    for name in args.models:
        rows += bench_model(name, args.model_files, tools, args.runs, limits)
    environment = describe_environment(started, load_before, limits)
    environment["versions"]["polygraphy (venv without torch)"] = _no_torch_versions()
    markdown = render_markdown(rows, environment)
    print(markdown)
    write_outputs(rows, environment, markdown, args.out)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated (default: {','.join(LINT_MODELS)}; or --model-file's)")
    parser.add_argument("--runs", type=int, help="runs per tool and model (default: 5, and 3 on models over 2 GB)")
    parser.add_argument("--tools", default=",".join(DEFAULT_TOOLS), help=f"of {[t.key for t in TOOLS]}")
    parser.add_argument("--model-file", action="append", default=[], metavar="NAME=PATH", help="bench any model")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run (default: %(default)s)")
    parser.add_argument("--mem-limit-gib", type=float, default=16.0, help="address space per run (RLIMIT_AS)")
    parser.add_argument("--out", type=Path, default=OUT, help="where lint.md and lint.json go")
    args = parser.parse_args(argv)
    args.tools = {key.strip() for key in args.tools.split(",")} | {"graphdoctor"}  # the ratios need it
    args.model_files = dict(_parse_model_file(item, parser) for item in args.model_file)
    default_models = ",".join(args.model_files or LINT_MODELS)
    args.models = [name.strip() for name in (args.models or default_models).split(",") if name.strip()]
    unknown = args.tools - {tool.key for tool in TOOLS}
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    return args


def _parse_model_file(item: str, parser: argparse.ArgumentParser) -> tuple[str, Path]:
    name, sep, path = item.partition("=")
    if not sep or not Path(path).is_file():
        parser.error(f"--model-file wants NAME=PATH to an existing file, got '{item}'")
    return name, Path(path)


def install_no_torch_venv() -> None:
    """Create NO_TORCH_VENV with NO_TORCH_PACKAGES unless it holds them already (its marker file names them); a
    failure leaves the tool uninstalled, which its rows then say."""
    python, marker = NO_TORCH_VENV / "bin" / "python", NO_TORCH_VENV / "bench-packages.txt"
    if marker.exists() and marker.read_text() == " ".join(NO_TORCH_PACKAGES):
        return
    _progress(f"creating {NO_TORCH_VENV} ({', '.join(NO_TORCH_PACKAGES)}, no torch) ...")
    steps = (
        [sys.executable, "-m", "venv", "--clear", str(NO_TORCH_VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *NO_TORCH_PACKAGES],
    )
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            _progress(f"{NO_TORCH_VENV}: {step[2]} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
            return
    marker.write_text(" ".join(NO_TORCH_PACKAGES))


def _no_torch_versions() -> str:
    """What the venv without torch holds, for the footer (importlib.metadata here reads only this venv)."""
    python = NO_TORCH_VENV / "bin" / "python"
    if not python.exists():
        return "not installed"
    script = (
        "import importlib.metadata as m, importlib.util as u; "
        f"print(', '.join(f'{{p}} {{m.version(p)}}' for p in {NO_TORCH_NAMES!r}), "
        "'torch absent' if u.find_spec('torch') is None else 'TORCH PRESENT')"
    )
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "does not run"


def bench_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every measured run (`base`, else ours): with bytecode caching on, as an installed
    tool runs.
    PYTHONDONTWRITEBYTECODE would make graphdoctor, an editable install, compile its sources on every call
    (about 0.1 s), while the peers' wheels ship their .pyc files."""
    return {name: value for name, value in (base or os.environ).items() if name != "PYTHONDONTWRITEBYTECODE"}


def measure_startup(runs: int, limits: Limits) -> Row:
    """The floor: interpreter, click and graphdoctor's own import, no model, no onnx-ir."""
    _progress(f"start-up: graphdoctor --version × {runs}")
    command = [str(BIN / "graphdoctor"), "--version"]
    run_once(command, limits, default_judge, bench_env())  # unmeasured: bytecode caches, page cache
    return Row("(start-up)", None, "graphdoctor --version", measure(command, runs, limits, env=bench_env()))


def tiny_model() -> Path:
    """A two-node model: linting it costs start-up and nothing else (issue 14's 0.5 s target)."""
    if not TINY_MODEL.exists():
        import onnx  # here, not at the top: only this model needs it in the bench process

        TINY_MODEL.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(onnx.parser.parse_model(TINY_MODEL_TEXT), TINY_MODEL)
    return TINY_MODEL


def bench_model(name: str, model_files: dict[str, Path], tools: list[Tool], runs: int | None, limits: Limits):
    """Every tool on one model; a model that cannot be had is one skipped row."""
    try:
        path = model_files[name] if name in model_files else tiny_model() if name == "tiny" else model_path(name)
    except ModelUnavailable as error:
        _progress(f"{name}: skipped: {error}")
        return [Row(name, None, "—", None, skipped=str(error))]
    size = model_size(path)
    count = runs or (3 if is_large(path) else 5)
    _progress(f"{name} ({format_size(size)}): {', '.join(tool.name for tool in tools)}, round-robin × {count}")
    series = run_round_robin(tools, path, count, limits)
    return [Row(name, size, tool.name, tool_series) for tool, tool_series in zip(tools, series, strict=True)]


def run_round_robin(tools: list[Tool], path: Path, runs: int, limits: Limits) -> list[Series]:
    """Run i of every tool before run i + 1 of any, so load that drifts on a shared machine hits every tool
    alike (as bench/verify.py does). Each tool first runs once unmeasured (bytecode caches, page cache) and
    stops at its first failure, as `measure` does: failures here are deterministic."""
    commands = [tool.command(path) for tool in tools]
    envs = [bench_env(tool.env() if tool.env else None) for tool in tools]
    series = [Series(command, []) for command in commands]
    for command, env, tool_series in zip(commands, envs, series, strict=True):
        if Path(command[0]).exists():
            run_once(command, limits, default_judge, env)
        else:
            tool_series.runs.append(
                Run(0.0, None, None, False, f"{Path(command[0]).name} is not installed in {Path(command[0]).parent}")
            )
    for _ in range(runs):
        for command, env, tool_series in zip(commands, envs, series, strict=True):
            if tool_series.ok or not tool_series.runs:
                tool_series.runs.append(run_once(command, limits, default_judge, env))
    return series


# --- reporting ---------------------------------------------------------------------------------------------


def render_markdown(rows: list[Row], environment: dict) -> str:
    """The table, then the targets the project has to show, then where the numbers came from."""
    lines = [
        "| model | size | tool | median wall s | median CPU s | median peak RSS MiB"
        " | ratio vs graphdoctor (time, memory) | status |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    baselines = {row.model: row.series for row in rows if row.tool == GRAPHDOCTOR.name}
    lines += [_table_line(row, baselines.get(row.model)) for row in rows]
    lines += ["", *render_targets(rows), "", render_environment(environment)]
    return "\n".join(lines) + "\n"


def _table_line(row: Row, baseline: Series | None) -> str:
    size = format_size(row.size_bytes) if row.size_bytes else "—"
    if row.series is None:
        return f"| {row.model} | {size} | {row.tool} | — | — | — | — | skipped: {row.skipped} |"
    series = row.series
    runs = f" ({len(series.runs)} run{'s' if len(series.runs) != 1 else ''})"
    status = "ok" + runs if series.ok else f"failed: {series.reason}" + (" (run 1)" if len(series.runs) == 1 else runs)
    return (
        f"| {row.model} | {size} | {row.tool} | {format_number(series.median_wall_s, 2)} |"
        f" {format_number(series.median_cpu_s, 2)} | {format_number(series.median_peak_rss_mib, 0)} |"
        f" {_ratios(series, baseline)} | {status} |"
    )


def _ratios(series: Series, baseline: Series | None) -> str:
    if baseline is None or not baseline.ok or series is baseline:
        return "1.00× / 1.00×" if series is baseline else "—"
    time_ratio = _ratio(series.median_wall_s, baseline.median_wall_s)
    memory_ratio = _ratio(series.median_peak_rss_mib, baseline.median_peak_rss_mib)
    prefix = "≥ " if not series.ok else ""  # a failed peer's numbers stop where it failed
    return f"{prefix}{time_ratio} / {memory_ratio}"


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.1f}×" if value is not None and base else "—"


def render_targets(rows: list[Row]) -> list[str]:
    """The promises: a tiny model lints in at most 0.5 s, small ones (under 200 MB) well under a second, and a
    >2 GB model in under 500 MB.
    Wall time is judged; CPU time is shown beside it, since other load on a shared machine inflates wall time."""
    lines = ["Targets:"]
    for row in rows:
        if row.tool != GRAPHDOCTOR.name or row.series is None or row.size_bytes is None:
            continue
        if SMALL_MODEL_BYTES <= row.size_bytes <= 2 * 1000**3:
            continue
        if row.model == "tiny":
            wall = row.series.median_wall_s
            met = row.series.ok and wall is not None and wall <= TINY_MODEL_TARGET_S
            lines.append(
                f"- tiny (start-up): lint {format_number(wall, 2)} s wall ({format_number(row.series.median_cpu_s, 2)}"
                f" s CPU), target ≤ {TINY_MODEL_TARGET_S} s: {'met' if met else 'MISSED'}"
            )
        elif row.size_bytes > 2 * 1000**3:
            rss = row.series.median_peak_rss_mib
            met = row.series.ok and rss is not None and rss * MIB < LARGE_MODEL_TARGET_BYTES
            lines.append(
                f"- {row.model} (>2 GB): peak RSS {format_number(rss, 0)} MiB, target < 500 MB (476.8 MiB): "
                f"{'met' if met else 'MISSED'}"
            )
        else:
            wall = row.series.median_wall_s
            met = row.series.ok and wall is not None and wall < SMALL_MODEL_TARGET_S
            lines.append(
                f"- {row.model} (small): lint {format_number(wall, 2)} s wall"
                f" ({format_number(row.series.median_cpu_s, 2)} s CPU),"
                f" target < {SMALL_MODEL_TARGET_S:.0f} s: {'met' if met else 'MISSED'}"
            )
    return lines


def write_outputs(rows: list[Row], environment: dict, markdown: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "lint.md").write_text(markdown)
    raw = {
        "environment": environment,
        "results": [
            {"model": row.model, "size_bytes": row.size_bytes, "tool": row.tool, "skipped": row.skipped}
            | (row.series.to_json() if row.series else {})
            for row in rows
        ],
    }
    write_raw(out, "lint", raw)


_progress = reporter("lint")

if __name__ == "__main__":
    run_bench("lint", main)
