"""Range statistics computed inside the graph: each watched tensor reduced to a few scalars by nodes added to a
copy of the model, so that one ONNX Runtime session and one run per batch measure every tensor.

Fetching the tensors themselves (as extra graph outputs) holds them all at once, so `verify.ranges` fetched a
slice at a time: one session per slice, each run copying every fetched tensor out. Here the reductions run
where the tensor lives; ONNX Runtime frees each intermediate after its last use, and only scalars come out.

For each float32 tensor `x`:
- `shape`: Shape(x), whose product is the size; `sum`: ReduceSum(x), finite only if every value is;
- `min`/`max`: ReduceMin/ReduceMax, over x flattened and padded with one +inf/-inf where its static shape
  does not say it holds elements (a reduction of nothing fails);
- `nonzero`, `above_flush`: how many |x| > 0 and > 2^-25 (their difference is what FP16 flushes to 0), each a
  ReduceSum of Cast(bool -> double), exact to 2^53 and several times faster in ONNX Runtime than int64.
Every reduction is over all axes with no `axes` (the same in every opset: ReduceSum's axes became an input at
13, ReduceMin/Max's at 18). No Where masks non-finite values (the slowest of these ops): a tensor whose sum is
not finite holds inf or NaN, and one whose extremes reach 65520 overflows FP16 (rare, e.g. attention masks),
and only counting would tell how many values do; `range_from` leaves those to the caller to fetch, and the
rare tensor over 1 Mi elements whose extremes tie in magnitude (min == -max), whose worst value range_of
picks by the 1 Mi-element chunk each first occurs in (ArgMin and ArgMax for every tensor made the session
half as large again to tell it). For every other tensor it gives the `TensorRange` that
`analysis.ranges.range_of` gives on the tensor, number for number.

ONNX Runtime runs the statistics in priority-based order: its default topological order puts them after the
whole model, holding every watched tensor until the end.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from graphdoctor.analysis.graph import node_label
from graphdoctor.analysis.ranges import _CHUNK, FP16_FLUSH, FP16_OVERFLOW, TensorRange
from graphdoctor.errors import first_line
from graphdoctor.verify.weights_apart import GraphApart, load_apart
from graphdoctor.weights_in_place import parse_leaving_weights

__all__ = [
    "MIN_OPSET",
    "PREFIX",
    "STATISTICS",
    "InGraphStatistics",
    "StatisticsUnavailable",
    "add_statistics",
    "measurable",
    "nonempty_tensors",
    "range_from",
]

PREFIX = "__gd_stat"
MIN_OPSET = 9  # Where
STATISTICS = ("shape", "sum", "min", "max", "nonzero", "above_flush")


class StatisticsUnavailable(Exception):
    """The augmented graph cannot be built, loaded or run; the caller fetches the tensors instead."""


def measurable(model: ir.Model, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """`names` split into those reduced in the graph (float32 tensors of the main graph: its inputs and node
    outputs, of known type) and the rest (subgraph tensors, unknown types, sequences), left to fetching."""
    if _opset(model) < MIN_OPSET:
        return [], list(names)
    values = {v.name: v for v in model.graph.inputs} | {v.name: v for n in model.graph for v in n.outputs}
    inside, outside = [], []
    for name in names:
        value = values.get(name)
        typed = value is not None and isinstance(value.type, ir.TensorType) and value.dtype == ir.DataType.FLOAT
        (inside if typed else outside).append(name)
    return inside, outside


def nonempty_tensors(model: ir.Model) -> set[str]:
    """Main-graph tensors whose static shape holds no zero (or unknown) dimension: never empty."""
    values = [*model.graph.inputs, *(v for node in model.graph for v in node.outputs)]
    return {v.name for v in values if v.shape is not None and all(isinstance(d, int) and d > 0 for d in v.shape)}


def _opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.graph.opset_imports.get("", 1))


def add_statistics(
    proto: onnx.ModelProto, names: Sequence[str], nonempty: Collection[str] = (), keep_outputs: bool = False
) -> None:
    """Make the statistics of `names` the outputs of `proto` (`PREFIX/<i>/<statistic>`, i their index), each
    tensor's reduction nodes placed right after its producer so that it can be freed early. The model's own
    outputs are dropped unless `keep_outputs` (then they come first): nodes that feed no statistic are
    pruned. Tensors in `nonempty` (a static shape without zeros) need no NaN pad."""
    graph = proto.graph
    constants = _constants()
    reductions = {name: _reduction_nodes(name, i, name not in nonempty) for i, name in enumerate(names)}
    nodes = list(constants) + [n for name in _graph_inputs(graph, reductions) for n in reductions.pop(name)]
    for node in graph.node:
        nodes.append(node)
        for output in node.output:
            nodes.extend(reductions.pop(output, ()))
    if reductions:
        raise StatisticsUnavailable(f"no tensor named {next(iter(reductions))!r} in the main graph")
    del graph.node[:]
    graph.node.extend(nodes)
    if not keep_outputs:
        del graph.output[:]
    graph.output.extend(onnx.ValueInfoProto(name=_stat(i, s)) for i in range(len(names)) for s in STATISTICS)


def _graph_inputs(graph: onnx.GraphProto, reductions: Mapping[str, object]) -> list[str]:
    names = [v.name for v in graph.input] + [t.name for t in graph.initializer]
    return [name for name in dict.fromkeys(names) if name in reductions]


def _stat(index: int, statistic: str) -> str:
    return f"{PREFIX}/{index}/{statistic}"


def _constants() -> list[onnx.NodeProto]:
    """Shared scalars (Constant nodes, valid in every opset and IR version)."""
    scalars = {"zero": 0.0, "flush": FP16_FLUSH}
    pads = {"inf": math.inf, "-inf": -math.inf}  # one element appended: the tensor may be empty
    nodes = [_constant(name, TensorProto.FLOAT, [], [value]) for name, value in scalars.items()]
    nodes += [_constant(name, TensorProto.FLOAT, [1], [value]) for name, value in pads.items()]
    nodes.append(_constant("flat", TensorProto.INT64, [1], [-1]))
    return nodes


def _constant(name: str, dtype: int, dims: list[int], values: list) -> onnx.NodeProto:
    tensor = helper.make_tensor(f"{PREFIX}/{name}", dtype, dims, values)
    return helper.make_node("Constant", [], [f"{PREFIX}/{name}"], name=f"{PREFIX}/{name}", value=tensor)


def _reduction_nodes(name: str, index: int, pad: bool) -> list[onnx.NodeProto]:
    """The nodes reducing tensor `name` to its statistics (see the module docstring)."""
    nodes: list[onnx.NodeProto] = []

    def add(op: str, inputs: list[str], out: str, **attributes) -> str:
        output = out if out.startswith(PREFIX) else f"{PREFIX}/{index}/t/{out}"
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    add("Shape", [name], _stat(index, "shape"))
    add("ReduceSum", [name], _stat(index, "sum"), keepdims=0)
    flat = add("Reshape", [name, f"{PREFIX}/flat"], "flat") if pad else name
    for low, reduce, pad_value in (("min", "ReduceMin", "inf"), ("max", "ReduceMax", "-inf")):
        padded = add("Concat", [flat, f"{PREFIX}/{pad_value}"], f"for_{low}", axis=0) if pad else flat
        add(reduce, [padded], _stat(index, low), keepdims=0)
    magnitude = add("Abs", [name], "abs")
    for statistic, threshold in (("nonzero", "zero"), ("above_flush", "flush")):
        mask = add("Greater", [magnitude, f"{PREFIX}/{threshold}"], f"over_{statistic}")
        counted = add("Cast", [mask], f"{statistic}_f64", to=TensorProto.DOUBLE)
        add("ReduceSum", [counted], _stat(index, statistic), keepdims=0)
    return nodes


def range_from(name: str, node: ir.Node | None, stats: Mapping[str, np.ndarray]) -> TensorRange | None:
    """The TensorRange of one tensor from its statistics, equal to what `range_of` gives on the tensor; None
    when they cannot tell it: a non-finite value (or a sum past float32's range), or a value reaching FP16's
    overflow, whose counts are not computed here."""
    shape = tuple(int(d) for d in stats["shape"])
    size = math.prod(shape)
    low, high = float(stats["min"]), float(stats["max"])
    if size and (not math.isfinite(float(stats["sum"])) or max(-low, high) >= FP16_OVERFLOW):
        return None
    if size > _CHUNK and low == -high != 0.0:
        return None  # range_of picks between the tied extremes by where each first occurs
    worst = _worst(low, high) if size else math.nan
    nonzero = int(stats["nonzero"])
    return TensorRange(
        name=name,
        node=node_label(node) if node is not None else None,
        op_type=node.op_type if node is not None else None,
        dtype="float32",
        shape=shape,
        size=size,
        min=low if size else math.nan,
        max=high if size else math.nan,
        max_abs=abs(worst),
        worst=worst,
        overflow=0,
        overflow_negative=0,
        flushed=nonzero - int(stats["above_flush"]),
        nonzero=nonzero,
        nonfinite=0,
    )


def _worst(low: float, high: float) -> float:
    """range_of's worst for a tensor of one chunk: the extreme of larger magnitude, the low one on a tie;
    0.0 when every finite value is zero."""
    if abs(low) != abs(high):
        return low if abs(low) > abs(high) else high
    return 0.0 if high == 0 else low


class InGraphStatistics:
    """One ONNX Runtime CPU session over the model with the statistics of `names` as its outputs, with graph
    optimizations off (every node as written); `ranges(feeds)` runs it once on a batch.

    Off, not the default (all): with a statistic reading every tensor the fusions (attention, GELU, layer
    norm) have nothing left to fuse, yet looking for them took 4.7 s of a ViT-B/16 session, against 1.8 s at
    the basic level and 1.2 s with none. Fused kernels round differently by FP32's 1e-7, far below the
    margin FP16 range analysis keeps, and one run gains nothing from folding constants first.

    With `keep_outputs`, the model's own outputs are computed by the same run: `outputs` holds the last
    run's (fix's gate compares the candidate with those instead of running the original again).

    Raises StatisticsUnavailable when the augmented graph cannot be built or loaded."""

    def __init__(self, model_path: Path, model: ir.Model, names: Sequence[str], keep_outputs: bool = False) -> None:
        import onnxruntime as ort

        from graphdoctor.verify.backends.onnxruntime import EXTERNAL_FOLDER, quiet_session_options

        self.names = list(names)
        self._producers = {v.name: node for node in model.graph for v in node.outputs if v.name}
        options = quiet_session_options()
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # the default runs every statistic last
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry(EXTERNAL_FOLDER, os.fspath(model_path.resolve().parent))
        try:
            in_place = parse_leaving_weights(model_path)  # the weights stay in the file, read by ONNX Runtime
            apart = load_apart(model_path) if in_place is None else GraphApart(in_place, model_path, [])
            self._model_outputs = [o.name for o in apart.graph.graph.output] if keep_outputs else []
            add_statistics(apart.graph, self.names, nonempty_tensors(model), keep_outputs)
            source = apart.serialized()
            del apart
            self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
            del source
        except StatisticsUnavailable:
            raise
        except Exception as error:  # onnx and onnxruntime raise their own exception types
            raise StatisticsUnavailable(first_line(error)) from None
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.outputs: dict[str, np.ndarray] = {}

    def ranges(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, TensorRange], list[str]]:
        """The ranges the statistics of one batch tell, and the names of the tensors whose range they cannot
        (see `range_from`), to fetch. Raises StatisticsUnavailable when the run fails."""
        from graphdoctor.verify.backends.onnxruntime import as_declared

        try:
            results = self._session.run(self._outputs, as_declared(self._session, feeds))
        except Exception as error:  # onnxruntime raises its own exception types
            raise StatisticsUnavailable(first_line(error)) from None
        scalars = dict(zip(self._outputs, results, strict=True))
        self.outputs = {name: scalars.pop(name) for name in self._model_outputs}
        measured, unresolved = {}, []
        for index, name in enumerate(self.names):
            stats = {statistic: scalars[_stat(index, statistic)] for statistic in STATISTICS}
            tensor_range = range_from(name, self._producers.get(name), stats)
            if tensor_range is None:
                unresolved.append(name)
            else:
                measured[name] = tensor_range
        return measured, unresolved
