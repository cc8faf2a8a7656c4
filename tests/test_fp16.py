"""`graphdoctor fix --fp16` end to end: every model it writes loads in ONNX Runtime and passes the full ONNX
check (types, topological order), and each test pins down one trap common converters fall into.

Models are the hand-made ones of `fixtures.fp16_cases` plus real torch exports; they run for real on ONNX
Runtime CPU with graph optimizations off (every node as written, no Cast pair folded away)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.shape_inference
import onnxruntime as ort
import pytest

from fixtures import fp16_cases
from fixtures.handmade import save
from graphdoctor import api
from graphdoctor.analysis import fp16_ops
from graphdoctor.fp16 import Fp16Options
from tests.conftest import Run, exported_with_inputs

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
RTOL, ATOL = 1e-2, 1e-2  # the fp16 preset's


# -- helpers --


def saved(proto: onnx.ModelProto, tmp_path: Path, name: str = "model") -> Path:
    return save(proto, tmp_path / f"{name}.onnx")


def fp16_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".onnx") + ".fp16.onnx")


def checked(path: Path) -> onnx.ModelProto:
    """The written model, after the full ONNX check (strict shape and type inference) and an ORT session."""
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return model


def run(path: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs by name, on ONNX Runtime CPU with graph optimizations off; float feeds in the declared type."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    inputs = {
        i.name: feeds[i.name].astype(dtypes[i.type]) if i.type in dtypes else feeds[i.name]
        for i in session.get_inputs()
    }
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def assert_close(original: Path, converted: Path, feeds: Mapping[str, np.ndarray]) -> None:
    """Same output names, FP32 outputs within the fp16 preset's tolerance of the FP32 model's."""
    before, after = run(original, feeds), run(converted, feeds)
    assert list(before) == list(after)
    for name, expected in before.items():
        assert not np.isnan(after[name]).any(), name
        np.testing.assert_allclose(after[name].astype(np.float32), expected, rtol=RTOL, atol=ATOL, err_msg=name)


def fixed(gd: Run, path: Path, *args: str) -> tuple[str, onnx.ModelProto]:
    """`fix --fp16 ARGS` that must succeed: its report and the checked model it wrote."""
    code, out, err = gd("fix", path, "--fp16", *args)
    assert code == 0, out + err
    return out, checked(fp16_path(path))


def node(graph: onnx.GraphProto, name: str) -> onnx.NodeProto:
    [found] = [n for n in graph.node if n.name == name]
    return found


def producer(graph: onnx.GraphProto, value: str) -> onnx.NodeProto:
    [found] = [n for n in graph.node if value in n.output]
    return found


def attribute(n: onnx.NodeProto, name: str):
    [found] = [a for a in n.attribute if a.name == name]
    return onnx.helper.get_attribute_value(found)


def branch(n: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return attribute(n, name)


def casts(graph: onnx.GraphProto) -> list[tuple[str, int]]:
    """(input, to) of each Cast in this graph alone (not its subgraphs)."""
    return [(n.input[0], attribute(n, "to")) for n in graph.node if n.op_type == "Cast"]


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value of the main graph, by strict shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    values = [*graph.input, *graph.output, *graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    [found] = [t for t in model.graph.initializer if t.name == name]
    return onnx.numpy_helper.to_array(found)


def io_types(model: onnx.ModelProto) -> tuple[list[int], list[int]]:
    graph = model.graph
    return [v.type.tensor_type.elem_type for v in graph.input], [v.type.tensor_type.elem_type for v in graph.output]


def fix_json(gd: Run, path: Path, *args: str) -> tuple[int, dict]:
    code, out, _ = gd("fix", path, "--fp16", "--format", "json", *args)
    return code, json.loads(out)["fix"]


def normal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- what common converters break --


def test_cast_to_float_in_the_region_produces_fp16(gd: Run, tmp_path: Path):
    """onnxconverter-common leaves `Cast(to=FLOAT)` as is: the Mul then reads FLOAT and FLOAT16 and the
    model does not load."""
    path = saved(fp16_cases.cast_to_float(), tmp_path)
    _, model = fixed(gd, path)
    assert attribute(node(model.graph, "Cast_1"), "to") == FLOAT16
    assert list(node(model.graph, "Mul_2").input) == ["h", "nf"]  # read directly, no Cast back and forth
    types = elem_types(model)
    assert (types["h"], types["nf"]) == (FLOAT16, FLOAT16)
    assert io_types(model) == ([FLOAT, onnx.TensorProto.INT64], [FLOAT])
    feeds = {"x": normal(2, 4), "n": np.arange(-3, 5, dtype=np.int64).reshape(2, 4)}
    assert_close(path, fp16_path(path), feeds)


def test_graph_output_read_inside_the_graph(gd: Run, tmp_path: Path):
    """y1 is an output and the Add's input: the output keeps its name and FP32, the Add reads FP16."""
    path = saved(fp16_cases.output_read_inside(), tmp_path)
    _, model = fixed(gd, path)
    assert [o.name for o in model.graph.output] == ["y1", "y2"]
    assert io_types(model) == ([FLOAT], [FLOAT, FLOAT])
    add = node(model.graph, "Add_3")
    assert producer(model.graph, add.input[0]).name == "Relu_1"  # the FP16 tensor itself, not a Cast of y1
    types = elem_types(model)
    assert (types[add.input[0]], types[add.input[1]], types[add.output[0]]) == (FLOAT16, FLOAT16, FLOAT16)
    assert sorted(casts(model.graph)) == [("x", FLOAT16), (add.input[0], FLOAT), (add.output[0], FLOAT)]
    assert_close(path, fp16_path(path), {"x": normal(2, 4)})


