"""Both models merged into one ONNX Runtime session with the difference statistics in the graph
(verify.lockstep), on real runs: the same answers as fetching the tensors, the cases it leaves to fetching
(and says why), the weights held once, and the interleaved order that bounds memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fixtures import divergence
from graphdoctor.model import load_model
from graphdoctor.verify.backends import get_backend
from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend
from graphdoctor.verify.inputs import generate_inputs
from graphdoctor.verify.layerwise import LayerwiseOptions, LayerwiseReport, compare_layerwise
from graphdoctor.verify.lockstep import PREFIX, merged_model
from graphdoctor.verify.metrics import PRESETS

from .test_layerwise import assert_same_answers


def both_ways(reference: Path, candidate: Path, backend, preset: str) -> tuple[LayerwiseReport, LayerwiseReport]:
    inputs = generate_inputs(load_model(reference).model, seed=0)
    tolerance = PRESETS[preset]
    in_graph = compare_layerwise(reference, candidate, backend, inputs, tolerance)
    fetched = compare_layerwise(reference, candidate, backend, inputs, tolerance, LayerwiseOptions(in_graph=False))
    return in_graph, fetched


def test_fp16_emulation_runs_in_the_graph_with_the_same_answers(tmp_path: Path):
    """fix --fp16 localises a failed gate with FP16 emulation as the candidate's backend: its rewritten graph
    (a Cast pair after every tensor) merges with the reference's."""
    in_graph, fetched = both_ways(*divergence.chain_pair(tmp_path), get_backend("fp16-emulation"), "fp16")
    assert in_graph.in_graph == len(in_graph.records) == 6 and in_graph.runs == 1
    assert_same_answers(in_graph, fetched)


def test_non_finite_pairs_are_fetched(tmp_path: Path):
    """Statistics cannot count inf and NaN: such pairs are fetched, the others stay in the graph."""
    in_graph, fetched = both_ways(*divergence.overflow_pair(tmp_path), get_backend("fp16-emulation"), "fp16")
    assert 0 < in_graph.in_graph < len(in_graph.records) and in_graph.runs == 2
    assert in_graph.first_nonfinite is not None and in_graph.first_nonfinite.record.cand_nonfinite == 64
    assert_same_answers(in_graph, fetched)


def test_different_opsets_fall_back_to_fetching_and_say_why(tmp_path: Path):
    reference, candidate = divergence.chain_pair(tmp_path)
    model = onnx.load(candidate)
    model.opset_import[0].version += 1  # the chain's ops are the same in the next opset
    onnx.save(model, candidate)
    in_graph, fetched = both_ways(reference, candidate, OnnxruntimeBackend("onnxruntime-cpu"), "fp32")
    assert in_graph.in_graph == 0 and "different opsets of ai.onnx" in in_graph.in_graph_unavailable
    assert in_graph.first_divergence.record.node == fetched.first_divergence.record.node == "mm2"


def test_external_data_in_two_folders_falls_back(tmp_path: Path):
    reference, candidate = divergence.chain_pair(tmp_path)
    for path, folder in ((reference, "a"), (candidate, "b")):
        (tmp_path / folder).mkdir()
        onnx.save(onnx.load(path), tmp_path / folder / "m.onnx", save_as_external_data=True, size_threshold=0)
    a, b = tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx"
    in_graph, _ = both_ways(a, b, OnnxruntimeBackend("onnxruntime-cpu"), "fp32")
    assert (
        in_graph.in_graph == 0
        and in_graph.in_graph_unavailable == "the two models' external data lie in different folders"
    )
    assert in_graph.first_divergence.record.node == "mm2"


def test_a_gpu_backend_is_compared_by_fetching():
    backend = OnnxruntimeBackend("onnxruntime-cuda")
    assert backend.cpu_graph(Path("unused.onnx")) is None  # nothing loaded: it does not run on the CPU


def test_weights_both_models_hold_are_held_once(tmp_path: Path):
    reference, candidate = divergence.chain_pair(tmp_path)
    backend = OnnxruntimeBackend("onnxruntime-cpu")
    same, _, _ = merged_model(backend.cpu_graph(reference), backend.cpu_graph(reference))
    held = len(onnx.load(reference).graph.initializer)
    assert len(same.graph.initializer) == held
    changed, _, _ = merged_model(backend.cpu_graph(reference), backend.cpu_graph(candidate))
    assert len(changed.graph.initializer) == held + 1  # W2 differs: both are held
    assert {t.name for t in changed.graph.initializer} - {t.name for t in same.graph.initializer} == {PREFIX + "W2"}


