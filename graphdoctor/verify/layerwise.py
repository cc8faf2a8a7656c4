"""Layer-wise comparison: the intermediate tensors both models share by name, and the first node whose output
leaves tolerance, with how the error grew into it and out of it.

How: when both backends run on ONNX Runtime's CPU provider (the reference on the oracle, the candidate on
ONNX Runtime CPU or an FP16/BF16 emulation), both models run merged in one session whose added nodes reduce
every shared tensor pair to a few difference statistics (`verify.lockstep`): one run, only scalars fetched,
memory near the two models' own working sets. The pairs those cannot judge (shapes that differ, inf or NaN,
sequences, optionals), and every pair on other backends (GPU, TensorRT) or with `--layers-per-run`, are
fetched instead, a slice at a time.

Why slices: exposing every tensor at once (Polygraphy's `--onnx-outputs '*'`) holds all activations of both
models in memory together (2.17 GB and 337 MB of JSON for one ResNet-50 image). Here each run exposes a slice
of names sized so that both models' slices fit a byte budget (256 MiB by default; sizes from shape inference
on the actual inputs, else measured or estimated, see `_Planner`), compares the slice, keeps only the
numbers and drops the arrays before the next run. `--layers-per-run N` fixes the slice length instead.

Exposing a tensor (as an output, or to the statistics) can stop ONNX Runtime from fusing the node computing
it (a fused-away tensor is computed when asked for); both models get the same tensors exposed, so the effect
cancels out.

Error and growth: a tensor's error is its relative L2 error ||cand - ref|| / ||ref|| over the elements finite
in both, which scaling does not change (a Mul by 100 multiplies the absolute error, not this). A node's growth
is its output's error over the largest error among its inputs: inf ("new") where its inputs agree exactly and
its output does not, i.e. where an error starts, or where the output turns non-finite; well above 1 where the
node amplifies error (a subtraction of near-equal values, a normalization dividing by a tiny variance). Graph
inputs are the same arrays for both models, so their error is 0.

Integer and bool tensors are compared too, exactly (an FP16 conversion must not change an index, a count or
a bucket id; one off by one is a failure however close the floats around it are), by value: an int32 3 equals
an int64 3, since a fix may narrow an intermediate's dtype. `compare_integer_tensors` compares only those
computed from float values (the integers a change of float arithmetic can change), for `verify_models`' gate.
Sequences compare element by element; string tensors are left out.

Only the metrics are kept: a report is plain data (`LayerwiseReport.as_dict`), stored in a verdict's
`details["layerwise"]` and rendered by `graphdoctor.report.layerwise`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.format import format_bytes, format_dtype
from graphdoctor.analysis.graph import is_constant_node
from graphdoctor.errors import GraphDoctorError
from graphdoctor.verify.backends import Backend
from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend, release_freed_memory
from graphdoctor.verify.lockstep import (
    RANDOM_OPS,
    LockstepRun,
    LockstepUnavailable,
    Pair,
    PairStatistics,
    comparable,
)
from graphdoctor.verify.metrics import (
    PRESETS,
    TensorComparison,
    Tolerance,
    compare_values,
    differing_reason,
    failure_reason,
    not_identical_reason,
)

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "Divergence",
    "LayerRecord",
    "LayerwiseOptions",
    "LayerwiseReport",
    "Probe",
    "compare_integer_tensors",
    "compare_layerwise",
    "computes_integers_from_floats",
    "fit_count",
    "layerwise_details",
    "plan_probes",
]

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 256 * 2**20  # both models' slices of one run together
FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14  # 6.1e-05: below it FP16 loses precision (subnormal)
FP16_MIN_SUBNORMAL = 2.0**-24  # 5.96e-08: below half of it FP16 rounds to 0
PATH_LENGTH = 8  # rows of the diverging path: the first divergence and the nodes after it
MAX_STAGES = 30  # lines of the per-stage table
_UNKNOWN_NBYTES = 4 * 2**20  # a tensor whose size neither inference nor its inputs tell
_FLOAT_CASTS = (ir.DataType.FLOAT, ir.DataType.DOUBLE)
_HALF_CASTS = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


@dataclass(frozen=True)
class LayerwiseOptions:
    """How to slice: a byte budget for both models' tensors per run, or a fixed number of tensors per run."""

    budget_bytes: int = DEFAULT_BUDGET_BYTES
    layers_per_run: int | None = None  # overrides the budget (and fetches every tensor)
    in_graph: bool = True  # statistics in the graph where both backends allow it; False: fetch every tensor
    progress: bool | None = None  # None: a progress bar when stderr is a terminal and CI is unset


@dataclass(frozen=True)
class Probe:
    """One tensor to compare: its name, the reference node computing it, that node's activation inputs."""

    name: str
    node: str
    op: str
    inputs: tuple[str, ...]  # non-constant inputs of the node, by name


@dataclass(frozen=True)
class LayerRecord:
    """The numbers kept for one compared tensor (the arrays are dropped)."""

    name: str
    node: str
    op: str
    shape: tuple[int, ...]
    passed: bool
    max_abs: float
    rel_err: float  # ||cand - ref|| / ||ref|| over the elements finite in both
    cosine: float
    mismatch: float
    ref_nonfinite: int
    cand_nonfinite: int
    ref_absmax: float  # largest finite |value| of the reference (FP16 overflows beyond 65504)
    growth: float | None  # rel_err over its inputs' largest; inf where the inputs agree exactly
    reason: str = ""

    @property
    def is_nonfinite(self) -> bool:
        """The candidate has inf/NaN where the reference has none."""
        return self.cand_nonfinite > self.ref_nonfinite