def test_sequence_ops_stay_fp32_around_an_fp16_region(gd: Run, tmp_path: Path):
    """onnx-ir reports a sequence's dtype as its elements': converting SequenceConstruct would put a Cast on
    a sequence (and ranges would fetch it as a tensor). They stay FP32, with the reason; the rest converts."""
    path = saved(fp16_cases.sequence_of_tensors(), tmp_path)
    out, model = fixed(gd, path)
    assert "'SequenceConstruct_1' (SequenceConstruct): reads or produces a sequence" in out
    assert "'SequenceAt_3' (SequenceAt): reads or produces a sequence" in out
    types = elem_types(model)
    assert types["r"] == FLOAT16 and types["a"] == FLOAT
    assert io_types(model) == ([FLOAT], [FLOAT])
    assert_close(path, fp16_path(path), {"x": normal(2, 4)})


def test_blocked_topk_in_a_branch_gets_its_casts_in_the_branch(gd: Run, tmp_path: Path):
    """The TopK reading the outer FP16 `h` stays FP32 through a Cast inside the then-branch (a Cast in the
    main graph would run on the branch not taken, and break when h is written after the If)."""
    path = saved(fp16_cases.topk_in_if_branch(), tmp_path)
    out, model = fixed(gd, path)
    assert "kept FP32: 'TopK->v' (TopK): ranks values" in out
    if_node = node(model.graph, "If_1")
    then_graph, else_graph = branch(if_node, "then_branch"), branch(if_node, "else_branch")
    assert casts(model.graph) == [("x", FLOAT16)]  # no Cast of h in the main graph
    topk = next(n for n in then_graph.node if n.op_type == "TopK")
    cast_h = producer(then_graph, topk.input[0])
    assert (cast_h.op_type, cast_h.input[0], attribute(cast_h, "to")) == ("Cast", "h", FLOAT)
    assert [o.name for o in then_graph.output] == ["v"] and topk.output[0] == "v"  # computed in FP32
    slice_node = next(n for n in else_graph.node if n.op_type == "Slice")
    assert slice_node.input[0] == "h"  # FP16 where it can: no Cast in front of it
    assert casts(else_graph) == [(else_graph.node[-1].input[0], FLOAT)]  # only the branch output's
    assert [o.name for o in else_graph.output] == ["s"]
    for condition in (True, False):
        assert_close(path, fp16_path(path), {"x": normal(8), "c": np.array(condition)})


def test_a_constant_fp16_holds_is_not_clamped(gd: Run, tmp_path: Path):
    """20000 is an FP16 number: onnxconverter-common clamps weights to ±1e4 and stores 10000."""
    path = saved(fp16_cases.scaled_by(20000.0), tmp_path)
    out, model = fixed(gd, path, "--fp16-max", "65504")  # the product reaches 40000: within FP16, not the margin
    k = initializer(model, "k")
    assert k.dtype == np.float16 and float(k) == 20000.0
    assert "value(s) clamped" not in out and "kept FP32:" not in out
    assert_close(path, fp16_path(path), {"x": normal(2, 4)})


def test_a_constant_beyond_fp16_keeps_its_reader_fp32(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.scaled_by(1e5, "Min"), tmp_path)
    out, model = fixed(gd, path)
    assert "kept FP32: 'Min_1' (Min): reads constant 'k' holding 100000, beyond FP16's 65504" in out
    k = initializer(model, "k")
    assert k.dtype == np.float32 and float(k) == 1e5
    minimum = node(model.graph, "Min_1")
    assert minimum.output[0] == "y" and producer(model.graph, minimum.input[0]).op_type == "Cast"
    assert_close(path, fp16_path(path), {"x": normal(2, 4)})


def test_fp16_clamp_clamps_and_reports_the_constant(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.scaled_by(1e5, "Min"), tmp_path)
    out, model = fixed(gd, path, "--fp16-clamp")
    assert "'k': 1 value(s) clamped to ±65504 (worst 1e+05)" in out
    assert "kept FP32:" not in out
    k = initializer(model, "k")
    assert k.dtype == np.float16 and float(k) == 65504.0
    assert node(model.graph, "Min_1").input[1] == "k"
    assert_close(path, fp16_path(path), {"x": normal(2, 4)})
    code, report = fix_json(gd, path, "--fp16-clamp", "-o", tmp_path / "again.onnx")
    assert code == 0
    assert report["fp16"]["changed_values"] == [{"tensor": "k", "what": "clamped to ±65504", "count": 1, "worst": 1e5}]


