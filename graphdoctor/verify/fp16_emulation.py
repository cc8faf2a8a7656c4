"""The "fp16-emulation" and "bf16-emulation" backends: FP16 or BF16 storage, emulated on ONNX Runtime's CPU provider.

ONNX Runtime's CPU provider has FP16 kernels for a handful of ops and runs the rest in FP32 behind Casts it
inserts, then drops the FP16 round trips: an FP16 model's `(x*x)/100` with x=300 returns 900 there, where a
GPU returns inf. For BF16 it is worse: 1.32 has BF16 kernels only for data movement (Reshape, Transpose,
Concat, Slice, Gather, ...), Cast and LayerNormalization, so a BF16 model with an Add, MatMul or Conv does not
load at all. So these backends do not run a low-precision model; they run the FP32 model with every float
tensor rounded as it is stored: a `Cast(to=FLOAT16)` (or `BFLOAT16`) then `Cast(to=FLOAT)` after each one.
The pair reproduces what the storage does to each tensor, so overflow and rounding show up on a machine
without a GPU:
- FP16: 11 significant bits, inf beyond 65504, 0 below 2^-25;
- BF16: 8 significant bits (rounded to nearest even: ONNX Runtime's Cast matched ml_dtypes on 2 million
  random bit patterns), FP32's exponent range: inf only beyond 3.39e38, 0 below 2^-133.
What it does not reproduce is arithmetic inside an op: MatMul, Conv and reductions still accumulate in
FP32 (GPUs often accumulate FP16 and BF16 products in FP32 too).

The low-precision region of an FP32 model, as a converter keeping graph inputs and outputs in FP32
(`--keep-io-types`) would make it (the model itself is not converted: this is what-if):
- float32 graph inputs and every float32 tensor a node computes are rounded; activations beyond the
  format's range become inf, tiny ones 0, exactly as a FLOAT16 or BFLOAT16 tensor would hold them;
- float32 constants (initializers, Constant, ConstantOfShape) are first clamped into the format's range
  (FP16: ±65504, nonzero magnitudes at least 2^-24; BF16: ±3.3895e38, so FP32's -3.4028e38 mask fill is
  not -inf, and at least 2^-133), as ONNX Runtime's FP16 converter and TensorRT convert weights, then
  rounded. Clamping reads only the constants that need it; the rounding of weights is a Cast pair that
  ONNX Runtime folds once when the session starts, so weights are never copied in Python;
- ops whose ONNX schema has no FP16 (BF16) output at the model's opset (Range; for BF16 also Conv, pooling
  and Sin before opset 22) stay FP32, and inputs that must be float32 (Resize scales) read the unrounded
  constant: those are the nodes a converter keeps in FP32.
A model that already holds FLOAT16 or BFLOAT16 tensors (a converted model) has its region chosen by its
converter: it is upcast to float32 storage (Casts retargeted, low-precision weights and inputs read through
exact Casts up), its FLOAT16 and BFLOAT16 tensors are rounded and its float32 ones left alone. Each is rounded
to the type it is stored in, whichever of the two backends runs it: a model holding both has FP16 and BF16
tensors, and the storage is the model's, not the backend's. FLOAT16 inputs and outputs stay FLOAT16; BFLOAT16
ones become float32 (holding BF16 values: inputs are rounded to BF16 on entry), because neither numpy nor
ONNX Runtime's Python API has a bfloat16 type to feed or fetch.

ONNX Runtime would remove the Cast pairs if asked: CastChainElimination (opt-in in 1.32 through the session
entry `optimization.enable_cast_chain_elimination`) collapses them. The session disables it and
CastElimination by name, and runs at the basic level (constant folding, no fusions that could absorb a
pair). RemoveDuplicateCastTransformer, which always runs, keeps a float→float16→float pair because the
first Cast loses precision. A self-test checks this on the installed onnxruntime before a backend says it
is available: `x*x + 2^-9` with x = [1, 300] must give [1 + 2^-9, inf] in FP16 and [1, 90112] in BF16 (FP32
gives [1 + 2^-9, 90000]; a Cast that truncated to BF16 instead of rounding would give 89600).

Graph inputs and outputs keep their names and FP32 types; rounded tensors keep their names too (the value
before rounding is `<name>__gd_fp32`), so layer-wise comparison fetches the tensors a converted model would
hold.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from graphdoctor.analysis.fp16_ops import (
    BF16,
    FP16,
    LOW_PRECISIONS,
    LowPrecision,
    clamp_to_range,
    input_allows_type,
    output_allows_type,
)
from graphdoctor.analysis.graph import holds_tensor, holds_type, iter_graph_sites, node_label
from graphdoctor.analysis.tensor_data import iter_chunks
from graphdoctor.errors import GraphDoctorError, first_line
from graphdoctor.verify.backends import Backend, CpuGraph
from graphdoctor.verify.backends.onnxruntime import EXTERNAL_FOLDER, as_declared, quiet_session_options
from graphdoctor.verify.ranges import iter_slices

__all__ = [
    "BF16_NAME",
    "BF16_PRECISION",
    "DISABLED_OPTIMIZERS",
    "NAME",
    "PRECISION",
    "Bf16EmulationBackend",
    "Emulation",
    "Fp16EmulationBackend",
    "LowPrecisionEmulationBackend",
    "Rounded",
    "emulate_fp16",
    "emulate_low_precision",
    "session_options",
]

logger = logging.getLogger(__name__)

_CONVERTED = "; a converted model's FLOAT16/BFLOAT16 tensors are each rounded to the type they are stored in"
NAME = "fp16-emulation"
PRECISION = (
    "FP16 storage emulated on CPU (ONNX Runtime): every FP16-region tensor rounded to FP16 as stored (overflow"
    " to inf, flush to 0; FP32 constants clamped to ±65504 first, as converters do); arithmetic inside each op"
    " stays FP32 (FP16 accumulation in MatMul/Conv/reductions is not emulated)" + _CONVERTED
)
BF16_NAME = "bf16-emulation"
BF16_PRECISION = (
    "BF16 storage emulated on CPU (ONNX Runtime): every BF16-region tensor rounded to BF16 as stored (8"
    " significant bits, to nearest even; overflow to inf beyond 3.39e38, flush to 0 below 2^-133; FP32 constants"
    " clamped to ±3.39e38 first); arithmetic inside each op stays FP32 (BF16 accumulation in"
    " MatMul/Conv/reductions is not emulated)" + _CONVERTED
)
DISABLED_OPTIMIZERS = ("CastChainElimination", "CastElimination")
_SESSION_CONFIG = {"optimization.enable_cast_chain_elimination": "0"}
_BASIC_LEVEL = 1  # onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
_FP32_SUFFIX = "__gd_fp32"
_CONSTANT_OPS = frozenset({"Constant", "ConstantOfShape"})
_EXPLAIN_BUDGET = 64 * 1024 * 1024  # bytes of tensors (both runs) held at once while looking for the origin


@dataclass(frozen=True)
class Rounded:
    """One tensor of the main graph that the emulation rounds through FP16 or BF16 (`storage`)."""

    tensor: str  # its name in the emulated model (the rounded value)
    original: str  # its name in the model as given
    fp32: str  # the name of its value before rounding, in the emulated model
    node: str | None  # the producing node's label; None for graph inputs and initializers
    op_type: str | None
    storage: LowPrecision = FP16  # the format it is rounded to


@dataclass
class Emulation:
    """What `emulate_low_precision` did to a model."""

    rounded: list[Rounded] = field(default_factory=list)  # main-graph node outputs and inputs, in graph order
    clamped: dict[str, int] = field(default_factory=dict)  # constant -> how many values were clamped
    constants: int = 0  # constants rounded (their Cast pairs are folded by ONNX Runtime)
    unknown: int = 0  # node outputs left alone because their dtype is unknown (not inferred)
    kept_fp32: int = 0  # node outputs left FP32 because the op has no FP16 (BF16) form
    holds_bf16: bool = False  # the model as given computes BFLOAT16 tensors (a converted model)


# --- the rewrite --------------------------------------------------------------------------------------------


def emulate_fp16(model: ir.Model) -> Emulation:
    """`emulate_low_precision(model, ir.DataType.FLOAT16)`."""
    return emulate_low_precision(model, ir.DataType.FLOAT16)


def emulate_low_precision(model: ir.Model, dtype: ir.DataType) -> Emulation:
    """Round every FLOAT16 or BFLOAT16 region tensor (`dtype`) of `model` through that type, in place (see
    the module docstring); a converted model's tensors are rounded to the type each is stored in.

    Dtypes must be inferred first (`graphdoctor.analysis.types.infer_types`): a tensor of unknown dtype is
    left alone and counted, because a Cast on a tensor that is not float would change the graph's meaning.
    """
    if dtype not in LOW_PRECISIONS:
        raise ValueError(f"emulate_low_precision emulates FLOAT16 or BFLOAT16, not {dtype!r}")
    emulation = Emulation()
    graphs = [g.graph if isinstance(g, ir.Function) else g for g, _ in iter_graph_sites(model)]
    rewriter = _Rewriter(model, emulation, LOW_PRECISIONS[dtype], converted=holds_type(model, *LOW_PRECISIONS))
    if rewriter.converted:
        for graph in graphs:
            rewriter.upcast(graph)
        emulation.holds_bf16 = BF16 in rewriter.region.values()
    for graph in graphs:
        rewriter.rewrite(graph)
    rewriter.restore_fp16_outputs()
    return emulation


class _Rewriter:
    """Inserts the Cast pairs graph by graph; nodes it adds are never rewritten again.

    An FP32 model's region is every float32 tensor, rounded to `storage`. A converted model is first upcast
    (`upcast`): FLOAT16 and BFLOAT16 tensors become float32 computed in FP32, and they, not the float32
    tensors its converter kept, are the region, each rounded to its own type; its FLOAT16 inputs, weights and
    outputs keep their values and types (Casts at the boundary), BFLOAT16 inputs and outputs become float32.
    """

    def __init__(self, model: ir.Model, emulation: Emulation, storage: LowPrecision, converted: bool) -> None:
        self.model = model
        self.emulation = emulation
        self.storage = storage
        self.converted = converted
        self.added: set[int] = set()
        self.region: dict[int, LowPrecision] = {}  # converted models: the values that were low precision
        self.fp16_outputs: list[int] = []  # converted models: main-graph outputs to Cast back to FLOAT16

    def rewrite(self, graph: ir.Graph) -> None:
        nodes = [node for node in graph if id(node) not in self.added]
        is_main = graph is self.model.graph
        for value in list(graph.inputs) if is_main else []:
            storage = self._in_region(value)
            if storage is not None and not value.is_initializer():
                self._round_source(graph, value, storage, constant=False, record=True)
        if not self.converted:  # a converted model's weights are FP16/BF16 values already
            for value in list(graph.initializers.values()):
                if value.dtype == ir.DataType.FLOAT and value.const_value is not None:
                    self._clamp_initializer(value)
                    self._round_source(graph, value, self.storage, constant=True, record=False)
                    self.emulation.constants += 1
        for node in nodes:
            self._round_outputs(graph, node, is_main)

    def _in_region(self, value: ir.Value) -> LowPrecision | None:
        """The format `value` is rounded to, or None when it stays as it is."""
        if not holds_tensor(value):  # sequences and optionals: no Cast rounds them
            return None
        if self.converted:
            return self.region.get(id(value))
        return self.storage if value.dtype == ir.DataType.FLOAT else None

    # -- converted models: FP32 storage, every former FLOAT16/BFLOAT16 tensor marked for rounding --

    def upcast(self, graph: ir.Graph) -> None:
        is_main = graph is self.model.graph
        nodes = list(graph)
        for value in list(graph.initializers.values()):
            if value.dtype in LOW_PRECISIONS:
                self._cast_up(graph, value)
        for value in graph.inputs:
            if value.dtype not in LOW_PRECISIONS or value.is_initializer():
                continue
            if is_main and value.dtype == ir.DataType.FLOAT16:
                self._cast_up(graph, value)
            elif is_main:  # BFLOAT16 cannot be fed from numpy: float32 in, rounded to BF16 on entry
                self.region[id(value)] = LOW_PRECISIONS[value.dtype]
                value.dtype = ir.DataType.FLOAT
            else:  # a subgraph's inputs are fed by the now float32 outer values
                value.dtype = ir.DataType.FLOAT
        if is_main:
            self.fp16_outputs = [i for i, v in enumerate(graph.outputs) if v.dtype == ir.DataType.FLOAT16]
        for node in nodes:
            _retarget_low_precision_attributes(node)
            for value in node.outputs:
                if value.dtype in LOW_PRECISIONS:
                    self.region[id(value)] = LOW_PRECISIONS[value.dtype]
                    value.dtype = ir.DataType.FLOAT

    def _cast_up(self, graph: ir.Graph, value: ir.Value) -> None:
        """A low-precision weight or input, read as float32 by every node (exactly: FP16 and BF16 values are
        float32 values)."""
        up = ir.Value(name=f"{value.name}__gd_fp32", type=ir.TensorType(ir.DataType.FLOAT), shape=value.shape)
        for node, index in list(value.uses()):
            node.replace_input_with(index, up)
        key = LOW_PRECISIONS[value.dtype].key
        cast = ir.node("Cast", [value], {"to": ir.DataType.FLOAT}, outputs=[up], name=f"gd_{key}_up/{value.name}")
        self.added.add(id(cast))
        self._insert_first(graph, [cast])

    def restore_fp16_outputs(self) -> None:
        """The model's FLOAT16 outputs stay FLOAT16 (and keep their names): a Cast after the rounding."""
        graph = self.model.graph
        for index in self.fp16_outputs:
            value = graph.outputs[index]
            name = value.name or f"output_{index}"
            half = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT16), shape=value.shape)
            value.name = f"{name}__gd_out32"
            cast = ir.node("Cast", [value], {"to": ir.DataType.FLOAT16}, outputs=[half], name=f"gd_fp16_out/{name}")
            self.added.add(id(cast))
            graph.append(cast)
            graph.outputs[index] = half

    def _round_outputs(self, graph: ir.Graph, node: ir.Node, record: bool) -> None:
        constant = node.op_type in _CONSTANT_OPS and node.domain in ("", "ai.onnx")
        for index, value in enumerate(node.outputs):
            if not value.name:  # an optional output the node does not produce
                continue
            if value.dtype is None:
                self.emulation.unknown += 1
            storage = self._in_region(value)
            if storage is None:
                continue
            if not self.converted and not constant and not self._has_low_form(node, storage, index):
                self.emulation.kept_fp32 += 1
                continue
            if constant:
                self._clamp_constant_node(node, storage)
                self.emulation.constants += 1
            self._round_node_output(graph, node, value, storage, constant, record and not constant)

    # -- rounding --

    def _round_node_output(
        self, graph: ir.Graph, node: ir.Node, value: ir.Value, storage: LowPrecision, constant: bool, record: bool
    ) -> None:
        """`value` keeps its name and uses but becomes the rounded tensor; its FP32 self is `<name>__gd_fp32`
        (what FP32-only inputs read when the value is a constant, see `_reads_fp32`)."""
        name = value.name or f"{node_label(node)}_out"
        rounded = ir.Value(name=f"{name}__gd_rounded", type=ir.TensorType(ir.DataType.FLOAT), shape=value.shape)
        value.replace_all_uses_with(rounded, replace_graph_outputs=True)
        for user, index in list(rounded.uses()):
            if constant and self._reads_fp32(user, index, storage, constant):
                user.replace_input_with(index, value)
        value.name, rounded.name = f"{name}{_FP32_SUFFIX}", name
        graph.insert_after(node, self._cast_pair(value, rounded, name, storage))
        if record:
            self.emulation.rounded.append(Rounded(name, name, value.name, node_label(node), node.op_type, storage))

    def _round_source(
        self, graph: ir.Graph, value: ir.Value, storage: LowPrecision, constant: bool, record: bool
    ) -> None:
        """A graph input or initializer keeps its name; its readers read `<name>__gd_rounded` instead, except
        FP32-only inputs (Resize scales) and FP32-kept nodes reading a constant, which a converter leaves FP32."""
        name = value.name or "input"
        rounded = ir.Value(name=f"{name}__gd_rounded", type=ir.TensorType(ir.DataType.FLOAT), shape=value.shape)
        uses = [(node, index) for node, index in value.uses() if not self._reads_fp32(node, index, storage, constant)]
        if not uses:
            return
        for node, index in uses:
            node.replace_input_with(index, rounded)
        self._insert_first(graph, self._cast_pair(value, rounded, name, storage))
        if record:
            self.emulation.rounded.append(Rounded(rounded.name or name, name, name, None, None, storage))

    @staticmethod
    def _insert_first(graph: ir.Graph, nodes: list[ir.Node]) -> None:
        first = next(iter(graph), None)
        if first is None:
            graph.extend(nodes)
        else:
            graph.insert_before(first, nodes)

    def _cast_pair(self, source: ir.Value, rounded: ir.Value, name: str, storage: LowPrecision) -> list[ir.Node]:
        """Cast(to=FLOAT16 or BFLOAT16) then Cast(to=FLOAT). Never named `InsertedPrecisionFreeCast_*`: ONNX
        Runtime treats Casts of that name as lossless and would remove the pair."""
        key = storage.key
        low = ir.Value(name=f"{name}__gd_{key}", type=ir.TensorType(storage.dtype), shape=source.shape)
        down = ir.node("Cast", [source], {"to": storage.dtype}, outputs=[low], name=f"gd_{key}_round/{name}/to_{key}")
        up = ir.node("Cast", [low], {"to": ir.DataType.FLOAT}, outputs=[rounded], name=f"gd_{key}_round/{name}/to_fp32")
        self.added.update((id(down), id(up)))
        return [down, up]

    # -- which tensors a converter keeps in FP32 --

    def _has_low_form(self, node: ir.Node, storage: LowPrecision, output: int | None = None) -> bool:
        """Whether the node's output (every float output when None) can be `storage`'s type in its schema."""
        opset = self._opset(node.domain)
        outputs = range(len(node.outputs)) if output is None else (output,)
        return all(output_allows_type(node.domain, node.op_type, opset, i, storage.type_str) for i in outputs)

    def _reads_fp32(self, node: ir.Node, index: int, storage: LowPrecision, constant: bool) -> bool:
        """Whether this input reads the FP32 value: inputs that must be float32 (Resize scales) and, for
        constants, nodes kept in FP32. A computed tensor is rounded everywhere: a converter computes it in
        low precision and Casts it up for such readers."""
        if id(node) in self.added:
            return False
        if not input_allows_type(node.domain, node.op_type, self._opset(node.domain), index, storage.type_str):
            return True
        return constant and not self._has_low_form(node, storage)

    def _opset(self, domain: str) -> int:
        key = "" if domain in ("", "ai.onnx") else domain
        return self.model.opset_imports.get(key, self.model.opset_imports.get("ai.onnx", 1))

    # -- clamping constants, as converters do --

    def _clamp_initializer(self, value: ir.Value) -> None:
        tensor = value.const_value
        if tensor is None or not _needs_clamp(tensor, self.storage):
            return
        clamped, count = clamp_to_range(tensor.numpy(), self.storage)
        value.const_value = ir.Tensor(clamped, name=value.name)
        self.emulation.clamped[value.name or "?"] = count

    def _clamp_constant_node(self, node: ir.Node, storage: LowPrecision) -> None:
        """Constant's `value` and ConstantOfShape's fill: small attribute tensors, clamped in place."""
        attr = node.attributes.get("value")
        if attr is None or attr.type != ir.AttributeType.TENSOR or attr.value.dtype != ir.DataType.FLOAT:
            return
        if not _needs_clamp(attr.value, storage):
            return
        clamped, count = clamp_to_range(attr.value.numpy(), storage)
        node.attributes["value"] = ir.AttrTensor("value", ir.Tensor(clamped))
        self.emulation.clamped[node_label(node)] = count


