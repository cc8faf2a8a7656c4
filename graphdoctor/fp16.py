"""FP16 conversion on the IR: FP16 wherever it is safe, FP32 where it is not, and every changed value reported.

The common converters clamp weights silently (onnxconverter-common to ±1e4), leave `Cast(to=FLOAT)` and
`dtype` attributes behind, break when a graph output is also read inside the graph, put Casts in the wrong
graph or out of topological order, and retype external data without rewriting its bytes. This one works in
three passes over every graph (the main graph and If/Loop/Scan bodies; model-local functions stay FP32 and
their calls are kept FP32):

1. Decide, per node, FP16 or FP32, with a reason for every node kept FP32: ops whose schema has no FP16 form
   for an output (Range), blocked ops (TopK, NonMaxSuppression, ...: results that differ across backends),
   nodes of other domains, Casts to integers (FP16 rounding changes integers above 2048), `keep_fp32`
   patterns, nodes reading a constant that FP16 cannot hold (|x| >= 65520, or an eps such as 1e-12 that
   rounds to 0), and, with sample-input ranges, nodes whose activations reach FP16's overflow (attention
   masks, which saturate on purpose, excepted).
2. Retype: the FP16 nodes' float outputs, `Cast(to=FLOAT)`'s `to`, `dtype` attributes (EyeLike, Random*)
   and ConstantOfShape's fill. Inputs the schema types separately (Resize's scales and roi) keep theirs.
3. Place Casts where a tensor crosses between FP16 and FP32: one per tensor and target type per graph,
   right after its producer (or first in the graph reading it, for inputs and captured outer values), so
   topological order holds. Constants are converted rather than cast: in place when every reader wants
   FP16, as a second FP16 copy when FP32 readers remain. Graph outputs (and subgraph outputs, always) keep
   their name and FP32 type: the FP16 tensor is renamed and a Cast produces the output, so readers inside
   the graph keep reading FP16.

Weights are converted lazily: each FP16 tensor is computed from its source, read in chunks with plain file
reads, only when the writer asks for its bytes, so a 2 GB model never holds more than one tensor in memory.
Constants are scanned first: a weight with a few values below 2^-25 is converted and those values are
reported as flushed to 0; values FP16 cannot hold keep their readers in FP32 unless `clamp` is asked, in
which case they are clamped to ±65504 (or up to 2^-24) and reported; attention-mask fills (float32's lowest
value, read by a Softmax) saturate to -65504, as every converter does, and are reported too.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.constants import const_tensor
from graphdoctor.analysis.fp16_ops import (
    BF16,
    FP16,
    LowPrecision,
    input_allows_type,
    only_rounded_by,
    output_allows_type,
)
from graphdoctor.analysis.graph import (
    holds_tensor,
    is_constant_node,
    iter_graph_sites,
    iter_values,
    node_label,
    opset_version,
)
from graphdoctor.analysis.integer_math import integer_valued_regions
from graphdoctor.analysis.precision_fences import exporter_fences
from graphdoctor.analysis.ranges import TensorRange, feeds_softmax
from graphdoctor.analysis.ranges import is_mask_saturation as _is_mask_activation
from graphdoctor.analysis.tensor_data import iter_chunks
from graphdoctor.analysis.types import infer_types
from graphdoctor.rewrite import fresh_name, insert_after_producer

__all__ = [
    "BLOCKED_OPS",
    "DEFAULT_MAX_VALUE",
    "Fp16Options",
    "Fp16Report",
    "Fp32Region",
    "KeptFp32",
    "ValueChange",
    "convert_to_fp16",
]

_F32 = ir.DataType.FLOAT
_LOW_TYPES = frozenset({ir.DataType.FLOAT16, ir.DataType.BFLOAT16})
# Ops kept in FP32 by default: their results are rankings or boxes that FP16 ties and rounding reorder, or
# accumulations that overflow long before their inputs do.
BLOCKED_OPS = {
    "TopK": "ranks values: FP16 ties and rounding reorder them, and backends break ties differently",
    "NonMaxSuppression": "box overlaps decide which detections survive; FP16 rounding changes the choice",
    "RoiAlign": "sampling positions computed in FP16 shift by a pixel on large images",
    "CumSum": "a running sum overflows FP16 long before its inputs do",
}
_DTYPE_OPS = frozenset({"EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"})
_DTYPE_OPS |= {"Bernoulli", "Multinomial"}
# tables computed from integer sizes, typed by an `output_datatype` attribute: ONNX Runtime has no FP16
# kernel for them, and converting the table costs one Cast
_TABLE_OPS = frozenset({"HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix"})
_SCATTER_OPS = frozenset({"ScatterND", "ScatterElements"})
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})
_EPS_LIKE_ELEMENTS = 16  # a constant this small whose nonzero values all flush is an epsilon, not a weight
_EPS_REASON = "reads the eps constant"
_TAIL_OPS = frozenset({"Sqrt", "Div", "Reciprocal"})
_NORMALIZATION_TAIL = 3
_MASK_FILL = -3.0e38  # float32's lowest value (-3.4e38) and its neighbours: the `finfo.min` mask idiom
BF16_OPSET = 22  # the first opset where Conv, pooling and most activations accept BFLOAT16
_LAZY_FROM = 1024 * 1024  # in-memory weights at least this large are converted lazily, as they are written
# Activations measured at or beyond this fraction of the format's largest value stay FP32: an activation
# that peaked at 33k on the samples reaching 65504 on other inputs of the same distribution is what
# bench/fp16_margin.py measures (see bench/results/fp16_margin.md).
MARGIN = 2.0
DEFAULT_MAX_VALUE = FP16.largest / MARGIN


@dataclass(frozen=True)
class Fp16Options:
    keep_io_types: bool = True  # graph inputs and outputs stay FP32
    keep_fp32: tuple[str, ...] = ()  # op types or node-name globs the user keeps in FP32
    keep_nodes: frozenset[str] = frozenset()  # node labels kept FP32 by an earlier, failed verification
    clamp: bool = False  # clamp constants FP16 cannot hold instead of keeping their readers in FP32
    max_value: float | None = None  # activations measured at or beyond this stay FP32 (None: largest / MARGIN)
    force_fp16: tuple[str, ...] = ()  # op types or node-name globs converted whatever the heuristics say
    precision: LowPrecision = FP16  # FP16, or BF16 (--bf16)

    @property
    def limit(self) -> float:
        return self.max_value if self.max_value is not None else self.precision.largest / MARGIN


@dataclass(frozen=True)
class KeptFp32:
    node: str
    op_type: str
    graph: str
    reason: str
    kind: str = ""  # what decided it: 'range', 'integer-math', 'fence', 'eps', 'constant', 'user', 'repair', ...


@dataclass(frozen=True)
class Fp32Region:
    """Connected nodes kept FP32 because the values they read or compute are beyond the FP16 limit on the
    samples: from where values leave FP16's range to where they are back in it."""

    graph: str
    nodes: tuple[str, ...]  # in graph order
    peak: float  # the largest magnitude measured in the region
    peak_at: str  # the tensor holding it
    ends: tuple[str, ...]  # the region's last nodes: their outputs are back in range


