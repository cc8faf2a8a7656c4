"""Value ranges of activations (reduced by analysis.ranges, measured by verify.ranges): exact FP16 thresholds,
real ONNX Runtime runs, fetches bounded by a byte budget, and attention masks told apart from real overflow by
structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor.analysis import Analysis
from graphdoctor.analysis.ranges import (
    FP16_FLUSH,
    FP16_OVERFLOW,
    float_tensor_names,
    is_mask_saturation,
    merge_ranges,
    range_of,
)
from graphdoctor.analysis.types import infer_types
from graphdoctor.model import load_model
from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend
from graphdoctor.verify.inputs import load_input_batches, save_inputs
from graphdoctor.verify.ranges import sample_ranges, value_ranges, value_ranges_over

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
F32 = np.float32


def test_fp16_thresholds_are_numpys():
    """The constants are where FP16's round-to-nearest-even really switches to inf and to 0."""
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(F32(FP16_OVERFLOW)))
    assert np.float16(np.nextafter(F32(FP16_OVERFLOW), F32(0))) == 65504
    assert np.float16(F32(FP16_FLUSH)) == 0
    assert np.float16(np.nextafter(F32(FP16_FLUSH), F32(1))) == 2.0**-24


def test_range_of_counts_exactly_at_the_thresholds():
    edge_big = float(np.nextafter(F32(FP16_OVERFLOW), F32(0)))
    edge_small = float(np.nextafter(F32(FP16_FLUSH), F32(1)))
    values = [65520.0, -70000.0, edge_big, FP16_FLUSH, -1e-30, edge_small, 0.0, 1.5, np.inf, np.nan]
    measured = range_of("t", np.array(values, F32))
    assert (measured.overflow, measured.overflow_negative) == (2, 1)
    assert measured.flushed == 2  # 2^-25 and 1e-30; the next float32 above 2^-25 rounds to 2^-24
    assert measured.nonzero == 7 and measured.nonfinite == 2 and measured.size == 10
    assert (measured.min, measured.max, measured.worst, measured.max_abs) == (-70000.0, 65520.0, -70000.0, 70000.0)
    assert measured.flush_fraction == 2 / 7


def test_range_of_reduces_large_tensors_in_chunks():
    """Spread over several 1 Mi-element chunks, the counts still add up."""
    array = np.ones(3 * (1 << 20) + 6, F32)
    array[7], array[-1], array[2 << 20] = 1e6, -1e-30, -2e5
    measured = range_of("t", array.reshape(-1, 6))
    assert (measured.overflow, measured.overflow_negative, measured.flushed) == (2, 1, 1)
    assert measured.worst == 1e6 and measured.shape == (array.size // 6, 6)


SCALED = model_from_text(f"""{HEADER}
g (float[N,4] x) => (float[N,4] y) <float k = {{1000.0}}> {{
    big = Mul(x, k)
    shape = Shape(big)
    r = Relu(big)
    y = Div(r, k)
}}""")


def _path(tmp_path: Path, model, name: str = "model.onnx") -> Path:
    return save(model, tmp_path / name)


def test_value_ranges_of_a_graph(tmp_path: Path):
    path = _path(tmp_path, SCALED)
    x = np.array([[100.0, -70.0, 1e-30, 0.0]], F32)
    ranges = value_ranges(path, {"x": x})
    assert list(ranges) == ["x", "big", "r", "y"]  # graph order; Shape's int64 output is not a float
    big = ranges["big"]
    assert (big.node, big.op_type, big.dtype, big.shape) == ("Mul_0", "Mul", "float32", (1, 4))
    assert (big.overflow, big.overflow_negative, big.worst) == (2, 1, 100000.0)
    assert (big.flushed, big.nonzero) == (1, 3)  # 1e-27
    assert ranges["r"].overflow == 1 and ranges["r"].node == "Relu_2"
    assert ranges["x"].node is None and ranges["x"].flushed == 1


def test_float_tensor_names_skip_constants_and_known_non_floats():
    model = load_model_from(SCALED)
    assert float_tensor_names(model) == ["x", "big", "r", "y"]


def load_model_from(proto):
    import onnx_ir as ir

    model = ir.serde.deserialize_model(proto)
    infer_types(model)
    return model


_ADDS = [f"t{i} = Add(t{i - 1}, one)" for i in range(1, 41)]
CHAIN = model_from_text(f"""{HEADER}
g (float[128,128] t0) => (float[128,128] t40) <float one = {{1.0}}> {{
    {chr(10).join(_ADDS)}
}}""")


def test_slices_stay_within_the_budget(tmp_path: Path):
    """40 tensors of 64 KiB with a 256 KiB budget: several runs, none holding much more than the budget,
    and the same ranges as one run fetching everything."""
    path = _path(tmp_path, CHAIN)
    inputs = {"t0": np.zeros((128, 128), F32)}
    backend = OnnxruntimeBackend("onnxruntime-cpu")
    fetched: list[int] = []

    def recording_run(names):
        arrays = backend.run(path, inputs, outputs=names)
        fetched.append(sum(a.nbytes for a in arrays.values()))
        return arrays

    budget = 256 * 1024
    sliced = value_ranges(path, inputs, run=recording_run, budget_bytes=budget)
    whole = value_ranges(path, inputs, budget_bytes=1 << 30)
    assert sliced == whole and len(sliced) == 41
    assert len(fetched) > 4
    assert max(fetched[1:]) <= budget and fetched[0] <= 8 * 64 * 1024  # the first run takes 8 tensors
    assert sliced["t40"].min == 40.0


def test_sample_ranges_are_measured_once_per_analysis(tmp_path: Path):
    path = _path(tmp_path, SCALED)
    loaded = load_model(path)
    without = Analysis(loaded.model, loaded.path, loaded.file_size)
    assert sample_ranges(without) is None
    analysis = Analysis(loaded.model, loaded.path, loaded.file_size, {"x": np.ones((2, 4), F32)})
    first = sample_ranges(analysis)
    assert first is sample_ranges(analysis)
    assert first["big"].max == 1000.0


# --- several batches ----------------------------------------------------------------------------------------

COUNTED = ("size", "min", "max", "max_abs", "worst", "overflow", "overflow_negative", "flushed", "nonzero", "nonfinite")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ([1.0, -70000.0, 1e-30, 0.0], [3e5, np.inf, -2.0, 5.0]),  # the worst is the second's, positive
        ([np.nan, np.inf], [-1e5, 1e-30]),  # a range without finite values leaves the other's extremes
        ([-4.0, 2.0], [4.0, np.nan]),  # equal magnitudes: the first's worst is kept
    ],
)
def test_merged_ranges_are_the_range_of_both(first, second):
    a, b = np.array(first, F32), np.array(second, F32)
    merged = merge_ranges(range_of("t", a), range_of("t", b.reshape(2, 2) if b.size == 4 else b))
    whole = range_of("t", np.concatenate([a, b]))
    assert {k: getattr(merged, k) for k in COUNTED} == {k: getattr(whole, k) for k in COUNTED}
    assert merged.shape == a.shape and merged.batches == 2


