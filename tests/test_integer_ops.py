"""Shape arithmetic folded in numpy (graphdoctor.integer_ops) computes what ONNX's reference runtime computes,
dtype included, and declines what it does not handle (the reference runtime then decides, as before)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from graphdoctor import integer_ops

I64, I32, U8 = np.int64, np.int32, np.uint8
SHAPE = np.array([1, 80, 3000], dtype=I64)

# (op, operands, attributes, opset)
CASES = [
    ("Identity", [SHAPE], {}, 17),
    ("Concat", [np.array([True]), np.array([False, True])], {"axis": -1}, 17),
    ("Gather", [SHAPE, np.array(1, dtype=I64)], {"axis": 0}, 17),
    ("Gather", [SHAPE, np.array([-1, 0], dtype=I64)], {}, 17),
    ("Gather", [np.arange(12, dtype=I32).reshape(3, 4), np.array([[2], [-4]], dtype=I32)], {"axis": -1}, 13),
    ("Concat", [SHAPE, np.array([-1], dtype=I64), SHAPE[:1]], {"axis": 0}, 17),
    ("Unsqueeze", [np.array(7, dtype=I64), np.array([0], dtype=I64)], {}, 17),
    ("Unsqueeze", [SHAPE, np.array([-1, 0], dtype=I64)], {}, 13),
    ("Unsqueeze", [SHAPE], {"axes": [1]}, 11),
    ("Squeeze", [SHAPE[:1]], {}, 17),
    ("Squeeze", [SHAPE.reshape(1, 3, 1), np.array([-1], dtype=I64)], {}, 17),
    ("Squeeze", [SHAPE.reshape(1, 3, 1)], {"axes": [0]}, 11),
    ("Slice", [SHAPE, np.array([1], dtype=I64), np.array([9223372036854775807], dtype=I64)], {}, 17),
    ("Slice", [SHAPE, np.array([-1], dtype=I64), np.array([-4], dtype=I64), np.array([0]), np.array([-1])], {}, 17),
    (
        "Slice",
        [
            SHAPE,
            np.array([-1], dtype=I32),
            np.array([-(2**31)], dtype=I32),
            np.array([-1], dtype=I32),
            np.array([-2], dtype=I32),
        ],
        {},
        13,
    ),
    ("Slice", [SHAPE, np.array([5], dtype=I64), np.array([1], dtype=I64)], {}, 17),  # empty
    (
        "Slice",
        [
            np.arange(24, dtype=I64).reshape(2, 3, 4),
            np.array([0, 1], dtype=I64),
            np.array([3, 9], dtype=I64),
            np.array([-1, 1], dtype=I64),
            np.array([2, 1], dtype=I64),
        ],
        {},
        17,
    ),
    ("Slice", [SHAPE], {"starts": [-2], "ends": [3], "axes": [0]}, 9),
    (
        "ConstantOfShape",
        [np.array([2, 3], dtype=I64)],
        {"value": helper.make_tensor("v", onnx.TensorProto.INT64, [1], [7])},
        17,
    ),
    (
        "ConstantOfShape",
        [np.array([0], dtype=I64)],
        {"value": helper.make_tensor("v", onnx.TensorProto.BOOL, [1], [1])},
        17,
    ),
    ("Reshape", [np.arange(24, dtype=I64).reshape(2, 3, 4), np.array([0, -1], dtype=I64)], {}, 17),
    ("Reshape", [np.arange(6, dtype=I32), np.array([3, 1, 2], dtype=I64)], {"allowzero": 1}, 17),
    ("Reshape", [np.zeros((0, 3), dtype=I64), np.array([3, 0], dtype=I64)], {"allowzero": 1}, 17),
    ("Cast", [np.array([2**40 + 5, -1, 0], dtype=I64)], {"to": onnx.TensorProto.INT32}, 17),  # wraps
    ("Cast", [np.array([-1, 300], dtype=I64)], {"to": onnx.TensorProto.UINT8}, 17),
    ("Cast", [np.array([2, 0], dtype=I32)], {"to": onnx.TensorProto.BOOL}, 17),
    ("Cast", [np.array([True, False])], {"to": onnx.TensorProto.INT64}, 17),
    ("Add", [SHAPE, np.array([2], dtype=I64)], {}, 17),
    ("Sub", [np.array([3], dtype=I32), SHAPE.astype(I32)], {}, 17),
    ("Mul", [SHAPE, SHAPE], {}, 17),
    ("Mul", [np.array([2**62], dtype=I64), np.array([4], dtype=I64)], {}, 17),  # wraps, as numpy does
    ("Min", [SHAPE, np.array([64], dtype=I64), np.array([100, 1, 2], dtype=I64)], {}, 17),
    ("Max", [SHAPE, np.array([64], dtype=I64)], {}, 17),
    ("Neg", [SHAPE], {}, 17),
    ("Abs", [-SHAPE], {}, 17),
    ("Equal", [SHAPE, np.array([80], dtype=I64)], {}, 17),
    ("Less", [SHAPE, np.array([80], dtype=I64)], {}, 17),
    ("LessOrEqual", [SHAPE, np.array([80], dtype=I64)], {}, 17),
    ("Greater", [SHAPE.astype(U8), np.array([3], dtype=U8)], {}, 17),
    ("GreaterOrEqual", [SHAPE, np.array([80], dtype=I64)], {}, 17),
    ("Not", [np.array([True, False])], {}, 17),
    ("And", [np.array([True, False]), np.array([True])], {}, 17),
    ("Or", [np.array([True, False]), np.array([False])], {}, 17),
    ("Xor", [np.array([True, False]), np.array([True])], {}, 17),
]


def as_ir(attributes: dict) -> dict:
    """Attributes as folding passes them: onnx-ir's values (a tensor attribute is an ir tensor)."""
    return {k: ir.serde.deserialize_tensor(v) if isinstance(v, onnx.TensorProto) else v for k, v in attributes.items()}