def test_inputs_declared_alike_are_one_input(tmp_path: Path):
    """Fed the same array, read as one: what both compute alike from it and the shared weights runs once."""
    reference, candidate = divergence.chain_pair(tmp_path)
    backend = OnnxruntimeBackend("onnxruntime-cpu")
    merged, _, _ = merged_model(backend.cpu_graph(reference), backend.cpu_graph(candidate))
    assert [v.name for v in merged.graph.input] == [v.name for v in onnx.load(reference).graph.input]
    model = onnx.load(candidate)
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16  # a converted model's input
    onnx.save(model, candidate)
    merged, _, _ = merged_model(backend.cpu_graph(reference), backend.cpu_graph(candidate))
    name = model.graph.input[0].name
    assert [v.name for v in merged.graph.input] == [name, PREFIX + name]


def test_each_candidate_node_follows_the_reference_node_computing_the_same_tensor(tmp_path: Path):
    reference, candidate = divergence.chain_pair(tmp_path)
    backend = OnnxruntimeBackend("onnxruntime-cpu")
    merged, _, same = merged_model(backend.cpu_graph(reference), backend.cpu_graph(candidate))
    order = [output for node in merged.graph.node for output in node.output]
    ref_outputs = [output for node in onnx.load(reference).graph.node for output in node.output]
    for name in ref_outputs:
        if PREFIX + name not in same:
            assert order.index(PREFIX + name) == order.index(name) + 1
    onnx.checker.check_model(merged)  # topologically sorted, every name defined once


def test_nodes_computing_the_same_from_the_same_are_folded(tmp_path: Path):
    """The chain's candidate differs from W2 on: mm1 and relu1 read the same input and weights, so one node
    computes both models' h1 and a1, and no statistic compares them; from mm2 on both are computed."""
    reference, candidate = divergence.chain_pair(tmp_path)
    backend = OnnxruntimeBackend("onnxruntime-cpu")
    merged, _, same = merged_model(backend.cpu_graph(reference), backend.cpu_graph(candidate))
    assert same == {PREFIX + "h1": "h1", PREFIX + "a1": "a1"}
    assert len(merged.graph.node) == 2 * len(onnx.load(reference).graph.node) - 2
    itself, _, folded = merged_model(backend.cpu_graph(reference), backend.cpu_graph(reference))
    assert len(itself.graph.node) == len(onnx.load(reference).graph.node) and len(folded) == 6