@dataclass(frozen=True)
class Divergence:
    """Where something first goes wrong: the tensor, its node, its inputs' errors and what may explain it."""

    kind: str  # 'tolerance' (first tensor beyond tolerance) or 'nonfinite' (first new inf/NaN)
    record: LayerRecord
    inputs: tuple[tuple[str, float | None], ...]  # (name, rel_err; None when not compared)
    hints: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayerwiseReport:
    records: list[LayerRecord]
    runs: int
    max_tensors_per_run: int
    max_bytes_per_run: int  # both models' fetched arrays of the largest run
    budget_bytes: int
    layers_per_run: int | None
    skipped: dict[str, int]
    first_divergence: Divergence | None
    first_nonfinite: Divergence | None
    first_difference: str | None  # the first tensor that is not bit-identical
    path: list[str]  # tensor names from the first divergence downstream
    stages: list[dict[str, Any]]
    seconds: float
    in_graph: int = 0  # tensors compared by statistics computed in the graph (one run of both models)
    in_graph_unavailable: str = ""  # why no tensor was, when none was
    over_budget: str = ""  # why a slice fetched more than the budget, when one did

    def as_dict(self) -> dict[str, Any]:
        """Plain data for `BackendVerdict.details["layerwise"]` and the JSON report:

        {"tensors_compared", "tensors_beyond_tolerance", "runs", "max_tensors_per_run", "max_bytes_per_run",
         "budget_bytes", "layers_per_run", "skipped": {reason: count}, "first_divergence": DIVERGENCE | null,
         "first_nonfinite": DIVERGENCE | null, "first_difference": name | null, "path": [name, ...],
         "stages": [{"stage", "tensors", "beyond_tolerance", "max_abs", "rel_err", "min_cosine"}],
         "tensors": [RECORD, ...] (topological order of the reference), "seconds",
         "in_graph": count compared in the graph, "fetched": count fetched in slices, "in_graph_unavailable",
         "over_budget": why a slice exceeded the budget, or ""}
        RECORD: {"name", "node", "op", "shape", "passed", "max_abs", "rel_err", "cosine", "mismatch",
                 "ref_nonfinite", "cand_nonfinite", "ref_absmax", "growth", "reason"}
        DIVERGENCE: {"kind", "tensor", "node", "op", "inputs": [{"name", "rel_err"}], "hints": [str]}
        """
        return {
            "tensors_compared": len(self.records),
            "tensors_beyond_tolerance": sum(1 for r in self.records if not r.passed),
            "runs": self.runs,
            "max_tensors_per_run": self.max_tensors_per_run,
            "max_bytes_per_run": self.max_bytes_per_run,
            "budget_bytes": self.budget_bytes,
            "layers_per_run": self.layers_per_run,
            "skipped": dict(self.skipped),
            "first_divergence": _divergence_dict(self.first_divergence),
            "first_nonfinite": _divergence_dict(self.first_nonfinite),
            "first_difference": self.first_difference,
            "path": list(self.path),
            "stages": list(self.stages),
            "tensors": [_record_dict(r) for r in self.records],
            "seconds": round(self.seconds, 3),
            "in_graph": self.in_graph,
            "fetched": len(self.records) - self.in_graph,
            "in_graph_unavailable": self.in_graph_unavailable,
            "over_budget": self.over_budget,
        }


def _record_dict(record: LayerRecord) -> dict[str, Any]:
    data = dict(record.__dict__)
    data["shape"] = list(record.shape)
    return data


def _divergence_dict(divergence: Divergence | None) -> dict[str, Any] | None:
    if divergence is None:
        return None
    record = divergence.record
    return {
        "kind": divergence.kind,
        "tensor": record.name,
        "node": record.node,
        "op": record.op,
        "inputs": [{"name": name, "rel_err": err} for name, err in divergence.inputs],
        "hints": list(divergence.hints),
    }


# --- entry points -------------------------------------------------------------------------------------------


def layerwise_details(
    reference: Path,
    candidate: Path,
    backend: Backend,
    inputs: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    options: LayerwiseOptions,
) -> dict[str, Any]:
    """The report as plain data for a verdict; a backend or model that cannot do it gives {"error": why}."""
    try:
        return compare_layerwise(reference, candidate, backend, inputs, tolerance, options).as_dict()
    except GraphDoctorError as error:
        return {"error": str(error)}


def compare_layerwise(
    reference: Path,
    candidate: Path,
    backend: Backend,
    inputs: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    options: LayerwiseOptions | None = None,
    oracle: Backend | None = None,
) -> LayerwiseReport:
    """Compare the tensors `reference` (on `oracle`, ONNX Runtime CPU by default) and `candidate` (on
    `backend`) share by name, in the graph where both backends allow it, else in slices that fit the budget,
    and locate the first divergence."""
    options = options or LayerwiseOptions()
    oracle = oracle or OnnxruntimeBackend("onnxruntime-cpu")
    start = time.perf_counter()
    planner, skipped = _plan(reference, candidate, inputs)
    probes = planner.probes
    logger.info("layer-wise: %d shared tensors to compare", len(probes))
    measured = _Measurements(inputs, planner.graph_inputs, tolerance)
    slices, unavailable = _measure(reference, candidate, oracle, backend, planner, inputs, measured, options)
    records = measured.records(probes)
    first = next((r for r in records if not r.passed), None)
    nonfinite = next((r for r in records if r.is_nonfinite), None)
    divergences = _explain(
        [(kind, r) for kind, r in (("tolerance", first), ("nonfinite", nonfinite)) if r is not None],
        probes,
        measured,
        reference,
        candidate,
        backend,
    )
    in_graph = len(probes) - sum(slices)
    return LayerwiseReport(
        records=records,
        runs=len(slices) + (1 if in_graph else 0),
        max_tensors_per_run=max(slices, default=0),
        max_bytes_per_run=measured.max_bytes,
        budget_bytes=options.budget_bytes,
        layers_per_run=options.layers_per_run,
        skipped=dict(Counter(skipped) + Counter(measured.skipped)),
        first_divergence=divergences.get("tolerance"),
        first_nonfinite=divergences.get("nonfinite"),
        first_difference=next((r.name for r in records if r.max_abs > 0 or r.is_nonfinite), None),
        path=diverging_path(first, probes, records) if first else [],
        stages=stage_summary(records),
        seconds=time.perf_counter() - start,
        in_graph=in_graph,
        in_graph_unavailable="" if in_graph else unavailable,
        over_budget=measured.over_budget,
    )