def test_float_int_float_keeps_truncation(gd: Run, tmp_path: Path):
    """Cast(to=INT64) reads the FP32 input: rounded to FP16 first, 2.9999 would become 3 before truncating."""
    path = saved(fp16_cases.int_round_trip(), tmp_path)
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.array([2.7, -1.5, 3.2, 0.9], np.float32))
    out, model = fixed(gd, path, "--inputs", inputs)
    assert "kept FP32: 'Cast_0' (Cast): casts to an integer type" in out
    assert list(node(model.graph, "Cast_0").input) == ["x"]
    assert attribute(node(model.graph, "Cast_1"), "to") == FLOAT16
    for x, expected in [
        ([2.7, -1.5, 3.2, 0.9], [3, -1.5, 4.5, 0]),
        ([2.9999, 5.9999, -0.9999, 1.0001], [3, 7.5, 0, 1.5]),
    ]:
        feeds = {"x": np.array(x, np.float32)}
        np.testing.assert_array_equal(run(path, feeds)["y"], np.array(expected, np.float32))
        np.testing.assert_array_equal(run(fp16_path(path), feeds)["y"], np.array(expected, np.float32))


def test_resize_scales_stay_float(gd: Run, tmp_path: Path):
    """Resize's scales are typed FLOAT by the schema whatever X is; X and Y are FP16."""
    path = saved(fp16_cases.resize_with_scales(), tmp_path)
    _, model = fixed(gd, path)
    scales = initializer(model, "scales")
    assert scales.dtype == np.float32 and scales.tolist() == [1.0, 1.0, 1.5, 1.5]
    [resize] = [n for n in model.graph.node if n.op_type == "Resize"]
    assert resize.input[2] == "scales"
    types = elem_types(model)
    assert (types[resize.input[0]], types[resize.output[0]]) == (FLOAT16, FLOAT16)
    assert_close(path, fp16_path(path), {"x": np.random.default_rng(0).random((1, 1, 4, 4), np.float32)})


def test_computed_resize_scales_stay_float(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.computed_scales(), tmp_path)
    _, model = fixed(gd, path, "--shape", "x:1x1x480x480")
    types = elem_types(model)
    assert (types["ratio"], types["scales"]) == (FLOAT, FLOAT)
    feeds = {"x": np.random.default_rng(0).random((1, 1, 480, 480), np.float32)}
    assert run(fp16_path(path), feeds)["y"].shape == (1, 1, 640, 640)


def test_a_model_already_fp16_is_left_alone(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.output_read_inside(), tmp_path)
    fixed(gd, path, "--fp16-io", "--no-verify")
    converted = fp16_path(path)
    before = converted.read_bytes()
    code, out, err = gd("fix", converted, "--fp16")
    assert (code, err) == (0, "")
    assert "already FP16, nothing to convert" in out
    assert "nothing written" in out and not fp16_path(converted).exists()
    assert converted.read_bytes() == before


def test_converting_the_converters_output_again_says_already_fp16(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.output_read_inside(), tmp_path)
    fixed(gd, path)
    converted = fp16_path(path)
    code, out, _ = gd("fix", converted, "--fp16")
    assert code == 0
    assert "already FP16" in out
    assert "GD002" not in out and not fp16_path(converted).exists()


def test_layer_norm_eps_keeps_add_sqrt_div_fp32(gd: Run, tmp_path: Path):
    """eps 1e-12 rounds to 0 in FP16: var + eps, its Sqrt and the Div stay FP32, so a constant row
    normalizes to 0 instead of 0/0; the square and its mean, the rest of the variance chain, too."""
    path = saved(fp16_cases.layer_norm(), tmp_path)
    out, model = fixed(gd, path)
    assert "kept FP32: 'Add_4' (Add): reads the eps constant 'eps' = 1e-12, which FP16 rounds to 0" in out
    assert "kept FP32: 'Sqrt_5' (Sqrt): follows 'Add_4', whose eps FP16 cannot hold" in out
    assert "kept FP32: 'Div_6' (Div): follows 'Add_4', whose eps FP16 cannot hold" in out
    eps = initializer(model, "eps")
    assert eps.dtype == np.float32 and float(eps) == np.float32(1e-12)
    types = elem_types(model)
    assert (types["ve"], types["std"], types["y"]) == (FLOAT, FLOAT, FLOAT)
    assert (types["mean"], types["d"], types["sq"], types["var"]) == (FLOAT16, FLOAT16, FLOAT, FLOAT)
    assert "kept FP32: 'Mul_2' (Mul): the variance of a decomposed LayerNorm (anchored at 'Add_4')" in out
    x = np.stack([np.full(8, 1.5, np.float32), normal(8)])
    y = run(fp16_path(path), {"x": x})["y"]
    assert not np.isnan(y).any()
    np.testing.assert_array_equal(y[0], np.zeros(8, np.float32))
    assert_close(path, fp16_path(path), {"x": x})