def test_a_tensor_computed_twice_by_the_reference_stays_in_the_graph(tmp_path: Path):
    """torch exports take an input's Shape in several places: each candidate Shape folds into the reference
    Shape of its own name, not into whichever was last, so every pair is still judged in the graph."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    nodes = [
        helper.make_node("Shape", ["x"], ["s1"], name="shape1"),
        helper.make_node("Shape", ["x"], ["s2"], name="shape2"),
        helper.make_node("Reshape", ["x", "s1"], ["r1"], name="reshape1"),
        helper.make_node("Reshape", ["x", "s2"], ["r2"], name="reshape2"),
        helper.make_node("Add", ["r1", "r2"], ["y"], name="add"),
    ]
    path = tmp_path / "twice.onnx"
    onnx.save(
        helper.make_model(helper.make_graph(nodes, "twice", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]),
        path,
    )
    in_graph, fetched = both_ways(path, path, OnnxruntimeBackend("onnxruntime-cpu"), "exact")
    assert in_graph.in_graph == len(in_graph.records) == 5 and in_graph.runs == 1, in_graph.in_graph_unavailable
    assert_same_answers(in_graph, fetched)


@pytest.mark.parametrize("preset", ["fp32", "exact"])
def test_identical_models_are_identical_in_the_graph(tmp_path: Path, preset: str):
    reference, _ = divergence.chain_pair(tmp_path)
    in_graph, fetched = both_ways(reference, reference, OnnxruntimeBackend("onnxruntime-cpu"), preset)
    assert in_graph.in_graph == 6 and all(r.passed and r.max_abs == 0.0 for r in in_graph.records)
    assert_same_answers(in_graph, fetched)


@pytest.mark.parametrize("opset", [11, 13, 18, 20])
def test_every_opset_form_of_the_statistics_loads(tmp_path: Path, opset: int):
    """Unsqueeze's axes became an input at 13, ReduceSumSquare's at 18: both forms are built right."""
    pair = divergence.chain_pair(tmp_path)
    for path in pair:
        model = onnx.load(path)
        model.opset_import[0].version = opset
        onnx.save(model, path)
    in_graph, fetched = both_ways(*pair, OnnxruntimeBackend("onnxruntime-cpu"), "fp32")
    assert in_graph.in_graph == 6, in_graph.in_graph_unavailable
    assert_same_answers(in_graph, fetched)


def test_sums_of_a_large_tensor_keep_float64_precision(tmp_path: Path):
    """A float32 running sum over 4M squares is 1e-4 off; summed by rows, then in float64, the relative error
    and cosine agree with numpy's float64 to 1e-7."""
    rng = np.random.default_rng(0)
    shape = [1, 4, 1024, 1024]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)
    for name in ("reference", "candidate"):
        scale = numpy_helper.from_array(np.float32(1.0 if name == "reference" else 1.001), "scale")
        graph = helper.make_graph(
            [helper.make_node("Mul", ["x", "scale"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
            name,
            [x],
            [y],
            [scale],
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / f"{name}.onnx")
    inputs = {"x": (rng.random(shape, dtype=np.float32) + 0.5)}
    report = compare_layerwise(
        tmp_path / "reference.onnx",
        tmp_path / "candidate.onnx",
        OnnxruntimeBackend("onnxruntime-cpu"),
        inputs,
        PRESETS["fp32"],
    )
    assert report.in_graph == 2
    ref = inputs["x"].astype(np.float64)
    cand = (inputs["x"] * np.float32(1.001)).astype(np.float64)
    expected = np.linalg.norm(cand - ref) / np.linalg.norm(ref)
    assert report.records[0].rel_err == pytest.approx(expected, rel=1e-6)
    assert report.records[0].cosine == pytest.approx(1.0, abs=1e-9)  # a scaled tensor points the same way


def test_a_converted_candidate_runs_with_onnx_runtimes_casts_in_place(tmp_path: Path):
    """ONNX Runtime's CPU provider runs the FP16 chain's MatMuls and Relus in FP32, through Casts it inserts
    at the end of its node order: merged as they were, the candidate waited for them while every reference
    tensor waited for its pair. Placed before merging (verify.cpu_casts), each renamed tensor is cast back to
    FP16 right after its producer, every pair is judged in the graph, and the answers are those of fetching
    the tensors up to FP16 rounding (a fetched tensor is rounded where it is fetched, and what follows it
    computes from the rounded value)."""
    from graphdoctor import api
    from graphdoctor.fp16 import Fp16Options

    reference, _ = divergence.chain_pair(tmp_path)
    candidate = tmp_path / "chain.fp16.onnx"
    api.fix(reference, candidate, fp16=Fp16Options(), verify=False)
    graph = OnnxruntimeBackend("onnxruntime-cpu").cpu_graph(candidate).proto.graph
    outputs = [output for node in graph.node for output in node.output]
    backs = [node for node in graph.node if node.name.endswith("/back")]
    assert len(graph.node) > len(onnx.load(candidate).graph.node) and backs
    for back in backs:  # right after the node computing its FP32 value
        assert outputs.index(back.input[0]) + 1 == outputs.index(back.output[0])
    in_graph, fetched = both_ways(reference, candidate, OnnxruntimeBackend("onnxruntime-cpu"), "fp16")
    assert in_graph.in_graph == len(in_graph.records) == 6 and in_graph.runs == 1, in_graph.in_graph_unavailable
    for ours, theirs in zip(in_graph.records, fetched.records, strict=True):
        assert (ours.name, ours.passed, ours.shape) == (theirs.name, theirs.passed, theirs.shape)
        assert ours.max_abs == pytest.approx(theirs.max_abs, rel=0.05, abs=1e-3 * max(theirs.ref_absmax, 1.0))
    assert (in_graph.first_divergence is None) == (fetched.first_divergence is None)
