"""GD005 risky-simplification: what onnxsim and onnxslim would change in this model, verified.

What it finds
    Runs each installed simplifier (onnxsim, onnxslim) on the model with its default settings, in a child
    process capped in time and memory, then compares the simplified model with the original:
    - outputs that differ beyond the fp32 tolerance on the same inputs (ONNX Runtime CPU with graph
      optimizations off for both models, so that ONNX Runtime's own fusions do not hide the simplifier's), at
      the generated or given input shapes and, when the model has dynamic dims, at a second set of sizes;
    - a simplified model that no longer runs, or has lost a graph input or output;
    - dynamic dims of graph inputs and outputs that the simplifier froze to constants;
    - file growth from constant folding (Expand/Tile/ConstantOfShape materialised into large initializers),
      naming the largest new tensors and the node each was folded from;
    - a simplifier that crashes, times out or runs out of memory on the model (info).
    It only runs with `graphdoctor lint --deep`: each simplifier costs seconds to minutes (onnxsim imports
    torch). A clean result is silent.

Why it matters
    `onnxsim`/`onnxslim` are a reflex step before `trtexec` (ultralytics runs onnxslim on every
    `yolo export simplify=True`), and their output is rarely checked. Users report simplified models whose
    scores changed (BatchNorm fusion in the ONNX optimizer, slice elimination), models that lost an output
    or no longer run, dynamic batch dims silently fixed to 1, and files that grew from 500 MB to 2.5 GB when
    a Tile or Expand was folded. A folded dynamic dim is worse than a rejected one: the engine runs and
    returns wrong results at other sizes.

How to fix
    Deploy the unsimplified model where a simplifier changes results or freezes shapes; TensorRT and ONNX
    Runtime fold constants and fuse BatchNorm themselves when they build. To keep simplifying, turn off the
    pass at fault: onnxsim `--skip-fuse-bn`, `--skip-optimization PASS`, `--no-large-tensor 1MB`; onnxslim
    `--skip-fusion-patterns PATTERN`, `--size-threshold BYTES`. Then check the result with
    `graphdoctor verify original.onnx simplified.onnx`.

Options
    simplifiers: the tools to try, of onnxsim and onnxslim (default both; those not installed are skipped).
    timeout: seconds of wall time per simplifier (300). memory_gib: address-space cap of the child (8).
    max_growth: file growth reported, as a fraction (0.10); min_growth_bytes: and at least this many (1 MiB).
    seed: of the generated inputs (0); `lint --inputs/--shape` gives inputs instead.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.format import format_bytes, format_dtype, format_number, format_shape, format_type
from graphdoctor.analysis.graph import node_label
from graphdoctor.engine import RuleContext
from graphdoctor.errors import GraphDoctorError
from graphdoctor.model import LoadedModel, iter_external_tensors, load_model
from graphdoctor.rule import Finding, Message, RuleKind, RuleMeta, Severity
from graphdoctor.simplify import (
    DEFAULT_MEMORY_BYTES,
    DEFAULT_TIMEOUT,
    SIMPLIFIERS,
    SimplifierRun,
    installed_simplifiers,
    run_simplifier,
)
from graphdoctor.verify.metrics import PRESETS, TensorComparison

__all__ = ["META", "Options", "check"]

logger = logging.getLogger(__name__)

_TOLERANCE = PRESETS["fp32"]
# Below this cosine the simplified model computes something else: even FP16 rounding of a whole network
# stays above it (the fp16 preset's bound). Between it and the fp32 tolerance lies a drift that reordered
# float32 arithmetic can produce (a fused Conv+BatchNorm on a large offset), worth a warning, not an error.
_SAME_RESULTS_COSINE = PRESETS["fp16"].min_cosine
_BACKEND = "ONNX Runtime CPU with graph optimizations and weight prepacking off"
# ops whose outputs change from run to run (Dropout only in training mode), named when the original does
_RANDOM_OPS = frozenset(
    ("Dropout", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")
)
_STATUS_WORDS = {"failed": "error", "timeout": "timed out", "out-of-memory": "out of memory"}


@dataclass(frozen=True)
class Options:
    simplifiers: tuple[str, ...] = SIMPLIFIERS
    timeout: float = DEFAULT_TIMEOUT
    memory_gib: float = DEFAULT_MEMORY_BYTES / 1024**3
    max_growth: float = 0.10
    min_growth_bytes: int = 1024**2
    seed: int = 0


@dataclass(frozen=True)
class _Hints:
    numeric: str
    growth: str


_HINTS = {
    "onnxsim": _Hints("`onnxsim --skip-fuse-bn` or `--skip-optimization PASS`", "`onnxsim --no-large-tensor 1MB`"),
    "onnxslim": _Hints("`onnxslim --skip-fusion-patterns PATTERN`", "`onnxslim --size-threshold 1048576`"),
}

META = RuleMeta(
    code="GD005",
    name="risky-simplification",
    kind=RuleKind.PROBLEM,
    severity=Severity.WARNING,
    summary="runs onnxsim/onnxslim in a sandbox and verifies: changed outputs, frozen dynamic dims, file growth",
    deep=True,
    options=Options(),
    messages={
        "changed_output": Message(
            "{tool} changes output '{output}' on inputs {inputs}: {reason}{numbers} ({backend}, tolerance {tolerance})",
            help="deploy the unsimplified model, or skip the pass at fault ({hint}) and re-check with"
            " `graphdoctor verify original.onnx simplified.onnx`",
        ),
        "frozen_at_size": Message(
            "{tool} folds a dynamic dim into a constant inside the graph: {what} on inputs {inputs_first} but not"
            " on {inputs}: {reason}{numbers} ({backend})",
            help="deploy the unsimplified model to keep dynamic shapes; look for fixed shapes the simplifier trusted"
            " (value_info left by a static export, --overwrite-input-shape / --input-shapes)",
        ),
        "no_longer_runs": Message(
            "{tool}'s simplified model fails on inputs {inputs} where the original runs ({backend}): {error}",
            help="deploy the unsimplified model",
            severity=Severity.ERROR,
        ),
        "io_changed": Message(
            "{tool} changes graph {kind} '{name}': {change}",
            help="callers and engine profiles written for the original no longer fit; deploy the unsimplified model",
        ),
        "frozen_dims": Message(
            "{tool} freezes dynamic dim(s) {dims} of graph {kind} '{name}' to constants: {before} -> {after}",
            help="deploy the unsimplified model to keep dynamic shapes; look for fixed shapes the simplifier trusted"
            " (value_info left by a static export, --overwrite-input-shape / --input-shapes)",
        ),
        "growth": Message(
            "{tool} grows the model from {before} to {after} ({percent}): constant folding stored {count} new"
            " tensor(s) ({new_size}); the largest, '{largest}' {type} ({size}), {source}",
            help="deploy the unsimplified model (TensorRT folds constants at build time), or cap folding: {hint}",
        ),
        "tool_failed": Message(
            "{tool} could not simplify this model ({status}, {seconds} s): {detail}; do not rely on it for this model",
            help="deploy the unsimplified model, or report the failure to the simplifier's maintainers",
            severity=Severity.INFO,
        ),
        "not_verified": Message(
            "outputs before and after simplification were not compared: {reason}; only graph I/O and file"
            " size were checked",
            help="{advice}",
            severity=Severity.INFO,
        ),
        "no_simplifier": Message(
            "no simplifier is installed (looked for {tools}): GD005 checked nothing",
            help="pip install 'graphdoctor[simplify]' (onnxsim, onnxslim), or leave out --deep",
            severity=Severity.INFO,
        ),
    },
)


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    options: Options = ctx.options
    path = ctx.analysis.path
    if path is None:  # an in-memory model: there is no file to hand to a simplifier
        return
    tools = installed_simplifiers(_chosen_tools(options))
    if not tools:
        yield ctx.report("no_simplifier", tools=", ".join(options.simplifiers) or "none: `simplifiers` is empty")
        return
    input_sets, unverified = _input_sets(model, path, ctx.analysis.sample_inputs, options.seed)
    if unverified is not None:
        yield ctx.report("not_verified", reason=unverified.reason, advice=unverified.advice)
    original_bytes = _disk_bytes(path, model)
    with tempfile.TemporaryDirectory(prefix="graphdoctor-gd005-") as tmp:
        for tool in tools:
            run = run_simplifier(
                tool,
                path,
                Path(tmp) / tool,
                timeout=options.timeout,
                memory_bytes=int(options.memory_gib * 1024**3),
            )
            if run.ok:
                yield from _check_simplified(model, ctx, run, input_sets, original_bytes)
            else:
                yield _tool_failed(ctx, run)
            shutil.rmtree(Path(tmp) / tool, ignore_errors=True)  # one simplified copy on disk at a time


def _chosen_tools(options: Options) -> list[str]:
    unknown = sorted(set(options.simplifiers) - set(SIMPLIFIERS))
    if unknown:
        raise GraphDoctorError(f"rule risky-simplification: unknown simplifier(s) {unknown}; known: {SIMPLIFIERS}")
    return list(options.simplifiers)


def _tool_failed(ctx: RuleContext, run: SimplifierRun) -> Finding:
    return ctx.report(
        "tool_failed",
        tool=run.label,
        status=_STATUS_WORDS.get(run.status, run.status),
        seconds=f"{run.seconds:.1f}",
        detail=run.detail.rstrip("."),
    )


def _check_simplified(
    model: ir.Model, ctx: RuleContext, run: SimplifierRun, input_sets: list[_InputSet], original_bytes: int
) -> Iterator[Finding]:
    assert run.output is not None
    try:
        simplified = load_model(run.output)
    except GraphDoctorError as error:
        yield ctx.report(
            "no_longer_runs", tool=run.label, inputs="any", backend="graphdoctor's loader", error=str(error)
        )
        return
    logger.info(
        "%s: %.1f s, %d -> %d nodes, %s -> %s",
        run.label, run.seconds, len(model.graph), len(simplified.model.graph),
        format_bytes(original_bytes), format_bytes(_disk_bytes(run.output, simplified.model)),
    )  # fmt: skip
    yield from _signature_changes(model, simplified.model, ctx, run)
    yield from _growth(model, simplified, ctx, run, original_bytes)
    yield from _output_changes(simplified, ctx, run, input_sets)


# --- inputs and reference outputs --------------------------------------------------------------------------


@dataclass(frozen=True)
class _InputSet:
    label: str  # 'images: float32[1,3,224,224]', for the messages
    feeds: Mapping[str, np.ndarray]
    expected: Mapping[str, np.ndarray]  # the original model's outputs


@dataclass(frozen=True)
class _Unverified:
    reason: str
    advice: str


_GIVE_INPUTS = "give sample inputs: `graphdoctor lint --deep --inputs inputs.npz` (or --shape NAME:DIMS)"


def _input_sets(
    model: ir.Model, path: Path, sample_inputs: Mapping[str, np.ndarray] | None, seed: int
) -> tuple[list[_InputSet], _Unverified | None]:
    """The inputs both models run on, with the original's outputs; or why there are none.

    The first set is the lint's sample inputs, else generated ones; the original runs on it twice, since a model
    with random ops (Dropout in training mode) differs from itself and no comparison would mean anything. When
    the model has dynamic dims, a second set at other sizes catches a dim that the simplifier folded into a
    constant while the declared shape stayed dynamic; it is dropped when the original does not run there.
    The verifier is imported here: only `lint --deep` runs this rule, and every other command loads it."""
    from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend
    from graphdoctor.verify.inputs import generate_inputs

    backend = OnnxruntimeBackend("onnxruntime-cpu", optimize=False)
    try:
        feeds = dict(sample_inputs) if sample_inputs is not None else generate_inputs(model, seed=seed)
    except GraphDoctorError as error:
        return [], _Unverified(f"no inputs to run the models on ({error})", _GIVE_INPUTS)
    try:
        first = _InputSet(_describe(feeds), feeds, backend.run(path, feeds))
        again = backend.run(path, feeds)
    except GraphDoctorError as error:
        return [], _Unverified(f"the original model cannot run on {_BACKEND}: {error}", _GIVE_INPUTS)
    noise = _self_disagreement(model, first.expected, again)
    if noise:
        return [], _Unverified(noise, "export in eval mode (`model.eval()`; GD006 finds training-mode nodes)")
    sets = [first]
    other_shapes = _other_sizes(model, first.feeds)
    if other_shapes:
        try:
            feeds = generate_inputs(model, seed=seed + 1, shapes=other_shapes)
            sets.append(_InputSet(_describe(feeds), feeds, backend.run(path, feeds)))
        except GraphDoctorError as error:
            logger.info("GD005: the original does not run at other dynamic sizes %s: %s", other_shapes, error)
    return sets, None


def _self_disagreement(model: ir.Model, first: Mapping[str, np.ndarray], again: Mapping[str, np.ndarray]) -> str:
    """Why the original's outputs cannot serve as a reference: they change from run to run; '' when they do not."""
    from graphdoctor.verify.compare import compare_outputs

    differing = [c for c in compare_outputs(first, again, _TOLERANCE) if not c.passed]
    if not differing:
        return ""
    random_nodes = [f"{n.op_type} '{node_label(n)}'" for n in model.graph if n.op_type in _RANDOM_OPS]
    cause = f" (random ops: {', '.join(random_nodes[:3])})" if random_nodes else ""
    return (
        f"the original model gives different outputs on two runs with the same inputs{cause}; output"
        f" '{differing[0].name}' differs by up to {format_number(differing[0].max_abs)}"
    )