def _measure(
    reference: Path,
    candidate: Path,
    oracle: Backend,
    backend: Backend,
    planner: _Planner,
    inputs: Mapping[str, np.ndarray],
    measured: _Measurements,
    options: LayerwiseOptions,
) -> tuple[list[int], str]:
    """Every probe into `measured`: in the graph where both backends allow it, the rest fetched in slices.
    Returns the slices' lengths, and why no statistics were computed in the graph ("" when they were, or
    when slices were asked for)."""
    slices: list[int] = []
    unavailable = ""
    with _progress(len(planner.probes), options.progress) as advance:
        pending = planner.probes
        if options.in_graph and options.layers_per_run is None:
            try:
                pending = _compare_in_graph(reference, candidate, oracle, backend, planner, inputs, measured)
            except LockstepUnavailable as why:
                unavailable = str(why)
                logger.info("layer-wise: no statistics in the graph (%s): fetching every tensor", why)
            advance(len(planner.probes) - len(pending))
        fetching = dataclasses.replace(planner, probes=pending)
        run = _SliceRunner(reference, candidate, oracle, backend, inputs, measured, options.budget_bytes)
        while sum(slices) < len(pending):
            chunk = fetching.next_slice(sum(slices), options.budget_bytes, options.layers_per_run)
            planner.measured.update(run.compare(chunk))
            slices.append(len(chunk))
            advance(len(chunk))
    return slices, unavailable


def _compare_in_graph(
    reference: Path,
    candidate: Path,
    oracle: Backend,
    backend: Backend,
    planner: _Planner,
    inputs: Mapping[str, np.ndarray],
    measured: _Measurements,
) -> list[Probe]:
    """Both models in one session, every pair the statistics can judge compared there (see verify.lockstep);
    the probes left to fetch. Raises LockstepUnavailable when the two cannot share a session."""
    pairs = [planner.pairs[p.name] for p in planner.probes if p.name in planner.pairs]
    if not pairs:
        raise LockstepUnavailable("no tensor pair of known tensor types to reduce")
    graphs = [runner.cpu_graph(model) for runner, model in ((oracle, reference), (backend, candidate))]
    for runner, graph in zip((oracle, backend), graphs, strict=True):
        if graph is None:
            raise LockstepUnavailable(f"{runner.name} does not run on ONNX Runtime's CPU provider")
    session = LockstepRun(graphs[0], graphs[1], pairs, measured.tolerance.atol, measured.tolerance.rtol)
    del graphs
    release_freed_memory()  # the protos' copies of the weights, before the run's tensors
    statistics, unresolved = session.run(inputs)
    del session
    by_name = {pair.name: pair for pair in pairs}
    for probe in planner.probes:
        if probe.name in statistics:
            measured.keep(_record_of(probe, by_name[probe.name], statistics[probe.name], measured.tolerance))
    if unresolved:
        logger.info("layer-wise: %d tensors to fetch: %s", len(unresolved), dict(Counter(unresolved.values())))
    return [p for p in planner.probes if p.name not in statistics]


def _record_of(probe: Probe, pair: Pair, stats: PairStatistics, tolerance: Tolerance) -> LayerRecord:
    """The record of a pair judged from its statistics, as `compare_values` judges the tensors: floats by
    `tolerance` (bit-identity under the exact preset), integers and bools exactly, by value."""
    mismatch = stats.outside / stats.size if stats.size else 0.0
    if pair.is_float:
        numbers = TensorComparison(probe.name, stats.shape, True, stats.max_abs, math.nan, stats.cosine, mismatch, 0, 0)
        reason = failure_reason(numbers, tolerance)
        if tolerance.name == "exact":
            identical = stats.outside == 0 and pair.reference_dtype == pair.candidate_dtype
            reason = "" if identical else not_identical_reason(reason, mismatch)
        cosine = stats.cosine
    else:
        kind = "bool tensor" if pair.reference_dtype == ir.DataType.BOOL else "integer tensor"
        dtype = ir.DataType(pair.reference_dtype).name.lower()  # by value: a narrowed dtype is not a difference
        reason = differing_reason(kind, stats.outside, stats.size, dtype, dtype) if stats.outside else ""
        cosine = 1.0
    return LayerRecord(
        name=probe.name,
        node=probe.node,
        op=probe.op,
        shape=stats.shape,
        passed=not reason,
        max_abs=stats.max_abs,
        rel_err=stats.rel_err,
        cosine=cosine,
        mismatch=mismatch,
        ref_nonfinite=0,
        cand_nonfinite=0,
        ref_absmax=stats.ref_absmax,
        growth=None,
        reason=reason,
    )


