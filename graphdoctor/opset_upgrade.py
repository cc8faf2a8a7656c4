"""Raising a model's default-domain (ai.onnx) opset on the IR, e.g. 17 -> 22, without reading a weight.

ONNX gives Conv, ConvTranspose, the pooling ops, InstanceNormalization, Sin, Round, ... a tensor(bfloat16) form
only from opset 22, and most exports are opset 17 (TorchScript) or 18 (dynamo): a BF16 conversion must first
raise the opset or keep every Conv in FP32. `onnx.version_converter` needs a ModelProto with every weight in
memory; here only the nodes whose schema changed incompatibly between the model's opset and the target are
rewritten, and nothing else is touched.

Which changes need a rewrite is read from the operator schemas: for each node, the schema versions between its
scope's opset and the target. A version whose attributes and inputs/outputs are those of the previous one and
whose types only widen is compatible by construction (`is_type_only`); every other version between 12 and 22 is
classified in `SCHEMA_CHANGES`, from the schemas and onnx's docs/Changelog.md: compatible (new attributes or
inputs whose defaults keep the old behaviour), rewritten exactly, or refused with the reason. Everything is
checked before anything is rewritten, so a refusal leaves the model as it was.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx.defs
import onnx_ir as ir

from graphdoctor.analysis.graph import iter_values
from graphdoctor.errors import GraphDoctorError
from graphdoctor.rewrite import fresh_name, replace_value

__all__ = [
    "MAX_TARGET",
    "RUNTIME_GAPS",
    "SCHEMA_CHANGES",
    "OpsetUpgradeRefused",
    "SchemaChange",
    "is_type_only",
    "raise_opset",
]

logger = logging.getLogger(__name__)

MAX_TARGET = 22  # the schema changes up to this opset are reviewed; later ones are not
_DEFAULT_DOMAINS = ("", "ai.onnx")
# the IR version each opset needs at least (onnx.helper.VERSION_TABLE, which this module may not import)
_MIN_IR_VERSION = {12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10}


class OpsetUpgradeRefused(GraphDoctorError):
    """A node cannot be carried to the target opset exactly; the model was left untouched."""

    def __init__(self, target: int, reasons: list[str]) -> None:
        self.reasons = reasons
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
        super().__init__(f"cannot raise the opset to {target}: {shown}")


@dataclass
class _Scope:
    """A graph or function body whose default-domain nodes are read under one opset version."""

    graph: ir.Graph | ir.Function
    version: int
    taken: set[str]  # value names in use across the model (names must stay unique across subgraphs)
    function: ir.Function | None = None  # the function whose body this is


Refusal = Callable[[ir.Node], str | None]
Rewrite = Callable[[ir.Node, _Scope], bool]  # True: the node was changed


@dataclass(frozen=True)
class SchemaChange:
    """What a new schema version changed and what it takes to carry a node across it.

    `rewrite` None: the old node means the same under the new version. `refusal` returns why this node cannot
    be carried exactly (None: it can)."""

    summary: str
    rewrite: Rewrite | None = None
    refusal: Refusal | None = None


# --- reading attributes ---------------------------------------------------------------------------------------


def _referenced(node: ir.Node, *names: str) -> str | None:
    """A refusal for attributes that refer to a function's attribute: their value is unknown here."""
    for name in names:
        attr = node.attributes.get(name)
        if attr is not None and attr.is_ref():
            return f"attribute '{name}' refers to the function attribute '{attr.ref_attr_name}'"
    return None


def _refuses_references(*names: str) -> Refusal:
    return lambda node: _referenced(node, *names)


def _ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else list(attr.as_ints())


# --- building nodes -------------------------------------------------------------------------------------------


def _add_node(
    scope: _Scope, before: ir.Node, op_type: str, inputs: list[ir.Value], hint: str, **attrs: int | ir.TensorProtocol
) -> ir.Value:
    """A default-domain node inserted before `before`, its output named after `hint`; returns the output."""
    attributes = ir.convenience.convert_attributes(attrs)
    node = ir.Node("", op_type, inputs, attributes, num_outputs=1, name=fresh_name(hint, scope.taken))
    node.outputs[0].name = fresh_name(hint, scope.taken)
    scope.graph.insert_before(before, node)
    return node.outputs[0]