def _retarget_low_precision_attributes(node: ir.Node) -> None:
    """What makes a node produce FLOAT16 or BFLOAT16 (Cast's `to`, `dtype` of EyeLike/Random*, a Constant's
    or ConstantOfShape's low-precision value) now makes it produce float32 holding the same numbers."""
    for key in ("to", "dtype"):
        attr = node.attributes.get(key)
        if attr is not None and attr.type == ir.AttributeType.INT and attr.value in LOW_PRECISIONS:
            node.attributes[key] = ir.AttrInt64(key, ir.DataType.FLOAT)
    attr = node.attributes.get("value")
    if attr is not None and attr.type == ir.AttributeType.TENSOR and attr.value.dtype in LOW_PRECISIONS:
        node.attributes["value"] = ir.AttrTensor("value", ir.Tensor(attr.value.numpy().astype(np.float32)))


def _needs_clamp(tensor: ir.TensorProtocol, storage: LowPrecision) -> bool:
    """Whether any value would become inf or 0 in `storage` (read in chunks: most weights need nothing)."""
    try:
        for chunk in iter_chunks(tensor):
            magnitude = np.abs(chunk[np.isfinite(chunk)])
            if not magnitude.size:
                continue
            if magnitude.max() >= storage.overflow or ((magnitude <= storage.flush) & (magnitude > 0)).any():
                return True
    except (OSError, ValueError, TypeError):
        return False
    return False