def test_activation_overflow_on_sample_inputs_keeps_the_node_fp32(gd: Run, tmp_path: Path):
    """(x*1000)^2 overflows FP16 only at run time: measured on the generated inputs, the square stays FP32
    and the FP16 emulation passes."""
    path = saved(fp16_cases.square_of_scaled(), tmp_path)
    out, model = fixed(gd, path, "--shape", "x:4x8")
    assert "activations measured on the sample inputs" in out
    assert "kept FP32: 'Mul_1' (Mul): its output reaches" in out and "on the sample inputs, beyond FP16's 65504" in out
    assert "FP32 region of 1 node ('Mul_1')" in out
    assert "fp16-emulation: PASSED" in out
    square = node(model.graph, "Mul_1")
    assert square.output[0] == "y" and producer(model.graph, square.input[0]).op_type == "Cast"
    assert_close(path, fp16_path(path), {"x": normal(4, 8)})


def test_an_overflowing_region_is_kept_fp32_up_to_where_values_are_back_in_range(gd: Run, tmp_path: Path):
    """Three norms of a residual stream of ~300: the square, its mean, the eps Add and the Sqrt reading them
    stay FP32 (a region per norm, ending at the Sqrt), in one conversion: no repair round."""
    path = saved(fp16_cases.large_residual_norms(3), tmp_path)
    code, report = fix_json(gd, path, "--shape", "x:4x64", "-o", tmp_path / "out.onnx")
    assert code == 0, report
    fp16 = report["fp16"]
    assert fp16["kept_after_verification"] == []
    regions = fp16["fp32_regions"]
    assert [r["ends"] for r in regions] == [["Sqrt_4"], ["Sqrt_10"], ["Sqrt_16"]], regions
    assert all(len(r["nodes"]) == 4 and r["peak"] > 65504 for r in regions)
    kept = {k["node"]: k for k in fp16["kept_fp32"]}
    assert kept["Sqrt_4"]["kind"] == "range" and "reads 'e0', which reaches" in kept["Sqrt_4"]["reason"]
    assert "Div_5" not in kept  # the quotient is back in range: FP16
    assert_close(path, tmp_path / "out.onnx", {"x": normal(4, 64)})


def test_the_exporters_float32_casts_keep_what_they_fence_fp32(gd: Run, tmp_path: Path):
    """`x.to(torch.float32)` in an FP32 export is GD002's no-op Cast, but before --fp16 it says "this
    computes in FP32": GD002 leaves it for the converter, the variance chain it fences stays FP32 (the Cast,
    a no-op still, is cleaned up after the conversion), the rest converts."""
    path = saved(fp16_cases.fenced_rms_norm(), tmp_path)
    code, report = fix_json(gd, path, "--shape", "x:4x16", "-o", tmp_path / "out.onnx")
    assert code == 0, report
    kinds = {k["node"]: k["kind"] for k in report["fp16"]["kept_fp32"]}
    assert kinds == {name: "fence" for name in ("Cast_0", "Pow_1", "ReduceMean_2", "Add_3", "Sqrt_4", "Reciprocal_5")}
    fence = [k["reason"] for k in report["fp16"]["kept_fp32"] if k["node"] == "Sqrt_4"]
    assert fence == ["fenced by the exporter's float32 Cast 'Cast_0' (the model computes this in FP32 on purpose)"]
    types = elem_types(checked(tmp_path / "out.onnx"))
    assert [types[name] for name in "pvesr"] == [FLOAT] * 5 and types["n"] == FLOAT16
    plain_fix = tmp_path / "plain.onnx"
    assert gd("fix", path, "-o", plain_fix)[0] == 0
    assert "Cast_0" not in {n.name for n in onnx.load(plain_fix).graph.node}  # without --fp16: clutter, removed
    assert_close(path, tmp_path / "out.onnx", {"x": normal(4, 16)})


def test_ranges_are_measured_over_every_batch_of_a_folder(gd: Run, tmp_path: Path):
    """Calibration over a folder of .npz batches: the square overflows on the second batch only, and is kept
    FP32; the gate runs on the first and says so."""
    path = saved(fp16_cases.square_of_scaled(), tmp_path)
    folder = tmp_path / "calibration"
    folder.mkdir()
    np.savez(folder / "batch_0.npz", x=np.full((4, 8), 0.01, np.float32))
    np.savez(folder / "batch_1.npz", x=np.full((4, 8), 0.5, np.float32))
    code, report = fix_json(gd, path, "--inputs", folder, "-o", tmp_path / "out.onnx")
    assert code == 0, report
    [kept] = report["fp16"]["kept_fp32"]
    assert kept["node"] == "Mul_1" and "reaches 250000 on the sample inputs" in kept["reason"]
    assert "batch_0.npz (the first of 2 batches" in report["verify"]["input_source"]
    code, single = fix_json(gd, path, "--inputs", folder / "batch_0.npz", "-o", tmp_path / "one.onnx")
    assert code == 0 and single["fp16"]["kept_fp32"] == []  # the first batch alone never comes close


