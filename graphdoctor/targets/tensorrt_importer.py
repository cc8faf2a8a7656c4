"""The checks TensorRT's ONNX importers make on one node's attributes and inputs, per version.

Each check is ours, written from what onnx-tensorrt's importers assert (`ASSERT_NODE`, `assertIsWeights`,
`STATIC_CHECK` in onnxOpImporters.cpp and onnxOpCheckers.cpp, 8.6-GA and 10.1-GA) and from the limits of the
layers they build (TopK's K, OneHot's depth), which the support tables state. A check yields `Rejection`s;
GD013 turns them into findings.

"Constant" means what the importer holds as weights: an initializer or a Constant node's output (Identity and
Cast of one are already run-time tensors to it). Where 10.15's table says "resolvable to a constant"
(Squeeze and Unsqueeze axes) the Shape of a tensor with static dims counts too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.constants import const_array, const_tensor
from graphdoctor.analysis.format import format_shape
from graphdoctor.analysis.graph import node_label
from graphdoctor.targets import Target

__all__ = ["CHECKED", "NodeView", "Rejection", "computed_from_constants", "node_rejections"]

_FOLD = "fold it into a constant (`polygraphy surgeon sanitize --fold-constants`, or onnxsim)"
_NO_CACHE = "export attention without a KV cache (or as MatMul and Softmax, which keep one in graph inputs)"
_TOPK_MAX_K = 3840  # ITopKLayer: K must be below it (the 10.x tables)
_RESIZE_TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
# INT8 and UINT8 are refused outside Q/DQ and network I/O whatever reads them (GD013's dtype check).
_INTEGERS = (ir.DataType.INT32, ir.DataType.INT64)


@dataclass(frozen=True)
class Rejection:
    """One thing about one node that the target's parser refuses."""

    subject: str  # what is refused: "attribute antialias=1", "input 1 'axes'", "output 1 'mean'"
    reason: str  # why, in the parser's terms
    advice: str  # what to do
    accepted_from: tuple[int, int] | None = None  # the first TensorRT version that accepts it, if any
    not_constant: str = ""  # for inputs that must be constant: what the value is instead
    info: bool = False  # worth knowing, builds anyway
    ignored: bool = False  # the importer does not read it: the engine builds and computes something else
    value: ir.Value | None = None  # the input that must be constant


@dataclass(frozen=True)
class NodeView:
    """What the checks need besides the node: the target and the opset the node is read under."""

    target: Target
    opset: int

    def rank(self, value: ir.Value | None) -> int | None:
        return None if value is None or value.shape is None else len(value.shape)

    @staticmethod
    def static_dims(value: ir.Value | None) -> tuple[int, ...] | None:
        """The dims when all are known integers; None otherwise."""
        if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
            return None
        return tuple(value.shape)