# --- running ------------------------------------------------------------------------------------------------


def session_options():
    """Session options that keep the Cast pairs: basic level, cast-chain elimination off."""
    import onnxruntime as ort

    options = quiet_session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel(_BASIC_LEVEL)
    for key, value in _SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    return options


@dataclass
class _Prepared:
    """A rewritten model ready for sessions: the proto (weights referenced, not copied) and its facts."""

    key: tuple
    proto: onnx.ModelProto
    folder: Path
    emulation: Emulation
    backend: str  # the backend's name, for messages


class LowPrecisionEmulationBackend(Backend):
    """FP16 or BF16 storage (`storage`) on ONNX Runtime's CPU provider: see the module docstring for what it
    does and does not do. `Fp16EmulationBackend` and `Bf16EmulationBackend` are the two registered ones."""

    computes_fp16 = True  # low-precision storage: the fp16 tolerance preset applies

    def __init__(self, storage: LowPrecision, name: str, precision: str) -> None:
        self.storage = storage
        self.name = name
        self.precision = precision
        self._prepared: _Prepared | None = None

    def unavailable_reason(self) -> str | None:
        return _self_test(self.storage)

    def run(
        self, model: Path, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        return _run(self.prepare(model), inputs, outputs)

    def prepare(self, model: Path) -> _Prepared:
        """Load, infer dtypes and rewrite once per model file; later runs (layer-wise slices) reuse it."""
        path = Path(model)
        status = path.stat()
        key = (str(path.resolve()), status.st_mtime_ns, status.st_size)
        if self._prepared is None or self._prepared.key != key:
            self._prepared = None  # let the previous model go before loading the next
            self._prepared = _prepare(path, key, self.storage, self.name)
        return self._prepared

    def cpu_graph(self, model: Path) -> CpuGraph:
        """The rewritten model, at the basic level with the Cast pairs kept (`session_options`)."""
        prepared = self.prepare(model)
        config = tuple(_SESSION_CONFIG.items())
        return CpuGraph(prepared.proto, prepared.folder, _BASIC_LEVEL, config, DISABLED_OPTIMIZERS)

    def explain(
        self, candidate: Path, inputs: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]
    ) -> dict | None:
        """Where low precision first breaks, in graph order: the first tensor that overflows when rounded
        (`fp16_overflow`, `bf16_overflow`), else the first that holds inf/NaN where the model run as is holds
        finite values (`fp16_nonfinite`, `bf16_nonfinite`); with its producing node and FP32 magnitude. None
        when no tensor turns non-finite: the failure is then accumulated rounding error, which layer-wise
        comparison locates. A model holding BFLOAT16 does not run as is on ONNX Runtime CPU (no BF16 Add,
        MatMul, Conv): for one, only overflow is looked for."""
        prepared = self.prepare(candidate)
        found = _first_overflow(prepared, inputs)
        if found is None and not prepared.emulation.holds_bf16:
            found = _first_nonfinite(prepared, Path(candidate), inputs)
        return found