def _constant(scope: _Scope, before: ir.Node, array: np.ndarray, hint: str) -> ir.Value:
    """A Constant node (valid in graphs, subgraphs and function bodies alike) holding a small array."""
    value = _add_node(scope, before, "Constant", [], hint, value=ir.tensor(array))
    value.type, value.shape = ir.TensorType(ir.DataType.from_numpy(array.dtype)), ir.Shape(array.shape)
    return value


def _set_input(node: ir.Node, index: int, value: ir.Value | None) -> None:
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)


def _hint(node: ir.Node, suffix: str) -> str:
    return f"{node.name or node.op_type}_{suffix}"


# --- rewrites -------------------------------------------------------------------------------------------------


def _axes_to_input(node: ir.Node, scope: _Scope) -> bool:
    """`axes` attribute -> optional int64 input 1. No axes (or an empty list) means "all axes" for the
    reductions and Squeeze before and after (noop_with_empty_axes keeps its default 0), so it stays absent."""
    axes = _ints(node, "axes")
    if axes is None:
        return False
    node.attributes.pop("axes")
    if axes or node.op_type == "Unsqueeze":
        _set_input(node, 1, _constant(scope, node, np.array(axes, dtype=np.int64), _hint(node, "axes")))
    return True


def _split_to_input(node: ir.Node, scope: _Scope) -> bool:
    """Split-13: the `split` sizes move from an attribute to input 1."""
    split = _ints(node, "split")
    if split is None:
        return False
    node.attributes.pop("split")
    _set_input(node, 1, _constant(scope, node, np.array(split, dtype=np.int64), _hint(node, "split")))
    return True


