"""Range statistics reduced inside the graph (verify.statistics): the same TensorRange as range_of on the tensor
itself, number for number, on real ONNX Runtime runs; one run per batch; the fetch path where they cannot be had."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor.analysis.ranges import _CHUNK, FP16_FLUSH, FP16_OVERFLOW, TensorRange, float_tensor_names, range_of
from graphdoctor.analysis.types import infer_types
from graphdoctor.model import load_model
from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend, as_declared
from graphdoctor.verify.ranges import value_ranges, value_ranges_over
from graphdoctor.verify.statistics import (
    STATISTICS,
    InGraphStatistics,
    add_statistics,
    measurable,
    nonempty_tensors,
    range_from,
)

F32 = np.float32
FIELDS = ("node", "op_type", "dtype", "shape", "size", "min", "max", "max_abs", "worst")
FIELDS += ("overflow", "overflow_negative", "flushed", "nonzero", "nonfinite", "batches")


def assert_same(first: TensorRange, second: TensorRange) -> None:
    """Equal field by field; NaN equals NaN (a tensor without finite values)."""
    for field in FIELDS:
        a, b = getattr(first, field), getattr(second, field)
        both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        assert both_nan or a == b, f"{first.name}.{field}: {a!r} != {b!r}"


def _typed(path: Path):
    model = load_model(path).model
    infer_types(model)
    return model


def identity_model(tmp_path: Path, opset: int = 17, dims: str = "N") -> Path:
    return save(
        model_from_text(f"""<ir_version: 8, opset_import: ["" : {opset}]>
g (float[{dims}] x) => (float[{dims}] y) {{
    y = Neg(x)
}}"""),
        tmp_path / f"identity{opset}.onnx",
    )


EDGE = float(np.nextafter(F32(FP16_OVERFLOW), F32(0)))
FINITE = [EDGE, -EDGE, FP16_FLUSH, -1e-30, 6e-8, float(np.nextafter(F32(FP16_FLUSH), F32(1))), 0.0, -0.0, 1.5]


def _chunked(first: float, second: float) -> np.ndarray:
    """A tensor over two of range_of's chunks: `first` in the first, `second` in the second."""
    array = np.ones(_CHUNK + 10, F32)
    array[3], array[-2] = first, second
    return array


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize(
    "array",
    [
        np.array(FINITE, F32),
        np.array([*FINITE, 65520.0], F32),  # overflow: counted by fetching
        np.array([*FINITE, -np.inf], F32),  # non-finite: fetched too
        np.array([4.0, -4.0, 1.0], F32),  # a tie of magnitude within a chunk: the low one, as range_of
        np.array([np.nan, np.inf, -np.inf], F32),  # no finite value at all
        np.array([0.0, -0.0], F32),  # every finite value zero: worst 0.0
        np.zeros(0, F32),  # empty: ArgMin alone would fail on it
        _chunked(-5.0, 5.0),
        _chunked(5.0, -5.0),  # the tie goes to the chunk seen first, whichever its sign
        np.random.default_rng(0).standard_normal(3 * _CHUNK + 7).astype(F32) * 1e4,
    ],
    ids=["thresholds", "overflow", "inf", "tie", "nonfinite", "zeros", "empty", "tie-low", "tie-high", "large"],
)
def test_statistics_equal_range_of_the_tensor(tmp_path: Path, opset: int, array: np.ndarray):
    """The input and the node's output (negated: the other sign of every tie) against range_of, per opset
    (ReduceSum's axes became an input at 13, ReduceMin/Max's at 18; neither is given). A tensor holding inf,
    NaN or a value past FP16's overflow, or one over a chunk whose extremes tie in magnitude, is left to
    fetching, and value_ranges still gives range_of's range."""
    path = identity_model(tmp_path, opset)
    model = _typed(path)
    expected = {"x": range_of("x", array), "y": range_of("y", -array, model.graph.node(0))}
    measured, unresolved = InGraphStatistics(path, model, ["x", "y"]).ranges({"x": array})
    both = value_ranges(path, {"x": array}, model=model)
    for name, tensor_range in expected.items():
        tied = tensor_range.size > _CHUNK and tensor_range.min == -tensor_range.max != 0.0
        assert (name in unresolved) == bool(tensor_range.nonfinite or tensor_range.overflow or tied)
        if name not in unresolved:
            assert_same(measured[name], tensor_range)
        assert_same(both[name], tensor_range)
    assert both["y"].node == "Neg_0"