class Fp16EmulationBackend(LowPrecisionEmulationBackend):
    """The "fp16-emulation" backend: FP16 storage emulated on ONNX Runtime's CPU provider."""

    def __init__(self) -> None:
        super().__init__(FP16, NAME, PRECISION)


class Bf16EmulationBackend(LowPrecisionEmulationBackend):
    """The "bf16-emulation" backend: BF16 storage emulated on ONNX Runtime's CPU provider (no BF16 Add, MatMul...)."""

    def __init__(self) -> None:
        super().__init__(BF16, BF16_NAME, BF16_PRECISION)


def _prepare(path: Path, key: tuple, storage: LowPrecision, backend: str) -> _Prepared:
    from graphdoctor.analysis.types import infer_types
    from graphdoctor.model import load_model, serialize
    from graphdoctor.weights_in_place import left_in_place_for_sessions

    loaded = load_model(path, weights_in_place=left_in_place_for_sessions(path))  # as graph_of leaves them
    infer_types(loaded.model)
    folder = path.resolve().parent
    _ask_onnxruntime_for_dtypes(loaded.model, folder)
    emulation = emulate_low_precision(loaded.model, storage.dtype)
    if emulation.unknown:
        logger.warning("%s: %d tensors of unknown dtype are not rounded", backend, emulation.unknown)
    proto = serialize(loaded.model)
    return _Prepared(key, proto, folder, emulation, backend)