@dataclass(frozen=True)
class ValueChange:
    """Values of one constant that FP16 changes beyond rounding: flushed to 0, clamped, or saturated."""

    tensor: str
    what: str  # 'flushed to 0' | 'clamped' | 'saturated (attention mask)'
    count: int
    worst: float  # the original value that moved the most


@dataclass
class Fp16Report:
    converted_nodes: int = 0
    kept: list[KeptFp32] = field(default_factory=list)
    changed: list[ValueChange] = field(default_factory=list)
    casts_added: int = 0
    tensors_converted: int = 0
    functions_kept: int = 0  # model-local functions left in FP32
    already_fp16: bool = False  # nothing was FLOAT: a no-op
    ranges_measured: bool = False  # activations were checked on sample inputs
    max_value: float = DEFAULT_MAX_VALUE  # the activation limit the ranges were judged by
    precision: str = FP16.name  # what the region was converted to: FP16 or BF16
    regions: list[Fp32Region] = field(default_factory=list)  # the range-kept nodes, grouped
    opset_notes: list[str] = field(default_factory=list)  # BF16: how the opset was raised, or why not


@dataclass(frozen=True)
class _Scan:
    """A float32 constant, reduced to what FP16 would do to it."""

    size: int
    nonzero: int  # counted where a value flushes (else 0): what tells an epsilon from a weight
    overflow: int  # finite |x| >= 65520
    overflow_negative: int
    min_value: float  # the lowest finite value, read for masks (0.0 where nothing overflows)
    worst_overflow: float
    flushed: int  # nonzero |x| <= 2^-25
    worst_flushed: float

    @property
    def eps_like(self) -> bool:
        return self.size <= _EPS_LIKE_ELEMENTS and self.flushed > 0 and self.flushed == self.nonzero


def convert_to_fp16(
    model: ir.Model, options: Fp16Options = Fp16Options(), ranges: Mapping[str, TensorRange] | None = None
) -> Fp16Report:
    """Convert `model` to FP16 in place (see the module docstring); `ranges` are activation ranges of the
    FP32 model on sample inputs (`verify.ranges.value_ranges_over`), used to keep overflowing nodes in FP32."""
    report = Fp16Report(ranges_measured=ranges is not None, max_value=options.limit, precision=options.precision.name)
    if options.precision.dtype == BF16.dtype:
        report.opset_notes = _opset_for_bf16(model)
    infer_types(model)
    _rank_match_transposed_matmuls(model)
    graphs = [graph for graph, _ in iter_graph_sites(model) if isinstance(graph, ir.Graph)]
    report.functions_kept = len(model.functions)
    was_float = {id(v) for graph in graphs for v in _values(graph) if v.dtype == _F32 and holds_tensor(v)}
    if not was_float or _only_boundaries_fp32(graphs, options.precision):
        report.already_fp16 = True
        return report
    converter = _Converter(model, options, ranges or {}, was_float, report)
    for graph, path in ((g, p) for g, p in iter_graph_sites(model) if isinstance(g, ir.Graph)):
        converter.decide(graph, path)
    for graph in graphs:
        converter.retype(graph)
    if not options.keep_io_types:
        converter.retype_main_inputs()
    report.regions = converter.range_regions()
    for graph in graphs:
        converter.place_casts(graph)
    return report


