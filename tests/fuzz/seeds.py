"""The models the fuzzer mutates: small hand-made graphs covering what the mutators reach into (initializers
large enough to go to external data, Constants, Casts, normalization epsilons, shape constants, If/Loop
bodies, a model-local function, DOUBLE tensors), the bundled YOLO-style example, and the small cached
fixtures when `make fixtures` has built them.

Seeds are built once per process and handed out as fresh copies: mutators change them in place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["SEED_NAMES", "seed_model"]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "yolo_demo.onnx"
FIXTURES = REPO / ".cache" / "fixtures"
FIXTURE_LIMIT = 4 * 2**20  # cached fixtures up to this size join the seeds (bigger ones cost seconds per case)
OPSET = 17


def _weights(name: str, shape: tuple[int, ...], seed: int, dtype=np.float32) -> TensorProto:
    values = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return numpy_helper.from_array(values, name)


def _model(nodes, inputs, outputs, initializers=(), functions=(), opsets=None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "seed", inputs, outputs, initializer=list(initializers))
    opset_imports = opsets or [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opset_imports, functions=list(functions))
    model.ir_version = 8
    return model


def _io(name: str, shape: list[int | str], elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def mlp() -> onnx.ModelProto:
    """MatMul+Add+Relu with 2 KiB weights, a duplicated bias, an Identity and a same-type Cast: safe fixes
    change it, so `fix` writes."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
        helper.make_node("Add", ["h", "b"], ["h1"], name="add"),
        helper.make_node("Identity", ["h1"], ["h2"], name="identity"),
        helper.make_node("Cast", ["h2"], ["h3"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Add", ["h3", "b_copy"], ["h4"], name="add2"),
        helper.make_node("Relu", ["h4"], ["y"], name="relu"),
    ]
    inits = [_weights("W", (16, 32), 1), _weights("b", (32,), 2), _weights("b_copy", (32,), 2)]
    return _model(nodes, [_io("x", [2, 16])], [_io("y", [2, 32])], inits)


def conv_bn() -> onnx.ModelProto:
    """Conv + BatchNormalization (eps 1e-3 and 1e-5 mixed) + Relu, with a dynamic batch dim."""
    nodes = [
        helper.make_node("Conv", ["x", "Wc", "bc"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "o", "m", "v"], ["n"], epsilon=1e-3, name="bn1"),
        helper.make_node("BatchNormalization", ["n", "s", "o", "m", "v"], ["n2"], epsilon=1e-5, name="bn2"),
        helper.make_node("Relu", ["n2"], ["y"], name="relu"),
    ]
    inits = [_weights("Wc", (8, 3, 3, 3), 3), _weights("bc", (8,), 4), _weights("s", (8,), 5)]
    inits += [_weights("o", (8,), 6), numpy_helper.from_array(np.zeros(8, np.float32), "m")]
    inits += [numpy_helper.from_array(np.ones(8, np.float32), "v")]
    return _model(nodes, [_io("x", ["N", 3, 8, 8])], [_io("y", ["N", 8, 8, 8])], inits)


def layernorm() -> onnx.ModelProto:
    """LayerNormalization with eps 1e-12 (FP16 flushes it) and a large activation (FP16 range)."""
    nodes = [
        helper.make_node("Mul", ["x", "big"], ["xb"], name="scale"),
        helper.make_node("LayerNormalization", ["xb", "g", "beta"], ["y"], axis=-1, epsilon=1e-12, name="ln"),
    ]
    big = numpy_helper.from_array(np.array([1e5], np.float32), "big")
    inits = [big, _weights("g", (64,), 7), _weights("beta", (64,), 8)]
    return _model(nodes, [_io("x", [1, 4, 64])], [_io("y", [1, 4, 64])], inits)


def shapes() -> onnx.ModelProto:
    """INT64 shape constants: Reshape, a Slice with an INT64_MAX end, ConstantOfShape, Expand and Tile."""
    i64 = functools.partial(helper.make_tensor, data_type=TensorProto.INT64)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("Slice", ["r", "starts", "ends", "axes"], ["s"], name="slice"),
        helper.make_node(
            "ConstantOfShape", ["cshape"], ["z"], value=helper.make_tensor("v", 1, [1], [1.0]), name="cos"
        ),
        helper.make_node("Expand", ["z", "eshape"], ["e"], name="expand"),
        helper.make_node("Tile", ["e", "reps"], ["t"], name="tile"),
        helper.make_node("Add", ["s", "t"], ["y"], name="add"),
    ]
    inits = [
        i64(name="shape", dims=[2], vals=[4, 6]),
        i64(name="starts", dims=[1], vals=[1]),
        i64(name="ends", dims=[1], vals=[2**63 - 1]),
        i64(name="axes", dims=[1], vals=[0]),
        i64(name="cshape", dims=[2], vals=[1, 6]),
        i64(name="eshape", dims=[2], vals=[1, 6]),
        i64(name="reps", dims=[2], vals=[3, 1]),
        _weights("unused", (300,), 9),
    ]
    return _model(nodes, [_io("x", [2, 12])], [_io("y", [3, 6])], inits)


