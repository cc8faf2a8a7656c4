"""Folding values known before run time into constants, one node at a time: in numpy for the ops of shape
arithmetic (graphdoctor.integer_ops), else by ONNX's reference runtime.

GD001 folds shape arithmetic on static shapes with it; GD013 folds the inputs TensorRT's importer needs as
constants (Reduce axes, OneHot depth) when an exporter computed them from constants. Only integer and bool
results are folded, each within a byte budget: ConstantOfShape, Expand, Tile and Range can make huge tensors
from tiny operands, and float arithmetic is not ours to round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphdoctor import integer_ops, rewrite
from graphdoctor.analysis.constants import const_tensor

__all__ = ["FOLDABLE_OPS", "MAX_OPERAND_BYTES", "constant_value", "dim_bound", "is_ai_onnx", "remove_dead", "run_node"]

# Deterministic ops without subgraphs whose integer results are folded.
FOLDABLE_OPS = frozenset(
    {"Identity", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose"}
    | {"Expand", "Tile", "ConstantOfShape", "Range", "Cast", "Where"}
    | {"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Min", "Max", "Sign"}
    | {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor"}
    | {"ReduceProd", "ReduceSum", "ReduceMin", "ReduceMax"}
)
MAX_OPERAND_BYTES = 64 * 1024  # the largest constant read as an operand
_MAX_DEPTH = 32


def is_ai_onnx(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def run_node(
    node: ir.Node, operands: Sequence[np.ndarray | None], versions: tuple[int, int], budget: int
) -> list[np.ndarray] | None:
    """The node's outputs computed in numpy (graphdoctor.integer_ops) or else by ONNX's reference runtime on a
    one-node model (`versions`: opset and IR version), or None when they are not all integer or bool, exceed
    `budget` bytes, disagree with the declared dtypes, or the node fails (division by zero included: undefined
    in ONNX)."""
    if _result_elements(node, operands) > budget:
        return None
    divisor = operands[1] if node.op_type in ("Div", "Mod") and len(operands) > 1 else None
    if divisor is not None and divisor.dtype.kind in "iu" and not divisor.all():
        return None
    attributes = {name: attribute.value for name, attribute in node.attributes.items()}
    arrays = integer_ops.compute(node.op_type, operands, attributes, versions[0])
    if arrays is None:
        arrays = _evaluated(_one_node_model(node, operands, versions), operands)
    if arrays is None or len(arrays) != len(node.outputs):
        return None
    for value, array in zip(node.outputs, arrays, strict=True):
        declared = value.dtype
        if array.dtype.kind not in "iub" or array.nbytes > budget:
            return None
        if declared is not None and declared != ir.DataType.from_numpy(array.dtype):
            return None
    return arrays


# One-node evaluations by (serialized model, operands): a pure function of the key, so never stale. GD001 runs
# once per round of `fix`, each time on the same shape arithmetic; building an evaluator costs ~2 ms a node.
_EVALUATED: dict[tuple[bytes, tuple], list[np.ndarray] | None] = {}
_EVALUATED_MAX = 4096


def _evaluated(model: onnx.ModelProto, operands: Sequence[np.ndarray | None]) -> list[np.ndarray] | None:
    """The one-node model's outputs from ONNX's reference runtime, or None when it rejects them."""
    key = (
        model.SerializeToString(),
        tuple(None if a is None else (a.dtype.str, a.shape, a.tobytes()) for a in operands),
    )
    if key not in _EVALUATED:
        if len(_EVALUATED) >= _EVALUATED_MAX:
            _EVALUATED.clear()
        _EVALUATED[key] = _evaluate(model, operands)
    arrays = _EVALUATED[key]
    return None if arrays is None else [array.copy() for array in arrays]  # callers own what they get


def _evaluate(model: onnx.ModelProto, operands: Sequence[np.ndarray | None]) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator  # 0.1 s to import: only when a node is folded

    try:
        with np.errstate(all="ignore"):
            results = ReferenceEvaluator(model).run(None, _feeds(operands))
    except Exception:  # the reference runtime rejects what it cannot compute; then it is not folded
        return None
    return [np.asarray(result) for result in results]


def constant_value(
    value: ir.Value, versions: tuple[int, int], budget: int, memo: dict[int, np.ndarray | None] | None = None
) -> np.ndarray | None:
    """The value, when it is a readable constant or is computed from constants (and Shapes of static dims)
    by foldable ai.onnx nodes, each result within `budget` bytes; None otherwise."""
    return _constant_value(value, versions, budget, {} if memo is None else memo, 0)


def _constant_value(
    value: ir.Value, versions: tuple[int, int], budget: int, memo: dict[int, np.ndarray | None], depth: int
) -> np.ndarray | None:
    if id(value) in memo:
        return memo[id(value)]
    memo[id(value)] = None  # tried once; a cycle (malformed) ends here
    tensor = const_tensor(value)
    producer = value.producer()
    array = None
    if tensor is not None:
        if tensor.dtype not in (ir.DataType.STRING, ir.DataType.UNDEFINED) and tensor.nbytes <= MAX_OPERAND_BYTES:
            try:
                array = tensor.numpy()
            except (OSError, ValueError, TypeError):
                array = None
    elif producer is not None and is_ai_onnx(producer) and depth < _MAX_DEPTH:
        array = _computed(producer, value, versions, budget, memo, depth)
    memo[id(value)] = array
    return array


def _computed(node, value, versions, budget, memo, depth) -> np.ndarray | None:
    if node.op_type == "Shape":
        return _static_shape(node)
    if node.op_type not in FOLDABLE_OPS:
        return None
    operands = [None if v is None else _constant_value(v, versions, budget, memo, depth + 1) for v in node.inputs]
    if any(array is None for v, array in zip(node.inputs, operands, strict=True) if v is not None):
        return None
    results = run_node(node, operands, versions, budget)
    return None if results is None else results[list(node.outputs).index(value)]


def _static_shape(node: ir.Node) -> np.ndarray | None:
    """Shape's output (within start/end) when the dims it reads are all known."""
    data = node.inputs[0] if node.inputs else None
    if data is None or data.shape is None:
        return None
    rank = len(data.shape)
    start, end = (
        dim_bound(node.attributes.get_int(key, default), rank) for key, default in (("start", 0), ("end", rank))
    )
    dims = list(data.shape)[start:end]
    return np.array(dims, dtype=np.int64) if all(isinstance(d, int) for d in dims) else None


