"""Benchmark `graphdoctor fix --fp16` against the FP16 converters people use today.

    .venv/bin/python bench/fp16.py                                  # every model, every tool
    .venv/bin/python bench/fp16.py --models resnet50,chain3100 --tools graphdoctor,occ --runs 1

Peers (research/fp16.md §2): onnxconverter-common `convert_float_to_float16(model, keep_io_types=True)`
(its `_model_path` variant on the >2 GB model), ONNX Runtime's `onnxruntime.transformers.float16` fork of
it (given the path on the >2 GB model), onnxslim `slim(path, dtype="fp16")` (no options: FP16 I/O) and
onnxsim `quantize_fp16(path, keep_io_types=True)`. graphdoctor runs three times: by default (verification
under FP16 emulation and range analysis included), with `--no-verify` (the conversion alone), and with
`--no-verify --keep-fp32` naming onnxconverter-common's default FP32 ops (Max, Min, Resize, TopK, ...), so
that both keep the same regions in FP32 and place Casts around them: the same work.

Each conversion runs in a fresh process under `/usr/bin/time -v` with a memory cap (RLIMIT_AS), N times
(medians; 1 run on models over 150 MB). Its output is then judged in another capped child process: does ONNX
Runtime CPU load it, and how close are its outputs to the FP32 model's on the same generated inputs (cosine,
max abs error over all float outputs, top-1 agreement for the classifiers). A crash, a timeout or a model
that does not load is a table entry, never a crashed bench.

Writes bench/out/fp16.md (the table) and bench/out/fp16.json (every run, every evaluation, the environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from fp16_models import OWN_MODELS, model_path
from measure import (
    MIB,
    Limits,
    Series,
    describe_environment,
    format_number,
    format_size,
    load_average,
    measure,
    package_version,
    render_environment,
    reporter,
    run_bench,
    write_raw,
)
from models import CACHE, ModelUnavailable, is_large, model_size

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = Path(sys.prefix) / "bin"  # the venv running this script; not resolved, or the venv would be lost
SCRATCH = CACHE / "fp16"  # converted models (deleted once judged) and the FP32 references

DEFAULT_MODELS = (
    "resnet50",
    "convnext_tiny",
    "vit_b_16",
    "bert_opset14",
    "bert",
    "yolo",
    *(name for name in OWN_MODELS if name.startswith("chain")),
    "large",
)
CLASSIFIERS = ("resnet50", "convnext_tiny", "vit_b_16")
# dims of the generated inputs: graphdoctor's --shape, and what every output is judged on
SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "yolo": {"images": (1, 3, 320, 320)},
    "bert": {"input_ids": (1, 128), "attention_mask": (1, 128)},
    "bert_opset14": {"input_ids": (1, 128), "attention_mask": (1, 128)},
    "large": {"x": (1, 4096)},
}
BIG_MODEL_BYTES = 150 * 1000**2  # one run above this size
# no >2 GB support (research/fp16.md §2.7): onnxslim loads everything into one proto and would only fail late
SKIPS = {("onnxslim", "large"): "no >2 GB support (it serializes one proto); skipped to stay under the memory cap"}


@dataclasses.dataclass(frozen=True)
class Tool:
    """A converter as the table names it, and its command for (model name, input path, output path)."""

    name: str
    key: str  # for --tools
    command: Callable[[str, Path, Path], list[str]]


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


def _peer(key: str) -> Callable[[str, Path, Path], list[str]]:
    return lambda name, path, out: [str(BIN / "python"), __file__, "convert", key, str(path), str(out)]


TOOLS = (
    Tool("graphdoctor fix --fp16", "graphdoctor", _graphdoctor()),
    Tool("graphdoctor fix --fp16 --no-verify", "graphdoctor-noverify", _graphdoctor("--no-verify")),
    Tool("graphdoctor --no-verify, occ's FP32 ops kept", "graphdoctor-occ-ops", _graphdoctor_as_occ),
    Tool("onnxconverter-common", "occ", _peer("occ")),
    Tool("onnxruntime.transformers.float16", "ort", _peer("ort")),
    Tool("onnxslim dtype=fp16", "onnxslim", _peer("onnxslim")),
    Tool("onnxsim quantize_fp16", "onnxsim", _peer("onnxsim")),
)


@dataclasses.dataclass
class Row:
    """One (model, tool): the conversion runs, the judged output; `skipped` when it was not run."""

    model: str
    size_bytes: int | None
    tool: str
    series: Series | None = None
    output_bytes: int | None = None
    quality: dict = dataclasses.field(default_factory=dict)
    skipped: str = ""


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in ("convert", "evaluate"):
        return CHILD_COMMANDS[sys.argv[1]](*sys.argv[2:])
    args = parse_args(argv)
    limits = Limits(timeout_s=args.timeout, address_space_bytes=int(args.mem_limit_gib * 1024 * MIB))
    tools = [tool for tool in TOOLS if tool.key in args.tools]
    started, load_before = datetime.datetime.now(datetime.timezone.utc), load_average()
    rows = []
    for name in args.models:
        rows += bench_model(name, tools, args.runs, limits)
    environment = describe_environment(started, load_before, limits)
    environment["versions"] |= {name: package_version(name) for name in ("onnxconverter-common", "onnxslim", "onnxsim")}
    markdown = render_markdown(rows, environment)
    print(markdown)
    write_outputs(rows, environment, markdown, args.out)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--tools", default=",".join(t.key for t in TOOLS), help="comma-separated (default: all)")
    parser.add_argument("--runs", type=int, help="conversions per tool and model (default: 3, 1 over 150 MB)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run (default: %(default)s)")
    parser.add_argument("--mem-limit-gib", type=float, default=12.0, help="address space per run (RLIMIT_AS)")
    parser.add_argument("--out", type=Path, default=OUT, help="where fp16.md and fp16.json go")
    args = parser.parse_args(argv)
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    args.tools = {key.strip() for key in args.tools.split(",") if key.strip()}
    unknown = args.tools - {tool.key for tool in TOOLS}
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    return args


def bench_model(name: str, tools: list[Tool], runs: int | None, limits: Limits) -> list[Row]:
    """Every tool on one model; a model that cannot be had is one skipped row."""
    try:
        path = model_path(name)
    except ModelUnavailable as error:
        _progress(f"{name}: skipped: {error}")
        return [Row(name, None, "—", skipped=str(error))]
    size = model_size(path)
    count = runs or (1 if size > BIG_MODEL_BYTES else 3)
    (SCRATCH / name / "reference.npz").unlink(missing_ok=True)  # a rebuilt model must not meet old outputs
    rows = []
    for tool in tools:
        if (tool.key, name) in SKIPS:
            rows.append(Row(name, size, tool.name, skipped=SKIPS[tool.key, name]))
            continue
        _progress(f"{name} ({format_size(size)}): {tool.name} × {count}")
        rows.append(bench_tool(name, path, size, tool, count, limits))
    return rows


def bench_tool(name: str, path: Path, size: int, tool: Tool, runs: int, limits: Limits) -> Row:
    """Convert `runs` times into a fresh directory, judge the last output, then delete it (they are big)."""
    directory = SCRATCH / name / tool.key
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    out = directory / f"{name}.fp16.onnx"
    series = measure(tool.command(name, path, out), runs, limits)
    row = Row(name, size, tool.name, series)
    if out.exists():
        row.output_bytes = sum(file.stat().st_size for file in directory.iterdir())
        row.quality = judge_output(name, path, out, limits)
    shutil.rmtree(directory, ignore_errors=True)
    return row


def judge_output(name: str, fp32: Path, fp16: Path, limits: Limits) -> dict:
    """Load and compare in a capped child process: a converter's broken model must not take this one down."""
    reference = SCRATCH / name / "reference.npz"
    command = [str(BIN / "python"), __file__, "evaluate", str(fp32), str(fp16), str(reference)]
    command.append(json.dumps({"shapes": SHAPES.get(name, {}), "classifier": name in CLASSIFIERS}))
    run = measure(command, 1, limits).runs[0]
    for line in reversed(run.output_tail):
        if line.startswith("{"):
            return json.loads(line)
    return {"loads": None, "error": f"evaluation failed: {run.reason}"}


