"""opset_upgrade.raise_opset: every rewrite on a hand-made graph and every refusal, the schema table against the
schemas themselves, and the real exports raised to 22, all run on ONNX Runtime CPU against the original.

Outputs are compared bit for bit (np.array_equal): each rewrite keeps the arithmetic of the old node (the
same kernel on the same elements), so nothing may move, not even by one ulp."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx.shape_inference
import onnx_ir as ir
import onnxruntime as ort
import pytest

from fixtures import torch_exports
from graphdoctor.errors import GraphDoctorError
from graphdoctor.model import load_model, serialize
from graphdoctor.opset_upgrade import (
    MAX_TARGET,
    SCHEMA_CHANGES,
    OpsetUpgradeRefused,
    _schemas,
    is_type_only,
    raise_opset,
)

FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
RNG = np.random.default_rng(0)


# -- helpers --


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, tuple[int, list[int]]],
    outputs: list[str],
    opset: int,
    functions: list[onnx.FunctionProto] = (),
    initializers: list[onnx.TensorProto] = (),
) -> onnx.ModelProto:
    """A model of `nodes`, its outputs typed by ONNX shape inference."""
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(name, dtype, shape) for name, (dtype, shape) in inputs.items()],
        [oh.make_value_info(name, onnx.TypeProto()) for name in outputs],
        initializer=list(initializers),
    )
    imports = [oh.make_opsetid("", opset)] + [oh.make_opsetid("local", 1)] * bool(functions)
    model = oh.make_model(graph, opset_imports=imports, functions=list(functions), ir_version=7)
    typed = onnx.shape_inference.infer_shapes(model).graph.output  # the checker wants typed outputs
    model.graph.ClearField("output")
    model.graph.output.extend(typed)
    return model


def upgraded(proto: onnx.ModelProto, target: int = 22) -> tuple[list[str], onnx.ModelProto]:
    """Raise on the IR; the result must pass the full ONNX check."""
    model = ir.serde.deserialize_model(proto)
    notes = raise_opset(model, target)
    result = serialize(model)
    onnx.checker.check_model(result, full_check=True)
    return notes, result


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # each node as written
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_outputs(
    before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = 0.0
) -> None:
    """Bit-identical outputs, or within `rtol` where a new version runs another ONNX Runtime kernel."""
    expected, actual = run(before, feeds), run(after, feeds)
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual, strict=True):
        assert want.dtype == got.dtype and want.shape == got.shape
        if rtol:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
        else:
            assert np.array_equal(want, got)


def ops(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def floats(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def default_opset(proto: onnx.ModelProto) -> int:
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


# -- the table --


def reviewed_versions() -> list[tuple[str, int, int]]:
    """Every (op, previous, new) of the ai.onnx schemas with 12 <= new <= MAX_TARGET."""
    pairs = []
    for op in sorted({schema.name for schema in onnx.defs.get_all_schemas_with_history() if schema.domain == ""}):
        versions = sorted(_schemas(op))
        pairs += [(op, a, b) for a, b in itertools.pairwise(versions) if 12 <= b <= MAX_TARGET]
    return pairs


def test_every_schema_change_up_to_22_is_type_only_or_classified():
    unclassified = [
        (op, new)
        for op, previous, new in reviewed_versions()
        if (op, new) not in SCHEMA_CHANGES and not is_type_only(op, previous, new)
    ]
    assert unclassified == []


def test_classified_changes_are_not_type_only():
    """The table holds only what the schemas alone cannot clear (a stale entry would hide a real rule)."""
    previous = {(op, new): old for op, old, new in reviewed_versions()}
    assert all(not is_type_only(op, previous[op, new], new) for op, new in SCHEMA_CHANGES)


def test_type_only_sees_new_attributes_and_tied_types():
    assert is_type_only("Conv", 11, 22)  # bfloat16 and more float types
    assert not is_type_only("ReduceMean", 13, 18)  # axes: attribute -> input
    assert not is_type_only("Softmax", 11, 13)  # axis default 1 -> -1
    assert not is_type_only("QuantizeLinear", 13, 19)  # y_scale tied to x's type


# -- rewrites --

REDUCTIONS = sorted(op for op, version in SCHEMA_CHANGES if version == 18 and op.startswith("Reduce"))


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("axes", [[1], [0, -1], None], ids=["axis1", "two-axes", "all"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_axes_move_to_an_input(op: str, axes: list[int] | None, keepdims: int):
    attrs = {"keepdims": keepdims} | ({"axes": axes} if axes is not None else {})
    proto = make_model([oh.make_node(op, ["x"], ["y"], name="r", **attrs)], {"x": (FLOAT, [2, 3, 4])}, ["y"], 17)
    notes, result = upgraded(proto)
    reduce = next(node for node in result.graph.node if node.op_type == op)
    assert [a.name for a in reduce.attribute] == ["keepdims"]
    assert len(reduce.input) == (1 if axes is None else 2)  # absent axes: reduce all, as before
    moved = [f"{op}: axes moved from attribute to input (opset 18), 1 node"] if axes is not None else []
    assert notes == [*moved, "IR version 7 -> 10 (opset 22 needs it)"]
    assert_same_outputs(proto, result, {"x": np.abs(floats(2, 3, 4)) + 0.5})


@pytest.mark.parametrize(
    ("node", "shape"),
    [
        (oh.make_node("ReduceSum", ["x"], ["y"], axes=[2], keepdims=0), [2, 3, 4]),
        (oh.make_node("ReduceSum", ["x"], ["y"]), [2, 3, 4]),
        (oh.make_node("Squeeze", ["x"], ["y"], axes=[1]), [2, 1, 4]),
        (oh.make_node("Squeeze", ["x"], ["y"]), [2, 1, 1]),
        (oh.make_node("Unsqueeze", ["x"], ["y"], axes=[0, 3]), [2, 3]),
    ],
    ids=["reducesum", "reducesum-all", "squeeze", "squeeze-all", "unsqueeze"],
)
def test_axes_inputs_of_opset_13(node: onnx.NodeProto, shape: list[int]):
    proto = make_model([node], {"x": (FLOAT, shape)}, ["y"], 12)
    notes, result = upgraded(proto)
    assert not any(a.name == "axes" for n in result.graph.node for a in n.attribute)
    moved = any(a.name == "axes" for a in node.attribute)  # no axes: all of them, before and after
    assert notes[0].startswith(f"{node.op_type}: axes moved from attribute to input (opset 13)") is moved
    assert_same_outputs(proto, result, {"x": floats(*shape)})


def test_split_sizes_move_to_an_input_and_equal_splits_get_num_outputs():
    nodes = [
        oh.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 3]),
        oh.make_node("Split", ["x"], ["c", "d"], axis=2),
    ]
    proto = make_model(nodes, {"x": (FLOAT, [2, 4, 6])}, ["a", "b", "c", "d"], 12)
    notes, result = upgraded(proto)
    sized, equal = (node for node in result.graph.node if node.op_type == "Split")
    assert len(sized.input) == 2 and not any(a.name == "split" for a in sized.attribute)
    assert oh.get_node_attr_value(equal, "num_outputs") == 2
    assert notes[:2] == [
        "Split: split moved from attribute to input (opset 13), 1 node",
        "Split: an equal split needs num_outputs (opset 18), 1 node",
    ]
    assert_same_outputs(proto, result, {"x": floats(2, 4, 6)})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [None, 1, -1, 2, -2], ids=["default", "1", "-1", "last", "-2"])
def test_softmax_family_keeps_its_old_flattening(op: str, axis: int | None):
    attrs = {} if axis is None else {"axis": axis}
    proto = make_model([oh.make_node(op, ["x"], ["y"], name="s", **attrs)], {"x": (FLOAT, [2, 3, 4])}, ["y"], 12)
    notes, result = upgraded(proto)
    flattened = axis in (None, 1, -2)  # not the last axis: normalized over the trailing dims together
    assert ("Flatten" in ops(result)) is flattened
    assert result.graph.output[0].name == "y"
    rewritten = [f"{op}: normalizes along one axis (was: flattened at axis) (opset 13), 1 node"] * (axis != -1)
    assert notes == [*rewritten, "IR version 7 -> 10 (opset 22 needs it)"]
    assert_same_outputs(proto, result, {"x": floats(2, 3, 4)})


def test_softmax_inside_a_graph_keeps_its_readers():
    nodes = [oh.make_node("Softmax", ["x"], ["s"], axis=1), oh.make_node("Relu", ["s"], ["y"])]
    proto = make_model(nodes, {"x": (FLOAT, [2, 3, 4])}, ["y"], 11)
    _, result = upgraded(proto)
    assert ops(result)[-1] == "Relu"
    assert_same_outputs(proto, result, {"x": floats(2, 3, 4)})


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest", None])
def test_grid_sample_modes_are_renamed(mode: str | None):
    attrs = {} if mode is None else {"mode": mode}
    node = oh.make_node("GridSample", ["x", "grid"], ["y"], align_corners=0, **attrs)
    proto = make_model([node], {"x": (FLOAT, [1, 2, 5, 5]), "grid": (FLOAT, [1, 3, 3, 2])}, ["y"], 16)
    _, result = upgraded(proto)
    renamed = {"bilinear": b"linear", "bicubic": b"cubic", "nearest": b"nearest"}
    modes = [a.s for a in result.graph.node[0].attribute if a.name == "mode"]
    assert modes == ([renamed[mode]] if mode else [])  # absent: 'bilinear' before, 'linear' after
    feeds = {"x": floats(1, 2, 5, 5), "grid": np.clip(floats(1, 3, 3, 2), -1, 1)}
    assert_same_outputs(proto, result, feeds)


@pytest.mark.parametrize("axis", [None, 1, 2])
def test_dft_axis_becomes_an_input_written_explicitly(axis: int | None):
    attrs = {} if axis is None else {"axis": axis}
    proto = make_model([oh.make_node("DFT", ["x"], ["y"], **attrs)], {"x": (FLOAT, [2, 8, 6, 1])}, ["y"], 17)
    _, result = upgraded(proto)
    dft = next(node for node in result.graph.node if node.op_type == "DFT")
    assert len(dft.input) == 3 and dft.input[1] == "" and not dft.attribute  # the default moved from 1 to -2
    assert_same_outputs(proto, result, {"x": floats(2, 8, 6, 1)})


def test_dropout_ratio_becomes_an_input():
    nodes = [oh.make_node("Dropout", ["x"], ["d"], ratio=0.3), oh.make_node("Relu", ["d"], ["y"])]
    proto = make_model(nodes, {"x": (FLOAT, [4, 5])}, ["y"], 11)
    notes, result = upgraded(proto)
    assert notes[0] == "Dropout: ratio moved from attribute to input (opset 12), 1 node"
    assert_same_outputs(proto, result, {"x": floats(4, 5)})


def test_refuses_dropout_masks_of_opset_10():
    node = oh.make_node("Dropout", ["x"], ["y", "mask"], name="drop", ratio=0.3)
    message = refusal(make_model([node], {"x": (FLOAT, [4, 5])}, ["y", "mask"], 11))
    assert "Dropout 'drop' (opset 12): its mask output is all False in inference before opset 12" in message


def test_roi_align_keeps_the_old_pixel_offset():
    node = oh.make_node("RoiAlign", ["x", "rois", "index"], ["y"], output_height=2, output_width=2, sampling_ratio=2)
    inputs = {"x": (FLOAT, [1, 2, 8, 8]), "rois": (FLOAT, [2, 4]), "index": (INT64, [2])}
    proto = make_model([node], inputs, ["y"], 11)
    _, result = upgraded(proto, target=21)  # ONNX Runtime has no RoiAlign-22 kernel: refused at 22
    roi_align = next(node for node in result.graph.node if node.op_type == "RoiAlign")
    assert oh.get_node_attr_value(roi_align, "coordinate_transformation_mode") == b"output_half_pixel"
    rois = np.array([[0.5, 1.0, 5.5, 6.0], [2.0, 0.0, 7.0, 4.5]], np.float32)
    assert_same_outputs(proto, result, {"x": floats(1, 2, 8, 8), "rois": rois, "index": np.zeros(2, np.int64)})


def test_refuses_ops_onnx_runtime_cannot_run_at_the_target():
    node = oh.make_node("RoiAlign", ["x", "rois", "index"], ["y"], name="roi")
    inputs = {"x": (FLOAT, [1, 2, 8, 8]), "rois": (FLOAT, [2, 4]), "index": (INT64, [2])}
    assert "RoiAlign 'roi' (opset 22): ONNX Runtime has no RoiAlign-22 kernel" in refusal(
        make_model([node], inputs, ["y"], 16)
    )


def test_subgraphs_are_rewritten_under_the_models_opset():
    branch = oh.make_graph(
        [oh.make_node("ReduceMean", ["x"], ["m"], axes=[1], name="inner")],
        "then",
        [],
        [oh.make_tensor_value_info("m", FLOAT, None)],
    )
    other = oh.make_graph(
        [oh.make_node("Identity", ["x"], ["n"])], "else", [], [oh.make_value_info("n", onnx.TypeProto())]
    )
    nodes = [
        oh.make_node("ReduceMax", ["x"], ["total"], axes=[0, 1], keepdims=0),
        oh.make_node("Greater", ["total", "zero"], ["cond"]),
        oh.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other),
    ]
    zero = onnx.numpy_helper.from_array(np.array(0, np.float32), "zero")
    proto = make_model(nodes, {"x": (FLOAT, [2, 3])}, ["y"], 17, initializers=[zero])
    notes, result = upgraded(proto)
    branch = next(a.g for a in result.graph.node[-1].attribute if a.name == "then_branch")
    assert "ReduceMean: axes moved from attribute to input (opset 18), 1 node" in notes
    assert [node.op_type for node in branch.node] == ["Constant", "ReduceMean"]
    x = np.abs(floats(2, 3))
    assert_same_outputs(proto, result, {"x": x})
    assert_same_outputs(proto, result, {"x": -x})


def local_mean(version: int) -> onnx.FunctionProto:
    body = [oh.make_node("ReduceMean", ["x"], ["y"], axes=[-1], keepdims=1)]
    return oh.make_function("local", "Mean", ["x"], ["y"], body, [oh.make_opsetid("", version)])


def test_function_bodies_are_raised_with_the_model():
    nodes = [oh.make_node("Mean", ["x"], ["m"], domain="local"), oh.make_node("Sub", ["x", "m"], ["y"])]
    proto = make_model(nodes, {"x": (FLOAT, [2, 5])}, ["y"], 17, functions=[local_mean(17)])
    notes, result = upgraded(proto)
    function = result.functions[0]
    assert [entry.version for entry in function.opset_import if entry.domain == ""] == [22]
    assert [node.op_type for node in function.node] == ["Constant", "ReduceMean"]
    assert notes[0] == "ReduceMean: axes moved from attribute to input (opset 18), 1 node"
    assert_same_outputs(proto, result, {"x": floats(2, 5)})


def test_names_stay_unique():
    """The Constant of `r`'s axes is named like `r_axes`: a value of that name already exists."""
    nodes = [oh.make_node("Relu", ["x"], ["r_axes"]), oh.make_node("ReduceMax", ["r_axes"], ["y"], name="r", axes=[0])]
    proto = make_model(nodes, {"x": (FLOAT, [3, 2])}, ["y"], 17)
    _, result = upgraded(proto)
    outputs = [name for node in result.graph.node for name in node.output]
    assert len(outputs) == len(set(outputs))
    assert_same_outputs(proto, result, {"x": floats(3, 2)})