@pytest.mark.torch
def test_castlike_and_casts_of_constants_fence_nothing(gd: Run, tmp_path: Path):
    """torch's dynamo exporter, unoptimized, writes CastLike(eps, x) before every BatchNorm: type plumbing,
    not the model asking for FP32. Nothing is kept FP32 for it."""
    from fixtures import torch_exports

    code, report = fix_json(gd, torch_exports.path("dynamo_cnn_unoptimized"), "--no-verify", "-o", tmp_path / "o.onnx")
    assert code == 0 and [k for k in report["fp16"]["kept_fp32"] if k["kind"] == "fence"] == []


def test_no_verify_measures_no_activations_and_says_so(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.square_of_scaled(), tmp_path)
    out, model = fixed(gd, path, "--no-verify")
    assert "activations not measured (no sample inputs with --no-verify): only constants were checked" in out
    assert "kept FP32:" not in out
    assert producer(model.graph, "y").op_type == "Cast"  # the square ran in FP16: what the warning is about
    emulated = api.verify(path, fp16_path(path), backends=["fp16-emulation"], shapes={"x": (4, 8)})
    assert not emulated.passed


def test_no_verify_with_shapes_still_measures(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.square_of_scaled(), tmp_path)
    out, model = fixed(gd, path, "--no-verify", "--shape", "x:4x8")
    assert "activations measured on the sample inputs" in out
    assert "kept FP32: 'Mul_1' (Mul): its output reaches" in out
    assert node(model.graph, "Mul_1").output[0] == "y"


# -- self-repair after a failed verification --


def readings(tmp_path: Path, columns: int) -> Path:
    inputs = tmp_path / "readings.npz"
    np.savez(inputs, **fp16_cases.readings(columns))
    return inputs


def test_a_diverging_node_is_kept_fp32_after_verification(gd: Run, tmp_path: Path):
    """(x - 1000.3) * 4 with x near 1000: nothing the static checks see, but FP16 holds x to 0.5 only. The
    emulation names the Sub; kept FP32 (reading the FP32 input and constant), the model passes."""
    path = saved(fp16_cases.normalized_inputs(1), tmp_path)
    inputs = readings(tmp_path, 1)
    out, model = fixed(gd, path, "--inputs", inputs)
    assert "kept FP32 after verification: 'Sub_0': the fp16 tolerance is first exceeded at 'd0'" in out
    assert "fp16-emulation: PASSED" in out
    assert list(node(model.graph, "Sub_0").input) == ["x0", "mean"]
    assert initializer(model, "mean").dtype == np.float32
    assert_close(path, fp16_path(path), dict(np.load(inputs)))


def test_repairs_beyond_the_bound_write_nothing(gd: Run, tmp_path: Path):
    """Five Subs to keep, four repairs allowed: exit 1 and no file."""
    path = saved(fp16_cases.normalized_inputs(5), tmp_path)
    code, out, _ = gd("fix", path, "--fp16", "--inputs", readings(tmp_path, 5))
    assert code == 1
    repaired = [line for line in out.splitlines() if "kept FP32 after verification" in line]
    assert [line.split("'")[1] for line in repaired] == ["Sub_0", "Sub_1", "Sub_2", "Sub_3"]
    assert "verification FAILED: nothing written" in out
    assert "Keep FP32 what still diverges: --keep-fp32 'Sub_0,Sub_1,Sub_2,Sub_3,Sub_4'" in out
    assert "--ignore" not in out  # the rules' fixes are not what failed
    assert not fp16_path(path).exists()


def test_repair_bound_of_the_api(tmp_path: Path):
    path = saved(fp16_cases.normalized_inputs(2), tmp_path)
    inputs = readings(tmp_path, 2)
    bounded = api.fix(path, fp16=Fp16Options(), inputs=inputs, fp16_repairs=1)
    repaired = [label for label, _ in bounded.fp16_repaired]
    assert (bounded.written, bounded.passed, repaired) == (False, False, ["Sub_0"])
    assert not fp16_path(path).exists()
    enough = api.fix(path, fp16=Fp16Options(), inputs=inputs)
    assert (enough.written, enough.passed) == (True, True)
    assert [label for label, _ in enough.fp16_repaired] == ["Sub_0", "Sub_1"]
    checked(fp16_path(path))


def test_cancellation_is_repaired_at_its_origin(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.cancellation(), tmp_path)
    code, out, _ = gd("fix", path, "--fp16")
    repaired = [line.split("'")[1] for line in out.splitlines() if "kept FP32 after verification" in line]
    assert len(repaired) == len(set(repaired)), "the same node kept FP32 twice"
    assert code == 0 and "Add_0" in repaired
    checked(fp16_path(path))


# -- options --