def compare_integer_tensors(
    reference: Path,
    candidate: Path,
    backend: Backend,
    inputs: Mapping[str, np.ndarray],
    oracle: Backend | None = None,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> list[LayerRecord]:
    """The integer and bool tensors both models compute under the same name from float values, compared
    exactly, in slices that fit `budget_bytes`; none fetched (no run) when there are none."""
    oracle = oracle or OnnxruntimeBackend("onnxruntime-cpu")
    planned, _ = _plan(reference, candidate, inputs)
    planner = dataclasses.replace(planned, probes=[p for p in planned.probes if p.name in planned.integers])
    if not planner.probes:
        return []
    # the models as they are (no copy with weights outside, as layer-wise makes): integers take a run or two
    measured = _Measurements(inputs, planner.graph_inputs, PRESETS["exact"])
    run = _SliceRunner(reference, candidate, oracle, backend, inputs, measured, budget_bytes)
    done = 0
    while done < len(planner.probes):
        chunk = planner.next_slice(done, budget_bytes, None)
        planner.measured.update(run.compare(chunk))
        done += len(chunk)
    return measured.records(planner.probes)


# --- planning -----------------------------------------------------------------------------------------------


def _plan(reference: Path, candidate: Path, inputs: Mapping[str, np.ndarray]) -> tuple[_Planner, dict[str, int]]:
    """Load both graphs (weights stay unread), infer shapes at the actual inputs, list the probes; the
    models are dropped afterwards so they do not sit in memory during the runs. The plan is kept for the next
    calls on the same files and input shapes: every backend of one verification plans the same pair, and
    loading a ViT-B twice costs a second."""
    key = (_file_identity(reference), _file_identity(candidate), _input_signature(inputs))
    if key not in _PLANS:
        ref_model = _load_shaped(reference, inputs)
        cand_model = ref_model if candidate == reference else _load_shaped(candidate, inputs)
        plan = plan_probes(ref_model, cand_model)
        del ref_model, cand_model
        gc.collect()  # a graph is a web of reference cycles: without this its weights outlive the function
        while len(_PLANS) >= _KEPT_PLANS:
            del _PLANS[next(iter(_PLANS))]
        _PLANS[key] = plan
    planner, skipped = _PLANS[key]
    return planner, dict(skipped)


_KEPT_PLANS = 4
_PLANS: dict[tuple, tuple[_Planner, dict[str, int]]] = {}  # the latest plans, oldest first


def _file_identity(path: Path) -> tuple:
    """What changes when the file does: a rewritten candidate is planned again."""
    status = path.stat()
    return (os.fspath(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns)


def _input_signature(inputs: Mapping[str, np.ndarray]) -> tuple:
    return tuple((name, np.shape(value), np.asarray(value).dtype.str) for name, value in sorted(inputs.items()))


def _load_shaped(path: Path, inputs: Mapping[str, np.ndarray]) -> ir.Model:
    """The model with its inputs' shapes set to the arrays' and shapes inferred, for the byte estimates."""
    from graphdoctor.analysis.types import infer_types
    from graphdoctor.model import load_model

    model = load_model(path, weights_in_place=True).model
    for value in model.graph.inputs:
        if value.name in inputs:
            value.shape = ir.Shape(np.asarray(inputs[value.name]).shape)
    infer_types(model)
    model.graph.sort()
    return model


def plan_probes(reference: ir.Model, candidate: ir.Model) -> tuple[_Planner, dict[str, int]]:
    """The float, integer and bool values computed by the reference's nodes (topological order) that the
    candidate's nodes also compute under the same name, among them (`_Planner.integers`) the integer and
    bool ones computed from float values; and how many others were left out, why."""
    from graphdoctor.analysis.graph import node_label

    produced = {v.name: v for node in candidate.graph for v in node.outputs if v.name}
    planner = _Planner(graph_inputs=frozenset(v.name for v in reference.graph.inputs if v.name))
    planner.exact.update((v.name, _nbytes(v)) for v in reference.graph.inputs if v.name)
    skipped: Counter[str] = Counter()
    from_floats = _computed_from_floats(reference.graph)
    for node in reference.graph:
        if is_constant_node(node):
            continue
        activations = tuple(v.name for v in node.inputs if v is not None and v.name and not _is_constant(v))
        for value in (v for v in node.outputs if v.name):
            planner.add_tensor(value.name, node.op_type, activations, _nbytes(value))
            if value.dtype == ir.DataType.STRING:
                skipped["strings"] += 1
            elif value.name not in produced:
                skipped["not computed by the candidate"] += 1
            else:
                probe = Probe(value.name, node_label(node), node.op_type, activations)
                planner.add_probe(probe, _nbytes(produced[value.name]), _pair(value, produced[value.name]))
                if value.name in from_floats and _is_integer(value):
                    planner.integers.add(value.name)
    return planner, dict(skipped)


def _pair(reference: ir.Value, candidate: ir.Value) -> Pair | None:
    """The pair for statistics in the graph: two tensors of comparable known dtypes whose static shapes do not
    already differ; None for the others (fetched)."""
    if not all(isinstance(v.type, ir.TensorType) for v in (reference, candidate)):
        return None
    if not comparable(reference.dtype, candidate.dtype) or _static_shapes_differ(reference, candidate):
        return None
    nonempty = all(
        v.shape is not None and all(isinstance(d, int) and d > 0 for d in v.shape) for v in (reference, candidate)
    )
    return Pair(reference.name, int(reference.dtype), int(candidate.dtype), nonempty)


def _static_shapes_differ(reference: ir.Value, candidate: ir.Value) -> bool:
    if reference.shape is None or candidate.shape is None:
        return False
    if len(reference.shape) != len(candidate.shape):
        return True
    dims = zip(reference.shape, candidate.shape, strict=True)
    return any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in dims)


def _never_empty(value: ir.Value) -> bool:
    return value.shape is not None and all(isinstance(d, int) and d > 0 for d in value.shape)


def computes_integers_from_floats(model: ir.Model) -> bool:
    """Whether a node of the main graph computes an integer or bool value from float values (its types
    inferred): without one, `compare_integer_tensors` has nothing to compare and need not load the models."""
    from_floats = _computed_from_floats(model.graph)
    return any(v.name in from_floats and _is_integer(v) for node in model.graph for v in node.outputs)


_SHAPE_READERS = frozenset({"Shape", "Size"})  # read a tensor's dims, never its values


def _computed_from_floats(graph: ir.Graph) -> set[str]:
    """Names of the values whose computation reads a float value (a float tensor or constant, not through
    Shape or Size): the only ones whose numbers a change of float precision can change. Values drawn at
    random (Dropout in training mode, Random*, Bernoulli) and everything computed from them differ between
    two runs of one model, and are left out."""
    reached: set[str] = {v.name for v in graph.inputs if v.name and _is_float(v)}
    random: set[str] = set()
    for node in graph:
        outputs = [v.name for v in node.outputs if v.name]
        if _draws_at_random(node) or any(v is not None and v.name in random for v in node.inputs):
            random.update(outputs)
            continue
        reads = node.op_type not in _SHAPE_READERS and any(
            v is not None and (v.name in reached or _is_float(v)) for v in node.inputs
        )
        if reads:
            reached.update(outputs)
    return reached


def _draws_at_random(node: ir.Node) -> bool:
    """A random op, or a Dropout given a training_mode input (its mask and output are drawn at random)."""
    if node.op_type in RANDOM_OPS:
        return True
    return node.op_type == "Dropout" and len(node.inputs) > 2 and node.inputs[2] is not None


def _is_float(value: ir.Value) -> bool:
    return value.dtype is not None and value.dtype.is_floating_point()


def _is_integer(value: ir.Value) -> bool:
    """Integer or bool, a tensor or a sequence of them (dtype is the element's)."""
    dtype = value.dtype
    return dtype is not None and (dtype.is_integer() or dtype == ir.DataType.BOOL)


def _is_constant(value: ir.Value) -> bool:
    producer = value.producer()
    return (
        value.is_initializer() or value.const_value is not None or (producer is not None and is_constant_node(producer))
    )


def _nbytes(value: ir.Value) -> int | None:
    """Bytes of a value whose dims are all known (4 bytes an element when its dtype is not); else None (and for
    strings, whose size their dtype does not tell)."""
    if value.shape is None or not all(isinstance(d, int) for d in value.shape) or value.dtype == ir.DataType.STRING:
        return None
    itemsize = value.dtype.itemsize if value.dtype is not None else 4
    return math.ceil(math.prod(value.shape) * itemsize)


# ops whose output may be as large as all their inputs together; the others' as their largest input
_SUMMING_OPS = frozenset({"Concat", "MatMul", "Gemm", "Einsum", "Where"})
# ops whose output size is set by a shape operand: at least _UNKNOWN_NBYTES when not inferred
_SHAPED_OPS = frozenset({"Expand", "Tile", "Resize", "Upsample", "ConstantOfShape", "Range", "Pad"})


@dataclass
class _Planner:
    """Sizes every tensor of the reference, to cut the probes into slices that fit the budget.

    A size is exact where shape inference knew every dim, measured once a run fetched the tensor, and
    otherwise estimated from its inputs' sizes (their largest; their sum for Concat/MatMul-like ops). Slices
    are cut one run at a time, so an estimate rests on measured inputs a hop or two upstream and an error in
    it cannot compound across the model (data-dependent shapes, such as BERT's batch dim or a detector's
    reshaped head, leave many dims unknown).
    """

    graph_inputs: frozenset[str]
    probes: list[Probe] = field(default_factory=list)
    exact: dict[str, int | None] = field(default_factory=dict)  # reference bytes, when inferred
    candidate_exact: dict[str, int | None] = field(default_factory=dict)
    measured: dict[str, int] = field(default_factory=dict)  # reference bytes, once fetched
    producers: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)  # name -> (op, inputs)
    pairs: dict[str, Pair] = field(default_factory=dict)  # the probes statistics in the graph can compare
    integers: set[str] = field(default_factory=set)  # integer and bool probes computed from float values

    def add_tensor(self, name: str, op: str, inputs: tuple[str, ...], nbytes: int | None) -> None:
        self.producers[name] = (op, inputs)
        self.exact[name] = nbytes

    def add_probe(self, probe: Probe, candidate_nbytes: int | None, pair: Pair | None = None) -> None:
        self.probes.append(probe)
        self.candidate_exact[probe.name] = candidate_nbytes
        if pair is not None:
            self.pairs[probe.name] = pair

    def next_slice(self, start: int, budget_bytes: int, layers_per_run: int | None) -> list[Probe]:
        """The probes of the next run, from `start`: `layers_per_run` of them, else as many as fit the budget."""
        if layers_per_run is not None:
            if layers_per_run < 1:
                raise GraphDoctorError(f"--layers-per-run must be at least 1, got {layers_per_run}")
            return self.probes[start : start + layers_per_run]
        sizes = self._estimates()
        both = [sizes[p.name] + (self.candidate_exact[p.name] or sizes[p.name]) for p in self.probes[start:]]
        return self.probes[start : start + fit_count(both, budget_bytes)]

    def _estimates(self) -> dict[str, int]:
        """Every tensor's bytes, in topological order: measured, else exact, else from its inputs."""
        sizes: dict[str, int] = {name: self.exact.get(name) or 0 for name in self.graph_inputs}
        for name, (op, inputs) in self.producers.items():
            known = self.measured.get(name) or self.exact.get(name)
            sizes[name] = known if known is not None else _estimate(op, [sizes.get(n, 0) for n in inputs])
        return sizes