def test_compatible_versions_change_only_the_import():
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"]), oh.make_node("AveragePool", ["c"], ["y"], kernel_shape=[2, 2])]
    w = onnx.numpy_helper.from_array(floats(3, 2, 3, 3), "w")
    proto = make_model(nodes, {"x": (FLOAT, [1, 2, 6, 6])}, ["y"], 11, initializers=[w])
    notes, result = upgraded(proto)
    assert notes == ["IR version 7 -> 10 (opset 22 needs it)"]
    assert [n.SerializeToString() for n in result.graph.node] == [n.SerializeToString() for n in proto.graph.node]
    assert default_opset(result) == 22 and result.ir_version == 10
    # ONNX Runtime runs AveragePool-19+ with another kernel (dilations): measured 1 ulp (1.2e-7) off opset 18
    assert_same_outputs(proto, result, {"x": floats(1, 2, 6, 6)}, rtol=1e-6)


def test_same_opset_is_a_no_op():
    proto = make_model([oh.make_node("Relu", ["x"], ["y"])], {"x": (FLOAT, [2])}, ["y"], 22)
    proto.ir_version = 10
    notes, result = upgraded(proto)
    assert notes == [] and result.graph.SerializeToString() == proto.graph.SerializeToString()


def test_weights_are_never_read(tmp_path: Path):
    """External weights whose file is gone after loading: any read would fail."""
    w = onnx.numpy_helper.from_array(floats(64, 64), "w")
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("ReduceMean", ["h"], ["y"], axes=[1])]
    proto = make_model(nodes, {"x": (FLOAT, [2, 64])}, ["y"], 17, initializers=[w])
    path = tmp_path / "model.onnx"
    onnx.save_model(proto, path, save_as_external_data=True, location="model.data", size_threshold=0)
    model = load_model(path).model
    (tmp_path / "model.data").unlink()
    notes = raise_opset(model)
    assert notes[0] == "ReduceMean: axes moved from attribute to input (opset 18), 1 node"
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)