def _ask_onnxruntime_for_dtypes(model: ir.Model, folder: Path) -> None:
    """ONNX shape inference leaves contrib ops and some data-dependent outputs untyped; ONNX Runtime types
    every tensor of the main graph when it loads the model, so ask it (one session, nothing run)."""
    import onnxruntime as ort

    unknown = {v.name: v for node in model.graph for v in node.outputs if v.name and v.dtype is None}
    if not unknown:
        return
    proto = ir.serde.serialize_model(model)
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in unknown)
    options = quiet_session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry(EXTERNAL_FOLDER, os.fspath(folder))
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # the emulation then leaves these tensors alone, and says how many
        logger.info("onnxruntime could not type %d tensors: %s", len(unknown), error)
        return
    for output in session.get_outputs():
        dtype = _ORT_DTYPES.get(output.type)
        if dtype is not None and output.name in unknown:
            unknown[output.name].dtype = dtype


_ORT_DTYPES = {
    "tensor(float)": ir.DataType.FLOAT,
    "tensor(float16)": ir.DataType.FLOAT16,
    "tensor(double)": ir.DataType.DOUBLE,
    "tensor(bfloat16)": ir.DataType.BFLOAT16,
    "tensor(int64)": ir.DataType.INT64,
    "tensor(int32)": ir.DataType.INT32,
    "tensor(bool)": ir.DataType.BOOL,
}