def _estimate(op: str, input_sizes: Sequence[int]) -> int:
    combined = sum(input_sizes) if op in _SUMMING_OPS else max(input_sizes, default=0)
    if op in _SHAPED_OPS or not input_sizes:
        return max(combined, _UNKNOWN_NBYTES)
    return combined or _UNKNOWN_NBYTES


def fit_count(sizes: Sequence[int], budget_bytes: int) -> int:
    """How many of the leading `sizes` fit `budget_bytes` together; at least one (a tensor larger than the
    budget runs alone)."""
    used = 0
    for count, size in enumerate(sizes):
        if count and used + size > budget_bytes:
            return count
        used += size
    return len(sizes)


# --- running ------------------------------------------------------------------------------------------------


class _Measurements:
    """The numbers kept per compared tensor, found in any order (in the graph, then fetched);
    `records` puts them in the probes' order, each with its growth."""

    def __init__(self, inputs: Mapping[str, np.ndarray], graph_inputs: frozenset[str], tolerance: Tolerance) -> None:
        self.tolerance = tolerance
        self.found: dict[str, LayerRecord] = {}
        self.errors: dict[str, float] = dict.fromkeys(graph_inputs, 0.0)  # rel_err by tensor name
        self.ranges: dict[str, float] = {n: _absmax(np.asarray(a)) for n, a in inputs.items() if n in graph_inputs}
        self.skipped: Counter[str] = Counter()
        self.max_bytes = 0  # both models' fetched arrays of the largest slice
        self.over_budget = ""  # why a slice exceeded the budget, the first time one did

    def keep(self, record: LayerRecord) -> None:
        self.found[record.name] = record
        self.errors[record.name] = record.rel_err
        self.ranges[record.name] = record.ref_absmax

    def records(self, probes: Sequence[Probe]) -> list[LayerRecord]:
        kept = [(p, self.found[p.name]) for p in probes if p.name in self.found]
        return [
            dataclasses.replace(r, growth=_growth(r.rel_err, [self.errors.get(name) for name in p.inputs]))
            for p, r in kept
        ]


