"""Measuring activation ranges: run the FP32 model on sample inputs and reduce each tensor as it comes.

The reductions (`TensorRange`, what FP16 would do to a tensor) and the mask heuristics are pure and live in
`analysis.ranges`; running a model belongs here, with the backends. Memory stays bounded: tensors are
fetched a slice at a time (as extra graph outputs of one run), reduced to a few numbers each, and dropped
before the next slice; several batches of inputs are measured one at a time and merged per tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.ranges import TensorRange, float_tensor_names, merge_ranges, range_of

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
    the ONNX Runtime run (it gets tensor names and returns their arrays), e.g. to measure another backend.
    Subgraph tensors (If/Loop bodies) cannot be fetched from outside and are not measured.
    """
    if model is None:
        model = _typed_model(model_path)
    if run is None:
        run = _bound(_onnxruntime_batch_run(Path(model_path)), inputs)
    wanted = list(names) if names is not None else float_tensor_names(model)
    producers = _producers(model)
    ranges: dict[str, TensorRange] = {}
    for fetched in iter_slices(run, wanted, budget_bytes):
        for name, array in fetched.items():
            if isinstance(array, np.ndarray) and array.dtype == np.float32:
                node = producers.get(name)
                ranges[name] = range_of(name, array, node)
    return ranges


def value_ranges_over(
    model_path: str | Path,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    model: ir.Model | None = None,
    names: Sequence[str] | None = None,
    budget_bytes: int = DEFAULT_BUDGET,
    run: BatchRun | None = None,
) -> dict[str, TensorRange]:
    """`value_ranges` on each of `batches`, merged per tensor (`merge_ranges`). One batch is held at a time:
    pass a lazy sequence or a generator (verify.inputs.load_input_batches gives one), not a list of them all.

    `run(feeds, names)` replaces the ONNX Runtime run, as `value_ranges`'s `run` does, for any batch.
    Raises ValueError on no batches: ranges measured on nothing would say every tensor is safe.
    """
    if model is None:
        model = _typed_model(model_path)
    if run is None:
        run = _onnxruntime_batch_run(Path(model_path))
    wanted = list(names) if names is not None else float_tensor_names(model)
    merged: dict[str, TensorRange] | None = None
    for index, feeds in enumerate(batches):
        logger.info("measuring ranges on batch %d", index + 1)
        measured = value_ranges(
            model_path, feeds, model=model, names=wanted, budget_bytes=budget_bytes, run=_bound(run, feeds)
        )
        merged = measured if merged is None else _merge_all(merged, measured)
    if merged is None:
        raise ValueError("value_ranges_over: no batches of inputs")
    return merged


def _merge_all(merged: Mapping[str, TensorRange], measured: Mapping[str, TensorRange]) -> dict[str, TensorRange]:
    """Tensors of both, in the order first seen; one measured on a single side keeps its own range."""
    result = dict(merged)
    for name, tensor_range in measured.items():
        result[name] = merge_ranges(result[name], tensor_range) if name in result else tensor_range
    return result


def _bound(run: BatchRun, feeds: Mapping[str, np.ndarray]) -> Callable[[Sequence[str]], Mapping[str, np.ndarray]]:
    return lambda names: run(feeds, names)


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