@pytest.mark.parametrize(
    ("patterns", "kept"),
    [
        (["Softmax"], {"head/softmax"}),
        (["head/*"], {"head/scale", "head/softmax"}),
        (["MatMul", "out/*"], {"proj/matmul", "out/add"}),
    ],
)
def test_keep_fp32_by_op_type_and_name_glob(gd: Run, tmp_path: Path, patterns: list[str], kept: set[str]):
    path = saved(fp16_cases.attention_head(), tmp_path)
    out, model = fixed(gd, path, *[arg for p in patterns for arg in ("--keep-fp32", p)])
    listed = {line.split("'")[1] for line in out.splitlines() if line.strip().startswith("kept FP32:")}
    assert listed == kept
    assert all(f"--keep-fp32 {p}" in out for p in patterns)
    types = elem_types(model)
    by_name = {n.name: n for n in model.graph.node}
    for name in ("proj/matmul", "head/scale", "head/softmax", "out/add"):
        computed = by_name[name].output[0]
        assert types[computed] == (FLOAT if name in kept else FLOAT16), name
    assert_close(path, fp16_path(path), {"x": normal(2, 4)})


def test_fp16_io_makes_inputs_and_outputs_fp16(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.output_read_inside(), tmp_path)
    _, model = fixed(gd, path, "--fp16-io", "--no-verify")
    assert io_types(model) == ([FLOAT16], [FLOAT16, FLOAT16])
    assert [o.name for o in model.graph.output] == ["y1", "y2"]
    assert casts(model.graph) == []
    x = normal(2, 4)
    outputs = run(fp16_path(path), {"x": x})
    assert all(v.dtype == np.float16 for v in outputs.values())
    assert_close(path, fp16_path(path), {"x": x})


def test_fp16_io_passes_verification(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.output_read_inside(), tmp_path)
    out, model = fixed(gd, path, "--fp16-io")
    assert "fp16-emulation: PASSED" in out
    assert io_types(model) == ([FLOAT16], [FLOAT16, FLOAT16])


def test_dtype_attributes_produce_fp16(gd: Run, tmp_path: Path):
    """ConstantOfShape's fill (default 0.0 and explicit 2.5), EyeLike's and RandomNormalLike's dtype."""
    path = saved(fp16_cases.dtype_attributes(), tmp_path)
    _, model = fixed(gd, path)
    by_output = {n.output[0]: n for n in model.graph.node}
    for name, fill in [("zeros", 0.0), ("fill", 2.5)]:
        value = attribute(by_output[name], "value")
        assert value.data_type == FLOAT16 and onnx.numpy_helper.to_array(value).tolist() == [fill], name
    for name in ("eye", "eye32", "noise"):
        assert attribute(by_output[name], "dtype") == FLOAT16, name
    types = elem_types(model)
    assert all(types[name] == FLOAT16 for name in ("zeros", "fill", "eye", "eye32", "noise", "d"))
    assert casts(model.graph) == [("x", FLOAT16), (by_output["y"].input[0], FLOAT)]
    assert_close(path, fp16_path(path), {"x": normal(3, 3)})


def test_constant_of_shape_fill_beyond_fp16_is_not_changed_silently(tmp_path: Path):
    path = saved(fp16_cases.large_fill(), tmp_path)
    result = api.fix(path, fp16=Fp16Options(), verify=False)
    model = checked(fp16_path(path))
    fill = onnx.numpy_helper.to_array(attribute(producer(model.graph, "fill"), "value"))
    reported = [c for c in result.fp16.changed if c.worst == 1e5]
    assert float(fill[0]) == 1e5 or reported


def test_constants_given_as_value_float(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.constant_attributes(), tmp_path)
    _, model = fixed(gd, path)
    types = elem_types(model)
    assert (types["k"], types["ks"]) == (FLOAT16, FLOAT16)
    assert_close(path, fp16_path(path), {"x": normal(2, 4)})


# -- subgraphs --


def test_loop_body_gets_its_casts_in_the_body(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.loop_body(), tmp_path)
    out, model = fixed(gd, path)
    assert "kept FP32: 'Loop_3' (Loop): holds subgraphs" in out
    loop = node(model.graph, "Loop_3")
    body = branch(loop, "body")
    assert list(loop.input) == ["n", "cond", "x"]  # the Loop's own inputs stay FP32
    assert casts(model.graph) == [("x", FLOAT16)]
    body_casts = casts(body)
    assert ("h", FLOAT) in body_casts  # for the TopK, inside the body
    assert ("s", FLOAT16) in body_casts and ("x", FLOAT16) in body_casts
    assert [o.name for o in body.output] == ["co", "so", "t"]
    assert producer(body, "so").op_type == "Cast" and producer(body, "t").op_type == "TopK"
    assert any(n.op_type == "Add" and "h" in n.input for n in body.node)  # the outer FP16 h, read directly
    assert_close(path, fp16_path(path), {"x": normal(4)})