def _variance_chains(model: ir.Model) -> dict[ir.Node, str]:
    """The variance chain of each decomposed LayerNorm/RMSNorm: the square, its mean, `+ eps`, the root and
    the division by it. In FP16 the square overflows beyond |x| = 256 and the mean of squares loses the
    small ones; and ONNX Runtime 1.24 fails to load a model whose FP16 Pow reads an FP16 exponent shared by
    several LayerNorms (its SimplifiedLayerNormFusion drops the exponent's Cast). Kept FP32, as TensorRT
    advises for normalizations."""
    from graphdoctor.analysis.context import Analysis
    from graphdoctor.analysis.normalization import find_normalizations

    chains: dict[ir.Node, str] = {}
    for norm in find_normalizations(Analysis(model)):
        if not norm.is_decomposed:
            continue
        add, variance, square, *rest = norm.nodes
        root = rest[-1]
        readers = [use.node for value in root.outputs for use in value.uses()]
        divisions = [r for r in readers if r.op_type in ("Div", "Reciprocal")] if len(readers) == 1 else []
        reason = (
            f"the variance of a {norm.form} (anchored at '{node_label(add)}'): squares overflow FP16 beyond |x| = 256,"
            " and an FP16 variance chain fails to load on ONNX Runtime 1.24; FP32 as TensorRT advises"
        )
        for node in (square, variance, add, root, *divisions):
            chains.setdefault(node, reason)
    return chains


def _rank_match_transposed_matmuls(model: ir.Model) -> None:
    """A MatMul reading a Transpose of rank 3 or more that moves axis 0 (`perm [1, 0, 2]`, before each
    in_proj of a dynamo-exported `nn.MultiheadAttention`) and a 2-D weight crashes ONNX Runtime 1.23 to 1.32
    (SIGSEGV) once the MatMul is FP16 or reads through a Cast: its MatmulTransposeFusion rewrites the graph,
    then drops the fusion on the rank mismatch without resolving it (microsoft/onnxruntime#28392). The
    weight stored with leading 1s (`[K, N]` as `[1, K, N]`) gives the same products by MatMul's
    broadcasting, bit for bit, and the fusion completes. Only weights this MatMul alone reads; never read."""
    for graph, _ in iter_graph_sites(model):
        for node in graph:
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
                continue
            for index in (0, 1):
                rank = _transposed_batch_rank(node.inputs[index])
                weight = node.inputs[1 - index]
                if rank is not None and _lone_initializer(weight, node) and len(weight.shape) < rank:
                    _with_leading_ones(weight, rank)