def _other_sizes(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Input shapes with every dynamic dim at another size, a symbolic name keeping one size across inputs; empty
    when no input has a dynamic dim. Sizes go down where they can (a sequence past the position table fails)."""
    from graphdoctor.verify.inputs import input_specs

    shapes: dict[str, tuple[int, ...]] = {}
    by_symbol: dict[str, int] = {}
    for spec in input_specs(model):
        if spec.name not in feeds or all(isinstance(d, int) for d in spec.dims):
            continue
        sizes = feeds[spec.name].shape
        if len(sizes) != len(spec.dims):
            continue
        shapes[spec.name] = tuple(
            size if isinstance(dim, int) else _remember(by_symbol, dim, _other_size(size))
            for dim, size in zip(spec.dims, sizes, strict=True)
        )
    return shapes


def _remember(by_symbol: dict[str, int], symbol: str | None, size: int) -> int:
    return by_symbol.setdefault(symbol, size) if symbol else size


def _other_size(size: int) -> int:
    """1 -> 2 (a batch); multiples of 32 stay multiples of 32 (detector strides): 224 -> 192; else one less."""
    if size <= 2:
        return size + 1
    if size % 32 == 0:
        return size - 32 if size > 32 else size + 32
    return size - 1


def _describe(feeds: Mapping[str, np.ndarray], limit: int = 3) -> str:
    parts = [f"{name}: {array.dtype}[{','.join(map(str, array.shape))}]" for name, array in feeds.items()]
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


# --- outputs -----------------------------------------------------------------------------------------------


def _output_changes(
    simplified: LoadedModel, ctx: RuleContext, run: SimplifierRun, input_sets: list[_InputSet]
) -> Iterator[Finding]:
    """Changed outputs, each reported once: at the first input set, or, when it only differs at the second (other
    sizes of the dynamic dims), as a dim frozen inside the graph."""
    from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend
    from graphdoctor.verify.compare import compare_outputs
    from graphdoctor.verify.inputs import input_specs

    accepted = {spec.name for spec in input_specs(simplified.model)}
    reported: set[str] = set()
    for index, input_set in enumerate(input_sets):
        feeds = {name: array for name, array in input_set.feeds.items() if name in accepted}
        try:
            actual = OnnxruntimeBackend("onnxruntime-cpu", optimize=False).run(simplified.path, feeds)
        except GraphDoctorError as error:
            yield _does_not_run(ctx, run, input_sets, index, str(error))
            return
        shared = {name: array for name, array in input_set.expected.items() if name in actual}  # lost: io_changed
        for comparison in compare_outputs(shared, actual, _TOLERANCE):
            if comparison.passed or comparison.name in reported:
                continue
            reported.add(comparison.name)
            yield _changed_output(ctx, run, input_sets, index, comparison, shared[comparison.name].dtype)


def _does_not_run(ctx: RuleContext, run: SimplifierRun, input_sets: list[_InputSet], index: int, error: str) -> Finding:
    if index == 0:
        return ctx.report("no_longer_runs", tool=run.label, inputs=input_sets[0].label, backend=_BACKEND, error=error)
    return ctx.report(
        "frozen_at_size",
        severity=Severity.ERROR,
        tool=run.label,
        inputs_first=input_sets[0].label,
        inputs=input_sets[index].label,
        what="the model runs",
        reason=f"it fails: {error}",
        numbers="",
        backend=_BACKEND,
    )


def _changed_output(
    ctx: RuleContext,
    run: SimplifierRun,
    input_sets: list[_InputSet],
    index: int,
    comparison: TensorComparison,
    dtype: np.dtype,
) -> Finding:
    finite = math.isfinite(comparison.max_abs)
    common = {
        "values": [comparison.name],
        "severity": _changed_output_severity(comparison, dtype),
        "tool": run.label,
        "output": comparison.name,
        "inputs": input_sets[index].label,
        "reason": comparison.reason,
        "numbers": _numbers(comparison) if finite else "",
        "max_abs": comparison.max_abs if finite else None,  # None: no number (another shape, inf/NaN)
        "cosine": comparison.cosine if finite else None,
        "backend": _BACKEND,
    }
    if index == 0:
        return ctx.report("changed_output", tolerance=_TOLERANCE.describe(), hint=_HINTS[run.tool].numeric, **common)
    what = f"output '{comparison.name}' matches"
    return ctx.report("frozen_at_size", inputs_first=input_sets[0].label, what=what, **common)


def _numbers(comparison: TensorComparison) -> str:
    """Eight decimals of cosine: a drift past fp32 tolerance shows as 0.9999998, which '1.000000' would hide."""
    return f"; max abs error {format_number(comparison.max_abs)}, cosine {comparison.cosine:.8f}"


def _changed_output_severity(comparison: TensorComparison, dtype: np.dtype) -> Severity:
    """ERROR when the simplified model computes something else: another shape, new inf/NaN, a changed integer
    (indices, counts), a flipped arg-max, or a cosine below what even FP16 rounding reaches. A smaller drift
    past the fp32 tolerance is what reordered float32 arithmetic produces (BatchNorm folded into a Conv with a
    large offset): WARNING, since the simplified model may be as accurate as the original, just different."""
    computes_something_else = (
        not math.isfinite(comparison.max_abs)
        or comparison.cand_nonfinite > comparison.ref_nonfinite
        or not np.issubdtype(dtype, np.inexact)
        or comparison.cosine < _SAME_RESULTS_COSINE
        or (comparison.top1_agreement is not None and comparison.top1_agreement < 1.0)
    )
    return Severity.ERROR if computes_something_else else Severity.WARNING


# --- graph inputs and outputs ------------------------------------------------------------------------------


def _signature_changes(
    original: ir.Model, simplified: ir.Model, ctx: RuleContext, run: SimplifierRun
) -> Iterator[Finding]:
    """Graph inputs and outputs the simplifier removed, retyped, reshaped or froze; outputs by the dims users
    declared dynamic (an input's symbol), since an output dim the exporter merely could not infer may
    legitimately become a constant."""
    input_symbols = {d.value for v in _real_inputs(original) if v.shape for d in v.shape if _is_symbolic(d)}
    pairs = (
        ("input", _real_inputs(original), _real_inputs(simplified)),
        ("output", original.graph.outputs, simplified.graph.outputs),
    )
    for kind, before_values, after_values in pairs:
        after_by_name = {v.name: v for v in after_values}
        for before in before_values:
            after = after_by_name.get(before.name)
            yield from _value_change(ctx, run, kind, before, after, input_symbols)


def _real_inputs(model: ir.Model) -> list[ir.Value]:
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def _value_change(
    ctx: RuleContext, run: SimplifierRun, kind: str, before: ir.Value, after: ir.Value | None, symbols: set[str]
) -> Iterator[Finding]:
    if after is None:
        severity = Severity.ERROR if kind == "output" else Severity.WARNING
        change = f"removed (was {format_type(before)})"
        yield ctx.report(
            "io_changed", values=[before], severity=severity, tool=run.label, kind=kind, name=before.name, change=change
        )
        return
    change = _type_change(before, after)
    if change:
        yield ctx.report("io_changed", values=[before], tool=run.label, kind=kind, name=before.name, change=change)
        return
    frozen = _frozen_dims(before, after, symbols if kind == "output" else None)
    if frozen:
        yield ctx.report(
            "frozen_dims",
            values=[before],
            tool=run.label,
            kind=kind,
            name=before.name,
            dims=", ".join(frozen),
            before=format_type(before),
            after=format_type(after),
        )


def _type_change(before: ir.Value, after: ir.Value) -> str:
    """A dtype, rank or static-dim change, in words; '' when none (or when either side does not say)."""
    if before.dtype is not None and after.dtype is not None and before.dtype != after.dtype:
        return f"dtype {format_dtype(before.dtype)} -> {format_dtype(after.dtype)}"
    if before.shape is None or after.shape is None:
        return ""
    if len(before.shape) != len(after.shape) or any(
        isinstance(b, int) and isinstance(a, int) and a != b for b, a in zip(before.shape, after.shape, strict=True)
    ):
        return f"shape {format_shape(before.shape)} -> {format_shape(after.shape)}"
    return ""


def _frozen_dims(before: ir.Value, after: ir.Value, symbols: set[str] | None) -> list[str]:
    """Dims dynamic before and constant after: any dynamic input dim; output dims only named by an input symbol."""
    if before.shape is None or after.shape is None or len(before.shape) != len(after.shape):
        return []
    frozen = []
    for index, (b, a) in enumerate(zip(before.shape, after.shape, strict=True)):
        if isinstance(b, int) or not isinstance(a, int):
            continue
        symbol = b.value
        if symbols is None or (symbol is not None and symbol in symbols):
            frozen.append(f"'{symbol}'={a}" if symbol else f"#{index}={a}")
    return frozen


def _is_symbolic(dim: int | ir.SymbolicDim) -> bool:
    return not isinstance(dim, int) and dim.value is not None


# --- file growth -------------------------------------------------------------------------------------------


def _growth(
    original: ir.Model, simplified: LoadedModel, ctx: RuleContext, run: SimplifierRun, original_bytes: int
) -> Iterator[Finding]:
    after = _disk_bytes(simplified.path, simplified.model)
    grown = after - original_bytes
    options: Options = ctx.options
    if grown <= max(options.max_growth * original_bytes, options.min_growth_bytes):
        return
    new = _new_tensors(original, simplified.model)
    largest = new[0] if new else None
    yield ctx.report(
        "growth",
        values=[largest] if largest is not None else [],
        nbytes=grown,
        tool=run.label,
        before=format_bytes(original_bytes),
        after=format_bytes(after),
        percent=_growth_text(grown, original_bytes),
        count=len(new),
        new_size=format_bytes(sum(_nbytes(v) for v in new)),
        largest=largest.name if largest is not None else "?",
        type=format_type(largest) if largest is not None else "?",
        size=format_bytes(_nbytes(largest)) if largest is not None else "?",
        source=_folded_from(original, largest.name) if largest is not None else "",
        hint=_HINTS[run.tool].growth,
    )


def _growth_text(grown: int, before: int) -> str:
    ratio = grown / max(before, 1)
    return f"+{ratio:.0%}" if ratio < 10 else f"{(grown + before) / max(before, 1):,.0f}x"


def _new_tensors(original: ir.Model, simplified: ir.Model) -> list[ir.Value]:
    """Initializers of the simplified main graph that the original did not store, largest first."""
    before = {name: _nbytes(value) for name, value in original.graph.initializers.items()}
    new = [
        value
        for name, value in simplified.graph.initializers.items()
        if name not in before or _nbytes(value) > before[name]
    ]
    return sorted(new, key=_nbytes, reverse=True)


def _folded_from(original: ir.Model, name: str | None) -> str:
    """Which node of the original computed the tensor: simplifiers name a folded tensor after the value it replaced."""
    for node in original.graph:
        if any(output.name == name for output in node.outputs):
            return f"folded from {node.op_type} '{node_label(node)}'"
    return "folded from a constant subgraph"


def _nbytes(value: ir.Value | None) -> int:
    tensor = value.const_value if value is not None else None
    return tensor.nbytes if tensor is not None else 0


def _disk_bytes(path: Path, model: ir.Model) -> int:
    """The model file plus every external-data file it references, each counted once."""
    files = {Path(path).resolve()}
    for tensor in iter_external_tensors(model):
        files.add((Path(tensor.base_dir) / tensor.location).resolve())
    return sum(file.stat().st_size for file in files if file.is_file())