class _SliceRunner:
    """Runs both models with one slice exposed, compares it, and keeps only the numbers."""

    def __init__(
        self,
        reference: Path,
        candidate: Path,
        oracle: Backend,
        backend: Backend,
        inputs: Mapping[str, np.ndarray],
        measured: _Measurements,
        budget_bytes: int,
    ) -> None:
        self.reference, self.candidate = reference, candidate
        self.oracle, self.backend = oracle, backend
        self.inputs = inputs
        self.measured = measured
        self.budget_bytes = budget_bytes

    def compare(self, chunk: Sequence[Probe]) -> dict[str, int]:
        """Fetch, compare and drop one slice; returns the reference tensors' sizes, measured."""
        names = [probe.name for probe in chunk]
        expected = self.oracle.run(self.reference, self.inputs, outputs=names)
        actual = self.backend.run(self.candidate, self.inputs, outputs=names)
        sizes = {name: _value_nbytes(value) for name, value in expected.items()}
        fetched = sum(sizes.values()) + sum(_value_nbytes(value) for value in actual.values())
        self.measured.max_bytes = max(self.measured.max_bytes, fetched)
        logger.info("layer-wise run: %d tensors, %.1f MiB", len(names), fetched / 2**20)
        if fetched > self.budget_bytes and not self.measured.over_budget:
            self.measured.over_budget = (
                f"one tensor pair alone holds {format_bytes(fetched)}"
                if len(names) == 1
                else f"a run fetched {format_bytes(fetched)}: sizes the shapes did not tell were estimated short"
            )
        for probe in chunk:
            if probe.name not in expected or probe.name not in actual:
                self.measured.skipped["not returned by the backend"] += 1
                continue
            ref, cand = expected.pop(probe.name), actual.pop(probe.name)
            if _is_strings(ref):
                self.measured.skipped["strings"] += 1
            else:
                self.measured.keep(_fetched_record(probe, ref, _as_reference_dtype(cand, ref), self.measured.tolerance))
            del ref, cand
        return sizes


def _fetched_record(probe: Probe, ref: Any, cand: Any, tolerance: Tolerance) -> LayerRecord:
    comparison = compare_values(probe.name, ref, cand, tolerance)
    rel_err, ref_absmax = _error_and_range(_as_numbers(ref), _as_numbers(cand), comparison.passed)
    return LayerRecord(
        name=probe.name,
        node=probe.node,
        op=probe.op,
        shape=comparison.shape,
        passed=comparison.passed,
        max_abs=comparison.max_abs,
        rel_err=rel_err,
        cosine=comparison.cosine,
        mismatch=comparison.mismatch,
        ref_nonfinite=comparison.ref_nonfinite,
        cand_nonfinite=comparison.cand_nonfinite,
        ref_absmax=ref_absmax,
        growth=None,
        reason=comparison.reason,
    )


def _value_nbytes(value: Any) -> int:
    """Bytes of a fetched value: a tensor's, a sequence's elements together, 0 for an empty optional."""
    if value is None:
        return 0
    if isinstance(value, list):
        return sum(_value_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_value_nbytes(v) for v in value.values())
    return int(np.asarray(value).nbytes)