def _transposed_batch_rank(value: ir.Value | None) -> int | None:
    """The rank of a Transpose output whose perm moves axis 0 (None for anything else)."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "Transpose" or producer.domain not in ("", "ai.onnx"):
        return None
    perm = producer.attributes.get_ints("perm")
    return len(perm) if perm is not None and len(perm) >= 3 and perm[0] != 0 else None


def _lone_initializer(value: ir.Value | None, reader: ir.Node) -> bool:
    if value is None or not value.is_initializer() or value.is_graph_input() or value.const_value is None:
        return False
    return value.shape is not None and all(use.node is reader for use in value.uses())


def _with_leading_ones(value: ir.Value, rank: int) -> None:
    """The same tensor, its shape padded with 1s in front: an external one keeps its bytes where they are."""
    tensor = value.const_value
    shape = ir.Shape([1] * (rank - len(tensor.shape)) + list(tensor.shape.numpy()))
    if isinstance(tensor, ir.ExternalTensor):
        value.const_value = ir.ExternalTensor(
            tensor.location,
            tensor.offset,
            tensor.length,
            tensor.dtype,
            shape=shape,
            name=tensor.name,
            base_dir=tensor.base_dir,
        )
    else:
        value.const_value = ir.Tensor(tensor.numpy().reshape(shape.numpy()), name=tensor.name)
    value.shape = shape


def _opset_for_bf16(model: ir.Model) -> list[str]:
    """Conv, ConvTranspose, pooling, InstanceNormalization, Sin, Round... have a BFLOAT16 form only from opset
    22: below it they would all stay FP32. Raise the model to 22 when every node carries over exactly (else
    say why not, and they stay FP32 with that reason)."""
    from graphdoctor.opset_upgrade import OpsetUpgradeRefused, raise_opset

    current = opset_version(model, "")
    if current is None or current >= BF16_OPSET:
        return []
    try:
        notes = raise_opset(model, BF16_OPSET)
    except OpsetUpgradeRefused as refused:
        return [f"opset {current} kept (ops without a BF16 form before {BF16_OPSET} stay FP32): {refused}"]
    return [f"opset {current} → {BF16_OPSET}: Conv and pooling have a BF16 form only from {BF16_OPSET}", *notes]


def _only_boundaries_fp32(graphs: list[ir.Graph], precision: LowPrecision) -> bool:
    """A converted model: it holds the low-precision type, and float32 appears only at its edges, as graph
    inputs and outputs and the Casts between them and the low-precision region."""
    computed = [
        value
        for graph in graphs
        for node in graph
        if node.op_type != "Cast" and not is_constant_node(node)
        for value in node.outputs
    ]
    constants = [v for graph in graphs for v in graph.initializers.values()]
    holds_low = any(v.dtype == precision.dtype for v in computed + constants)
    return holds_low and not any(v.dtype == _F32 for v in computed + constants)


def _values(graph: ir.Graph) -> Iterator[ir.Value]:
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


class _Converter:
    def __init__(self, model, options: Fp16Options, ranges, was_float: set[int], report: Fp16Report) -> None:
        self.model = model
        self.options = options
        self.ranges = ranges
        self.was_float = was_float
        self.report = report
        self.low = options.precision
        self.fp16: set[int] = set()  # nodes computing in the low precision
        self.scans: dict[int, _Scan | None] = {}
        self.casts: dict[tuple[int, ir.DataType, int], ir.Value] = {}
        self.converted: dict[int, ir.Value] = {}  # constant -> its FP16 form
        self.added: set[int] = set()
        self.forced: dict[int, str] = {}  # nodes kept FP32 because of a node before them, with the reason
        self.names = {value.name for value in iter_values(model)}
        self.integer_math = integer_valued_regions(model)
        self.fences = exporter_fences(model)
        self.variances = _variance_chains(model)
        self.kinds: dict[int, str] = {}  # nodes kept FP32: what decided it
        self.paths: dict[int, str] = {}  # every decided node's graph path

    # -- 1. deciding --

    def decide(self, graph: ir.Graph, path: str) -> None:
        self._protect_fp32_only_inputs(graph)
        for node in graph:
            if is_constant_node(node) or not self._carries_float(node):
                continue
            kind, reason = self._decision(node)
            if kind == "eps":
                self._force_normalization_tail(node)
            self.paths[id(node)] = path
            if reason is None:
                self.fp16.add(id(node))
                self.report.converted_nodes += 1
            else:
                self.kinds[id(node)] = kind
                self.report.kept.append(KeptFp32(node_label(node), node.op_type, path, reason, kind))

    def _decision(self, node: ir.Node) -> tuple[str, str | None]:
        """(what decided, why the node stays FP32), or ("", None) to convert it. `force_fp16` overrides the
        judgements (ranges, constants, fences, integer math, blocked ops), never what FP16 cannot express."""
        impossible = self._impossible_reason(node)
        if impossible is not None:
            return impossible
        if id(node) in self.forced:
            reason = self.forced[id(node)]
            return ("eps-tail" if reason.startswith("follows") else "schema"), reason
        label = node_label(node)
        if any(_matches(node, label, pattern) for pattern in self.options.force_fp16):
            return "", None
        return self._judgement(node, label)

    def _protect_fp32_only_inputs(self, graph: ir.Graph) -> None:
        """Inputs that must stay float32 (Resize's scales) may be computed, e.g. from the input's shape: the
        nodes computing them stay FP32 too, or FP16 rounding changes the output's size (640/480 becomes
        1.333 and 640 pixels become 639). Walk back from each such input while every reader of the value is
        such an input or a node already kept for one."""
        for node in reversed(list(graph)):
            for index, value in enumerate(node.inputs):
                if value is None or id(value) not in self.was_float:
                    continue
                if id(node) in self.forced or not self._fp16_input(node, index):
                    self._protect_producer(value, f"computes {node.op_type} '{node_label(node)}' input {index}")

    def _protect_producer(self, value: ir.Value, why: str) -> None:
        producer = value.producer()
        if producer is None or producer.graph is None or is_constant_node(producer) or id(producer) in self.forced:
            return
        readers = [(use.node, use.idx) for use in value.uses()]
        if all(id(reader) in self.forced or not self._fp16_input(reader, index) for reader, index in readers):
            self.forced[id(producer)] = f"{why}, which must stay float32"

    def _fp16_input(self, node: ir.Node, index: int) -> bool:
        return input_allows_type(node.domain, node.op_type, self._opset(node), index, self.low.type_str)

    def _fp16_output(self, node: ir.Node, index: int) -> bool:
        return output_allows_type(node.domain, node.op_type, self._opset(node), index, self.low.type_str)

    def _carries_float(self, node: ir.Node) -> bool:
        return any(v is not None and id(v) in self.was_float for v in (*node.inputs, *node.outputs))

    def _impossible_reason(self, node: ir.Node) -> tuple[str, str] | None:
        """What FP16 cannot express for this node, or what the user or a failed verification asked for."""
        label = node_label(node)
        if label in self.options.keep_nodes:
            return "repair", f"its output diverged beyond the {self.low.key} tolerance in a verification run"
        pattern = next((p for p in self.options.keep_fp32 if _matches(node, label, p)), None)
        if pattern is not None:
            return "user", f"--keep-fp32 {pattern}"
        if node.domain not in ("", "ai.onnx"):
            return "domain", f"op of domain '{node.domain}': its {self.low.name} support is unknown"
        if not all(holds_tensor(v) for v in (*node.inputs, *node.outputs) if v is not None):
            return "sequence", "reads or produces a sequence or optional, which no Cast converts"
        if node.op_type in _SUBGRAPH_OPS:
            return "subgraph", "holds subgraphs, converted on their own; their inputs and outputs stay FP32"
        if any(v is not None and _is_sparse_initializer(v) for v in node.inputs):
            return "sparse", "reads a sparse initializer, which stays as stored (float32)"
        if node.op_type in _TABLE_OPS:
            return "table", "computes a table from integer sizes (output_datatype): FP32, Cast where FP16 reads it"
        if node.op_type == "BitCast":
            return "bitcast", "reinterprets its input's bits: a 16-bit float has other bits than a float32"
        if node.op_type == "Cast" and not _float_target(node):
            return "integer-cast", f"casts to an integer type: {self.low.name} rounding would change the integers"
        reason = self._schema_reason(node)
        return ("schema", reason) if reason is not None else None

    def _judgement(self, node: ir.Node, label: str) -> tuple[str, str | None]:
        """Why FP16 would be wrong here although it can be written: the heuristics `force_fp16` overrides."""
        if node in self.integer_math:
            return "integer-math", self.integer_math[node]
        if node.op_type in BLOCKED_OPS:
            return "blocked", BLOCKED_OPS[node.op_type]
        if node.op_type in _SCATTER_OPS and (node.attributes.get_string("reduction", "none") or "none") != "none":
            return "blocked", "accumulates into its data (reduction): a running sum or product in low precision"
        if node in self.fences:
            return "fence", self.fences[node]
        constant = self._constant_reason(node)
        if constant is not None:
            return ("eps" if constant.startswith(_EPS_REASON) else "constant"), constant
        measured = self._range_reason(node)
        if measured is not None:
            return "range", measured
        if node in self.variances:
            return "normalization", self.variances[node]
        return "", None

    def _schema_reason(self, node: ir.Node) -> str | None:
        for index, value in enumerate(node.outputs):
            used_float = id(value) in self.was_float and _is_used(value)
            if used_float and not self._fp16_output(node, index):
                at = f" at opset {self._opset(node)}"
                return f"its schema has no {self.low.name} form for output {index}{at}"
        return None

    def _constant_reason(self, node: ir.Node) -> str | None:
        fill = _fill(node)
        if fill is not None and not self.options.clamp:
            scan = _scan_tensor(fill, self.low)
            if scan is not None and scan.overflow:
                return f"fills with {scan.worst_overflow:.6g}, {self._beyond_largest()}"
        for index, value in enumerate(node.inputs):
            if value is None or not self._fp16_input(node, index):
                continue
            scan = self._scan(value)
            if scan is None or self.options.clamp:
                continue
            if scan.overflow and not self._is_mask_fill(value, scan):
                return f"reads constant '{value.name}' holding {scan.worst_overflow:.6g}, {self._beyond_largest()}"
            if scan.eps_like:
                return f"{_EPS_REASON} '{value.name}' = {scan.worst_flushed:.3g}, which {self.low.name} rounds to 0"
        return None

    def _force_normalization_tail(self, node: ir.Node) -> None:
        """`var + eps` kept FP32 is not enough: rounding the sum to FP16 before Sqrt and Div loses the eps
        again (0 for a constant row, then a division by 0). Keep the single-reader chain up to the division."""
        reason = f"follows '{node_label(node)}', whose eps FP16 cannot hold"
        current = node
        for _ in range(_NORMALIZATION_TAIL):
            readers = [use.node for use in current.outputs[0].uses()] if current.outputs else []
            if len(readers) != 1 or readers[0].op_type not in _TAIL_OPS:
                return
            current = readers[0]
            self.forced[id(current)] = reason
            if current.op_type in ("Div", "Reciprocal"):
                return

    def _range_reason(self, node: ir.Node) -> str | None:
        """An output beyond the limit on the samples would be inf in FP16; so would an input, Cast down to FP16
        for this node: a node reading such a value stays FP32 too, and the region ends where values are back
        in range (the Sqrt or Div of a normalization), so one conversion suffices."""
        for value in node.outputs:
            measured = self._beyond_limit(value)
            if measured is not None:
                return f"its output reaches {measured.worst:.6g} on the sample inputs, {self._limit_text(measured)}"
        for value in node.inputs:
            measured = self._beyond_limit(value) if value is not None and id(value) in self.was_float else None
            if measured is not None:
                return (
                    f"reads '{value.name}', which reaches {measured.worst:.6g} on the sample inputs,"
                    f" {self._limit_text(measured)}"
                )
        return None

    def _beyond_limit(self, value: ir.Value) -> TensorRange | None:
        measured = self.ranges.get(value.name or "")
        limit = self.options.limit
        if measured is None or not measured.max_abs >= limit:  # NaN: nothing finite seen
            return None
        if measured.max >= limit:  # masks saturate downwards only: a large positive value is never one
            return measured
        return None if _is_mask_activation(value, self.ranges) else measured

    def _limit_text(self, measured: TensorRange) -> str:
        if measured.max_abs >= self.low.overflow:
            return self._beyond_largest()
        within = f"within {self.low.name}'s {self.low.largest:.6g}"
        return f"{within} but beyond the margin {self.options.limit:.6g} other inputs need (--fp16-max)"

    def _beyond_largest(self) -> str:
        return f"beyond {self.low.name}'s {self.low.largest:.6g}"

    def range_regions(self) -> list[Fp32Region]:
        """The range-kept nodes, grouped into connected regions (edges between two such nodes)."""
        kept = {id(n): n for g, _ in iter_graph_sites(self.model) for n in g if self.kinds.get(id(n)) == "range"}
        seen: set[int] = set()
        regions = []
        for start in kept.values():
            if id(start) in seen:
                continue
            members = _connected(start, kept)
            seen.update(id(n) for n in members)
            regions.append(self._region(members, kept))
        return regions

    def _region(self, members: list[ir.Node], kept: dict[int, ir.Node]) -> Fp32Region:
        values = [v for n in members for v in (*n.inputs, *n.outputs) if v is not None and v.name in self.ranges]
        peak = max(values, key=lambda v: self.ranges[v.name].max_abs, default=None)
        ends = [n for n in members if not any(id(u.node) in kept for v in n.outputs for u in v.uses())]
        return Fp32Region(
            graph=self.paths.get(id(members[0]), ""),
            nodes=tuple(node_label(n) for n in members),
            peak=self.ranges[peak.name].max_abs if peak is not None else float("nan"),
            peak_at=peak.name if peak is not None else "",
            ends=tuple(node_label(n) for n in ends),
        )

    def _is_mask_fill(self, value: ir.Value, scan: _Scan) -> bool:
        return scan.overflow == scan.overflow_negative and scan.min_value <= _MASK_FILL and feeds_softmax(value)

    def _scan(self, value: ir.Value) -> _Scan | None:
        """What FP16 does to a float32 constant (None for anything else); read once, in chunks."""
        if id(value) not in self.scans:
            tensor = const_tensor(value) if id(value) in self.was_float and not value.is_graph_input() else None
            self.scans[id(value)] = _scan_tensor(tensor, self.low) if tensor is not None else None
        return self.scans[id(value)]

    def _opset(self, node: ir.Node) -> int:
        return opset_version(self.model, node.domain) or 1

    # -- 2. retyping --

    def retype(self, graph: ir.Graph) -> None:
        for node in graph:
            if id(node) not in self.fp16:
                continue
            for index, value in enumerate(node.outputs):
                if value.dtype == _F32 and self._fp16_output(node, index):
                    value.dtype = self.low.dtype
            _retarget_attributes(node, self.low.dtype)
            if node.op_type == "ConstantOfShape" and node.outputs[0].dtype == self.low.dtype:
                self._convert_fill(node)

    def _convert_fill(self, node: ir.Node) -> None:
        """ConstantOfShape's fill in FP16 (its default, 0.0 float32, spelled out); a fill beyond FP16 reaches
        here only with `clamp`, and is reported."""
        fill = _fill(node)
        array = fill.numpy().reshape(-1).astype(np.float32) if fill is not None else np.zeros(1, np.float32)
        scan = _scan_tensor(ir.Tensor(array), self.low)
        if scan is not None and scan.overflow:
            what = f"clamped to ±{self.low.largest:.6g}"
            self.report.changed.append(
                ValueChange(f"{node_label(node)}.value", what, scan.overflow, scan.worst_overflow)
            )
        node.attributes["value"] = ir.AttrTensor("value", ir.Tensor(_saturating(array, self.low)))

    def retype_main_inputs(self) -> None:
        """--fp16-io: the main graph's float inputs become FP16 (outputs follow in `place_casts`)."""
        for value in self.model.graph.inputs:
            if value.dtype == _F32 and not value.is_initializer():
                value.dtype = self.low.dtype

    # -- 3. boundaries --

    def place_casts(self, graph: ir.Graph) -> None:
        is_main = graph is self.model.graph
        for node in [n for n in graph if id(n) not in self.added]:
            for index, value in enumerate(node.inputs):
                if value is None or id(value) not in self.was_float or is_constant_node(node):
                    continue
                wanted = self._wanted(node, index, value)
                if value.dtype != wanted:
                    node.replace_input_with(index, self._as(value, wanted, graph))
        self._keep_output_types(graph, keep=not is_main or self.options.keep_io_types)

    def _wanted(self, node: ir.Node, index: int, value: ir.Value) -> ir.DataType:
        if id(node) in self.fp16 and self._fp16_input(node, index):
            if node.op_type == "Cast":  # a Cast reads any float type: no Cast in front of it
                return value.dtype
            return self.low.dtype
        return _F32

    def _as(self, value: ir.Value, dtype: ir.DataType, graph: ir.Graph) -> ir.Value:
        if dtype == self.low.dtype and self._scan(value) is not None:
            return self._constant_fp16(value)
        key = (id(value), dtype, id(graph))
        if key not in self.casts:
            self.casts[key] = self._insert_cast(
                value, dtype, graph, self._fresh(f"{value.name}__{self._suffix(dtype)}")
            )
        return self.casts[key]

    def _insert_cast(self, value: ir.Value, dtype: ir.DataType, graph: ir.Graph, name: str) -> ir.Value:
        out = ir.Value(name=name, type=ir.TensorType(dtype), shape=value.shape)
        cast = ir.node("Cast", [value], {"to": dtype}, outputs=[out], name=f"gd_fp16/{name}")
        insert_after_producer(graph, value, cast)
        self.added.add(id(cast))
        self.report.casts_added += 1
        return out

    def _constant_fp16(self, value: ir.Value) -> ir.Value:
        """The FP16 form of a float32 constant: the constant itself when only FP16 readers remain, else a copy."""
        if id(value) in self.converted:
            return self.converted[id(value)]
        scan = self._scan(value)
        transform = self._transform(value, scan)
        fp32_readers = [u for u in value.uses() if self._wanted(u.node, u.idx, value) != self.low.dtype]
        if not fp32_readers and not value.is_graph_output():
            _convert_in_place(value, transform, self.low)
            converted = value
        else:
            converted = _low_copy(value, transform, self.low)
        self.converted[id(value)] = converted
        self.report.tensors_converted += 1
        return converted

    def _transform(self, value: ir.Value, scan: _Scan):
        """float32 chunk -> float16 chunk, recording what moves beyond rounding."""
        name, low = value.name or "?", self.low
        if scan.overflow and self._is_mask_fill(value, scan):
            self.report.changed.append(ValueChange(name, "saturated (attention mask)", scan.overflow, scan.min_value))
            return functools.partial(_saturating, precision=low)
        if scan.overflow:  # only with clamp: otherwise its readers stayed FP32
            what = f"clamped to ±{low.largest:.6g}"
            self.report.changed.append(ValueChange(name, what, scan.overflow, scan.worst_overflow))
            return functools.partial(_saturating, precision=low)
        if scan.flushed and self.options.clamp:
            what = f"raised to {low.tiny:.3g}"
            self.report.changed.append(ValueChange(name, what, scan.flushed, scan.worst_flushed))
            return functools.partial(_raising_tiny, precision=low)
        if scan.flushed:
            self.report.changed.append(ValueChange(name, "flushed to 0", scan.flushed, scan.worst_flushed))
        return functools.partial(_rounding, precision=low)

    def _keep_output_types(self, graph: ir.Graph, keep: bool) -> None:
        """Graph outputs keep their name and (unless --fp16-io on the main graph) their FP32 type."""
        for index, value in enumerate(list(graph.outputs)):
            if id(value) not in self.was_float:
                continue
            wanted = _F32 if keep else self.low.dtype
            if value.dtype == wanted:
                continue
            name = value.name
            value.name = self._fresh(f"{name}__{self._suffix(value.dtype)}")
            graph.outputs[index] = self._insert_cast(value, wanted, graph, name)

    def _fresh(self, name: str) -> str:
        return fresh_name(name, self.names)

    def _suffix(self, dtype: ir.DataType) -> str:
        return self.low.key if dtype in _LOW_TYPES else "fp32"