def test_if_branches_compute_in_fp16(gd: Run, tmp_path: Path):
    path = saved(fp16_cases.if_both_branches(), tmp_path)
    _, model = fixed(gd, path)
    if_node = node(model.graph, "If_1")
    then_graph, else_graph = branch(if_node, "then_branch"), branch(if_node, "else_branch")
    assert casts(model.graph) == [("x", FLOAT16)]
    assert then_graph.node[0].input[0] == "h" and then_graph.node[0].op_type == "Mul"
    assert [c for c in casts(then_graph) if c[1] == FLOAT16] == []
    assert ("x", FLOAT16) in casts(else_graph)
    assert [o.name for o in then_graph.output] == ["v"] and [o.name for o in else_graph.output] == ["w"]
    assert initializer(model, "k").dtype == np.float16
    for condition in (True, False):
        assert_close(path, fp16_path(path), {"x": normal(4), "c": np.array(condition)})


# -- external data --


def external_weights(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(path)
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_external_data_is_rewritten_in_fp16(gd: Run, tmp_path: Path):
    path = fp16_cases.with_weights(tmp_path / "mlp.onnx")
    original = external_weights(path)
    out, _ = fixed(gd, path, "--external-data")
    half = (tmp_path / "mlp.onnx.data").stat().st_size // 2
    assert half <= (tmp_path / "mlp.fp16.onnx.data").stat().st_size <= half + 1024  # FP16 bytes, no FP32 left
    written = external_weights(fp16_path(path))
    assert set(written) == set(original)
    for name, values in written.items():
        assert values.dtype == np.float16, name
        np.testing.assert_array_equal(values, original[name].astype(np.float16), err_msg=name)
    stored = onnx.load(fp16_path(path), load_external_data=False)
    external = {t.name for t in stored.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert external == {"w1", "w2"}
    assert "3 constants converted" in out
    assert_close(path, fp16_path(path), {"x": normal(2, 64)})


def test_external_weight_read_by_fp32_and_fp16_nodes_is_stored_twice(gd: Run, tmp_path: Path):
    path = fp16_cases.with_weights(tmp_path / "mlp.onnx", shared=True)
    original = external_weights(path)
    fixed(gd, path, "--external-data", "--keep-fp32", "side")
    written = external_weights(fp16_path(path))
    np.testing.assert_array_equal(written["w1"], original["w1"])  # for the FP32 `side`, bytes untouched
    assert written["w1"].dtype == np.float32
    [copy] = [name for name in written if name.startswith("w1") and name != "w1"]
    np.testing.assert_array_equal(written[copy], original["w1"].astype(np.float16))
    np.testing.assert_array_equal(written["w2"], original["w2"].astype(np.float16))
    assert_close(path, fp16_path(path), {"x": normal(2, 64)})


def test_external_data_is_kept_by_default(gd: Run, tmp_path: Path):
    path = fp16_cases.with_weights(tmp_path / "mlp.onnx")
    fixed(gd, path)
    assert (tmp_path / "mlp.fp16.onnx.data").exists()


def test_initializers_stated_in_value_info_are_retyped(gd: Run, tmp_path: Path):
    """The dynamo exporter's value_info for weights: the converted file states them FLOAT16 (or not at all),
    and the FP16 emulation, which reads those entries, runs it."""
    path = saved(fp16_cases.initializers_in_value_info(), tmp_path)
    out, model = fixed(gd, path)
    assert "fp16-emulation: PASSED" in out
    stated = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    weights = {t.name: t.data_type for t in model.graph.initializer}
    assert set(weights.values()) == {FLOAT16}
    assert all(stated[name] == dtype for name, dtype in weights.items() if name in stated)
    assert_close(path, fp16_path(path), {"x": normal(1, 3, 8, 8)})


# -- real exports --

REAL_MODELS = {"resnet50": 0.51, "yolo": 0.51, "bert_opset14": 0.53, "bert_opset17": 0.53}


@pytest.mark.torch
@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_real_exports(name: str, tmp_path: Path):
    path, inputs = exported_with_inputs(name, tmp_path)
    output = tmp_path / f"{name}.fp16.onnx"
    result = api.fix(path, output, fp16=Fp16Options(), inputs=inputs)
    assert result.written and result.passed
    assert result.size_after <= REAL_MODELS[name] * result.size_before
    assert {v.status for v in result.verification.verdicts} == {"passed"}
    assert {v.tolerance.name for v in result.verification.verdicts} == {"fp16"}
    report = result.fp16
    assert not report.already_fp16 and report.ranges_measured and result.fp16_repaired == []
    assert report.converted_nodes > 50 and report.tensors_converted > 40
    model = onnx.load(output)
    float_io = [v for v in (*model.graph.input, *model.graph.output) if v.type.tensor_type.elem_type == FLOAT]
    layer_norms_kept = len(report.kept) // 5
    assert report.casts_added == len(float_io) + 2 * layer_norms_kept  # x - mean up; the quotient down
    assert {k.kind for k in report.kept} <= {"eps", "eps-tail", "normalization"}
    if name == "bert_opset14":  # 5 decomposed LayerNorms (eps 1e-12): the variance chain of each
        assert sorted({k.op_type for k in report.kept}) == ["Add", "Div", "Pow", "ReduceMean", "Sqrt"]
        assert len(report.kept) == 25
    else:
        assert report.kept == []
    assert all(c.what in ("flushed to 0", "saturated (attention mask)") for c in report.changed)
    assert (name.startswith("bert")) == any(c.what == "saturated (attention mask)" for c in report.changed)
    onnx.checker.check_model(model, full_check=True)
    feeds = dict(np.load(inputs))
    assert all(np.isfinite(v).all() for v in run(output, feeds).values())


DYNAMO_MODELS = ["dynamo_cnn", "dynamo_vit", "dynamo_bert", "dynamo_whisper_encoder"]


@pytest.mark.torch
@pytest.mark.parametrize("name", DYNAMO_MODELS)
def test_dynamo_exports(name: str, tmp_path: Path):
    """torch's default exporter: value_info for every weight, opset 18-20, LayerNormalization, Gelu. Converted
    with the default verification, each passes the fp16 preset on every backend and loads in a default
    ONNX Runtime session (fix checks that in a child process: ONNX Runtime's optimizers crash on some FP16
    graphs)."""
    path, inputs = exported_with_inputs(name, tmp_path)
    output = tmp_path / f"{name}.fp16.onnx"
    result = api.fix(path, output, fp16=Fp16Options(), inputs=inputs)
    assert result.written and result.passed and result.fp16_repaired == []
    assert [(v.backend, v.status, v.tolerance.name) for v in result.verification.verdicts] == [
        ("fp16-emulation", "passed", "fp16"),
        ("onnxruntime-cpu", "passed", "fp16"),
    ]
    assert result.size_after <= 0.75 * result.size_before  # the exporter's metadata stays (--strip-metadata)
    model = onnx.load(output)
    onnx.checker.check_model(model, full_check=True)
    stated = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    assert all(stated.get(t.name, t.data_type) == t.data_type for t in model.graph.initializer)
    assert all(np.isfinite(v).all() for v in run(output, dict(np.load(inputs))).values())


BF16_MODELS = ["resnet50", "bert_opset14", "dynamo_vit"]
BFLOAT16 = onnx.TensorProto.BFLOAT16


@pytest.mark.torch
@pytest.mark.parametrize("name", BF16_MODELS)
def test_bf16_real_exports(name: str, tmp_path: Path):
    """--bf16: at least 95% of the float weights in BFLOAT16 (Conv's BF16 form needs opset 22: raised),
    verified under bf16-emulation at the bf16 preset; ONNX Runtime CPU, without BF16 kernels, skipped."""
    path, inputs = exported_with_inputs(name, tmp_path)
    output = tmp_path / f"{name}.bf16.onnx"
    result = api.fix(path, output, fp16=Fp16Options(precision=fp16_ops.BF16), inputs=inputs)
    assert result.written and result.passed and result.fp16.precision == "BF16"
    emulated, cpu = result.verification.verdicts
    assert (emulated.backend, emulated.status, emulated.tolerance.name) == ("bf16-emulation", "passed", "bf16")
    assert cpu.status == "skipped" and "no BF16 kernel" in cpu.reason
    model = onnx.load(output)
    onnx.checker.check_model(model, full_check=True)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {22}
    elements = {BFLOAT16: 0, FLOAT: 0}
    for tensor in model.graph.initializer:
        if tensor.data_type in elements:
            elements[tensor.data_type] += int(np.prod(tensor.dims))
    assert elements[BFLOAT16] >= 0.95 * (elements[BFLOAT16] + elements[FLOAT]), elements


F32 = np.float32


@pytest.mark.parametrize(
    ("values", "only_rounded"),
    [
        (np.array([0.5, -1.0, 0.0, -0.0], F32), True),
        (np.array([1.0, np.nextafter(F32(2.0**-25), F32(1))], F32), True),  # the smallest value FP16 keeps
        (np.array([1.0, 2.0**-25], F32), False),  # flushed to 0
        (np.array([-1e-9], F32), False),
        (np.array([np.nextafter(F32(65520), F32(0))], F32), True),  # rounds to 65504
        (np.array([-65520.0], F32), False),  # inf in FP16
        (np.array([np.nan, 1.0], F32), False),
        (np.array([np.inf], F32), False),
        (np.array(3.0, F32), True),
        (np.zeros(0, F32), True),
        (np.arange(10, dtype=F32)[::2], True),
        (np.array([1.0, 2.0], np.float64), False),  # not float32: the caller counts
        (np.array([1.0, 2.0], np.float16), False),
    ],
)
def test_the_fast_scan_agrees_with_fp16_itself(values: np.ndarray, only_rounded: bool):
    """The converter skips counting for chunks FP16 only rounds; what it decides must be what numpy's own
    float16 conversion does (nothing overflows to inf, nothing nonzero becomes 0) and what NaN/inf imply."""
    from graphdoctor.analysis.fp16_ops import only_rounded_by_fp16

    assert only_rounded_by_fp16(values) is only_rounded
    if values.dtype != np.float32:
        return
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float16)
    finite = np.isfinite(values)
    changed = (np.isinf(rounded) & finite) | ((rounded == 0) & (values != 0))
    assert only_rounded == (bool(finite.all()) and not changed.any())