def _split_num_outputs(node: ir.Node, scope: _Scope) -> bool:
    """Split-18 needs `split` or `num_outputs`; an equal split (no sizes) gets num_outputs = its output count.
    Where the old form was valid (the dimension divides evenly) both give the same parts."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return False
    node.attributes["num_outputs"] = ir.AttrInt64("num_outputs", len(node.outputs))
    return True


def _softmax_on_one_axis(node: ir.Node, scope: _Scope) -> bool:
    """Softmax/LogSoftmax/Hardmax-13 normalize along `axis` only; before 13 they flattened the input to 2-D at
    `axis` (default 1) and normalized over all trailing dims. The last axis means the same in both; any other
    axis becomes Flatten(axis) -> op(axis=-1) -> Reshape(Shape(x)), which normalizes over the same elements."""
    attr = node.attributes.get("axis")
    axis = 1 if attr is None else attr.as_int()
    data = node.inputs[0]
    if _is_last_axis(axis, data):
        node.attributes["axis"] = ir.AttrInt64("axis", axis)
        return attr is None or axis != -1  # an explicit -1 means the same before and after
    flat = _add_node(scope, node, "Flatten", [data], _hint(node, "flat"), axis=axis)
    normalized = _add_node(scope, node, node.op_type, [flat], _hint(node, "2d"), axis=-1)
    shape = _add_node(scope, node, "Shape", [data], _hint(node, "shape"))
    output = node.outputs[0]
    restored = _add_node(scope, node, "Reshape", [normalized, shape], _hint(node, "nd"))
    restored.type, restored.shape = output.type, output.shape
    replace_value(output, restored)
    scope.graph.remove(node, safe=True)
    return True


def _is_last_axis(axis: int, data: ir.Value | None) -> bool:
    if axis == -1:
        return True
    rank = len(data.shape) if data is not None and data.shape is not None else None
    return rank is not None and axis == rank - 1


def _dropout_ratio_to_input(node: ir.Node, scope: _Scope) -> bool:
    """Dropout-12: `ratio` moves from an attribute to input 1 (training_mode stays absent: inference)."""
    attr = node.attributes.pop("ratio", None)
    if attr is None:
        return False
    _set_input(node, 1, _constant(scope, node, np.array(attr.as_float(), dtype=np.float32), _hint(node, "ratio")))
    return True


def _dft_axis_to_input(node: ir.Node, scope: _Scope) -> bool:
    """DFT-20: `axis` moves to input 2 and its default changes from 1 to -2, so it is always written."""
    attr = node.attributes.pop("axis", None)
    axis = 1 if attr is None else attr.as_int()
    _set_input(node, 2, _constant(scope, node, np.array(axis, dtype=np.int64), _hint(node, "axis")))
    return True


_GRID_SAMPLE_MODES = {"bilinear": "linear", "bicubic": "cubic"}


def _grid_sample_mode_names(node: ir.Node, scope: _Scope) -> bool:
    """GridSample-20 renames the modes: 'bilinear' -> 'linear', 'bicubic' -> 'cubic' (defaults equal)."""
    attr = node.attributes.get("mode")
    if attr is None or attr.as_string() not in _GRID_SAMPLE_MODES:
        return False
    node.attributes["mode"] = ir.AttrString("mode", _GRID_SAMPLE_MODES[attr.as_string()])
    return True


def _roi_align_old_pixel_mode(node: ir.Node, scope: _Scope) -> bool:
    """RoiAlign-16 adds coordinate_transformation_mode, default 'half_pixel'; RoiAlign-10 computed what is now
    'output_half_pixel', which is therefore written when the attribute is absent."""
    name = "coordinate_transformation_mode"
    if name in node.attributes:
        return False
    node.attributes[name] = ir.AttrString(name, "output_half_pixel")
    return True


# --- refusals -------------------------------------------------------------------------------------------------


def _batchnorm_training_outputs(node: ir.Node) -> str | None:
    if any(output.name for output in node.outputs[1:]):
        return "its training outputs (mean, var, saved_mean, saved_var) have no opset-14 equivalent"
    return None


def _resize_tf_half_pixel(node: ir.Node) -> str | None:
    attr = node.attributes.get("coordinate_transformation_mode")
    if attr is not None and attr.is_ref():
        return _referenced(node, "coordinate_transformation_mode")
    if attr is not None and attr.as_string() == "tf_half_pixel_for_nn":
        return "coordinate_transformation_mode 'tf_half_pixel_for_nn' was removed in opset 13"
    return None


def _quantize_scale_type(node: ir.Node) -> str | None:
    if node.inputs[0] is None or node.inputs[0].dtype != ir.DataType.FLOAT:
        return "from opset 19 y_scale must have x's type; only float32 x (whose scale is float32) is carried"
    return None


def _erf_integer_input(node: ir.Node) -> str | None:
    """Erf-13 drops the integer types of Erf-9. An input of unknown dtype is let through: exporters compute erf
    on floats only (torch promotes integer tensors before erf), and typing the graph would touch the model."""
    dtype = node.inputs[0].dtype if node.inputs[0] is not None else None
    if dtype is not None and not dtype.is_floating_point():
        return f"Erf-13 has no {dtype.name} form (Erf-9 had)"
    return None


def _dropout_mask(node: ir.Node) -> str | None:
    """Measured on ONNX Runtime: an inference Dropout-10 returns an all-False mask, Dropout-12 an all-True one."""
    if len(node.outputs) > 1 and node.outputs[1].name:
        return "its mask output is all False in inference before opset 12 and all True from 12"
    return None


def _group_norm(node: ir.Node) -> str | None:
    return "scale and bias hold one value per group before opset 21 and one per channel from 21"


# --- the table ------------------------------------------------------------------------------------------------

_REDUCTIONS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean")
_REDUCTIONS += ("ReduceMin", "ReduceProd", "ReduceSumSquare")
_AXES_TO_INPUT = SchemaChange("axes moved from attribute to input", _axes_to_input, _refuses_references("axes"))
_ONE_AXIS = SchemaChange(
    "normalizes along one axis (was: flattened at axis)", _softmax_on_one_axis, _refuses_references("axis")
)


def _compatible(summary: str, refusal: Refusal | None = None) -> SchemaChange:
    return SchemaChange(summary, None, refusal)


# (op, since_version) -> the change, for every opset 12-22 version that is not type-only (see is_type_only)
SCHEMA_CHANGES: dict[tuple[str, int], SchemaChange] = {
    **{(op, 18): _AXES_TO_INPUT for op in _REDUCTIONS},
    **{(op, 13): _AXES_TO_INPUT for op in ("ReduceSum", "Squeeze", "Unsqueeze")},
    **{(op, 13): _ONE_AXIS for op in ("Softmax", "LogSoftmax", "Hardmax")},
    ("Split", 13): SchemaChange("split moved from attribute to input", _split_to_input, _refuses_references("split")),
    ("Split", 18): SchemaChange("an equal split needs num_outputs", _split_num_outputs),
    ("Dropout", 12): SchemaChange("ratio moved from attribute to input", _dropout_ratio_to_input, _dropout_mask),
    ("DFT", 20): SchemaChange("axis moved from attribute to input", _dft_axis_to_input, _refuses_references("axis")),
    ("GridSample", 20): SchemaChange(
        "modes renamed (bilinear -> linear, bicubic -> cubic)", _grid_sample_mode_names, _refuses_references("mode")
    ),
    ("RoiAlign", 16): SchemaChange(
        "coordinate_transformation_mode added; the old behaviour is 'output_half_pixel'",
        _roi_align_old_pixel_mode,
        _refuses_references("coordinate_transformation_mode"),
    ),
    ("GroupNormalization", 21): _compatible("per-channel scale and bias", _group_norm),
    ("BatchNormalization", 14): _compatible("training_mode added (0)", _batchnorm_training_outputs),
    ("Resize", 13): _compatible("roi and scales optional; tf_half_pixel_for_nn removed", _resize_tf_half_pixel),
    ("Resize", 18): _compatible("antialias (0), axes, keep_aspect_ratio_policy ('stretch') added"),
    ("QuantizeLinear", 19): _compatible("saturate added (float8 only); y_scale typed as x", _quantize_scale_type),
    ("QuantizeLinear", 13): _compatible("axis added: per-axis only for 1-D scales, which opset 10 did not allow"),
    ("DequantizeLinear", 13): _compatible("axis added: per-axis only for 1-D scales, which opset 10 did not allow"),
    ("QuantizeLinear", 21): _compatible("block_size (0) and output_dtype (0: from zero point) added"),
    ("DequantizeLinear", 21): _compatible("block_size (0) added"),
    ("Erf", 13): _compatible("integer types removed", _erf_integer_input),
    ("ArgMax", 12): _compatible("select_last_index added (0)"),
    ("ArgMin", 12): _compatible("select_last_index added (0)"),
    ("AveragePool", 19): _compatible("dilations added (1)"),
    ("LpPool", 18): _compatible("dilations (1) and ceil_mode (0) added"),
    ("Cast", 19): _compatible("saturate added (float8 targets only, which did not exist)"),
    ("CastLike", 19): _compatible("saturate added (float8 targets only, which did not exist)"),
    ("Constant", 12): _compatible("value_float(s), value_int(s), value_string(s) added"),
    ("GatherND", 12): _compatible("batch_dims added (0)"),
    ("GRU", 14): _compatible("layout added (0)"),
    ("LSTM", 14): _compatible("layout added (0)"),
    ("RNN", 14): _compatible("layout added (0)"),
    ("OptionalHasElement", 18): _compatible("input became optional"),
    ("Pad", 18): _compatible("optional axes input added"),
    ("Reshape", 14): _compatible("allowzero added (0)"),
    ("ScatterElements", 16): _compatible("reduction added ('none')"),
    ("ScatterND", 16): _compatible("reduction added ('none')"),
    ("Shape", 15): _compatible("start (0) and end (all) added"),
}


# type-only versions that ONNX Runtime (1.32, CPU) has no kernel for: raising would make the model unloadable
RUNTIME_GAPS: dict[tuple[str, int], str] = {("RoiAlign", 22): "ONNX Runtime has no RoiAlign-22 kernel"}


# --- reading the schemas --------------------------------------------------------------------------------------


@cache
def _all_schemas() -> dict[str, dict[int, onnx.defs.OpSchema]]:
    """Every ai.onnx schema: op type -> since_version -> schema."""
    schemas: dict[str, dict[int, onnx.defs.OpSchema]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain == "":
            schemas.setdefault(schema.name, {})[schema.since_version] = schema
    return schemas


def _schemas(op_type: str) -> dict[int, onnx.defs.OpSchema]:
    """The ai.onnx schemas of `op_type`, by since_version (empty for an unknown op)."""
    return _all_schemas().get(op_type, {})


def _versions_between(op_type: str, current: int, target: int) -> list[tuple[int, int]]:
    """(previous, new) since_versions of the schemas `op_type` gains above `current`, up to `target`."""
    versions = sorted(_schemas(op_type))
    return [(previous, new) for previous, new in itertools.pairwise(versions) if current < new <= target]


def _allowed_types(schema: onnx.defs.OpSchema, type_str: str) -> frozenset[str]:
    for constraint in schema.type_constraints:
        if constraint.type_param_str == type_str:
            return frozenset(constraint.allowed_type_strs)
    return frozenset([type_str])  # a fixed type, e.g. tensor(int64)


def _signature(schema: onnx.defs.OpSchema) -> tuple[object, ...]:
    attributes = {
        name: (attr.type, attr.required, attr.default_value.SerializeToString())
        for name, attr in schema.attributes.items()
    }
    options = tuple(p.option for p in schema.inputs), tuple(p.option for p in schema.outputs)
    return attributes, options


@cache
def is_type_only(op_type: str, previous: int, new: int) -> bool:
    """Whether schema `new` only widens the types of schema `previous`: the same attributes (types, defaults),
    the same inputs and outputs (positions, optionality), each allowing at least the old types, and no two of
    them newly bound to one type variable (QuantizeLinear-19 ties y_scale to x: a narrowing)."""
    old, current = _schemas(op_type)[previous], _schemas(op_type)[new]
    if _signature(old) != _signature(current):
        return False
    old_params, new_params = [*old.inputs, *old.outputs], [*current.inputs, *current.outputs]
    for before, after in zip(old_params, new_params, strict=True):
        if not _allowed_types(old, before.type_str) <= _allowed_types(current, after.type_str):
            return False
    for i, j in _pairs(len(new_params)):
        if new_params[i].type_str == new_params[j].type_str and not _bound_before(old, old_params[i], old_params[j]):
            return False
    return True


def _pairs(count: int) -> Iterator[tuple[int, int]]:
    for i in range(count):
        for j in range(i + 1, count):
            yield i, j


def _bound_before(schema: onnx.defs.OpSchema, a: onnx.defs.OpSchema.FormalParameter, b) -> bool:
    """Two parameters had to have the same type already: one type variable, or one fixed type."""
    if a.type_str == b.type_str:
        return True
    types_a, types_b = _allowed_types(schema, a.type_str), _allowed_types(schema, b.type_str)
    return len(types_a) == 1 and types_a == types_b


# --- planning and applying ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    node: ir.Node
    scope: _Scope
    op_type: str
    version: int
    change: SchemaChange


def _default_domain_key(imports: dict[str, int]) -> str | None:
    keys = [key for key in _DEFAULT_DOMAINS if key in imports]
    if len(keys) > 1:
        raise GraphDoctorError("the model imports the default domain twice ('' and 'ai.onnx')")
    return keys[0] if keys else None


def _scopes(model: ir.Model, taken: set[str]) -> Iterator[_Scope]:
    """The main graph and its subgraphs under the model's opset; each function body (and its subgraphs) under
    its own import of the default domain, when it has one."""
    key = _default_domain_key(model.opset_imports)
    if key is not None:
        for graph in (model.graph, *model.graph.subgraphs()):
            yield _Scope(graph, model.opset_imports[key], taken)
    for function in model.functions.values():
        key = _default_domain_key(function.opset_imports)
        if key is not None:
            for graph in (function, *function.subgraphs()):
                yield _Scope(graph, function.opset_imports[key], taken, function)


def _label(node: ir.Node) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else node.op_type


def _plan_node(node: ir.Node, scope: _Scope, target: int, refusals: list[str]) -> Iterator[_Step]:
    if not _schemas(node.op_type):
        refusals.append(f"{_label(node)}: not an ai.onnx operator, its changes are unknown")
        return
    for previous, new in _versions_between(node.op_type, scope.version, target):
        if (node.op_type, new) in RUNTIME_GAPS:
            refusals.append(f"{_label(node)} (opset {new}): {RUNTIME_GAPS[node.op_type, new]}")
        change = SCHEMA_CHANGES.get((node.op_type, new))
        if change is None:
            if is_type_only(node.op_type, previous, new):
                continue
            refusals.append(f"{_label(node)}: its opset-{new} schema changed in a way not reviewed")
            continue
        reason = change.refusal(node) if change.refusal else None
        if reason:
            refusals.append(f"{_label(node)} (opset {new}): {reason}")
        elif change.rewrite is not None:
            yield _Step(node, scope, node.op_type, new, change)


def _function_version_mismatch(function: ir.Function, version: int, model_version: int) -> str:
    """ONNX reads a function body under the function's own opset import; ONNX Runtime inlines it and reads it
    under the model's (measured: a ReduceMean-13 body in an opset-22 model fails to load). Which one a model
    whose two imports differ relies on is ambiguous, so it is refused rather than guessed."""
    return (
        f"function {function.domain}::{function.name} imports ai.onnx {version} but the model imports "
        f"{model_version}; ONNX reads its body under {version}, ONNX Runtime under {model_version}"
    )


def _plan(model: ir.Model, target: int) -> list[_Step]:
    taken = {value.name for value in iter_values(model) if value.name}
    model_version = model.opset_imports[_default_domain_key(model.opset_imports) or ""]
    refusals: list[str] = []
    steps: list[_Step] = []
    for scope in _scopes(model, taken):
        if scope.version > target:
            raise GraphDoctorError(f"the model's opset {scope.version} is above the target {target}; not lowered")
        if scope.function is not None and scope.version != model_version:
            refusals.append(_function_version_mismatch(scope.function, scope.version, model_version))
            continue
        for node in scope.graph:
            if node.domain in _DEFAULT_DOMAINS:
                steps += _plan_node(node, scope, target, refusals)
    if refusals:
        raise OpsetUpgradeRefused(target, list(dict.fromkeys(refusals)))
    return steps


def _set_imports(model: ir.Model, target: int) -> None:
    for imports in (model.opset_imports, *(function.opset_imports for function in model.functions.values())):
        key = _default_domain_key(imports)
        if key is not None:
            imports[key] = target


def _nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


def raise_opset(model: ir.Model, target: int = MAX_TARGET) -> list[str]:
    """Raise the model's ai.onnx opset (and its functions') to `target` in place; return what was rewritten.

    Nodes are rewritten only where a schema between their opset and `target` changed incompatibly; weights are
    never read. Raises OpsetUpgradeRefused (the model untouched) naming each node that cannot be carried over
    exactly, and GraphDoctorError for a target above MAX_TARGET or below the model's opset."""
    if not 1 <= target <= MAX_TARGET:
        raise GraphDoctorError(f"opset {target}: only opsets up to {MAX_TARGET} are supported")
    if _default_domain_key(model.opset_imports) is None:
        raise GraphDoctorError("the model does not import the ai.onnx opset")
    steps = _plan(model, target)
    counts: Counter[tuple[str, str, int]] = Counter()
    for step in sorted(steps, key=lambda step: step.version):  # a node crosses its versions in order
        if step.change.rewrite(step.node, step.scope):
            counts[step.op_type, step.change.summary, step.version] += 1
    _set_imports(model, target)
    notes = [
        f"{op}: {summary} (opset {version}), {n} node{'s' if n > 1 else ''}"
        for (op, summary, version), n in counts.items()
    ]
    minimum_ir = _MIN_IR_VERSION.get(target, 0)
    if model.ir_version < minimum_ir:
        notes.append(f"IR version {model.ir_version} -> {minimum_ir} (opset {target} needs it)")
        model.ir_version = minimum_ir
    logger.debug("raised the opset to %d: %s", target, notes)
    return notes
