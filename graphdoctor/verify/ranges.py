"""Measuring activation ranges: run the FP32 model on sample inputs and reduce each tensor as it comes.

The reductions (`TensorRange`, what FP16 would do to a tensor) and the mask heuristics are pure and live in
`analysis.ranges`; running a model belongs here, with the backends. On ONNX Runtime CPU the reductions run
inside the graph (`verify.statistics`): one session per model and one run per batch give every tensor's
range as a few scalars, and ONNX Runtime frees each tensor as it goes. Tensors it cannot reach (subgraph
tensors, unknown types), every tensor when the augmented graph does not load, and every tensor of a custom
`run` are fetched instead, a slice at a time (as extra graph outputs of one run), reduced to a few numbers
each, and dropped before the next slice. Several batches of inputs are measured one at a time and merged
per tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.ranges import TensorRange, float_tensor_names, merge_ranges, range_of
from graphdoctor.verify.statistics import InGraphStatistics, StatisticsUnavailable, measurable

if TYPE_CHECKING:
    from graphdoctor.analysis.context import Analysis

__all__ = [
    "DEFAULT_BUDGET",
    "SHARED_KEY",
    "SOURCE",
    "BatchRun",
    "iter_slices",
    "sample_ranges",
    "value_ranges",
    "value_ranges_over",
]

logger = logging.getLogger(__name__)

SHARED_KEY = "value_ranges"
SOURCE = "measured in FP32 on ONNX Runtime CPU"  # what produced the numbers, for messages
DEFAULT_BUDGET = 128 * 1024 * 1024  # bytes of fetched tensors held at once, at most (plus one tensor)
_FIRST_SLICE = 8  # tensors in the first run, before their sizes are known

BatchRun = Callable[[Mapping[str, np.ndarray], Sequence[str]], Mapping[str, np.ndarray]]


def value_ranges(
    model_path: str | Path,
    inputs: Mapping[str, np.ndarray],
    *,
    model: ir.Model | None = None,
    names: Sequence[str] | None = None,
    budget_bytes: int = DEFAULT_BUDGET,
    run: Callable[[Sequence[str]], Mapping[str, np.ndarray]] | None = None,
) -> dict[str, TensorRange]:
    """The range of every float32 activation (graph inputs and node outputs of the main graph) of the model
    at `model_path`, run in FP32 on ONNX Runtime's CPU provider with `inputs`.

    `model` is the same model already loaded (its types inferred); `names` limits the tensors; `run` replaces
    the ONNX Runtime run (it gets tensor names and returns their arrays), e.g. to measure another backend,
    and fetches every tensor a slice at a time. Without it the ranges are reduced inside the graph in one run
    (`verify.statistics`). Subgraph tensors (If/Loop bodies) cannot be fetched from outside and are not measured.
    """
    if model is None:
        model = _typed_model(model_path)
    wanted = list(names) if names is not None else float_tensor_names(model)
    batch_run = None if run is None else _unbound(run)
    return _Measurer(Path(model_path), model, wanted, budget_bytes, batch_run).ranges(inputs)


def value_ranges_over(
    model_path: str | Path,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    model: ir.Model | None = None,
    names: Sequence[str] | None = None,
    budget_bytes: int = DEFAULT_BUDGET,
    run: BatchRun | None = None,
    outputs: dict[str, np.ndarray] | None = None,
) -> dict[str, TensorRange]:
    """`value_ranges` on each of `batches`, merged per tensor (`merge_ranges`). One batch is held at a time:
    pass a lazy sequence or a generator (verify.inputs.load_input_batches gives one), not a list of them all.
    Without `run`, one session measures every batch, one run each. `outputs`, a dict, receives the model's
    own outputs on the first batch where that session computed them (in-graph statistics; left empty else).

    `run(feeds, names)` replaces the ONNX Runtime run, as `value_ranges`'s `run` does, for any batch.
    Raises ValueError on no batches: ranges measured on nothing would say every tensor is safe.
    """
    if model is None:
        model = _typed_model(model_path)
    wanted = list(names) if names is not None else float_tensor_names(model)
    measurer = _Measurer(Path(model_path), model, wanted, budget_bytes, run, keep_outputs=outputs is not None)
    merged: dict[str, TensorRange] | None = None
    for index, feeds in enumerate(batches):
        logger.info("measuring ranges on batch %d", index + 1)
        measured = measurer.ranges(feeds)
        if index == 0 and outputs is not None:
            outputs.update(measurer.outputs())
        merged = measured if merged is None else _merge_all(merged, measured)
    if merged is None:
        raise ValueError("value_ranges_over: no batches of inputs")
    return merged


class _Measurer:
    """Ranges of one model, batch after batch. On ONNX Runtime CPU, the tensors `verify.statistics` can reduce
    inside the graph come from one session, one run a batch; the rest (subgraph tensors, unknown types), or
    all of them when the augmented graph fails to load or run, are fetched a slice at a time as before. A
    custom `run` (another backend, a segmented run) fetches every tensor: only it knows how to run the model."""

    def __init__(
        self,
        model_path: Path,
        model: ir.Model,
        names: Sequence[str],
        budget_bytes: int,
        run: BatchRun | None,
        keep_outputs: bool = False,
    ) -> None:
        self.names, self.budget_bytes = list(names), budget_bytes
        self._producers = _producers(model)
        self._run = run if run is not None else _onnxruntime_batch_run(model_path)
        inside, self._fetched = measurable(model, self.names) if run is None else ([], self.names)
        self._statistics: InGraphStatistics | None = None
        if inside:
            try:
                self._statistics = InGraphStatistics(model_path, model, inside, keep_outputs)
            except StatisticsUnavailable as why:
                self._fallback(why)
        if self._fetched and self._statistics is not None:
            logger.info("ranges: %d tensors fetched (not reducible in the graph)", len(self._fetched))

    def outputs(self) -> dict[str, np.ndarray]:
        """The model's outputs from the last batch's statistics run; {} when none computed them."""
        return dict(self._statistics.outputs) if self._statistics is not None else {}

    def _fallback(self, why: Exception) -> None:
        logger.info("ranges: in-graph statistics unavailable (%s); fetching every tensor instead", why)
        self._statistics, self._fetched = None, self.names

    def ranges(self, feeds: Mapping[str, np.ndarray]) -> dict[str, TensorRange]:
        """Every tensor's range on one batch, in the order of `names`."""
        measured: dict[str, TensorRange] = {}
        fetched = self._fetched
        if self._statistics is not None:
            try:
                measured, unresolved = self._statistics.ranges(feeds)
                fetched = [*unresolved, *self._fetched]
            except StatisticsUnavailable as why:
                self._fallback(why)
                fetched = self.names
        if fetched:
            measured |= _fetched_ranges(_bound(self._run, feeds), fetched, self._producers, self.budget_bytes)
        return {name: measured[name] for name in self.names if name in measured}