# --- the child commands --------------------------------------------------------------------------------


def convert(key: str, source: str, target: str) -> int:
    """One peer conversion, as its documentation shows it; the >2 GB model through each one's path API."""
    import onnx

    large = is_large(Path(source))
    if key == "onnxslim":
        import onnxslim

        onnxslim.slim(source, output_model=target, dtype="fp16")
        return 0
    if key == "onnxsim":
        import onnxsim

        model = onnxsim.quantize_fp16(source, keep_io_types=True)
    elif key == "occ":
        from onnxconverter_common import float16

        if large:
            model = float16.convert_float_to_float16_model_path(source, keep_io_types=True)
        else:
            model = float16.convert_float_to_float16(onnx.load(source), keep_io_types=True)
    elif key == "ort":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(source if large else onnx.load(source), keep_io_types=True)
    else:
        raise SystemExit(f"unknown converter {key}")
    onnx.save(model, target, save_as_external_data=large, location=Path(target).name + ".data")
    return 0


def evaluate(fp32: str, fp16: str, reference: str, options: str) -> int:
    """Print one JSON line: does ORT CPU load the FP16 model, and how close are its outputs to FP32's."""
    import numpy as np
    import onnxruntime

    settings = json.loads(options)
    if not Path(reference).exists():
        feeds = _generate_inputs(fp32, settings["shapes"])
        session = onnxruntime.InferenceSession(fp32, providers=["CPUExecutionProvider"])
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        del session
        np.savez(reference, **{f"in.{k}": v for k, v in feeds.items()}, **{f"out.{k}": v for k, v in outputs.items()})
    saved = np.load(reference)
    feeds = {k[3:]: saved[k] for k in saved.files if k.startswith("in.")}
    expected = {k[4:]: saved[k] for k in saved.files if k.startswith("out.")}
    try:
        session = onnxruntime.InferenceSession(fp16, providers=["CPUExecutionProvider"])
    except Exception as error:
        print(json.dumps({"loads": False, "error": _first_line(error)}))
        return 0
    types = {i.name: i.type for i in session.get_inputs()}
    feeds = {k: v.astype(np.float16) if types.get(k) == "tensor(float16)" else v for k, v in feeds.items()}
    try:
        actual = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    except Exception as error:
        print(json.dumps({"loads": True, "error": "run: " + _first_line(error)}))
        return 0
    print(json.dumps({"loads": True, **_compare(expected, actual, settings["classifier"])}))
    return 0