def _run(prepared: _Prepared, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = session_options()
    options.add_session_config_entry(EXTERNAL_FOLDER, os.fspath(prepared.folder))
    graph_outputs = list(prepared.proto.graph.output)
    if outputs is not None:
        del prepared.proto.graph.output[:]
        prepared.proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    try:
        serialized = prepared.proto.SerializeToString()
    finally:
        del prepared.proto.graph.output[:]
        prepared.proto.graph.output.extend(graph_outputs)
    try:
        session = ort.InferenceSession(
            serialized, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS)
        )
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, as_declared(session, inputs))
    except Exception as error:  # onnxruntime raises its own exception types for bad models and inputs
        raise GraphDoctorError(f"{prepared.backend} cannot run the model: {first_line(error)}") from None
    return dict(zip(names, results, strict=True))


def _first_overflow(prepared: _Prepared, inputs: Mapping[str, np.ndarray]) -> dict | None:
    """The first rounded tensor whose FP32 value, computed from rounded inputs, is finite where rounding it
    gives inf: both come from one emulated run (the value before rounding is `<name>__gd_fp32`), so this works
    for converted models too."""
    by_name = {r.tensor: r for r in prepared.emulation.rounded}

    def run(batch: Sequence[str]) -> Mapping[str, np.ndarray]:
        return _run(prepared, inputs, [name for n in batch for name in (n, by_name[n].fp32)])

    for fetched in iter_slices(run, list(by_name), _EXPLAIN_BUDGET):
        for rounded in (r for r in by_name.values() if r.tensor in fetched):
            found = _origin(rounded, fetched[rounded.tensor], fetched[rounded.fp32], overflow=True)
            if found is not None:
                return found
    return None