def test_ranges_over_batches_merge_per_tensor(tmp_path: Path):
    """Two batches whose maxima differ: the merged max is the larger, overflow counts add up; read from a
    folder of .npz files, one per batch."""
    path = _path(tmp_path, SCALED)
    folder = tmp_path / "batches"
    folder.mkdir()
    save_inputs({"x": np.array([[100.0, 2.0, 3.0, 4.0]], F32)}, folder / "b0.npz")
    save_inputs({"x": np.array([[-70.0, 200.0, 1.0, 1e-30], [1.0, 1.0, 1.0, 1.0]], F32)}, folder / "b1.npz")
    loaded = load_model(path)
    infer_types(loaded.model)
    batches = load_input_batches(folder).bound_to(loaded.model)
    merged = value_ranges_over(path, batches, model=loaded.model)
    one, two = value_ranges(path, batches[0]), value_ranges(path, batches[1])
    big = merged["big"]
    assert (one["big"].max, two["big"].max, big.max, big.min) == (100000.0, 200000.0, 200000.0, -70000.0)
    assert (one["big"].overflow, two["big"].overflow, big.overflow, big.overflow_negative) == (1, 2, 3, 1)
    assert (big.size, big.shape, big.batches, big.flushed) == (12, (1, 4), 2, 1)
    assert list(merged) == list(one) and merged["r"].overflow == 2


def test_batches_are_measured_one_at_a_time(tmp_path: Path):
    """Every run on a batch happens before the next batch is drawn: one batch is held at a time."""
    path = _path(tmp_path, CHAIN)
    backend = OnnxruntimeBackend("onnxruntime-cpu")
    events: list[str] = []

    def batches():
        for index in range(3):
            events.append(f"draw {index}")
            yield {"t0": np.full((128, 128), index, F32)}

    def recording_run(feeds, names):
        events.append(f"run {int(feeds['t0'][0, 0])}")
        return backend.run(path, feeds, outputs=names)

    merged = value_ranges_over(path, batches(), run=recording_run, budget_bytes=256 * 1024)
    runs_per_batch = len(events) // 3 - 1
    assert runs_per_batch > 1  # 41 tensors of 64 KiB do not fit one run
    assert events == [e for i in range(3) for e in [f"draw {i}"] + [f"run {i}"] * runs_per_batch]
    assert (merged["t40"].min, merged["t40"].max, merged["t40"].batches) == (40.0, 42.0, 3)