def _generate_inputs(path: str, shapes: dict[str, list[int]]) -> dict:
    """Seeded inputs: N(0,1) floats, token ids below 1000, a mask whose tail is padding."""
    import numpy as np
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    rng = np.random.default_rng(0)
    feeds = {}
    for value in graph.input:
        tensor_type = value.type.tensor_type
        shape = tuple(shapes.get(value.name) or [d.dim_value or 1 for d in tensor_type.shape.dim])
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in value.name:
            feeds[value.name] = (np.arange(shape[-1]) < shape[-1] * 3 // 4).astype(dtype) * np.ones(shape, dtype)
        else:
            feeds[value.name] = rng.integers(0, 1000, shape).astype(dtype)
    return feeds


def _compare(expected: dict, actual: dict, classifier: bool) -> dict:
    """Over every float output concatenated (so BERT's two outputs count together); top-1 on the first."""
    import numpy as np

    names = [name for name in expected if np.issubdtype(expected[name].dtype, np.floating)]
    if any(name not in actual for name in names):
        return {"error": f"outputs renamed: {sorted(actual)}"}
    ref = np.concatenate([expected[n].astype(np.float64).ravel() for n in names])
    got = np.concatenate([actual[n].astype(np.float64).ravel() for n in names])
    finite = np.isfinite(got)
    cosine = float(np.dot(ref, got) / (np.linalg.norm(ref) * np.linalg.norm(got))) if finite.all() else None
    result = {"cosine": cosine, "max_abs": float(np.max(np.abs(ref - got))), "non_finite": int((~finite).sum())}
    if classifier:
        first = names[0]
        result["top1"] = float(np.mean(expected[first].argmax(-1) == actual[first].argmax(-1)))
    return result


def _first_line(error: Exception) -> str:
    text = " ".join(str(error).split()).replace("|", "/")
    return (text[:200] + "…") if len(text) > 200 else text


CHILD_COMMANDS: dict[str, Callable[..., int]] = {"convert": convert, "evaluate": evaluate}


# --- reporting ---------------------------------------------------------------------------------------------


def render_markdown(rows: list[Row], environment: dict) -> str:
    lines = [
        "| model | FP32 size | tool | median wall s | median peak RSS MiB | output size (× FP32) | ORT loads"
        " | cosine | max abs | top-1 | status |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    lines += [_table_line(row) for row in rows]
    lines += ["", render_environment(environment)]
    return "\n".join(lines) + "\n"


def _table_line(row: Row) -> str:
    size = format_size(row.size_bytes)
    if row.series is None:
        return f"| {row.model} | {size} | {row.tool} | — | — | — | — | — | — | — | skipped: {row.skipped} |"
    series, quality = row.series, row.quality
    runs = f" ({len(series.runs)} run{'s' if len(series.runs) != 1 else ''})"
    status = "converted" + runs if series.ok else f"failed: {series.reason}" + runs
    if quality.get("error"):
        status += f"; ORT: {quality['error']}"
    ratio = f" ({row.output_bytes / row.size_bytes:.2f}×)" if row.output_bytes and row.size_bytes else ""
    loads = {True: "yes", False: "**no**", None: "—"}[quality.get("loads")]
    non_finite = f" ({quality['non_finite']} non-finite)" if quality.get("non_finite") else ""
    top1 = quality.get("top1")
    return (
        f"| {row.model} | {size} | {row.tool} | {format_number(series.median_wall_s, 2)} |"
        f" {format_number(series.median_peak_rss_mib, 0)} | {format_size(row.output_bytes)}{ratio} | {loads} |"
        f" {format_number(quality.get('cosine'), 6)}{non_finite} | {format_number(quality.get('max_abs'), 4)} |"
        f" {'—' if top1 is None else f'{top1:.0%}'} | {status} |"
    )


def write_outputs(rows: list[Row], environment: dict, markdown: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fp16.md").write_text(markdown)
    raw = {
        "environment": environment,
        "results": [
            {
                "model": row.model,
                "size_bytes": row.size_bytes,
                "tool": row.tool,
                "skipped": row.skipped,
                "output_bytes": row.output_bytes,
                "quality": row.quality,
            }
            | (row.series.to_json() if row.series else {})
            for row in rows
        ],
    }
    write_raw(out, "fp16", raw)


_progress = reporter("fp16")

if __name__ == "__main__":
    run_bench("fp16", main)
