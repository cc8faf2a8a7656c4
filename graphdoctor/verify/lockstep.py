"""Two models compared in one ONNX Runtime session: the candidate's graph merged into the reference's under
prefixed names, and each tensor pair they share reduced to a few difference statistics by nodes added to the
merged graph, so that one run compares every layer and only scalars come out.

Why: fetching the tensors (layer-wise slices) copies every activation of both models out of ONNX Runtime, a
slice at a time, each slice a new pair of sessions, and compares them in numpy on float64 copies. Here both
models run once, interleaved: with priority-based execution order ONNX Runtime follows the merged graph's node
order, which places each candidate node right after the reference node computing the same tensor and each
pair's reductions right after both, so a pair is reduced and freed as soon as it exists and memory stays
near the two models' own working sets.

Merging needs two backends that run on ONNX Runtime's CPU provider (`Backend.cpu_graph`), the same opset per
domain, and external data in one folder (or none). The session runs at the lower of the two optimization
levels, and at most the basic one, with both configs: with a statistic reading every tensor the extended
fusions have nothing left to fuse, yet looking for them costs seconds on a transformer; the basic level's
rounding differs from the fused one at FP32's 1e-7, far below what layer-wise localisation looks at.
Weights the models share (the same file, or equal tensors under the same name) are held once, and graph
inputs both declare alike are one input; a candidate node with the same op, attributes and inputs as a
reference node is folded into it (`_fold_identical`): one node computes both tensors, equal by construction,
and their pair needs no statistic but its shape and magnitude. A model against itself runs once; a fixed
model against its original runs its unchanged part once.

Statistics per pair, `r` the reference's tensor and `c` the candidate's in a common float dtype (float32, or
float64 when either is), computed in that dtype (float64 copies of a Whisper encoder's 54 MB attention maps
doubled the run's time and memory), with one tensor written per pair, `c - r`:
- both shapes; Σr², Σc² (finite when every value is; the pair is fetched otherwise) and Σ(c-r)², summed over
  the last axis and then in float64 (`_Builder.squares`); max|c-r| and max|r| from ReduceMax and ReduceMin;
- how many elements lie outside atol + rtol·|r|, counted in int32 inside an If that runs only where
  max|c-r| > atol (`c - r` of two finite floats is 0 only where they are equal, so under the exact preset it
  counts the differing elements; 0.0 and -0.0 count as equal);
- from those, rel_err = sqrt(Σ(c-r)² / Σr²) and the cosine (`_cosine`).
Integer and bool pairs are compared by value, exactly: how many elements differ (Equal on int64), with
max|c-r| and Σ(c-r)², Σr² in float64. A pair whose shapes differ, or that holds inf or NaN, is not judged from
these: `LockstepRun.run` names it for the caller to fetch.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphdoctor.errors import first_line
from graphdoctor.verify.backends import CpuGraph

__all__ = ["PREFIX", "RANDOM_OPS", "LockstepRun", "LockstepUnavailable", "Pair", "PairStatistics", "comparable"]

PREFIX = "__gd_cand/"  # the candidate's names in the merged graph
_STAT = "__gd_diff"
_MIN_OPSET = 11  # the oldest opset the statistics are tested at (tests/verify/test_lockstep.py)
_UNSQUEEZE_AXES_AS_INPUT = 13  # the opsets where an attribute became an input
_REDUCE_AXES_AS_INPUT = 18  # (ReduceSumSquare's)
_BASIC_LEVEL = 1  # onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC: the highest a merged session runs at
_FLOATS = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
_INTEGERS = frozenset(
    {
        TensorProto.BOOL, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
        TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
    }
)  # fmt: skip
_FLOAT_STATISTICS = ("ref_shape", "cand_shape", "ref_squares", "cand_squares", "diff_squares", "max_abs",
                     "ref_absmax", "outside")  # fmt: skip
_AXES = {"flat": -1, "first_axis": 0, "last_axis": -1}  # int64 constants: a shape and two axes lists
_IDENTICAL_STATISTICS = ("ref_shape", "ref_absmax")
_INTEGER_STATISTICS = ("ref_shape", "cand_shape", "ref_squares", "diff_squares", "max_abs", "outside")


class LockstepUnavailable(Exception):
    """The two models cannot share one session (a GPU backend, different opsets, external data in two
    folders, a graph ONNX Runtime rejects); the caller fetches the tensors instead."""


@dataclass(frozen=True)
class Pair:
    """One tensor both models compute under `name`, with its dtype in each (TensorProto values)."""

    name: str
    reference_dtype: int
    candidate_dtype: int
    nonempty: bool = False  # both static shapes say it holds elements: no pad before a ReduceMax
    identical: bool = (
        False  # the candidate's node folded into a reference node (`_fold_identical`): equal by construction
    )

    @property
    def is_float(self) -> bool:
        return self.reference_dtype in _FLOATS


def comparable(reference_dtype: int | None, candidate_dtype: int | None) -> bool:
    """Pairs whose statistics can be computed in the graph: both float, or both integer or bool."""
    return (reference_dtype in _FLOATS and candidate_dtype in _FLOATS) or (
        reference_dtype in _INTEGERS and candidate_dtype in _INTEGERS
    )


@dataclass(frozen=True)
class PairStatistics:
    """What the statistics of one pair tell (see the module docstring)."""

    shape: tuple[int, ...]
    max_abs: float
    rel_err: float
    cosine: float
    outside: int  # elements outside the tolerance (floats), or differing (integers)
    ref_absmax: float  # 0 for integers

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class LockstepRun:
    """One CPU session over both models merged, with the difference statistics of `pairs` as its only
    outputs; `run(inputs)` runs it once. Raises LockstepUnavailable when the models cannot be merged or the
    session cannot be made."""

    def __init__(
        self, reference: CpuGraph, candidate: CpuGraph, pairs: Sequence[Pair], atol: float, rtol: float
    ) -> None:
        import onnxruntime as ort

        from graphdoctor.verify.backends.onnxruntime import EXTERNAL_FOLDER, quiet_session_options

        proto, folder, same = merged_model(reference, candidate)
        self.pairs = [dataclasses.replace(p, identical=PREFIX + p.name in same) for p in pairs]
        _add_statistics(proto, self.pairs, atol, rtol)
        options = quiet_session_options()
        level = min(reference.level, candidate.level, _BASIC_LEVEL)
        options.graph_optimization_level = ort.GraphOptimizationLevel(level)
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # follows the interleaved node order
        for key, value in {**dict(reference.config), **dict(candidate.config)}.items():
            options.add_session_config_entry(key, value)
        if folder is not None:
            options.add_session_config_entry(EXTERNAL_FOLDER, os.fspath(folder))
        disabled = sorted({*reference.disabled_optimizers, *candidate.disabled_optimizers})
        try:
            source = proto.SerializeToString()
            del proto
            self._session = ort.InferenceSession(
                source, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
            )
        except Exception as error:  # onnx and onnxruntime raise their own exception types
            raise LockstepUnavailable(
                f"ONNX Runtime cannot run both models in one session: {first_line(error)}"
            ) from None
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, PairStatistics], dict[str, str]]:
        """The statistics of every pair they can judge, and for the others why not ('shapes differ',
        'non-finite values'), to fetch. Raises LockstepUnavailable when the run fails."""
        from graphdoctor.verify.backends.onnxruntime import as_declared

        feeds = {**inputs, **{PREFIX + name: value for name, value in inputs.items()}}
        try:
            results = self._session.run(self._outputs, as_declared(self._session, feeds))
        except Exception as error:  # onnxruntime raises its own exception types
            raise LockstepUnavailable(f"the run of both models in one session failed: {first_line(error)}") from None
        scalars = dict(zip(self._outputs, results, strict=True))
        measured, unresolved = {}, {}
        for index, pair in enumerate(self.pairs):
            found = _judge({name: scalars[_stat(index, name)] for name in _statistics(pair)})
            if isinstance(found, str):
                unresolved[pair.name] = found
            else:
                measured[pair.name] = found
        return measured, unresolved


def _judge(stats: Mapping[str, np.ndarray]) -> PairStatistics | str:
    shape = tuple(int(d) for d in stats["ref_shape"])
    if "cand_shape" not in stats:  # one tensor for both: equal by construction
        return PairStatistics(shape, 0.0, 0.0, 1.0, 0, float(stats.get("ref_absmax", 0.0)))
    if shape != tuple(int(d) for d in stats["cand_shape"]):
        return "shapes differ"
    ref_squares, diff_squares = float(stats["ref_squares"]), float(stats["diff_squares"])
    cand_squares = float(stats.get("cand_squares", 0.0))
    if not all(math.isfinite(s) for s in (ref_squares, cand_squares, diff_squares)):
        return "non-finite values"  # or squares beyond float32's range: the fetched tensors tell
    rel_err = math.sqrt(diff_squares / ref_squares) if ref_squares > 0.0 else (0.0 if diff_squares == 0.0 else math.inf)
    cosine = _cosine(ref_squares, cand_squares, diff_squares) if "cand_squares" in stats else 1.0
    return PairStatistics(
        shape=shape,
        max_abs=float(stats["max_abs"]),
        rel_err=rel_err,
        cosine=cosine,
        outside=int(stats["outside"]),
        ref_absmax=float(stats.get("ref_absmax", 0.0)),
    )


def _cosine(ref_squares: float, cand_squares: float, diff_squares: float) -> float:
    """cos(r, c) = 1 - (|c - r|² - (|c| - |r|)²) / (2 |r| |c|), an identity whose rounding error is that of the
    sums times the relative error (|r| and |c| err alike: their difference errs little), where
    r·c / (|r| |c|) errs by the sums' own error; as metrics' cosine, 1 for two zero tensors, 0 for one."""
    ref_norm, cand_norm = math.sqrt(ref_squares), math.sqrt(cand_squares)
    if ref_norm == 0.0 or cand_norm == 0.0:
        return 1.0 if ref_norm == cand_norm == 0.0 else 0.0
    cosine = 1.0 - (diff_squares - (cand_norm - ref_norm) ** 2) / (2.0 * ref_norm * cand_norm)
    return max(-1.0, min(1.0, cosine))


# --- merging --------------------------------------------------------------------------------------------------


def merged_model(reference: CpuGraph, candidate: CpuGraph) -> tuple[onnx.ModelProto, Path | None, dict[str, str]]:
    """Both graphs in one model, the candidate's names prefixed (but for the weights and inputs both share),
    nodes interleaved, the candidate's nodes that compute what a reference node computes folded into it
    (`_fold_identical`); no outputs yet. Also the folder external data is read from (None: there is none), and
    the folded candidate tensors, each with the reference tensor it is."""
    folder = _data_folder(reference, candidate)
    model = onnx.ModelProto(ir_version=max(reference.proto.ir_version, candidate.proto.ir_version))
    model.opset_import.extend(_opsets(reference.proto, candidate.proto))
    model.functions.extend(_functions(reference.proto, candidate.proto))
    ref_graph = reference.proto.graph
    shared = _shared_initializers(ref_graph, candidate.proto.graph) | _shared_inputs(ref_graph, candidate.proto.graph)
    cand_graph = _graph_without(candidate.proto.graph, shared)
    _rename(cand_graph, lambda name: name if not name or name in shared else PREFIX + name)
    cand_nodes, same = _fold_identical(ref_graph.node, cand_graph.node)
    graph = model.graph
    graph.name = "lockstep"
    graph.input.extend(ref_graph.input)
    graph.input.extend(v for v in cand_graph.input if v.name not in shared)
    graph.initializer.extend(ref_graph.initializer)
    graph.initializer.extend(t for t in cand_graph.initializer if t.name not in shared)
    graph.sparse_initializer.extend(ref_graph.sparse_initializer)
    graph.sparse_initializer.extend(cand_graph.sparse_initializer)
    graph.node.extend(_interleaved(ref_graph.node, cand_nodes))
    return model, folder, same


def _graph_without(graph: onnx.GraphProto, initializers: set[str]) -> onnx.GraphProto:
    """A copy of `graph` less the named initializers (the shared weights are not copied to be dropped)."""
    copy = onnx.GraphProto()
    for name in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(copy, name).extend(getattr(graph, name))
    copy.initializer.extend(t for t in graph.initializer if t.name not in initializers)
    return copy


# ops whose outputs differ between two runs of one node (and Dropout given a training_mode input)
RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"}
)


def _fold_identical(
    reference: Sequence[onnx.NodeProto], candidate: Sequence[onnx.NodeProto]
) -> tuple[list[onnx.NodeProto], dict[str, str]]:
    """The candidate's nodes less those with a reference node of the same op, attributes and inputs (through
    the tensors already folded): one node then computes both tensors, which are equal by construction, and no
    statistic needs to compare them (ONNX Runtime's common-subexpression elimination would merge them too,
    after the statistics were built). Also each folded candidate tensor with the reference tensor it is.
    Nodes with subgraphs and random ops are kept."""
    computed: dict[tuple, list[list[str]]] = {}
    for node in (n for n in reference if _foldable(n)):
        computed.setdefault(_signature(node, node.input), []).append(list(node.output))
    same: dict[str, str] = {}
    kept = []
    for node in candidate:
        node.input[:] = [same.get(name, name) for name in node.input]
        outputs = _counterpart(node, computed.get(_signature(node, node.input), [])) if _foldable(node) else None
        if outputs is not None and len(outputs) == len(node.output):
            same.update((mine, theirs) for mine, theirs in zip(node.output, outputs, strict=True) if mine)
            continue
        for subgraph in _subgraphs(node):
            _redirect(subgraph, same)
        kept.append(node)
    return kept, same


def _counterpart(node: onnx.NodeProto, computing: Sequence[list[str]]) -> list[str] | None:
    """The outputs of the reference node `node` folds into: the one computing the same names where the
    reference computes one thing twice (torch exports take an input's Shape in several places), else the first."""
    own = [name.removeprefix(PREFIX) for name in node.output]
    return next((outputs for outputs in computing if outputs == own), computing[0] if computing else None)


def _foldable(node: onnx.NodeProto) -> bool:
    training = node.op_type == "Dropout" and len(node.input) > 2 and bool(node.input[2])
    return node.op_type not in RANDOM_OPS and not training and not any(True for _ in _subgraphs(node))


def _signature(node: onnx.NodeProto, inputs: Sequence[str]) -> tuple:
    attributes = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
    return node.domain, node.op_type, node.overload, tuple(inputs), attributes


def _redirect(graph: onnx.GraphProto, same: Mapping[str, str]) -> None:
    """A subgraph's reads of outer tensors that were folded, to the tensors they are."""
    for node in graph.node:
        node.input[:] = [same.get(name, name) for name in node.input]
        for subgraph in _subgraphs(node):
            _redirect(subgraph, same)


def _data_folder(reference: CpuGraph, candidate: CpuGraph) -> Path | None:
    folders = {g.folder.resolve() for g in (reference, candidate) if _has_external_data(g.proto.graph)}
    if len(folders) > 1:
        raise LockstepUnavailable("the two models' external data lie in different folders")
    return next(iter(folders), None)


def _has_external_data(graph: onnx.GraphProto) -> bool:
    tensors = [*graph.initializer, *(s.values for s in graph.sparse_initializer)]
    if any(t.data_location == TensorProto.EXTERNAL for t in tensors):
        return True
    return any(_has_external_data(g) for node in graph.node for g in _subgraphs(node))


def _opsets(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    versions: dict[str, int] = {}
    for opset in (*reference.opset_import, *candidate.opset_import):
        if versions.setdefault(opset.domain, opset.version) != opset.version:
            domain = opset.domain or "ai.onnx"
            raise LockstepUnavailable(f"the models import different opsets of {domain}")
    return [helper.make_opsetid(domain, version) for domain, version in versions.items()]


def _functions(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> list[onnx.FunctionProto]:
    functions = {(f.domain, f.name, f.overload): f for f in reference.functions}
    for function in candidate.functions:
        key = (function.domain, function.name, function.overload)
        if key in functions and functions[key] != function:
            raise LockstepUnavailable(f"the models define function {function.name} differently")
        functions.setdefault(key, function)
    return list(functions.values())


def _shared_initializers(reference: onnx.GraphProto, candidate: onnx.GraphProto) -> set[str]:
    """Names of the main-graph initializers equal in both (the same bytes, or the same external range)."""
    by_name = {t.name: t for t in reference.initializer}
    return {t.name for t in candidate.initializer if t.name in by_name and by_name[t.name] == t}


def _shared_inputs(reference: onnx.GraphProto, candidate: onnx.GraphProto) -> set[str]:
    """Names of the graph inputs both declare with the same type: fed the same array, read as one input.
    With the weights shared too, what both compute alike from them is computed once (ONNX Runtime's
    common-subexpression elimination): a model against itself, or the part before a fix's first change."""
    by_name = {v.name: v.type for v in reference.input}
    return {v.name for v in candidate.input if v.name in by_name and by_name[v.name] == v.type}


def _rename(graph: onnx.GraphProto, rename: Callable[[str], str]) -> None:
    """Every name in `graph` and its subgraphs through `rename` (ONNX names are unique across scopes)."""
    for values in (graph.input, graph.output, graph.value_info):
        for value in values:
            value.name = rename(value.name)
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = rename(sparse.values.name)
        sparse.indices.name = rename(sparse.indices.name)
    for node in graph.node:
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
        node.name = PREFIX + node.name if node.name else node.name
        for subgraph in _subgraphs(node):
            _rename(subgraph, rename)


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _interleaved(reference: Sequence[onnx.NodeProto], candidate: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Both node lists in one order: each candidate node right after the reference node computing the same
    tensor (or, computing none, after its inputs' producers), so that execution in this order holds each
    reference tensor only until its counterpart exists. Positions never decrease along an edge: the order
    stays topological."""
    position: dict[str, int] = {}
    keyed: list[tuple[tuple[int, int, int], onnx.NodeProto]] = []
    for index, node in enumerate(reference):
        position.update((name, index) for name in node.output)
        keyed.append(((index, 0, index), node))
    for index, node in enumerate(candidate):
        own = (position.get(name.removeprefix(PREFIX), -1) for name in node.output)
        after = max(-1, *own, *(position.get(name, -1) for name in node.input if name.startswith(PREFIX)))
        position.update((name, after) for name in node.output)
        keyed.append(((after, 1, index), node))
    keyed.sort(key=lambda item: item[0])
    return [node for _, node in keyed]


# --- the statistics -----------------------------------------------------------------------------------------


def _stat(index: int | str, statistic: str) -> str:
    return f"{_STAT}/{index}/{statistic}"


def _statistics(pair: Pair) -> tuple[str, ...]:
    if pair.identical:
        return _IDENTICAL_STATISTICS if pair.is_float else _IDENTICAL_STATISTICS[:1]
    return _FLOAT_STATISTICS if pair.is_float else _INTEGER_STATISTICS


def _add_statistics(model: onnx.ModelProto, pairs: Sequence[Pair], atol: float, rtol: float) -> None:
    """The statistics nodes of every pair, each group right after the later of its two producers, and their
    outputs as the model's only outputs."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset < _MIN_OPSET:
        raise LockstepUnavailable(f"opset {opset} is older than {_MIN_OPSET}")
    graph = model.graph
    groups = {}
    for index, pair in enumerate(pairs):
        builder = _Builder(index, opset)
        if pair.identical:
            _identical_statistics(builder, pair)
        else:
            (_float_statistics if pair.is_float else _integer_statistics)(builder, pair, atol, rtol)
        groups[pair.name if pair.identical else PREFIX + pair.name] = builder.nodes
    produced = {name for node in graph.node for name in node.output}
    missing = [p.name for p in pairs if p.name not in produced or not (p.identical or PREFIX + p.name in produced)]
    if missing:
        raise LockstepUnavailable(f"'{missing[0]}' is not computed by both main graphs")
    nodes = _constants(atol, rtol)
    for node in graph.node:  # the candidate's counterpart comes after the reference's: its group follows it
        nodes.append(node)
        for output in node.output:
            nodes.extend(groups.pop(output, ()))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(onnx.ValueInfoProto(name=_stat(i, s)) for i, p in enumerate(pairs) for s in _statistics(p))


class _Builder:
    """The nodes of one pair's statistics, named under `__gd_diff/<index>/`, for a model of `opset`."""

    def __init__(self, index: int | str, opset: int) -> None:
        self.index = index
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []

    def add(self, op: str, inputs: Sequence[str], statistic: str | None = None, **attributes) -> str:
        output = _stat(self.index, statistic or f"t{len(self.nodes)}")
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attributes))
        return output

    def cast(self, name: str, dtype: int, to: int) -> str:
        return name if dtype == to else self.add("Cast", [name], to=to)

    def squares(self, name: str, dtype: int, statistic: str) -> str:
        """Σx² in float64. ONNX Runtime's ReduceSumSquare over a whole tensor adds in one float32 running sum
        (2e-4 off on a 13.5M-element attention map); over the last axis, then in float64, it is 2e-9 off. An
        Unsqueeze first (no copy) gives a scalar a last axis."""
        if self.opset >= _UNSQUEEZE_AXES_AS_INPUT:
            lifted = self.add("Unsqueeze", [name, _constant_name("first_axis")])
        else:
            lifted = self.add("Unsqueeze", [name], axes=[0])
        if self.opset >= _REDUCE_AXES_AS_INPUT:
            rows = self.add("ReduceSumSquare", [lifted, _constant_name("last_axis")], keepdims=1)
        else:
            rows = self.add("ReduceSumSquare", [lifted], axes=[-1], keepdims=1)
        return self.add("ReduceSum", [self.cast(rows, dtype, TensorProto.DOUBLE)], statistic, keepdims=0)

    def magnitude(self, name: str, dtype: int, statistic: str, nonempty: bool) -> str:
        """max|x| as max(max x, -min x), reading x twice instead of writing |x|; 0 for an empty x (ReduceMax of
        nothing is an error)."""
        if not nonempty:
            flat = self.add("Reshape", [name, _constant_name("flat")])
            name = self.add("Concat", [flat, _constant_name(f"zero/{dtype}")], axis=0)
        low = self.add("Neg", [self.add("ReduceMin", [name], keepdims=0)])
        return self.add("Max", [self.add("ReduceMax", [name], keepdims=0), low], statistic)

    def outside(
        self, distance_of: Callable[[_Builder], str], magnitude_of: Callable[[_Builder], str], max_abs: str, dtype: int
    ) -> None:
        """How many elements lie outside atol + rtol·|r|, computed only where max|c - r| exceeds atol (else
        none does): an If whose branch writes four tensors of the pair's size, which most pairs never need."""
        branch = _Builder(f"{self.index}/if", self.opset)
        allowed = branch.add(
            "Add",
            [
                branch.add("Mul", [magnitude_of(branch), _constant_name(f"rtol/{dtype}")]),
                _constant_name(f"atol/{dtype}"),
            ],
        )
        beyond = branch.add("Greater", [distance_of(branch), allowed])
        counted = branch.add("ReduceSum", [branch.add("Cast", [beyond], to=TensorProto.INT32)], "then", keepdims=0)
        then = helper.make_graph(
            branch.nodes, "then", [], [helper.make_tensor_value_info(counted, TensorProto.INT32, [])]
        )
        none = _stat(self.index, "else")
        zero = helper.make_tensor(none, TensorProto.INT32, [], [0])
        otherwise = helper.make_graph(
            [helper.make_node("Constant", [], [none], value=zero)],
            "else",
            [],
            [helper.make_tensor_value_info(none, TensorProto.INT32, [])],
        )
        needed = self.add("Greater", [max_abs, _constant_name(f"atol/{dtype}")])
        self.add("If", [needed], "outside", then_branch=then, else_branch=otherwise)


def _float_statistics(builder: _Builder, pair: Pair, atol: float, rtol: float) -> None:
    doubles = TensorProto.DOUBLE in (pair.reference_dtype, pair.candidate_dtype)
    common = TensorProto.DOUBLE if doubles else TensorProto.FLOAT
    builder.add("Shape", [pair.name], "ref_shape")
    builder.add("Shape", [PREFIX + pair.name], "cand_shape")
    ref = builder.cast(pair.name, pair.reference_dtype, common)
    cand = builder.cast(PREFIX + pair.name, pair.candidate_dtype, common)
    builder.squares(ref, common, "ref_squares")
    builder.squares(cand, common, "cand_squares")
    diff = builder.add("Sub", [cand, ref])
    builder.squares(diff, common, "diff_squares")
    max_abs = builder.magnitude(diff, common, "max_abs", pair.nonempty)
    builder.magnitude(ref, common, "ref_absmax", pair.nonempty)
    builder.outside(lambda b: b.add("Abs", [diff]), lambda b: b.add("Abs", [ref]), max_abs, common)


def _identical_statistics(builder: _Builder, pair: Pair) -> None:
    """One tensor for both: its shape, and for a float one its magnitude (the hints read the reference's)."""
    builder.add("Shape", [pair.name], "ref_shape")
    if pair.is_float:
        dtype = TensorProto.DOUBLE if pair.reference_dtype == TensorProto.DOUBLE else TensorProto.FLOAT
        builder.magnitude(builder.cast(pair.name, pair.reference_dtype, dtype), dtype, "ref_absmax", pair.nonempty)


def _integer_statistics(builder: _Builder, pair: Pair, _atol: float, _rtol: float) -> None:
    builder.add("Shape", [pair.name], "ref_shape")
    builder.add("Shape", [PREFIX + pair.name], "cand_shape")
    ref = builder.cast(pair.name, pair.reference_dtype, TensorProto.INT64)
    cand = builder.cast(PREFIX + pair.name, pair.candidate_dtype, TensorProto.INT64)
    differ = builder.add("Not", [builder.add("Equal", [ref, cand])])
    builder.add("ReduceSum", [builder.add("Cast", [differ], to=TensorProto.DOUBLE)], "outside", keepdims=0)
    ref_values = builder.add("Cast", [pair.name], to=TensorProto.DOUBLE)
    cand_values = builder.add("Cast", [PREFIX + pair.name], to=TensorProto.DOUBLE)
    builder.squares(ref_values, TensorProto.DOUBLE, "ref_squares")
    diff = builder.add("Sub", [cand_values, ref_values])
    builder.squares(diff, TensorProto.DOUBLE, "diff_squares")
    builder.magnitude(diff, TensorProto.DOUBLE, "max_abs", pair.nonempty)


def _constant_name(name: str) -> str:
    return f"{_STAT}/c/{name}"


def _constants(atol: float, rtol: float) -> list[onnx.NodeProto]:
    """Shared scalars (Constant nodes, valid in every opset from 9); ONNX Runtime drops the unused ones."""
    nodes = [_constant(name, TensorProto.INT64, [1], [axis]) for name, axis in _AXES.items()]
    for dtype in (TensorProto.FLOAT, TensorProto.DOUBLE):
        nodes.append(_constant(f"zero/{dtype}", dtype, [1], [0.0]))
        nodes.append(_constant(f"atol/{dtype}", dtype, [], [atol]))
        nodes.append(_constant(f"rtol/{dtype}", dtype, [], [rtol]))
    return nodes


def _constant(name: str, dtype: int, dims: list[int], values: list) -> onnx.NodeProto:
    output = _constant_name(name)
    return helper.make_node(
        "Constant", [], [output], name=output, value=helper.make_tensor(output, dtype, dims, values)
    )