def reference(op: str, operands: list[np.ndarray], attributes: dict, opset: int) -> list[np.ndarray]:
    names = [f"x{i}" for i in range(len(operands))]
    inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for name, a in zip(names, operands, strict=True)
    ]
    output = helper.make_tensor_value_info("y", onnx.TensorProto.UNDEFINED, None)
    node = helper.make_node(op, names, ["y"], **attributes)
    model = helper.make_model(
        helper.make_graph([node], "one", inputs, [output]), opset_imports=[helper.make_opsetid("", opset)]
    )
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, dict(zip(names, operands, strict=True)))]


@pytest.mark.parametrize(
    ("op", "operands", "attributes", "opset"), CASES, ids=lambda c: c if isinstance(c, str) else None
)
def test_same_results_and_dtypes_as_the_reference_runtime(op, operands, attributes, opset):
    mine = integer_ops.compute(op, operands, as_ir(attributes), opset)
    theirs = reference(op, operands, attributes, opset)
    assert mine is not None
    assert [(a.dtype, a.shape) for a in mine] == [(a.dtype, a.shape) for a in theirs]
    assert all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))


@pytest.mark.parametrize(
    ("op", "operands", "attributes", "opset"),
    [
        ("Gather", [SHAPE, np.array([3], dtype=I64)], {}, 17),  # out of range
        ("Add", [SHAPE, SHAPE.astype(I32)], {}, 17),  # mixed dtypes
        ("Add", [SHAPE.astype(np.float32), SHAPE.astype(np.float32)], {}, 17),  # float arithmetic
        ("Add", [SHAPE, SHAPE, SHAPE], {}, 17),  # a binary op given three operands
        ("Squeeze", [SHAPE, np.array([0], dtype=I64)], {}, 17),  # an axis of size 3
        ("Unsqueeze", [SHAPE, np.array([0, 0], dtype=I64)], {}, 17),  # a repeated axis
        ("Unsqueeze", [SHAPE], {}, 17),  # no axes
        ("Concat", [SHAPE, SHAPE], {}, 17),  # no axis attribute
        ("Div", [SHAPE, np.array([7], dtype=I64)], {}, 17),  # not ours: the reference runtime's
        ("Not", [SHAPE], {}, 17),  # logical ops take bools only
        ("Slice", [SHAPE, np.array([0], dtype=I64), np.array([2], dtype=I64), None, np.array([0], dtype=I64)], {}, 17),
        ("Slice", [SHAPE, np.array([0, 0], dtype=I64), np.array([2, 2], dtype=I64), np.array([0, 0])], {}, 17),
        ("ConstantOfShape", [np.array([2], dtype=I64)], {}, 17),  # the default fill is float32 0
        ("Cast", [SHAPE], {"to": onnx.TensorProto.FLOAT}, 17),
        ("Reshape", [SHAPE, np.array([-1, -1], dtype=I64)], {}, 17),
        ("Reshape", [SHAPE, np.array([0, 0], dtype=I64)], {}, 17),  # a 0 past the input's rank
    ],
    ids=lambda c: c if isinstance(c, str) else None,
)
def test_what_it_does_not_handle_is_left_to_the_reference_runtime(op, operands, attributes, opset):
    assert integer_ops.compute(op, operands, as_ir(attributes), opset) is None


def test_results_never_view_an_operand():
    """Folded arrays are stored as constants by their callers: a view would tie them to the operand's buffer."""
    operand = SHAPE.copy()
    (result,) = integer_ops.compute("Unsqueeze", [operand, np.array([0], dtype=I64)], {}, 17)
    result[0, 0] = 5
    assert operand[0] == 1