def dim_bound(bound: int, rank: int) -> int:
    """Shape's start/end: negative counts from the back, then clamped to [0, rank]."""
    return min(max(bound + rank if bound < 0 else bound, 0), rank)


def remove_dead(node: ir.Node, removable: frozenset[str] | set[str]) -> None:
    """Remove `node` if nothing reads it any more, and so on up through the nodes of `removable` kinds
    (side-effect free) and the initializers that only fed it."""
    pending = [node]
    while pending:
        current = pending.pop()
        if not rewrite.is_attached(current) or any(o.uses() or o.is_graph_output() for o in current.outputs):
            continue
        operands = [v for v in current.inputs if v is not None]
        rewrite.remove_node(current)
        for operand in operands:
            producer = operand.producer()
            if producer is not None and is_ai_onnx(producer) and producer.op_type in removable:
                pending.append(producer)
            elif producer is None and not (operand.uses() or operand.is_graph_input() or operand.is_graph_output()):
                rewrite.remove_initializer(operand)


def _result_elements(node: ir.Node, operands: Sequence[np.ndarray | None]) -> float:
    """An upper bound on the output's elements for the ops that expand; 0 for the others (bounded by their
    operands). Malformed operands count as infinite, so they are never run."""
    op = node.op_type
    try:
        if op == "ConstantOfShape":
            return math.prod(int(d) for d in operands[0].reshape(-1))
        if op == "Expand":
            shape = np.broadcast_shapes(operands[0].shape, tuple(int(d) for d in operands[1].reshape(-1)))
            return math.prod(shape)
        if op == "Tile":
            return math.prod(int(d) * int(r) for d, r in zip(operands[0].shape, operands[1].reshape(-1), strict=True))
        if op == "Range":
            start, limit, delta = (operands[i].item() for i in range(3))
            return max(math.ceil((limit - start) / delta), 0)
    except (AttributeError, IndexError, TypeError, ValueError, ZeroDivisionError, OverflowError):
        return math.inf
    return 0


def _one_node_model(node: ir.Node, operands: Sequence[np.ndarray | None], versions: tuple[int, int]) -> onnx.ModelProto:
    inputs = [
        None
        if array is None
        else ir.Value(
            name=f"input{i}", type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(array.shape)
        )
        for i, array in enumerate(operands)
    ]
    copy = ir.Node("", node.op_type, inputs, list(node.attributes.values()), num_outputs=len(node.outputs))
    for i, output in enumerate(copy.outputs):
        output.name = f"output{i}"
    opset, ir_version = versions
    graph = ir.Graph([v for v in inputs if v is not None], copy.outputs, nodes=[copy], opset_imports={"": opset})
    return ir.serde.serialize_model(ir.Model(graph, ir_version=ir_version))


def _feeds(operands: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    return {f"input{i}": array for i, array in enumerate(operands) if array is not None}