# -- node helpers --


def _connected(start: ir.Node, kept: dict[int, ir.Node]) -> list[ir.Node]:
    """The nodes of `kept` connected to `start` through values one produces and another reads."""
    found = {id(start): start}
    stack = [start]
    while stack:
        node = stack.pop()
        neighbours = [u.node for v in node.outputs for u in v.uses()]
        neighbours += [v.producer() for v in node.inputs if v is not None and v.producer() is not None]
        for other in neighbours:
            if id(other) in kept and id(other) not in found:
                found[id(other)] = other
                stack.append(other)
    order = {id(n): i for i, n in enumerate(start.graph)} if start.graph is not None else {}
    return sorted(found.values(), key=lambda n: order.get(id(n), 0))


def _is_used(value: ir.Value) -> bool:
    return bool(value.name) and (bool(value.uses()) or value.is_graph_output())


def _float_target(node: ir.Node) -> bool:
    to = node.attributes.get_int("to")
    return to in (_F32, ir.DataType.DOUBLE, *_LOW_TYPES)


def _is_sparse_initializer(value: ir.Value) -> bool:
    """A value nothing defines: onnx-ir leaves sparse initializers out of the graph (model.py keeps them)."""
    return value.producer() is None and not value.is_graph_input() and not value.is_initializer()