def branches() -> onnx.ModelProto:
    """An If whose branches hold initializers and Constants (1 KiB and more: external data in a body)."""
    then_graph = helper.make_graph(
        [helper.make_node("Add", ["x", "tw"], ["ty"], name="then_add")],
        "then",
        [],
        [_io("ty", [4, 64])],
        initializer=[_weights("tw", (4, 64), 10)],
    )
    else_const = helper.make_node("Constant", [], ["ew"], value=_weights("ewv", (4, 64), 11), name="else_const")
    else_graph = helper.make_graph(
        [else_const, helper.make_node("Mul", ["x", "ew"], ["ey"], name="else_mul")], "else", [], [_io("ey", [4, 64])]
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["sum", "zero"], ["cond"], name="cond"),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph, name="if"),
    ]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    return _model(nodes, [_io("x", [4, 64])], [_io("y", [4, 64])], [zero])


def loop() -> onnx.ModelProto:
    """A Loop of three iterations whose body adds a 1 KiB initializer to the carried value."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
            helper.make_node("Add", ["carry", "lw"], ["carry_out"], name="body_add"),
        ],
        "body",
        [_io("i", [], TensorProto.INT64), _io("cond_in", [], TensorProto.BOOL), _io("carry", [4, 64])],
        [_io("cond_out", [], TensorProto.BOOL), _io("carry_out", [4, 64])],
        initializer=[_weights("lw", (4, 64), 12)],
    )
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body, name="loop")]
    trips = numpy_helper.from_array(np.array(3, np.int64), "trips")
    return _model(nodes, [_io("x", [4, 64])], [_io("y", [4, 64])], [trips])


def function() -> onnx.ModelProto:
    """A model-local function whose body holds a 1 KiB Constant, called twice."""
    body_const = helper.make_node("Constant", [], ["c"], value=_weights("fc", (4, 64), 13), name="f_const")
    local = helper.make_function(
        "local",
        "AddC",
        ["a"],
        ["b"],
        [body_const, helper.make_node("Add", ["a", "c"], ["b"], name="f_add")],
        [helper.make_opsetid("", OPSET)],
    )
    nodes = [
        helper.make_node("AddC", ["x"], ["h"], domain="local", name="call1"),
        helper.make_node("AddC", ["h"], ["y"], domain="local", name="call2"),
    ]
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("local", 1)]
    return _model(nodes, [_io("x", [4, 64])], [_io("y", [4, 64])], functions=[local], opsets=opsets)


def float64() -> onnx.ModelProto:
    """DOUBLE weights behind Casts (GD010, GD002) and a Constant of doubles."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE, name="to_double"),
        helper.make_node("Mul", ["xd", "Wd"], ["m"], name="mul"),
        helper.make_node(
            "Constant", [], ["k"], value=helper.make_tensor("kv", TensorProto.DOUBLE, [1], [2.0]), name="k"
        ),
        helper.make_node("Add", ["m", "k"], ["a"], name="add"),
        helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT, name="to_float"),
    ]
    return _model(nodes, [_io("x", [8, 32])], [_io("y", [8, 32])], [_weights("Wd", (8, 32), 14, np.float64)])


_BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": mlp,
    "conv_bn": conv_bn,
    "layernorm": layernorm,
    "shapes": shapes,
    "branches": branches,
    "loop": loop,
    "function": function,
    "float64": float64,
}


def _files() -> dict[str, Path]:
    files = {"yolo_demo": EXAMPLE} if EXAMPLE.is_file() else {}
    if FIXTURES.is_dir():
        for file in sorted(FIXTURES.glob("*.onnx")):
            if file.stat().st_size <= FIXTURE_LIMIT and not any(FIXTURES.glob(f"{file.stem}*.data")):
                files[f"fixture:{file.stem}"] = file
    return files


def _all_names() -> tuple[str, ...]:
    return (*_BUILDERS, *_files())


SEED_NAMES: tuple[str, ...] = _all_names()
HEAVY = frozenset(name for name in SEED_NAMES if name not in _BUILDERS)  # seconds per case, picked less often


@functools.cache
def _serialized(name: str) -> bytes:
    if name in _BUILDERS:
        model = _BUILDERS[name]()
        onnx.checker.check_model(model, full_check=True)
        return model.SerializeToString()
    return _files()[name].read_bytes()


def seed_model(name: str) -> onnx.ModelProto:
    """A fresh copy of seed `name` (mutate it freely)."""
    model = onnx.ModelProto()
    model.ParseFromString(_serialized(name))
    return model