# -- refusals: each names the op and why, and leaves the model untouched --


def refusal(proto: onnx.ModelProto, target: int = 22) -> str:
    model = ir.serde.deserialize_model(proto)
    before = ir.serde.serialize_model(model).SerializeToString()
    with pytest.raises(GraphDoctorError) as error:
        raise_opset(model, target)
    assert ir.serde.serialize_model(model).SerializeToString() == before
    return str(error.value)


def test_refuses_group_normalization_18():
    node = oh.make_node("GroupNormalization", ["x", "s", "b"], ["y"], name="gn", num_groups=2)
    inputs = {"x": (FLOAT, [1, 4, 3]), "s": (FLOAT, [2]), "b": (FLOAT, [2])}
    message = refusal(make_model([node, oh.make_node("ReduceMax", ["y"], ["z"], axes=[1])], inputs, ["z"], 18))
    assert "GroupNormalization 'gn' (opset 21): scale and bias hold one value per group" in message


def test_refuses_batch_normalization_training_outputs():
    node = oh.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "mean", "var"], name="bn")
    inputs = {name: (FLOAT, [3]) for name in "sbmv"} | {"x": (FLOAT, [1, 3, 2])}
    message = refusal(make_model([node], inputs, ["y", "mean", "var"], 11))
    assert "BatchNormalization 'bn' (opset 14): its training outputs" in message