def _matches(node: ir.Node, label: str, pattern: str) -> bool:
    return node.op_type == pattern or fnmatch.fnmatchcase(label, pattern)


def _retarget_attributes(node: ir.Node, low: ir.DataType) -> None:
    """What makes a node produce float32 now makes it produce FP16: Cast's `to` and `dtype` attributes."""
    if node.op_type == "Cast" and node.attributes.get_int("to") == _F32:
        node.attributes["to"] = ir.AttrInt64("to", low)
    if node.op_type in _DTYPE_OPS and node.outputs[0].dtype == low:  # absent `dtype` means float32 or the input's
        node.attributes["dtype"] = ir.AttrInt64("dtype", low)


def _fill(node: ir.Node) -> ir.TensorProtocol | None:
    """A float32 ConstantOfShape's fill tensor (None when absent, or for other nodes)."""
    if node.op_type != "ConstantOfShape":
        return None
    attr = node.attributes.get("value")
    tensor = attr.value if attr is not None and attr.type == ir.AttributeType.TENSOR else None
    return tensor if tensor is not None and tensor.dtype == _F32 else None


# -- constants --


def _scan_tensor(tensor: ir.TensorProtocol, precision: LowPrecision) -> _Scan | None:
    try:
        chunks = list(_chunk_stats(tensor, precision))
    except (OSError, ValueError, TypeError):  # unreadable external data (GD014): leave it alone
        return None
    overflow = sum(c[2] for c in chunks)
    flushed = sum(c[5] for c in chunks)
    worst_over = max((c[4] for c in chunks), key=abs, default=0.0)
    worst_flushed = max((c[6] for c in chunks), key=abs, default=0.0)
    return _Scan(
        size=sum(c[0] for c in chunks),
        nonzero=sum(c[1] for c in chunks),
        overflow=overflow,
        overflow_negative=sum(c[3] for c in chunks),
        min_value=min((c[7] for c in chunks), default=0.0),
        worst_overflow=float(worst_over),
        flushed=flushed,
        worst_flushed=float(worst_flushed),
    )