def test_a_static_shape_needs_no_pad(tmp_path: Path):
    path = identity_model(tmp_path, dims="2,3")
    model = _typed(path)
    assert nonempty_tensors(model) == {"x", "y"}
    array = np.array([[1.0, -3.0, 0.0], [2.0, 1e-30, 7e3]], F32)
    measured, unresolved = InGraphStatistics(path, model, ["x"]).ranges({"x": array})
    assert_same(measured["x"], range_of("x", array)) and not unresolved
    assert (measured["x"].shape, measured["x"].flushed) == ((2, 3), 1)


def _recording_fetch(path: Path, feeds, fetched: list[int]):
    backend = OnnxruntimeBackend("onnxruntime-cpu")

    def run(names):
        fetched.append(len(names))
        return backend.run(path, feeds, outputs=names)

    return run


HANDMADE = {
    "scaled": """g (float[N,4] x) => (float[N,4] y) <float k = {1000.0}> {
        big = Mul(x, k)
        shape = Shape(big)
        r = Relu(big)
        y = Div(r, k)
    }""",
    "masked": """g (float[2,4] x, float[2,4] mask) => (float[2,4] y) {
        fill = Constant<value = float {-3.4e38}>()
        one = Constant<value = float {1.0}>()
        inverted = Sub(one, mask)
        bias = Mul(inverted, fill)
        masked = Add(x, bias)
        y = Softmax<axis=-1>(masked)
    }""",
}


@pytest.mark.parametrize("name", sorted(HANDMADE))
def test_in_graph_ranges_equal_fetched_ranges_on_handmade_models(tmp_path: Path, name: str):
    path = save(model_from_text(f'<ir_version: 8, opset_import: ["" : 17]>\n{HANDMADE[name]}'), tmp_path / "m.onnx")
    feeds = {"x": np.array([[100.0, -70.0, 1e-30, 0.0], [np.inf, 3.0, -2.0, 7e4]], F32)}
    if name == "masked":
        feeds["mask"] = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], F32)
    fetched: list[int] = []
    old = value_ranges(path, feeds, run=_recording_fetch(path, feeds, fetched))
    new = value_ranges(path, feeds)
    assert list(new) == list(old) and fetched
    for tensor in old:
        assert_same(new[tensor], old[tensor])
    assert any(r.overflow for r in new.values())


CHAIN = model_from_text(
    '<ir_version: 8, opset_import: ["" : 17]>\ng (float[128,128] t0) => (float[128,128] t40) <float one = {1.0}> {\n'
    + "\n".join(f"t{i} = Add(t{i - 1}, one)" for i in range(1, 41))
    + "\n}"
)


def test_one_run_per_batch_and_no_fetching(tmp_path: Path, caplog):
    """41 tensors of 64 KiB under a 64 KiB budget: the fetch path would need a run per tensor; in the graph
    each batch is one run, nothing is fetched, and the merged ranges are those of the fetch path."""
    path = save(CHAIN, tmp_path / "chain.onnx")
    batches = [{"t0": np.full((128, 128), index, F32)} for index in range(3)]
    with caplog.at_level(logging.INFO, logger="graphdoctor.verify.ranges"):
        merged = value_ranges_over(path, iter(batches), budget_bytes=64 * 1024)
    assert not [r for r in caplog.records if "fetched" in r.getMessage()]
    backend = OnnxruntimeBackend("onnxruntime-cpu")
    old = value_ranges_over(path, batches, run=lambda feeds, names: backend.run(path, feeds, outputs=names))
    assert list(merged) == list(old) and merged["t40"].batches == 3
    for tensor in old:
        assert_same(merged[tensor], old[tensor])


