"""How much margin FP16 range analysis needs: a tensor that stayed below the limit on the calibration inputs,
how far above it do other inputs of the same distribution take it?

    .venv/bin/python bench/fp16_margin.py                          # 7 models, 1 and 8 calibration batches, 30 others
    .venv/bin/python bench/fp16_margin.py --models resnet50,t5_large_activations --others 10

`fix --fp16` keeps FP32 the nodes whose output reached FP16's overflow on the sample inputs. A tensor whose
largest magnitude was just below 65504 there can exceed it on the next input. Method, per model (the fixtures
of `fixtures.torch_exports`, random weights, built when missing):
- draw 8 calibration batches (seeds 0-7) and `--others` other batches (seeds 1000...) of one distribution:
  `generate_inputs` (images uniform in [0, 1), batch 1, 224x224) for float-input models, and
  `fixtures.torch_exports.sample_inputs` (token ids below the vocabulary, a padded mask) for token-id models;
- run the FP32 model on ONNX Runtime CPU with every float32 node output fetched, and reduce each tensor with
  `analysis.ranges.range_of`; the 8-batch calibration range is their `merge_ranges`;
- per tensor, ratio = max |x| over the others / max |x| over the calibration batches. If a tensor's calibration
  maximum sat exactly at 65504/m, it crosses 65504 on the others iff ratio > m: the fraction of tensors with
  ratio > m is the share a threshold of 65504/m would miss, at worst. Left out: tensors whose maximum is the
  same on every batch (masks, shape arithmetic in float: input-independent), which never move, and outputs of
  ops bounded by 1 whatever their input (Softmax, Sigmoid, Tanh, ...), which can never sit near 65504.
- at each model's own scale, "kept" counts the tensors a threshold of 65504/m keeps FP32 (calibration maximum
  at or above it: the cost of a margin) and "missed" those below it on the calibration that reach 65520 (inf
  in FP16) on an other batch (the risk). The fixtures' random weights leave their activations far below
  65504, except t5_large_activations (a residual stream ~300 that T5LayerNorm squares to ~90000, above the
  limit on every batch); so `--near-limit` models are also measured scaled: their token embeddings multiplied
  by f, chosen so that their largest activation on calibration batch 0 is 0.99 x 65504 (just below the limit:
  the risk of a small margin) or 65504 / 3 (well below it: the cost of a large one); x² scales by f².

Writes bench/results/fp16_margin.md (the method, the tables and the recommended `--fp16-max` default).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphdoctor.analysis.ranges import FP16_MAX, FP16_OVERFLOW, float_tensor_names, merge_ranges, range_of
from graphdoctor.analysis.types import infer_types
from graphdoctor.model import load_model
from graphdoctor.verify.backends.onnxruntime import quiet_session_options, session_model
from graphdoctor.verify.inputs import bind_inputs, generate_inputs

ROOT = Path(__file__).resolve().parents[1]
MODELS = (
    "yolo",
    "resnet50",
    "bert_opset14",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "t5_encoder",
    "t5_large_activations",
)
NEAR_LIMIT = ("t5_large_activations",)
NEAR_LIMIT_TARGETS = (0.99 * 65504.0, 65504.0 / 3)  # the scaled models' largest activation on calibration batch 0
MARGINS = (1.0, 1.5, 2.0, 4.0)
CALIBRATION_BATCHES = (1, 8)
OTHER_SEED = 1000  # the others' seeds start here, far from the calibration seeds 0-7
TOP_FRACTION = 0.1  # "largest tensors": the top decile of a model's tensors by calibration magnitude
GROWTH_OTHERS = (1, 10, 30)  # how the tail grows with the number of unseen batches
OUT = ROOT / "bench" / "results" / "fp16_margin.md"
AUTOCAST_DATA_MAX = 512.0  # ModelOpt AutoCast's default threshold for node outputs (its docs: data_max=512)
BOUNDED_OPS = frozenset({"Softmax", "Sigmoid", "Tanh", "HardSigmoid", "Erf", "Sin", "Cos"})  # |y| <= 1


@dataclass
class ModelMaxima:
    """Per tensor, max |x| on each batch: rows are batches (calibration first), columns tensors."""

    name: str
    inputs: str  # how the batches were drawn, in words
    tensors: list[str]
    op_types: list[str]
    calibration: np.ndarray  # [8, tensors]: max_abs on each calibration batch
    merged8: np.ndarray  # [tensors]: max_abs of the 8 calibration ranges merged (merge_ranges)
    others: np.ndarray  # [others, tensors]
    seconds: float
    scaled: bool  # a fixture with scaled embeddings: in the scale table only (its ratios are the fixture's)

    def varying(self) -> np.ndarray:
        """Tensors that could approach 65504 and whose maximum moves between batches: finite and nonzero on
        the calibration, not the output of an op bounded by 1."""
        every = np.concatenate([self.calibration, self.others])
        moves = every.max(axis=0) > every.min(axis=0)
        usable = np.isfinite(every).all(axis=0) & (self.calibration[0] > 0)
        unbounded = np.array([op not in BOUNDED_OPS for op in self.op_types])
        return moves & usable & unbounded

    def calibration_max(self, batches: int) -> np.ndarray:
        return self.merged8 if batches == 8 else self.calibration[:batches].max(axis=0)


def measure(name: str, path: Path, others: int, scaled: bool = False) -> ModelMaxima:
    """Run the model at `path` on 8 calibration and `others` other batches, one ONNX Runtime session."""
    import onnxruntime as ort

    model = load_model(path).model
    infer_types(model)
    graph_inputs = {value.name for value in model.graph.inputs}
    names = [n for n in float_tensor_names(model) if n not in graph_inputs]
    producers = {v.name: node for node in model.graph for v in node.outputs}
    options = quiet_session_options()
    session = ort.InferenceSession(session_model(path, names, options), options, providers=["CPUExecutionProvider"])
    draw, inputs = _input_source(model, path)
    start = time.perf_counter()
    rows, merged = [], None
    seeds = [*range(max(CALIBRATION_BATCHES)), *range(OTHER_SEED, OTHER_SEED + others)]
    for index, seed in enumerate(seeds):
        arrays = dict(zip(names, session.run(names, draw(seed)), strict=True))
        ranges = {n: range_of(n, a, producers.get(n)) for n, a in arrays.items() if a.dtype == np.float32}
        rows.append([ranges[n].max_abs if n in ranges else np.nan for n in names])
        if index < max(CALIBRATION_BATCHES):
            merged = ranges if merged is None else {n: merge_ranges(merged[n], r) for n, r in ranges.items()}
        print(f"  {name}: batch {index + 1}/{len(seeds)}", file=sys.stderr, end="\r", flush=True)
    table = np.array(rows, dtype=np.float64)
    calibration = max(CALIBRATION_BATCHES)
    assert merged is not None
    return ModelMaxima(
        name=name,
        inputs=inputs,
        tensors=names,
        op_types=[producers[n].op_type for n in names],
        calibration=table[:calibration],
        merged8=np.array([merged[n].max_abs if n in merged else np.nan for n in names]),
        others=table[calibration:],
        seconds=time.perf_counter() - start,
        scaled=scaled,
    )


def _input_source(model, path: Path):
    """A seeded batch maker, and its description: token-id models get the fixtures' sample inputs."""
    has_integer_input = any(not v.dtype.is_floating_point() for v in model.graph.inputs if v.dtype is not None)
    if has_integer_input:
        sample = _fixtures().sample_inputs
        shapes = {name: array.shape for name, array in sample(path, 0).items()}
        described = ", ".join(f"{n}[{'x'.join(map(str, s))}]" for n, s in shapes.items())
        return functools.partial(sample, path), f"sample_inputs: {described}"
    feeds = generate_inputs(model, seed=0)
    described = ", ".join(f"{n}[{'x'.join(map(str, a.shape))}]" for n, a in feeds.items())

    def draw(seed: int) -> Mapping[str, np.ndarray]:
        return bind_inputs(model, generate_inputs(model, seed=seed))

    return draw, f"generate_inputs: {described}"