def _chunk_stats(tensor: ir.TensorProtocol, precision: LowPrecision) -> Iterable[tuple]:
    for chunk in iter_chunks(tensor):
        if only_rounded_by(chunk, precision):
            yield (chunk.size, 0, 0, 0, 0.0, 0, 0.0, 0.0)  # the usual weight: no need to count anything
            continue
        finite = chunk[np.isfinite(chunk)]
        magnitude = np.abs(finite)
        over = finite[magnitude >= precision.overflow]
        tiny = finite[(magnitude <= precision.flush) & (magnitude > 0)]
        yield (
            chunk.size,
            int(np.count_nonzero(finite)),
            over.size,
            int(np.count_nonzero(over < 0)),
            float(over[np.argmax(np.abs(over))]) if over.size else 0.0,
            tiny.size,
            float(tiny[np.argmax(np.abs(tiny))]) if tiny.size else 0.0,
            float(finite.min()) if over.size else 0.0,
        )


def _numpy_type(precision: LowPrecision) -> type:
    return ml_dtypes.bfloat16 if precision.dtype == BF16.dtype else np.float16


def _rounding(chunk: np.ndarray, precision: LowPrecision) -> np.ndarray:
    """Round to nearest even, as ONNX Runtime's Cast does (ml_dtypes for BF16)."""
    return chunk.astype(_numpy_type(precision))