def _first_nonfinite(prepared: _Prepared, candidate: Path, inputs: Mapping[str, np.ndarray]) -> dict | None:
    """The first rounded tensor holding inf/NaN where the candidate run as is on ONNX Runtime CPU holds finite
    values: what breaks without overflowing (a division by a value FP16 flushed to 0)."""
    from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend

    reference = OnnxruntimeBackend("onnxruntime-cpu")
    by_name = {r.tensor: r for r in prepared.emulation.rounded}

    def both(batch: Sequence[str]) -> dict[str, np.ndarray]:
        emulated = _run(prepared, inputs, batch)
        fp32 = reference.run(candidate, inputs, outputs=[by_name[n].original for n in batch])
        return {**{f"fp16:{n}": a for n, a in emulated.items()}, **{f"fp32:{n}": a for n, a in fp32.items()}}

    for fetched in iter_slices(both, list(by_name), _EXPLAIN_BUDGET):
        for rounded in (r for r in by_name.values() if f"fp16:{r.tensor}" in fetched):
            found = _origin(rounded, fetched[f"fp16:{rounded.tensor}"], fetched[f"fp32:{rounded.original}"])
            if found is not None:
                return found
    return None


def _origin(rounded: Rounded, emulated: np.ndarray, fp32: np.ndarray, overflow: bool = False) -> dict | None:
    """The details of a tensor its rounding turned non-finite where `fp32` is finite, or None when it did not.
    `overflow`: `fp32` is the same tensor before rounding, so only values beyond the format's range count."""
    storage = rounded.storage
    fp32 = np.asarray(fp32, dtype=np.float32)
    broken = ~np.isfinite(emulated) & np.isfinite(fp32)
    count = int(np.count_nonzero(broken))
    if not count:
        return None
    finite = np.abs(fp32[np.isfinite(fp32)])
    max_abs = float(finite.max()) if finite.size else 0.0
    beyond = int(np.count_nonzero(finite >= storage.overflow))
    where = f"input '{rounded.original}'"
    if rounded.node:
        where = f"{rounded.op_type} '{rounded.node}' output '{rounded.tensor}'"
    if overflow or beyond:
        key = f"{storage.key}_overflow"
        message = (
            f"{storage.name} overflow starts at {where}: it reaches {max_abs:.4g} in FP32 ({beyond} of {fp32.size}"
            f" values beyond {storage.name}'s {storage.largest:.6g}) and {count} value(s) become inf in {storage.name}"
        )
    else:
        key = f"{storage.key}_nonfinite"
        message = (
            f"{storage.name} first turns {where} non-finite: {count} of {fp32.size} values are inf/NaN where FP32's"
            f" are finite (max |x| {max_abs:.4g}): an input rounded to 0 or inf (a flushed eps, a clamped constant)"
        )
    details = {"node": rounded.node, "op_type": rounded.op_type, "tensor": rounded.tensor, "max_abs": max_abs}
    return {key: {**details, "overflow": beyond, "nonfinite": count, "size": int(fp32.size), "message": message}}