def scaled_copy(measured: ModelMaxima, path: Path, target_max: float, folder: Path) -> tuple[Path, float]:
    """The model with its token embedding multiplied by f: its largest activation on calibration batch 0,
    a square of the embedding scale, moves to `target_max`."""
    import onnx_ir as ir

    largest = float(measured.calibration[0][measured.varying()].max())
    factor = math.sqrt(target_max / largest)
    model = ir.load(path)
    embedding = next(
        node.inputs[0]
        for node in model.graph
        if node.op_type == "Gather" and node.inputs[0] is not None and node.inputs[0].const_value is not None
    )
    embedding.const_value = ir.tensor(embedding.const_value.numpy() * np.float32(factor), name=embedding.name)
    target = folder / f"{path.stem}_x{factor:.4f}.onnx"
    ir.save(model, target)
    return target, factor


@functools.cache
def _fixtures():
    """fixtures.torch_exports; the repository root goes on sys.path first (bench/ is the script's)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from fixtures import torch_exports

    return torch_exports


# --- statistics ---------------------------------------------------------------------------------------------


@dataclass
class Stats:
    tensors: int
    median: float
    p99: float
    p999: float
    max: float
    worst: str  # the tensor of the largest ratio
    above: dict[float, float]  # margin -> fraction of tensors with ratio > margin


def selected(model: ModelMaxima, batches: int, top: bool = False) -> np.ndarray:
    """The tensors measured (see `varying`); with `top`, only the largest decile by calibration maximum."""
    mask = model.varying()
    if top and mask.any():
        calibration = model.calibration_max(batches)
        mask &= calibration >= np.quantile(calibration[mask], 1 - TOP_FRACTION)
    return mask


def ratios(model: ModelMaxima, batches: int, others: int | None = None, top: bool = False) -> np.ndarray:
    """max over the first `others` other batches / max over the first `batches` calibration batches."""
    mask = selected(model, batches, top)
    return model.others[:others].max(axis=0)[mask] / model.calibration_max(batches)[mask]


def stats(parts: Sequence[ModelMaxima], batches: int, top: bool = False) -> Stats:
    pooled = np.concatenate([ratios(m, batches, top=top) for m in parts])
    candidates = []
    for model in parts:
        indices = np.flatnonzero(selected(model, batches, top))
        for index, ratio in zip(indices, ratios(model, batches, top=top), strict=True):
            candidates.append((float(ratio), model, int(index)))
    _, worst_model, worst_index = max(candidates, key=lambda c: c[0])
    label = worst_model.tensors[worst_index]
    prefix = f"{worst_model.name}: " if len(parts) > 1 else ""
    return Stats(
        tensors=pooled.size,
        median=float(np.median(pooled)),
        p99=float(np.percentile(pooled, 99)),
        p999=float(np.percentile(pooled, 99.9)),
        max=float(pooled.max()),
        worst=f"{prefix}{worst_model.op_types[worst_index]} `{label[-48:]}`",
        above={m: float(np.mean(pooled > m)) for m in MARGINS},
    )


def kept(model: ModelMaxima, batches: int, margin: float) -> int:
    """Tensors a threshold of 65504/m keeps in FP32: their calibration maximum reaches it (masks and other
    input-independent tensors left out, as everywhere)."""
    return int(np.count_nonzero(model.varying() & (model.calibration_max(batches) >= FP16_MAX / margin)))


def missed(model: ModelMaxima, batches: int, margin: float) -> int:
    """Tensors below 65504/m on the calibration batches that reach 65520 (inf in FP16) on an other batch."""
    below = model.calibration_max(batches) < FP16_MAX / margin
    return int(np.count_nonzero(model.varying() & below & (model.others.max(axis=0) >= FP16_OVERFLOW)))


# --- report -------------------------------------------------------------------------------------------------


def ratio_table(measured: Sequence[ModelMaxima], batches: int) -> list[str]:
    margins = " | ".join(f"> {m:g}" for m in MARGINS)
    lines = [
        f"| model | tensors | median | p99 | p99.9 | max | {margins} | largest ratio |",
        "|---|" + "---:|" * (5 + len(MARGINS)) + "---|",
    ]
    rows = [(m.name, stats([m], batches)) for m in measured]
    rows += [("**all**", stats(measured, batches)), ("**all, largest 10%**", stats(measured, batches, top=True))]
    for label, s in rows:
        above = " | ".join(_fraction(s.above[m]) for m in MARGINS)
        lines.append(
            f"| {label} | {s.tensors} | {s.median:.3f} | {s.p99:.3f} | {s.p999:.3f} | {s.max:.3f} | {above}"
            f" | {s.worst} |"
        )
    return lines


def scale_table(measured: Sequence[ModelMaxima]) -> list[str]:
    """At each model's own scale: what a threshold of 65504/m keeps in FP32, and what it misses; last, what
    ModelOpt AutoCast's default threshold (data_max 512) keeps."""
    cells = [f"{b} batch{'es' if b > 1 else ''}: m = {m:g}" for b in CALIBRATION_BATCHES for m in MARGINS]
    cells.append(f"8 batches: {AUTOCAST_DATA_MAX:g} (AutoCast)")
    lines = [f"| model | {' | '.join(cells)} |", "|---|" + "---:|" * len(cells)]
    for model in measured:
        row = [f"{kept(model, b, m)} / {missed(model, b, m)}" for b in CALIBRATION_BATCHES for m in MARGINS]
        autocast = FP16_MAX / AUTOCAST_DATA_MAX
        row.append(f"{kept(model, 8, autocast)} / {missed(model, 8, autocast)}")
        lines.append(f"| {model.name} | {' | '.join(row)} |")
    return lines