def test_ranges_over_no_batches_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="no batches of inputs"):
        value_ranges_over(_path(tmp_path, SCALED), [])


# --- attention masks ----------------------------------------------------------------------------------------


def masked_scores(fill_line: str, scores_line: str = "scores = MatMul(q, k)") -> Path:
    """Softmax(scores + mask bias) with the bias built from a 0/1 mask input, as BERT exports do."""
    return model_from_text(f"""{HEADER}
g (float[2,4] q, float[4,4] k, float[2,4] mask) => (float[2,4] y) {{
    {scores_line}
    one = Constant<value = float {{1.0}}>()
    {fill_line}
    inverted = Sub(one, mask)
    bias = Mul(inverted, fill)
    masked = Add(scores, bias)
    y = Softmax<axis=-1>(masked)
}}""")


def _ranges_and_values(tmp_path: Path, proto, inputs):
    path = _path(tmp_path, proto)
    loaded = load_model(path)
    analysis = Analysis(loaded.model, loaded.path, loaded.file_size, inputs)
    ranges = sample_ranges(analysis)
    values = {v.name: v for node in loaded.model.graph for v in node.outputs}
    return ranges, values, analysis


MASK_INPUTS = {
    "q": np.ones((2, 4), F32),
    "k": np.eye(4, dtype=F32),
    "mask": np.array([[1, 1, 0, 0], [1, 1, 1, 1]], F32),
}


@pytest.mark.parametrize("fill", ["-3.4028234663852886e+38", "-1e9"])
def test_mask_saturation_is_recognised(tmp_path: Path, fill: str):
    proto = masked_scores(f"fill = Constant<value = float {{{fill}}}>()")
    ranges, values, analysis = _ranges_and_values(tmp_path, proto, MASK_INPUTS)
    for name in ("bias", "masked"):
        assert ranges[name].overflow == 2 == ranges[name].overflow_negative
        assert is_mask_saturation(values[name], ranges, analysis)


def test_mask_of_minus_10000_does_not_overflow(tmp_path: Path):
    proto = masked_scores("fill = Constant<value = float {-10000.0}>()")
    ranges, _, _ = _ranges_and_values(tmp_path, proto, MASK_INPUTS)
    assert not any(r.overflow for r in ranges.values())


def test_scores_that_overflow_are_not_a_mask(tmp_path: Path):
    """Large negative scores on the way to the same Softmax come from arithmetic, not from a fill value."""
    scores = "raw = MatMul(q, k)\n    scale = Constant<value = float {300.0}>()\n    scores = Mul(raw, scale)"
    proto = masked_scores("fill = Constant<value = float {-10000.0}>()", scores)
    inputs = {**MASK_INPUTS, "q": np.full((2, 4), -300.0, F32)}
    ranges, values, analysis = _ranges_and_values(tmp_path, proto, inputs)
    assert ranges["scores"].overflow == 8 == ranges["scores"].overflow_negative
    assert not is_mask_saturation(values["scores"], ranges, analysis)
    assert not is_mask_saturation(values["masked"], ranges, analysis)


def test_positive_overflow_next_to_a_mask_is_not_a_mask(tmp_path: Path):
    scores = "raw = MatMul(q, k)\n    big = Constant<value = float {1e5}>()\n    scores = Mul(raw, big)"
    proto = masked_scores("fill = Constant<value = float {-3.4e38}>()", scores)
    ranges, values, analysis = _ranges_and_values(tmp_path, proto, MASK_INPUTS)
    assert ranges["masked"].overflow_negative < ranges["masked"].overflow
    assert not is_mask_saturation(values["masked"], ranges, analysis)
    assert is_mask_saturation(values["bias"], ranges, analysis)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["bert_opset14", "bert_opset17"])
def test_bert_masks_saturate_and_nothing_else_overflows(name: str):
    from fixtures import torch_exports

    path = torch_exports.path(name)
    loaded = load_model(path)
    analysis = Analysis(loaded.model, loaded.path, loaded.file_size, torch_exports.sample_inputs(path))
    ranges = sample_ranges(analysis)
    values = {v.name: v for node in loaded.model.graph for v in node.outputs}
    overflowing = [n for n, r in ranges.items() if r.overflow]
    assert len(overflowing) == 3  # the mask Where and one scores+mask Add per layer (the last row is padded)
    assert all(is_mask_saturation(values[n], ranges, analysis) for n in overflowing)