def test_inference_batch_normalization_is_carried():
    node = oh.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    inputs = {name: (FLOAT, [3]) for name in "sbmv"} | {"x": (FLOAT, [1, 3, 2])}
    proto = make_model([node], inputs, ["y"], 11)
    _, result = upgraded(proto)
    feeds = {name: np.abs(floats(3)) + 0.1 for name in "sbmv"} | {"x": floats(1, 3, 2)}
    assert_same_outputs(proto, result, feeds)


def test_refuses_resize_tf_half_pixel_for_nn():
    node = oh.make_node(
        "Resize", ["x", "roi", "scales"], ["y"], name="up", coordinate_transformation_mode="tf_half_pixel_for_nn"
    )
    inputs = {"x": (FLOAT, [1, 1, 2, 2]), "roi": (FLOAT, [0]), "scales": (FLOAT, [4])}
    message = refusal(make_model([node], inputs, ["y"], 11))
    assert "Resize 'up' (opset 13): coordinate_transformation_mode 'tf_half_pixel_for_nn' was removed" in message


def test_refuses_integer_erf_of_opset_9():
    proto = make_model([oh.make_node("Erf", ["x"], ["y"], name="e")], {"x": (INT64, [4])}, ["y"], 12)
    assert "Erf 'e' (opset 13): Erf-13 has no INT64 form" in refusal(proto)