def test_the_same_run_gives_the_model_outputs_of_the_first_batch(tmp_path: Path):
    """fix's gate compares the candidate with these instead of running the original again."""
    path = save(CHAIN, tmp_path / "chain.onnx")
    batches = [{"t0": np.full((128, 128), index, F32)} for index in (1, 2)]
    outputs: dict[str, np.ndarray] = {}
    value_ranges_over(path, iter(batches), outputs=outputs)
    assert list(outputs) == ["t40"]
    np.testing.assert_array_equal(outputs["t40"], OnnxruntimeBackend("onnxruntime-cpu").run(path, batches[0])["t40"])


IF_MODEL = model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
g (float[3] x, bool c) => (float[3] y) {
    doubled = Add(x, x)
    y = If(c) <then_branch = t () => (float[3] inside) { inside = Mul(doubled, doubled) },
               else_branch = e () => (float[3] other) { other = Neg(doubled) }>
}""")


def test_subgraph_tensors_are_left_to_the_fetch_path(tmp_path: Path):
    path = save(IF_MODEL, tmp_path / "if.onnx")
    model = _typed(path)
    assert float_tensor_names(model) == ["x", "doubled", "y"]  # today's choice: the main graph's only
    assert measurable(model, ["x", "doubled", "y", "inside"]) == (["x", "doubled", "y"], ["inside"])
    feeds = {"x": np.array([1.0, -2.0, 300.0], F32), "c": np.array(True)}
    ranges = value_ranges(path, feeds, model=model)
    assert ranges["y"].max == 360000.0 and ranges["y"].overflow == 1


def test_a_graph_that_fails_to_load_falls_back_to_fetching(tmp_path: Path, caplog):
    """A tensor already named like a statistic's constant: the augmented graph does not load, the tensors are
    fetched as before, and the log says so."""
    path = save(
        model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) {
    "__gd_stat/inf" = Relu(x)
    y = Neg("__gd_stat/inf")
}"""),
        tmp_path / "clash.onnx",
    )
    feeds = {"x": np.array([-1.0, 7e4], F32)}
    with caplog.at_level(logging.INFO, logger="graphdoctor.verify.ranges"):
        ranges = value_ranges(path, feeds)
    assert any("in-graph statistics unavailable" in r.getMessage() for r in caplog.records)
    assert list(ranges) == ["x", "__gd_stat/inf", "y"] and ranges["y"].worst == -7e4


def test_old_opsets_are_fetched(tmp_path: Path):
    """Below opset 9 there is no Where: every tensor is fetched, with the same result."""
    path = identity_model(tmp_path, opset=8)
    model = _typed(path)
    assert measurable(model, ["x", "y"]) == ([], ["x", "y"])
    ranges = value_ranges(path, {"x": np.array([1.0, -7e4], F32)}, model=model)
    assert ranges["y"].worst == 7e4 and ranges["x"].overflow_negative == 1


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet50", "yolo", "dynamo_vit", "bert_opset17", "t5_encoder"])
def test_statistics_equal_range_of_on_real_exports(name: str):
    """Every watched tensor of a real export: the statistics of one run against range_of on the tensors
    fetched from that same session (fetching them through other sessions lets ONNX Runtime fuse differently,
    which moves float32 values by an ulp: the reductions are what is under test)."""
    from fixtures import torch_exports

    path = torch_exports.path(name)
    model = _typed(path)
    inside, outside = measurable(model, float_tensor_names(model))
    assert inside and not outside
    proto = onnx.load_model(str(path))
    add_statistics(proto, inside, nonempty_tensors(model))
    proto.graph.output.extend(onnx.ValueInfoProto(name=tensor) for tensor in inside)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    arrays = session.run(names, as_declared(session, torch_exports.sample_inputs(path)))
    results = dict(zip(names, arrays, strict=True))
    producers = {v.name: node for node in model.graph for v in node.outputs}
    for index, tensor in enumerate(inside):
        stats = {s: results[f"__gd_stat/{index}/{s}"] for s in STATISTICS}
        node = producers.get(tensor)
        expected, measured = range_of(tensor, results[tensor], node), range_from(tensor, node, stats)
        assert (measured is None) == bool(expected.overflow or expected.nonfinite), tensor  # masks, in BERT and T5
        if measured is not None:
            assert_same(measured, expected)