def _saturating(chunk: np.ndarray, precision: LowPrecision) -> np.ndarray:
    """Finite values beyond the format's range become ± its largest value (inf and NaN stay)."""
    finite = np.isfinite(chunk)
    largest = np.float32(precision.largest)
    return np.where(finite, np.clip(chunk, -largest, largest), chunk).astype(_numpy_type(precision))


def _raising_tiny(chunk: np.ndarray, precision: LowPrecision) -> np.ndarray:
    """Saturate, and raise nonzero magnitudes below the smallest subnormal (2^-24 in FP16) to it."""
    tiny = (np.abs(chunk) < precision.tiny) & (chunk != 0)
    return _saturating(np.where(tiny, np.sign(chunk) * np.float32(precision.tiny), chunk), precision)


def _lazy_low(source: ir.TensorProtocol, transform, name: str | None, precision: LowPrecision) -> ir.LazyTensor:
    """The low-precision form of `source`, computed from chunks of it only when its bytes are asked for."""
    shape = source.shape

    def load() -> ir.TensorProtocol:
        out = np.empty(int(np.prod(shape.numpy(), dtype=np.int64)), _numpy_type(precision))
        position = 0
        for chunk in iter_chunks(source):
            out[position : position + chunk.size] = transform(chunk)
            position += chunk.size
        return ir.Tensor(out.reshape(shape.numpy()), name=name)

    return ir.LazyTensor(load, dtype=precision.dtype, shape=shape, name=name)


def _convert_in_place(value: ir.Value, transform, precision: LowPrecision) -> None:
    producer = value.producer()
    if producer is not None:  # a Constant node (value, value_float or value_floats): small, converted now
        array = np.asarray(const_tensor(value).numpy(), dtype=np.float32)
        for key in [k for k in producer.attributes if k.startswith("value")]:
            del producer.attributes[key]
        producer.attributes["value"] = ir.AttrTensor("value", ir.Tensor(transform(array), name=value.name))
    elif isinstance(value.const_value, ir.ExternalTensor) or value.const_value.nbytes >= _LAZY_FROM:
        value.const_value = _lazy_low(value.const_value, transform, value.name, precision)
    else:  # small and in memory: converting now is cheaper than a deferred, chunked read
        value.const_value = ir.Tensor(transform(value.const_value.numpy()), name=value.name)
    value.dtype = precision.dtype


def _low_copy(value: ir.Value, transform, precision: LowPrecision) -> ir.Value:
    """A second, low-precision constant beside the float32 one, in the graph that holds it."""
    tensor = const_tensor(value)
    name = f"{value.name}__{precision.key}"
    copy = ir.Value(name=name, type=ir.TensorType(precision.dtype), shape=value.shape)
    copy.const_value = _lazy_low(tensor, transform, name, precision)
    graph = value.graph if value.graph is not None else value.producer().graph
    graph.register_initializer(copy)
    return copy