def node_rejections(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    """Everything the target's importer of this ai.onnx node refuses (nothing for ops without a check)."""
    check = _CHECKS.get(node.op_type)
    if check is not None:
        yield from check(node, view)


def _attr(node: ir.Node, name: str, default=None):
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.value


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _weights_problem(value: ir.Value, resolvable: bool = False) -> str:
    """'' when the importer holds `value` as weights (or, `resolvable`, as known shape values); else what it is."""
    if const_tensor(value) is not None:
        return ""
    producer = value.producer()
    if producer is None:
        return "a graph input" if value.graph is not None and value in value.graph.inputs else "an outer-scope value"
    if resolvable and _is_static_shape(producer):
        return ""
    if computed_from_constants(value):
        return f"computed from constants at run time by {producer.op_type} '{node_label(producer)}' (nothing folded it)"
    return f"computed at run time by {producer.op_type} '{node_label(producer)}'"


def _is_static_shape(node: ir.Node) -> bool:
    """A Shape node of a value whose dims are all known: its output is known before run time."""
    return node.op_type == "Shape" and NodeView.static_dims(_input(node, 0)) is not None


def computed_from_constants(value: ir.Value) -> bool:
    """Whether a value that is not itself a constant comes from constants only (then it can be folded)."""
    producer = value.producer()
    return producer is not None and (_is_static_shape(producer) or _computed_from_constants(producer, depth=0))


def _computed_from_constants(node: ir.Node, depth: int) -> bool:
    """Whether every input comes from constants (or Shapes of static dims) through at most 32 nodes."""
    if depth > 32 or node.attributes.get("body") or node.attributes.get("then_branch"):
        return False
    for value in node.inputs:
        if value is None or const_tensor(value) is not None:
            continue
        producer = value.producer()
        if producer is None:
            return False
        if _is_static_shape(producer):
            continue
        if not _computed_from_constants(producer, depth + 1):
            return False
    return True


def _must_be_constant(
    node: ir.Node, index: int, role: str, resolvable: bool = False, accepted_from=None
) -> Iterator[Rejection]:
    value = _input(node, index)
    if value is None:
        return
    problem = _weights_problem(value, resolvable)
    if problem:
        advice = _FOLD if computed_from_constants(value) else "make it a constant in the model code"
        yield Rejection(
            f"input {index} '{value.name}' ({role})",
            "the importer needs it as a build-time constant",
            advice,
            accepted_from=accepted_from,
            not_constant=problem,
            value=value,
        )


def _resize(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    mode = _attr(node, "mode", "nearest")
    if view.opset >= 11:
        transform = _attr(node, "coordinate_transformation_mode", "half_pixel")
        if transform not in _RESIZE_TRANSFORMS:
            yield Rejection(
                f"attribute coordinate_transformation_mode='{transform}'",
                f"the importer takes only {', '.join(_RESIZE_TRANSFORMS)}",
                "export with align_corners=False (half_pixel) or True (align_corners); crop boxes with"
                " RoiAlign instead of tf_crop_and_resize",
            )
        nearest = _attr(node, "nearest_mode", "round_prefer_floor")
        if transform == "tf_half_pixel_for_nn" and nearest != "round_prefer_floor":
            yield Rejection(
                f"attribute nearest_mode='{nearest}' with tf_half_pixel_for_nn",
                "tf_half_pixel_for_nn is imported only with round_prefer_floor",
                "use nearest_mode='round_prefer_floor' or another coordinate transformation",
            )
    ignores = view.target.version < (9, 0)  # 8.6's importer predates these opset-18 attributes
    if _attr(node, "antialias", 0):
        yield Rejection(
            "attribute antialias=1",
            "TensorRT has no antialiased resize",
            "export with antialias=False",
            ignored=ignores,
        )
    policy = _attr(node, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        yield Rejection(
            f"attribute keep_aspect_ratio_policy='{policy}'",
            "only 'stretch' is imported",
            "compute the output size in the model code and pass sizes",
            ignored=ignores,
        )
    yield from _resize_scales(node, view, mode)


def _resize_scales(node: ir.Node, view: NodeView, mode: str) -> Iterator[Rejection]:
    """Linear resizing of at most the 3 innermost dims, cubic of at most 2; a partial `axes` only with sizes."""
    scales_value = _input(node, 2) if view.opset >= 11 else _input(node, 1)
    axes = _attr(node, "axes")
    rank = view.rank(_input(node, 0))
    scales = const_array(scales_value) if scales_value is not None and scales_value.name else None
    if axes is not None and rank is not None and list(axes) != list(range(rank)):
        if scales_value is not None and scales_value.name and scales is None:
            yield Rejection(
                f"attribute axes={list(axes)} with run-time scales",
                "with scales as a tensor, axes must list every dim in order",
                "pass constant scales, or sizes",
            )
        return
    limit = {"linear": 3, "cubic": 2}.get(mode)
    if scales is None or limit is None or scales.ndim != 1:
        return
    resized = [i for i, scale in enumerate(scales.tolist()) if scale != 1]
    if resized and resized[0] < len(scales) - limit:
        yield Rejection(
            f"scales {scales.tolist()} ({mode})",
            f"{mode} resizing is imported on the {limit} innermost dims only",
            "resize the innermost dims only (move the axis with a Transpose)",
        )


def _pooling(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    kernel = _attr(node, "kernel_shape") or ()
    if len(kernel) > 3:
        yield Rejection(
            f"kernel_shape {list(kernel)} ({len(kernel)}-D)", "pooling is imported in 1, 2 or 3 dims", "pool in 3-D"
        )
    dilations = _attr(node, "dilations") or ()
    if any(d != 1 for d in dilations):
        yield Rejection(
            f"attribute dilations={list(dilations)}",
            "the importer takes only dilations of 1 for pooling",
            "pool without dilation (or emulate it with a strided Slice first)",
        )
    if node.op_type == "MaxPool" and len(node.outputs) > 1:
        yield Rejection(
            f"output 1 '{node.outputs[1].name}' (Indices)",
            "MaxPool's Indices output is not imported (even when unused, it may not be declared)",
            "export without return_indices; compute indices with ArgMax if they are needed",
        )
    if node.op_type == "LpPool" and _attr(node, "p", 2) not in (1, 2):
        yield Rejection(f"attribute p={_attr(node, 'p')}", "only p=1 and p=2 are imported", "use p=1 or p=2")


def _reduce(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    axes_as_input = view.opset >= 18 or (node.op_type == "ReduceSum" and view.opset >= 13)
    if axes_as_input:
        yield from _must_be_constant(node, 1, "axes")


def _cumsum(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    yield from _must_be_constant(node, 1, "axis")


def _onehot(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    yield from _must_be_constant(node, 1, "depth", resolvable=True)


def _topk(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    k = const_array(_input(node, 1)) if view.opset >= 10 else np.asarray(_attr(node, "k", 0))
    if k is not None and k.size == 1 and k.dtype.kind in "iu" and int(k.reshape(())) >= _TOPK_MAX_K:
        yield Rejection(
            f"K={int(k.reshape(()))}",
            f"TensorRT's TopK layer takes K below {_TOPK_MAX_K}",
            f"select fewer than {_TOPK_MAX_K} (a score threshold first), or sort outside the engine",
        )
    if _attr(node, "sorted", 1) == 0:
        yield Rejection(
            "attribute sorted=0",
            "TensorRT always returns the K values sorted, which sorted=0 permits",
            "nothing to do; the order is defined where ONNX leaves it open",
            info=True,
        )


def _scatter_nd(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    """8.6's importer never reads `reduction` (it overwrites); 10.0-10.14's refuses the attribute itself, even
    'none'; 10.15's table refuses only reductions other than none."""
    reduction = _attr(node, "reduction")
    if reduction is None or (reduction == "none" and not (9, 0) <= view.target.version < (10, 15)):
        return
    yield Rejection(
        f"attribute reduction='{reduction}'",
        "ScatterND is imported without reduction",
        "drop the attribute for plain writes; accumulate with ScatterElements (reduction from TensorRT 10.0)",
        accepted_from=(10, 15) if reduction == "none" else None,
        ignored=view.target.version < (9, 0),
    )


def _scatter_elements(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    """10.0 imports reductions (Changelog 10.0 EA: through the bundled ScatterElements plugin); 8.6's
    importer does not read the attribute."""
    reduction = _attr(node, "reduction", "none")
    if reduction != "none" and not view.target.accepts_from((10, 0)):
        yield Rejection(
            f"attribute reduction='{reduction}'",
            "ScatterElements' reduction is imported from TensorRT 10.0 on",
            "target TensorRT 10, or accumulate outside the engine",
            accepted_from=(10, 0),
            ignored=True,
        )


def _grid_sample(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    rank = view.rank(_input(node, 0))
    if rank is not None and rank != 4:
        yield Rejection(f"input 0 of rank {rank}", "GridSample is imported for 4-D inputs only", "sample in 2-D")


def _layer_norm(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    if len(node.outputs) > 1:
        names = ", ".join(f"'{value.name}'" for value in node.outputs[1:])
        yield Rejection(
            f"outputs {names} (Mean, InvStdDev)",
            "only Y is imported, and a node declaring more outputs than its importer makes is refused",
            "declare only Y (drop the unused outputs from the node)",
        )


def _loop(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    carried = max(len(node.inputs) - 2, 0)
    scan_outputs = len(node.outputs) - carried
    trip_count = _input(node, 0)
    if scan_outputs > 0 and (trip_count is None or not trip_count.name or _weights_problem(trip_count)):
        yield Rejection(
            f"{scan_outputs} scan output(s) with a trip count that is not a constant",
            "scan output lengths must be known when the engine is built",
            "give the loop a constant trip count, or carry the result as a loop variable",
        )


def _if(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    then_branch, else_branch = _attr(node, "then_branch"), _attr(node, "else_branch")
    if then_branch is None or else_branch is None or view.target.version < (9, 0):
        return  # 8.6 asks for broadcastable shapes, not equal ranks
    for index, (a, b) in enumerate(zip(then_branch.outputs, else_branch.outputs, strict=False)):
        rank_a, rank_b = view.rank(a), view.rank(b)
        if rank_a is not None and rank_b is not None and rank_a != rank_b:
            yield Rejection(
                f"output {index} of rank {rank_a} (then) and {rank_b} (else)",
                "both branches must give each output the same rank",
                "reshape one branch's output to the other's rank",
            )


def _squeeze(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    resolvable = view.target.version >= (10, 15)
    if view.opset >= 13 and _input(node, 1) is not None:
        yield from _must_be_constant(node, 1, "axes", resolvable=resolvable)
        return
    if view.opset < 13 and _attr(node, "axes") is not None:
        return
    data = _input(node, 0)
    if data is not None and data.shape is not None and view.static_dims(data) is None:
        yield Rejection(
            "no axes, on an input with dynamic dims",
            "without axes the importer squeezes the dims it knows to be 1, which needs static dims",
            "name the axes to squeeze (x.squeeze(1), not x.squeeze())",
        )


def _unsqueeze(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    if view.opset >= 13:
        yield from _must_be_constant(node, 1, "axes", resolvable=view.target.version >= (10, 15))


def _slice(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    if view.opset >= 10 and not view.target.accepts_from((10, 3)):  # dynamic axes from 10.3
        yield from _must_be_constant(node, 3, "axes", accepted_from=(10, 3))


def _pad(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    """8.6 refuses any `axes` input ("TensorRT does not support dynamic axes for pad!"); 10.0-10.3 refuse
    axes that are not constants; 10.4 takes them all."""
    axes = _input(node, 3)
    if view.opset < 18 or axes is None or not axes.name:
        return
    if view.target.version < (9, 0):
        yield Rejection(
            f"input 3 '{axes.name}' (axes)",
            "TensorRT 8.6 imports Pad without an axes input",
            "give pads for every dim and no axes",
            accepted_from=(10, 0),
        )
    elif not view.target.accepts_from((10, 4)):
        yield from _must_be_constant(node, 3, "axes", accepted_from=(10, 4))


def _hardmax(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    """The importer builds a OneHot as deep as the axis: its length must be static. Before opset 13 the
    default axis is 1 and the dims from it on are flattened into it."""
    data = _input(node, 0)
    axis = _attr(node, "axis", -1 if view.opset >= 13 else 1)
    if data is None or data.shape is None or not -len(data.shape) <= axis < len(data.shape):
        return
    dims = list(data.shape)
    depth = dims[axis:] if view.opset < 13 else [dims[axis]]
    dynamic = [d for d in depth if not isinstance(d, int)]
    if dynamic:
        yield Rejection(
            f"axis {axis} of dynamic size ({', '.join(str(d) for d in dynamic)})",
            "Hardmax's axis length must be known when the engine is built",
            "export with a static size on that axis",
        )


def _eye_like(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    data = _input(node, 0)
    if data is not None and data.shape is not None and (len(data.shape) != 2 or view.static_dims(data) is None):
        yield Rejection(
            f"input of shape {format_shape(data.shape)}",
            "EyeLike is imported for 2-D inputs with static dims only",
            "store the identity matrix as an initializer",
        )


def _depth_space(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    rank = view.rank(_input(node, 0))
    if rank is not None and rank != 4:
        yield Rejection(
            f"input 0 of rank {rank}",
            f"{node.op_type} is imported for NCHW (4-D) inputs only",
            "reshape to 4-D around it",
        )


def _einsum(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    equation = str(_attr(node, "equation", ""))
    bad = sorted({c for c in equation if not ("a" <= c <= "z" or c in "->., ")})
    if bad:
        yield Rejection(
            f"equation '{equation}'",
            f"the importer takes lower-case subscripts only, not {''.join(bad)}",
            "rename the subscripts to lower case",
        )
    if view.target.version < (9, 0):
        operands = equation.split("->")[0].split(",")
        if "..." in equation or any(len(set(op.strip())) != len(op.strip()) for op in operands):
            yield Rejection(
                f"equation '{equation}'",
                "TensorRT 8.6 imports Einsum without ellipsis or diagonals (a subscript repeated in one operand)",
                "write it with MatMul, Transpose and Reshape",
                accepted_from=(10, 0),
            )


def _recurrent(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    if node.op_type == "LSTM" and _attr(node, "input_forget", 0):
        yield Rejection(
            "attribute input_forget=1", "coupled input and forget gates are not imported", "export with input_forget=0"
        )
    if node.op_type in ("LSTM", "GRU", "RNN") and _attr(node, "layout", 0):
        yield Rejection(  # no importer reads `layout`: batch-first inputs are read as sequence-first
            f"attribute layout={_attr(node, 'layout')}",
            "the importer does not read layout and takes inputs as [seq, batch, ...]",
            "export with batch_first=False (layout=0), transposing around the layer",
            ignored=True,
        )
    activations = _attr(node, "activations")
    if _attr(node, "direction", "forward") == "bidirectional" and activations:
        half = len(activations) // 2
        if list(activations[:half]) != list(activations[half:]):
            yield Rejection(
                f"activations {list(activations)}",
                "a bidirectional layer is imported with the same activations in both directions",
                "use the same activations forward and backward",
            )


def _mod(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    data = _input(node, 0)
    if _attr(node, "fmod", 0) == 0 and data is not None and data.dtype is not None and data.dtype.is_floating_point():
        yield Rejection(
            "attribute fmod=0 on floating-point inputs",
            "integer modulo is imported for INT32 and INT64 only",
            "use fmod=1 (torch.fmod), or compute x - floor(x / y) * y",
        )


def _integer_math(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    for index, value in enumerate(node.inputs[:2]):
        if value is not None and value.dtype in _INTEGERS:
            yield Rejection(
                f"input {index} '{value.name}' ({value.dtype.name})",
                f"{node.op_type} is imported for floating-point inputs only",
                "cast to float first, or quantize with QuantizeLinear/DequantizeLinear",
            )
            return


def _quantize(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    zero_point = _input(node, 2)
    if zero_point is None or not zero_point.name:
        return
    values = const_array(zero_point)
    if values is None:
        yield from _must_be_constant(node, 2, "zero point")
    elif zero_point.dtype == ir.DataType.UINT8:
        yield Rejection(
            f"input 2 '{zero_point.name}' (UINT8 zero point)",
            "TensorRT quantizes to INT8 (symmetric), not UINT8",
            "quantize symmetrically to INT8 (onnxruntime.quantization: activation_type=QuantType.QInt8,"
            " extra_options={'ActivationSymmetric': True})",
        )
    elif np.any(values.astype(np.float64) != 0):
        nonzero = int(np.count_nonzero(values.astype(np.float64)))
        yield Rejection(
            f"input 2 '{zero_point.name}' ({nonzero} of {values.size} zero points non-zero)",
            "TensorRT supports symmetric quantization only: zero points must be 0",
            "quantize symmetrically (ActivationSymmetric/WeightSymmetric), or with NVIDIA ModelOpt",
        )


def _stft(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    yield from _must_be_constant(node, 1, "frame_step")
    window = _input(node, 2)
    if window is not None and window.name:
        yield from _must_be_constant(node, 2, "window")
    signal = _input(node, 0)
    if signal is not None and signal.shape is not None and signal.shape[-1] == 2:
        yield Rejection("a complex input signal (last dim 2)", "STFT is imported for real signals only", "")


def _attention(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    for index, role in ((4, "past_key"), (5, "past_value"), (6, "nonpad_kv_seqlen")):
        value = _input(node, index)
        if value is not None and value.name:
            yield Rejection(
                f"input {index} '{value.name}' ({role})", f"Attention is imported without {role}", _NO_CACHE
            )
    for index, role in ((1, "present_key"), (2, "present_value"), (3, "qk_matmul_output")):
        if index < len(node.outputs) and node.outputs[index].name:
            yield Rejection(f"output {index} ({role})", f"Attention is imported without {role}", _NO_CACHE)
    for name in ("qk_matmul_output_mode", "softcap"):
        if _attr(node, name, 0):
            yield Rejection(f"attribute {name}={_attr(node, name)}", f"Attention is imported without {name}", "")
    for index in range(3):
        rank = view.rank(_input(node, index))
        if rank is not None and rank != 4:
            yield Rejection(f"input {index} of rank {rank}", "Q, K and V are imported as 4-D tensors only", "")


def _deform_conv(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    rank = view.rank(_input(node, 0))
    if rank is not None and rank not in (3, 4):
        yield Rejection(f"input 0 of rank {rank}", "DeformConv is imported with 1 or 2 spatial dims only", "")
    pads = list(_attr(node, "pads") or ())
    half = len(pads) // 2
    if pads and pads[:half] != pads[half:]:
        yield Rejection(f"attribute pads={pads}", "the pads at the start and end of each axis must be equal", "")


def _constant(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    for name in ("sparse_value", "value_string", "value_strings"):
        if node.attributes.get(name) is not None:
            yield Rejection(f"attribute {name}", f"Constant's {name} is not imported", "store a dense tensor")


def _random(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    dtype = _attr(node, "dtype")
    if dtype is not None and dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        name = ir.DataType(dtype).name if dtype in set(ir.DataType) else str(dtype)
        yield Rejection(f"attribute dtype={name}", f"{node.op_type} is imported for FLOAT and FLOAT16", "")


def _lp_normalization(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    if _attr(node, "p", 2) not in (1, 2):
        yield Rejection(f"attribute p={_attr(node, 'p')}", "only L1 and L2 normalization are imported", "")


def _scan(node: ir.Node, view: NodeView) -> Iterator[Rejection]:
    lengths = _input(node, 0) if view.opset < 9 else None
    if lengths is not None and lengths.name:
        yield Rejection(f"input 0 '{lengths.name}' (sequence_lens)", "Scan is imported without sequence_lens", "")


_Check = Callable[[ir.Node, NodeView], Iterator[Rejection]]
_REDUCE_OPS = [
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
]
_CHECKS: dict[str, _Check] = {
    "Resize": _resize,
    **dict.fromkeys(("AveragePool", "MaxPool", "LpPool"), _pooling),
    **dict.fromkeys(_REDUCE_OPS, _reduce),
    "CumSum": _cumsum,
    "OneHot": _onehot,
    "TopK": _topk,
    "ScatterND": _scatter_nd,
    "ScatterElements": _scatter_elements,
    "GridSample": _grid_sample,
    "LayerNormalization": _layer_norm,
    "Loop": _loop,
    "If": _if,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Pad": _pad,
    "Hardmax": _hardmax,
    "EyeLike": _eye_like,
    **dict.fromkeys(("DepthToSpace", "SpaceToDepth"), _depth_space),
    "Einsum": _einsum,
    **dict.fromkeys(("LSTM", "GRU", "RNN"), _recurrent),
    "Mod": _mod,
    **dict.fromkeys(("MatMul", "Gemm", "Conv", "ConvTranspose", "PRelu"), _integer_math),
    **dict.fromkeys(("QuantizeLinear", "DequantizeLinear"), _quantize),
    "STFT": _stft,
    "Attention": _attention,
    "DeformConv": _deform_conv,
    "Constant": _constant,
    **dict.fromkeys(("RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike"), _random),
    "LpNormalization": _lp_normalization,
    "Scan": _scan,
}

# What the checks refuse, per op, for `graphdoctor rules --target` and `explain GD013`.
CHECKED = {
    "Resize": "coordinate transformations other than half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn,"
    " asymmetric, align_corners; antialias=1; keep_aspect_ratio_policy other than stretch; partial axes with"
    " run-time scales; linear resizing beyond the 3 innermost dims, cubic beyond 2",
    "AveragePool, MaxPool, LpPool": "more than 3 spatial dims; dilations other than 1; MaxPool's Indices output;"
    " LpPool p other than 1 or 2",
    "Reduce* (axes as input), CumSum": "axes / axis that are not constants",
    "OneHot": "depth that is not a build-time constant",
    "Squeeze, Unsqueeze": "axes that are not constants (10.15: resolvable, Shape of static dims too); Squeeze"
    " without axes on dynamic dims",
    "Slice": "axes that are not constants (before 10.3)",
    "Pad": "an axes input (8.6), axes that are not constants (before 10.4)",
    "TopK": "K of 3840 or more (sorted=0: info)",
    "ScatterND": "a reduction attribute (8.6 ignores it; 10.15: only one other than none)",
    "ScatterElements": "reduction other than none (8.6 ignores it)",
    "GridSample": "inputs other than 4-D",
    "LayerNormalization": "declared Mean or InvStdDev outputs",
    "Loop": "scan outputs with a trip count that is not constant",
    "If": "branch outputs of different ranks (9.0 and later)",
    "Hardmax": "a dynamic axis dim",
    "EyeLike": "inputs other than 2-D with static dims",
    "DepthToSpace, SpaceToDepth": "inputs other than 4-D",
    "Einsum": "upper-case subscripts; on 8.6 ellipsis and diagonals",
    "LSTM, GRU, RNN": "LSTM input_forget; layout=1 (never read); bidirectional with different activations per"
    " direction",
    "Mod": "fmod=0 on floating-point inputs",
    "MatMul, Gemm, Conv, ConvTranspose, PRelu": "INT32 or INT64 inputs",
    "QuantizeLinear, DequantizeLinear": "non-zero, UINT8 or non-constant zero points",
    "STFT": "frame_step or window that are not constants; complex signals",
    "Attention": "past_key/past_value/nonpad_kv_seqlen inputs, present/qk outputs, qk_matmul_output_mode,"
    " softcap; Q, K, V other than 4-D",
    "DeformConv": "more than 2 spatial dims; asymmetric pads",
    "Constant": "sparse_value, value_string, value_strings",
    "Random*": "dtype other than FLOAT or FLOAT16",
    "LpNormalization": "p other than 1 or 2",
    "Scan": "sequence_lens (opset 8)",
}