def growth_table(measured: Sequence[ModelMaxima], others: int) -> list[str]:
    counts = [n for n in GROWTH_OTHERS if n <= others]
    lines = [
        "| calibration batches | unseen batches | p99 | p99.9 | max |",
        "|---:|---:|---:|---:|---:|",
    ]
    for batches in CALIBRATION_BATCHES:
        for count in counts:
            pooled = np.concatenate([ratios(m, batches, others=count) for m in measured])
            p99, p999 = np.percentile(pooled, 99), np.percentile(pooled, 99.9)
            lines.append(f"| {batches} | {count} | {p99:.3f} | {p999:.3f} | {pooled.max():.3f} |")
    return lines


def _fraction(value: float) -> str:
    return "0" if value == 0 else f"{100 * value:.2f}%"


def recommend(fixtures: Sequence[ModelMaxima]) -> float:
    """The smallest margin of MARGINS above every ratio of the largest tensors (the ones that can sit near
    65504) with one calibration batch, and above every ratio of every tensor with 8."""
    one_top, eight = stats(fixtures, 1, top=True), stats(fixtures, 8)
    return next((m for m in MARGINS if m > one_top.max and m > eight.max), MARGINS[-1])


def reasoning(fixtures: Sequence[ModelMaxima], scaled: Sequence[ModelMaxima], margin: float) -> list[str]:
    """Why `margin`, in numbers from this run."""
    one, one_top = stats(fixtures, 1), stats(fixtures, 1, top=True)
    eight, eight_top = stats(fixtures, 8), stats(fixtures, 8, top=True)
    others = fixtures[0].others.shape[0]
    beyond = [
        f"{m.op_types[i]} `{m.tensors[i]}` ({m.name}, {r:.2f}x)"
        for m in fixtures
        for i, r in zip(np.flatnonzero(selected(m, 1)), ratios(m, 1), strict=True)
        if r > margin
    ]
    lines = [
        f"- Rule: the smallest margin of {', '.join(f'{m:g}' for m in MARGINS)} above every ratio of the largest"
        " 10% of tensors with one calibration batch (the tensors that sit near 65504 first) and above every"
        f" ratio of every tensor with 8 calibration batches. Measured: {one_top.max:.2f}x and {eight.max:.2f}x.",
        f"- No margin is not an option: with one calibration batch {_fraction(one.above[1.0])} of the tensors"
        f" reach a larger maximum on the others, {_fraction(one_top.above[1.5])} of the largest 10% by more"
        f" than 1.5x (largest: {one_top.worst}).",
    ]
    for model in scaled:
        peak = float(np.concatenate([model.calibration, model.others])[:, model.varying()].max()) / FP16_MAX
        lines.append(
            f"- {model.name}, whose largest tensor peaks at {peak:.2f} x 65504 over all {len(model.others) + 8}"
            f" batches: 65504 with one calibration batch misses {missed(model, 1, 1.0)} tensors that overflow on"
            f" other batches; 65504/{margin:g} misses {missed(model, 1, margin)} and keeps {kept(model, 1, margin)}"
            f" FP32; 65504/4 keeps {kept(model, 1, 4.0)}; AutoCast's {AUTOCAST_DATA_MAX:g} keeps"
            f" {kept(model, 8, FP16_MAX / AUTOCAST_DATA_MAX)} of {int(model.varying().sum())}."
        )
    lines += [
        f"- With one batch, {len(beyond)} tensor(s) of {one.tensors} exceed {margin:g}x: "
        + ("; ".join(beyond) or "none")
        + ". A LayerNorm ReduceMean is a mean of the residual stream, whose values cancel: |mean| <= max |x| of"
        " its input, so it cannot reach 65504 before its input does, and the input is measured and kept itself.",
        f"- Calibrating over 8 batches is what makes {margin:g} safe: the worst ratio falls from {one.max:.2f}x to"
        f" {eight.max:.2f}x over all tensors and from {one_top.max:.2f}x to {eight_top.max:.2f}x over the largest"
        f" 10%. Growth with unseen batches (table above): {_growth(fixtures, 1)} with one calibration batch,"
        f" {_growth(fixtures, 8)} with 8. `fix --fp16` given a single batch should say so and suggest a folder.",
        "- Larger margins cost FP32 nodes that never overflow (the scaled model well below the limit: kept at"
        f" 65504/4, never reaching 65504), and ModelOpt AutoCast's data_max of {AUTOCAST_DATA_MAX:g} is a margin"
        f" of {FP16_MAX / AUTOCAST_DATA_MAX:.0f}: it keeps every tensor above 512.",
        "- What a margin cannot cover: inputs of another distribution than the calibration's (generated inputs"
        f" when the deployment sees real images or text), and more unseen inputs than the {others} per model"
        " measured here: a deployment sees millions. For light-tailed values the maximum of n values grows like"
        " sqrt(2 ln n): from one batch of ~1e5 elements to 1e6 such batches, ~1.5x, within 2 (an estimate, not"
        " measured); heavy tails can exceed it.",
    ]
    return lines