def test_refuses_int32_quantize_linear():
    node = oh.make_node("QuantizeLinear", ["x", "scale"], ["y"], name="q")
    inputs = {"x": (onnx.TensorProto.INT32, [4]), "scale": (FLOAT, [])}
    assert "QuantizeLinear 'q' (opset 19): from opset 19 y_scale must have x's type" in refusal(
        make_model([node], inputs, ["y"], 13)
    )


def test_refuses_attributes_referring_to_function_attributes():
    axes = onnx.AttributeProto(name="axes", ref_attr_name="dims", type=onnx.AttributeProto.INTS)
    reduce = oh.make_node("ReduceMean", ["x"], ["y"], name="mean")
    reduce.attribute.append(axes)
    function = oh.make_function("local", "Mean", ["x"], ["y"], [reduce], [oh.make_opsetid("", 17)], ["dims"])
    call = oh.make_node("Mean", ["x"], ["y"], domain="local", dims=[1])
    message = refusal(make_model([call], {"x": (FLOAT, [2, 3])}, ["y"], 17, functions=[function]))
    assert "ReduceMean 'mean' (opset 18): attribute 'axes' refers to the function attribute 'dims'" in message


def test_refuses_functions_at_another_opset_than_the_model():
    """ONNX Runtime reads a function body under the model's opset, ONNX under the function's: ambiguous."""
    call = oh.make_node("Mean", ["x"], ["y"], domain="local")
    message = refusal(make_model([call], {"x": (FLOAT, [2, 3])}, ["y"], 18, functions=[local_mean(17)]))
    assert "function local::Mean imports ai.onnx 17 but the model imports 18" in message