def _fetched_ranges(
    run: Callable[[Sequence[str]], Mapping[str, np.ndarray]],
    names: Sequence[str],
    producers: Mapping[str, ir.Node],
    budget_bytes: int,
) -> dict[str, TensorRange]:
    """The ranges of the float32 tensors among `names`, fetched a slice at a time by `run`."""
    ranges: dict[str, TensorRange] = {}
    for fetched in iter_slices(run, names, budget_bytes):
        for name, array in fetched.items():
            if isinstance(array, np.ndarray) and array.dtype == np.float32:
                ranges[name] = range_of(name, array, producers.get(name))
    return ranges


def _merge_all(merged: Mapping[str, TensorRange], measured: Mapping[str, TensorRange]) -> dict[str, TensorRange]:
    """Tensors of both, in the order first seen; one measured on a single side keeps its own range."""
    result = dict(merged)
    for name, tensor_range in measured.items():
        result[name] = merge_ranges(result[name], tensor_range) if name in result else tensor_range
    return result


def _bound(run: BatchRun, feeds: Mapping[str, np.ndarray]) -> Callable[[Sequence[str]], Mapping[str, np.ndarray]]:
    return lambda names: run(feeds, names)


def _unbound(run: Callable[[Sequence[str]], Mapping[str, np.ndarray]]) -> BatchRun:
    """A run already bound to its inputs, taking (and ignoring) the feeds of the one batch it measures."""
    return lambda _feeds, names: run(names)


def iter_slices(
    run: Callable[[Sequence[str]], Mapping[str, np.ndarray]], names: Sequence[str], budget_bytes: int
) -> Iterator[Mapping[str, np.ndarray]]:
    """Fetch `names` over several runs, each holding about `budget_bytes` of tensors: the first run takes a
    few, and later runs take as many as the average size seen so far says fit."""
    seen_bytes, seen_count, start = 0, 0, 0
    while start < len(names):
        count = _FIRST_SLICE if not seen_count else max(1, int(budget_bytes // max(seen_bytes / seen_count, 1)))
        batch = list(names[start : start + count])
        fetched = run(batch)
        seen_bytes += sum(int(np.asarray(a).nbytes) for a in fetched.values())
        seen_count += len(batch)
        start += len(batch)
        logger.info("fetched %d tensors (%d of %d)", len(batch), start, len(names))
        yield fetched
        del fetched


def _producers(model: ir.Model) -> dict[str, ir.Node]:
    return {value.name: node for node in model.graph for value in node.outputs if value.name}


def _typed_model(model_path: str | Path) -> ir.Model:
    from graphdoctor.analysis.types import infer_types
    from graphdoctor.model import load_model

    model = load_model(model_path).model
    infer_types(model)
    return model


def _onnxruntime_batch_run(model_path: Path) -> BatchRun:
    from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend

    backend = OnnxruntimeBackend("onnxruntime-cpu")
    return lambda feeds, names: backend.run(model_path, feeds, outputs=names)


def sample_ranges(analysis: Analysis) -> dict[str, TensorRange] | None:
    """The model's activation ranges on the analysis's sample inputs, measured once and shared by the rules
    that ask; None without sample inputs (`lint --inputs/--shape`) or without a model file to run."""
    if analysis.sample_inputs is None or analysis.path is None:
        return None

    def compute(a: Analysis) -> dict[str, TensorRange]:
        a.types_inferred  # noqa: B018 - dtypes tell which tensors are float
        return value_ranges(a.path, a.sample_inputs, model=a.model)  # type: ignore[arg-type]

    return analysis.shared(SHARED_KEY, compute)