def _growth(fixtures: Sequence[ModelMaxima], batches: int) -> str:
    """'max 2.38x -> 3.74x -> 4.22x over 1, 10, 30 unseen batches'"""
    counts = [n for n in GROWTH_OTHERS if n <= fixtures[0].others.shape[0]]
    maxima = [float(np.concatenate([ratios(m, batches, others=n) for m in fixtures]).max()) for n in counts]
    return f"max {' -> '.join(f'{x:.2f}x' for x in maxima)} over {', '.join(map(str, counts))} unseen batches"


def write_report(measured: Sequence[ModelMaxima], others: int, seconds: float, out: Path) -> str:
    import onnxruntime as ort

    fixtures = [m for m in measured if not m.scaled]
    margin = recommend(fixtures)
    header = [
        "# FP16 range analysis: the margin calibration needs",
        "",
        f"Measured {datetime.date.today().isoformat()} by `bench/fp16_margin.py --others {others}` in"
        f" {seconds:.0f} s (ONNX Runtime {ort.__version__} CPU, Python {platform.python_version()},"
        f" {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end).",
        "",
        "## Method",
        "",
        *__doc__.split("\n\n")[2].splitlines(),
        "",
        "Models and inputs:",
        "",
        *(
            f"- {m.name}: {m.inputs}; {m.varying().sum()} of {len(m.tensors)} float32 node outputs measured"
            f" (the others are input-independent or bounded by 1); {m.seconds:.0f} s"
            for m in measured
        ),
        "",
    ]
    body = []
    for batches in CALIBRATION_BATCHES:
        body += [
            f"## Ratio max(others) / max(calibration), {batches} calibration batch{'es' if batches > 1 else ''},"
            f" {others} others",
            "",
            "`> m`: share of tensors whose maximum on the others exceeds m times the calibration maximum (a threshold"
            " of 65504/m misses them, at worst). The scaled models are left out: their ratios are their fixture's.",
            "",
            *ratio_table(fixtures, batches),
            "",
        ]
    body += [
        "## At each model's own scale: tensors kept FP32 / overflows missed, threshold 65504/m",
        "",
        "`kept`: tensors whose calibration maximum reaches the threshold (the converter keeps their nodes FP32);"
        " `missed`: tensors below it on the calibration that reach 65520 (inf in FP16) on an other batch.",
        "",
        *scale_table(measured),
        "",
        "## The tail grows with the number of unseen batches (fixtures pooled)",
        "",
        *growth_table(fixtures, others),
        "",
        f"## Recommendation: `--fp16-max` default 65504 / {margin:g} = {FP16_MAX / margin:,.0f}",
        "",
        *reasoning(fixtures, [m for m in measured if m.scaled], margin),
        "",
    ]
    text = "\n".join(header + body)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated fixture names")
    parser.add_argument("--near-limit", default=",".join(NEAR_LIMIT), help="of those, the ones also run scaled")
    parser.add_argument("--others", type=int, default=30, help="batches not used for calibration")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    known = set(_fixtures().NAMES)
    names = [n for n in args.models.split(",") if n]
    skipped = [n for n in names if n not in known]
    if skipped:
        print(f"bench/fp16_margin: no fixture {skipped}; skipped", file=sys.stderr)
    near_limit = set(args.near_limit.split(","))
    start = time.perf_counter()
    measured = []
    with tempfile.TemporaryDirectory() as folder:
        for name in (n for n in names if n in known):
            path = _fixtures().path(name)
            unscaled = _measured(name, path, args.others)
            measured.append(unscaled)
            for target_max in NEAR_LIMIT_TARGETS if name in near_limit else ():
                scaled, factor = scaled_copy(unscaled, path, target_max, Path(folder))
                label = f"{name} x{factor:.3f} (max {target_max / FP16_MAX:.2f} x 65504)"
                measured.append(_measured(label, scaled, args.others, scaled=True))
    print(write_report(measured, args.others, time.perf_counter() - start, args.out))


def _measured(name: str, path: Path, others: int, scaled: bool = False) -> ModelMaxima:
    result = measure(name, path, others, scaled)
    print(f"  {name}: {result.seconds:.0f} s{' ' * 20}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