def test_refuses_unknown_default_domain_ops():
    proto = make_model([oh.make_node("FancyOp", ["x"], ["y"], name="f")], {"x": (FLOAT, [2])}, ["y"], 17)
    assert "FancyOp 'f': not an ai.onnx operator" in refusal(proto)


def test_refusal_lists_every_node():
    nodes = [
        oh.make_node("GroupNormalization", ["x", "s", "b"], [f"y{i}"], name=f"gn{i}", num_groups=2) for i in range(5)
    ]
    inputs = {"x": (FLOAT, [1, 4, 3]), "s": (FLOAT, [2]), "b": (FLOAT, [2])}
    model = ir.serde.deserialize_model(make_model(nodes, inputs, [f"y{i}" for i in range(5)], 18))
    with pytest.raises(OpsetUpgradeRefused) as error:
        raise_opset(model)
    assert len(error.value.reasons) == 5 and "and 2 more" in str(error.value)


@pytest.mark.parametrize(("opset", "target", "words"), [(17, 23, "up to 22"), (18, 17, "not lowered")])
def test_refuses_targets_outside_the_reviewed_range(opset: int, target: int, words: str):
    assert words in refusal(make_model([oh.make_node("Relu", ["x"], ["y"])], {"x": (FLOAT, [2])}, ["y"], opset), target)


# -- real exports --

TORCHSCRIPT = ("resnet50", "bert_opset14", "bert_opset17", "yolo", "mobilenet_v3_large", "efficientnet_b0")
DYNAMO = tuple(name for name in torch_exports.NAMES if name.startswith("dynamo_") or name.endswith("_dynamo"))
FIXTURES = [name for name in (*TORCHSCRIPT, *DYNAMO) if name in torch_exports.NAMES]


@pytest.mark.parametrize("name", FIXTURES)
def test_real_exports_raised_to_22_compute_the_same(name: str):
    path = torch_exports.path(name)
    model = load_model(path).model
    notes = raise_opset(model)
    result = serialize(model)
    onnx.checker.check_model(result, full_check=True)
    assert default_opset(result) == 22
    original = onnx.load(path)
    assert_same_outputs(original, result, torch_exports.sample_inputs(path))
    if default_opset(original) >= 18:  # dynamo exports: axes already inputs, nothing to rewrite
        assert not [note for note in notes if not note.startswith("IR version")]


def test_resnet50_is_raised_in_milliseconds():
    path = torch_exports.path("resnet50")
    raise_opset(load_model(path).model)  # warm: the schema index is built once per process
    model = load_model(path).model
    start = time.perf_counter()
    raise_opset(model)
    assert time.perf_counter() - start < 0.25  # measured ~10 ms on 2 shared cores