def _is_strings(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "OUS"


def _as_reference_dtype(cand: Any, ref: Any) -> Any:
    """An integer candidate tensor in the reference's integer dtype when that holds its values exactly (a fix
    may narrow an intermediate int64 to int32: its values are what is compared, not its dtype)."""
    if not (isinstance(cand, np.ndarray) and isinstance(ref, np.ndarray)) or cand.dtype == ref.dtype:
        return cand
    if cand.dtype.kind not in "iub" or ref.dtype.kind not in "iub":
        return cand
    converted = cand.astype(ref.dtype)
    return converted if np.array_equal(converted, cand) else cand


def _as_numbers(value: Any) -> np.ndarray | None:
    """A value as one numeric array for the error: a tensor as is (bools as 0/1), a sequence's tensors
    flattened and joined; None for strings, maps, empty optionals and sequences of mixed dtypes."""
    if isinstance(value, list):
        parts = [_as_numbers(v) for v in value]
        if any(p is None for p in parts) or len({p.dtype for p in parts if p is not None}) > 1:
            return None
        return np.concatenate([p.ravel() for p in parts if p is not None]) if parts else np.zeros(0, np.float32)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
        return None
    return value.astype(np.int8) if value.dtype.kind == "b" else value


def _error_and_range(ref: np.ndarray | None, cand: np.ndarray | None, passed: bool) -> tuple[float, float]:
    """Relative L2 error over the elements finite in both, and max finite |ref|. The error is inf where the
    shapes differ or the candidate is non-finite where the reference is not: no finite number measures it.
    Values with no numbers (strings, maps) have error 0 when they passed, else inf."""
    if ref is None or cand is None:
        return (0.0 if passed else math.inf), 0.0
    ref_absmax = _absmax(ref)
    if ref.shape != cand.shape:
        return math.inf, ref_absmax
    finite_ref, finite_cand = np.isfinite(ref), np.isfinite(cand)
    if (finite_ref & ~finite_cand).any():
        return math.inf, ref_absmax
    both = finite_ref & finite_cand
    r = ref[both].astype(np.float64)
    diff = float(np.linalg.norm(cand[both].astype(np.float64) - r))
    norm = float(np.linalg.norm(r))
    if norm == 0.0:
        return (0.0 if diff == 0.0 else math.inf), ref_absmax
    return diff / norm, ref_absmax


def _absmax(array: np.ndarray) -> float:
    """Largest finite |value| (0 for non-float or empty arrays)."""
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return 0.0
    finite = array[np.isfinite(array)]
    return float(np.abs(finite).max(initial=0.0))


def _growth(error: float, input_errors: Sequence[float | None]) -> float | None:
    """Output error over the largest input error; inf where the inputs agree exactly and the output does not;
    None where no input was compared or nothing differs."""
    known = [e for e in input_errors if e is not None]
    if not known or math.isinf(max(known)):
        return None  # nothing to compare with, or an input is already non-finite
    upstream = max(known)
    if upstream == 0.0 or math.isinf(error):
        return math.inf if error > 0.0 else None
    return error / upstream


@contextmanager
def _progress(total: int, enabled: bool | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr when it is a terminal (and CI is unset); silent otherwise."""
    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("CI")
    if not enabled or total == 0:
        yield lambda _count: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("layer-wise"), BarColumn(), MofNCompleteColumn(), TextColumn("tensors"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("layer-wise", total=total)
        yield lambda count: bar.advance(task, count)


# --- the diverging path and the stages ----------------------------------------------------------------------


def diverging_path(first: LayerRecord, probes: Sequence[Probe], records: Sequence[LayerRecord]) -> list[str]:
    """From the first diverging tensor downstream, each step to the consumer whose output has the largest
    error (the earliest on a tie): the route along which the error travels, PATH_LENGTH tensors at most."""
    by_name = {r.name: r for r in records}
    order = {p.name: i for i, p in enumerate(probes)}
    consumers: dict[str, list[str]] = {}
    for probe in probes:
        if probe.name in by_name:
            for name in probe.inputs:
                consumers.setdefault(name, []).append(probe.name)
    path = [first.name]
    while len(path) < PATH_LENGTH:
        following = [n for n in consumers.get(path[-1], []) if n not in path]
        if not following:
            break
        path.append(max(following, key=lambda n: (_nan_last(by_name[n].rel_err), -order[n])))
    return path


def _nan_last(value: float) -> float:
    return -1.0 if math.isnan(value) else value


def stage_summary(records: Sequence[LayerRecord]) -> list[dict[str, Any]]:
    """The error per stage: node names' scope prefix (`/model.2/...`, `/layer1/layer1.0/...`) at the deepest
    depth that still gives 4 to MAX_STAGES stages (blocks, not single layers); [] when nodes carry no scopes."""
    for depth in (4, 3, 2, 1):
        keys = [_stage_of(r.node, depth) for r in records]
        if 4 <= len({k for k in keys if k}) <= MAX_STAGES:
            return _summarize(records, keys)
    return []


def _stage_of(node: str, depth: int) -> str | None:
    parts = [p for p in node.split("/") if p][:-1]  # the last part names the op, not a scope
    if not node.startswith("/") or not parts:
        return None
    return "/" + "/".join(parts[:depth])


def _summarize(records: Sequence[LayerRecord], keys: Sequence[str | None]) -> list[dict[str, Any]]:
    """Per stage, in order of first appearance: tensors, how many beyond tolerance, the worst numbers."""
    stages: dict[str, dict[str, Any]] = {}
    for record, key in zip(records, keys, strict=True):
        name = key or "(unscoped)"
        empty = {"tensors": 0, "beyond_tolerance": 0, "max_abs": 0.0, "rel_err": 0.0, "min_cosine": 1.0}
        stage = stages.setdefault(name, {"stage": name, **empty})
        stage["tensors"] += 1
        stage["beyond_tolerance"] += 0 if record.passed else 1
        stage["max_abs"] = max(stage["max_abs"], record.max_abs)
        stage["rel_err"] = max(stage["rel_err"], record.rel_err)
        stage["min_cosine"] = min(stage["min_cosine"], record.cosine)
    return list(stages.values())


# --- explaining a divergence --------------------------------------------------------------------------------


def _explain(
    events: Sequence[tuple[str, LayerRecord]],
    probes: Sequence[Probe],
    measured: _Measurements,
    reference: Path,
    candidate: Path,
    backend: Backend,
) -> dict[str, Divergence]:
    """Each event with its inputs' errors and the hints its nodes give (the models are loaded again, only now,
    and only when something diverged)."""
    if not events:
        return {}
    from graphdoctor.analysis.types import infer_types
    from graphdoctor.model import load_model

    ref_model = load_model(reference).model
    cand_model = ref_model if candidate == reference else load_model(candidate).model
    infer_types(cand_model)  # dtypes tell whether the diverging node computes in FP16
    by_name = {p.name: p for p in probes}
    explained = {}
    for kind, record in events:
        names = by_name[record.name].inputs
        inputs = tuple((name, measured.errors.get(name)) for name in names)
        hints = _hints(record, names, measured.ranges, ref_model, cand_model, backend)
        explained[kind] = Divergence(kind, record, inputs, tuple(hints))
    del ref_model, cand_model
    gc.collect()
    return explained


def _hints(
    record: LayerRecord,
    inputs: Sequence[str],
    ranges: Mapping[str, float],
    ref_model: ir.Model,
    cand_model: ir.Model,
    backend: Backend,
) -> list[str]:
    """Short, factual remarks on causes we recognise at the diverging node."""
    ref_node = _producer_of(ref_model, record.name)
    cand_node = _producer_of(cand_model, record.name)
    if ref_node is None or cand_node is None:
        return []
    hints = _cast_round_trip_hints(cand_node)
    fp16 = backend.computes_fp16 or _touches_fp16(cand_node)  # the node itself computes in FP16
    hints += _eps_hints(ref_model, cand_model, ref_node, cand_node, fp16)
    hints += _constant_hints(ref_node, cand_node)
    hints += _range_hints(record, inputs, ranges)
    return hints


def _producer_of(model: ir.Model, name: str) -> ir.Node | None:
    return next((node for node in model.graph for v in node.outputs if v.name == name), None)


def _touches_fp16(node: ir.Node) -> bool:
    values = [v for v in (*node.inputs, *node.outputs) if v is not None]
    return any(v.dtype in _HALF_CASTS for v in values)


def _cast_round_trip_hints(node: ir.Node) -> list[str]:
    """An input cast to a 16-bit float and back: rounded there (and, for float16, overflowed beyond 65504)."""
    hints = []
    for value in node.inputs:
        up = _cast_to(value, _FLOAT_CASTS)
        down = _cast_to(up.inputs[0], _HALF_CASTS) if up is not None and up.inputs else None
        if up is None or down is None or not down.inputs or down.inputs[0] is None:
            continue
        half, back = (format_dtype(ir.DataType(cast.attributes.get_int("to"))) for cast in (down, up))
        overflow = f", values beyond {FP16_MAX:g} become inf" if half == "float16" else ""
        hints.append(
            f"input '{value.name}' is '{down.inputs[0].name}' cast to {half} and back to {back}"
            f" ('{down.name}', '{up.name}'): rounded to {half} there{overflow}"
        )
    return hints


def _cast_to(value: ir.Value | None, dtypes: tuple[ir.DataType, ...]) -> ir.Node | None:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
        return None
    return node if node.attributes.get_int("to") in dtypes else None


def _eps_hints(
    ref_model: ir.Model, cand_model: ir.Model, ref_node: ir.Node, cand_node: ir.Node, fp16: bool
) -> list[str]:
    """A normalization whose epsilon differs between the models, or is below FP16's normal range where the
    candidate computes in FP16."""
    ref_norm = _normalization_of(ref_model, ref_node)
    cand_norm = _normalization_of(cand_model, cand_node)
    if cand_norm is None:
        return []
    hints = []
    if ref_norm is not None and ref_norm.eps != cand_norm.eps:
        hints.append(
            f"{cand_norm.form} epsilon is {ref_norm.eps:g} in the reference, {cand_norm.eps:g} in the candidate"
        )
    if fp16 and cand_norm.eps < FP16_MIN_NORMAL:
        fate = "rounds to 0" if cand_norm.eps < FP16_MIN_SUBNORMAL / 2 else "is subnormal"
        hints.append(
            f"{cand_norm.form} epsilon {cand_norm.eps:g} is below FP16's smallest normal {FP16_MIN_NORMAL:.2g}:"
            f" it {fate} in FP16"
        )
    return hints


def _normalization_of(model: ir.Model, node: ir.Node):
    from graphdoctor.analysis.context import Analysis
    from graphdoctor.analysis.normalization import find_normalizations

    return next((n for n in find_normalizations(Analysis(model)) if any(m is node for m in n.nodes)), None)


def _constant_hints(ref_node: ir.Node, cand_node: ir.Node) -> list[str]:
    """Constant inputs at the same position that hold different values (a clamped or rounded constant)."""
    hints = []
    for position, (ref_value, cand_value) in enumerate(zip(ref_node.inputs, cand_node.inputs, strict=False)):
        ref_array, cand_array = _constant_array(ref_value), _constant_array(cand_value)
        if ref_array is None or cand_array is None or ref_array.dtype.kind != "f":
            continue
        label = _constant_label(position, ref_value, cand_value)
        if ref_array.shape != cand_array.shape:
            hints.append(f"{label} has shape {list(cand_array.shape)}, the reference's {list(ref_array.shape)}")
        elif not np.array_equal(ref_array, cand_array.astype(ref_array.dtype), equal_nan=True):
            hints.append(f"{label} differs from the reference's: {_describe_change(ref_array, cand_array)}")
    return hints


def _constant_array(value: ir.Value | None) -> np.ndarray | None:
    """A constant's values, also through one Cast (FP16 weights cast up at run time count as constants)."""
    from graphdoctor.analysis.constants import const_array

    if value is None:
        return None
    array = const_array(value)
    if array is not None:
        return array
    cast = value.producer()
    if cast is not None and cast.op_type == "Cast" and cast.inputs and cast.inputs[0] is not None:
        source = const_array(cast.inputs[0])
        target = ir.DataType(cast.attributes.get_int("to"))
        if source is not None and target.is_floating_point() and target.numpy() is not None:
            return source.astype(target.numpy())
    return None


def _constant_label(position: int, ref_value: ir.Value | None, cand_value: ir.Value | None) -> str:
    ref_name = ref_value.name if ref_value is not None else "?"
    cand_name = cand_value.name if cand_value is not None else "?"
    if ref_name == cand_name:
        return f"constant input '{ref_name}'"
    return f"constant input {position} ('{ref_name}'; candidate: '{cand_name}')"


def _describe_change(ref: np.ndarray, cand: np.ndarray) -> str:
    """What happened to a constant: FP16 rounding, clamping, or just the numbers."""
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    if ref.size == 1:
        return f"{r.item():g} in the reference, {c.item():g} in the candidate"
    differing = int(np.count_nonzero(r != c))
    numbers = f"{differing} of {ref.size} values, max abs diff {float(np.abs(r - c).max()):.3g}"
    with np.errstate(over="ignore"):
        rounded = ref.astype(np.float16).astype(np.float64)
    if np.array_equal(rounded, c):
        return f"{numbers}; the candidate holds the reference's values rounded to FP16"
    low, high = float(c.min()), float(c.max())
    if np.array_equal(np.clip(r, low, high), c) and (low > r.min() or high < r.max()):
        span = f"[{r.min():g}, {r.max():g}]"
        return f"{numbers}; the candidate's values are clamped to [{low:g}, {high:g}] (reference: {span})"
    return numbers


def _range_hints(record: LayerRecord, inputs: Sequence[str], ranges: Mapping[str, float]) -> list[str]:
    """Reference values beyond FP16's max in the node's inputs or output: FP16 arithmetic overflows there."""
    hints = []
    for name in (*inputs, record.name):
        peak = ranges.get(name, 0.0)
        if peak > FP16_MAX:
            where = "output" if name == record.name else "input"
            hints.append(
                f"the reference's {where} '{name}' reaches |x| = {peak:.3g}, beyond FP16's max {FP16_MAX:g}:"
                " FP16 overflows to inf there"
            )
    return hints