# --- the self-test ------------------------------------------------------------------------------------------


_PROBE_INPUT = (1.0, 300.0)
# x*x + 2^-9 for each x of _PROBE_INPUT, as each format's storage gives it (FP32: 1 + 2^-9, 90000)
_PROBE_EXPECTED = {FP16.key: (1.0 + 2.0**-9, np.inf), BF16.key: (1.0, 90112.0)}
_PROBE_TRUNCATED = (1.0, 89600.0)  # BF16 by dropping the low 16 bits instead of rounding to nearest even


@functools.cache
def _self_test(storage: LowPrecision) -> str | None:
    """None when this onnxruntime keeps the Cast pairs and rounds to nearest even (`x*x + 2^-9` with x = 1
    and 300 gives FP16's [1 + 2^-9, inf], BF16's [1, 90112]); else why not."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    model = ir.from_onnx_text(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) <float c = {0.001953125}> {
            t = Mul(x, x)
            y = Add(t, c)
        }"""
    )
    from graphdoctor.analysis.types import infer_types

    infer_types(model)
    emulate_low_precision(model, storage.dtype)
    proto = ir.serde.serialize_model(model)
    try:
        session = ort.InferenceSession(
            proto.SerializeToString(),
            session_options(),
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(DISABLED_OPTIMIZERS),
        )
        [result] = session.run(None, {"x": np.array(_PROBE_INPUT, np.float32)})
    except Exception as error:  # any failure means the emulation cannot be trusted here
        return f"onnxruntime {ort.__version__} cannot run the {storage.name} emulation: {error}"
    got, expected = tuple(float(v) for v in result), _PROBE_EXPECTED[storage.key]
    if got == expected:
        return None
    if storage == BF16 and got == _PROBE_TRUNCATED:
        return (
            f"onnxruntime {ort.__version__}'s Cast to bfloat16 truncates instead of rounding to nearest even"
            f" (300*300 gave {got[1]:g}, BF16 gives {expected[1]:g})"
        )
    return (
        f"onnxruntime {ort.__version__} removes the {storage.name} Cast round trips the emulation relies on"
        f" (x*x + 2^-9 with x = 1, 300 gave {got[0]:.10g}, {got[1]:g}; {storage.name} gives"
        f" {expected[0]:.10g}, {expected[1]:g})"
    )
