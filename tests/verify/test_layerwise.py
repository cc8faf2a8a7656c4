"""Layer-wise verification on real ONNX Runtime runs: the first diverging node and why, the error's growth,
the memory bound (tensors and bytes fetched per run), and the reports.

Hand-made pairs (fixtures.divergence) hold one cause each and run in milliseconds; the YOLO pair reproduces
the YOLO-World report and ResNet-50 checks the peak RSS, both on real exports (marked torch).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures import divergence
from graphdoctor.errors import GraphDoctorError
from graphdoctor.model import load_model
from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend
from graphdoctor.verify.inputs import generate_inputs
from graphdoctor.verify.layerwise import (
    LayerwiseOptions,
    LayerwiseReport,
    compare_layerwise,
    fit_count,
    layerwise_details,
)
from graphdoctor.verify.metrics import PRESETS

ROOT = Path(__file__).resolve().parents[2]
Pair = tuple[Path, Path]


class RecordingBackend(OnnxruntimeBackend):
    """ONNX Runtime CPU, recording what each run fetched: (tensor count, bytes)."""

    def __init__(self) -> None:
        super().__init__("onnxruntime-cpu")
        self.calls: list[tuple[int, int]] = []

    def run(
        self, model: Path, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        results = super().run(model, inputs, outputs)
        self.calls.append((len(results), sum(a.nbytes for a in results.values())))
        return results


class FailingBackend(OnnxruntimeBackend):
    """A backend that cannot expose intermediate tensors."""

    def __init__(self) -> None:
        super().__init__("onnxruntime-cpu")

    def run(self, model, inputs, outputs=None):
        if outputs is not None:
            raise GraphDoctorError("this backend cannot expose intermediate tensors")
        return super().run(model, inputs)


def layerwise(pair: Pair, preset: str = "fp32", **kwargs) -> LayerwiseReport:
    """The report with statistics in the graph; without options, also checked against the one that fetches
    every tensor: both ways must give the same answers."""
    reference, candidate = pair
    inputs = generate_inputs(load_model(reference).model, seed=0)
    backend = kwargs.pop("backend", OnnxruntimeBackend("onnxruntime-cpu"))
    report = compare_layerwise(reference, candidate, backend, inputs, PRESETS[preset], **kwargs)
    if "options" not in kwargs:
        fetched = compare_layerwise(
            reference, candidate, backend, inputs, PRESETS[preset], LayerwiseOptions(in_graph=False), **kwargs
        )
        assert report.in_graph > 0 and fetched.in_graph == 0
        assert_same_answers(report, fetched)
    return report


def assert_same_answers(in_graph: LayerwiseReport, fetched: LayerwiseReport) -> None:
    """The same records (numbers to float32's precision), divergences, hints, path and stages."""
    assert [r.name for r in in_graph.records] == [r.name for r in fetched.records]
    for ours, theirs in zip(in_graph.records, fetched.records, strict=True):
        assert (ours.node, ours.op, ours.shape, ours.passed) == (theirs.node, theirs.op, theirs.shape, theirs.passed)
        assert (ours.ref_nonfinite, ours.cand_nonfinite) == (theirs.ref_nonfinite, theirs.cand_nonfinite)
        # the same up to FP32 rounding of the values (the session in the graph runs at the basic level, with
        # other kernels than the fused ones): a difference moves by FP32 rounding of the values it comes from
        scale = max(theirs.ref_absmax, 1.0)
        assert ours.max_abs == pytest.approx(theirs.max_abs, abs=1e-5 * scale)
        assert ours.rel_err == pytest.approx(theirs.rel_err, rel=1e-2, abs=1e-6)
        assert ours.ref_absmax == pytest.approx(theirs.ref_absmax, rel=1e-5)
        assert ours.mismatch == pytest.approx(theirs.mismatch, abs=1e-2)  # elements at the threshold
        assert ours.cosine == pytest.approx(theirs.cosine, abs=1e-7)
        assert (ours.growth is None) == (theirs.growth is None)
    for kind in ("first_divergence", "first_nonfinite"):
        ours, theirs = getattr(in_graph, kind), getattr(fetched, kind)
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert (ours.record.name, ours.hints) == (theirs.record.name, theirs.hints)
    assert (in_graph.first_difference, in_graph.path) == (fetched.first_difference, fetched.path)


@pytest.fixture
def chain(tmp_path: Path) -> Pair:
    return divergence.chain_pair(tmp_path)


# --- locating the first divergence --------------------------------------------------------------------------


def test_first_divergence_is_the_node_whose_weight_changed(chain: Pair):
    report = layerwise(chain)
    first = report.first_divergence
    assert first is not None
    assert (first.record.node, first.record.op, first.record.name) == ("mm2", "MatMul", "h2")
    assert first.inputs == (("a1", 0.0),)  # its input is exact: the error starts here
    assert first.record.growth == math.inf
    assert [r.name for r in report.records] == ["h1", "a1", "h2", "a2", "h3", "y"]  # topological order
    assert [r.passed for r in report.records[:2]] == [True, True]
    assert report.path == ["h2", "a2", "h3", "y"]
    assert report.first_nonfinite is None
    assert report.first_difference == "h2"


def test_rounded_weight_hint_names_the_constant(chain: Pair):
    (hint,) = layerwise(chain).first_divergence.hints
    assert hint.startswith("constant input 'W2' differs from the reference's: 4096 of 4096 values")
    assert hint.endswith("the candidate holds the reference's values rounded to FP16")


def test_identical_models_have_no_divergence(chain: Pair):
    report = layerwise((chain[0], chain[0]))
    assert report.first_divergence is None and report.first_nonfinite is None
    assert report.first_difference is None and report.path == []
    assert len(report.records) == 6
    assert all(r.passed and r.rel_err == 0.0 and r.max_abs == 0.0 for r in report.records)
    assert all(r.growth is None for r in report.records)  # nothing differs, nothing grows


def test_clamped_constant_hint_and_fp16_range(tmp_path: Path):
    first = layerwise(divergence.clamped_constant_pair(tmp_path)).first_divergence
    assert first.record.node == "mul_big"
    assert first.hints == (
        "constant input 'scale' differs from the reference's: 3 of 4 values, max abs diff 9e+04; the candidate's"
        " values are clamped to [0.5, 10000] (reference: [0.5, 100000])",
        f"the reference's output 'big' reaches |x| = {first.record.ref_absmax:.3g}, beyond FP16's max 65504:"
        " FP16 overflows to inf there",
    )


def test_normalization_eps_hint(tmp_path: Path):
    first = layerwise(divergence.eps_pair(tmp_path)).first_divergence
    assert (first.record.node, first.record.op) == ("bn", "BatchNormalization")
    assert first.inputs == (("c", 0.0),)
    assert first.hints == ("BatchNormalization epsilon is 0.001 in the reference, 1e-05 in the candidate",)


def test_fp16_overflow_is_the_first_non_finite_output(tmp_path: Path):
    report = layerwise(divergence.overflow_pair(tmp_path), preset="fp16")
    nonfinite = report.first_nonfinite
    assert nonfinite is not None and nonfinite.record.node == "norm"
    assert nonfinite.record.cand_nonfinite == 64 and nonfinite.record.ref_nonfinite == 0
    assert nonfinite.record.rel_err == math.inf and nonfinite.record.growth == math.inf
    assert nonfinite.hints == (
        "input 'big_back' is 'big' cast to float16 and back to float32 ('to_fp16', 'to_fp32'): rounded to"
        " float16 there, values beyond 65504 become inf",
        f"the reference's input 'big' reaches |x| = {report.records[0].ref_absmax:.3g}, beyond FP16's max 65504:"
        " FP16 overflows to inf there",
    )
    assert report.first_divergence.record.name == "y"  # the same tensor leaves tolerance first


# --- bounded memory -----------------------------------------------------------------------------------------


def test_each_run_fits_the_byte_budget(tmp_path: Path):
    """Six tensors of 64 KiB per model; a 256 KiB budget for both models fits two tensors per run."""
    pair = divergence.chain_pair(tmp_path, rows=64, width=256)
    oracle, backend = RecordingBackend(), RecordingBackend()
    budget = 256 * 1024
    options = LayerwiseOptions(budget_bytes=budget, in_graph=False)
    report = layerwise(pair, backend=backend, oracle=oracle, options=options)
    assert len(report.records) == 6 and report.runs == 3
    assert [count for count, _ in oracle.calls] == [count for count, _ in backend.calls] == [2, 2, 2]
    per_run = [ref + cand for (_, ref), (_, cand) in zip(oracle.calls, backend.calls, strict=True)]
    assert max(per_run) <= budget
    assert report.max_bytes_per_run == max(per_run) and report.max_tensors_per_run == 2


def test_layers_per_run_overrides_the_budget(chain: Pair):
    oracle, backend = RecordingBackend(), RecordingBackend()
    report = layerwise(chain, backend=backend, oracle=oracle, options=LayerwiseOptions(layers_per_run=4))
    assert [count for count, _ in oracle.calls] == [count for count, _ in backend.calls] == [4, 2]
    assert report.runs == 2 and report.first_divergence.record.node == "mm2"  # slicing changes no result


def test_a_run_over_the_budget_says_so(chain: Pair):
    """Each 1 KiB tensor pair is larger than a 1 KiB budget: it runs alone, and the report does not claim
    the budget was kept."""
    report = layerwise(chain, options=LayerwiseOptions(budget_bytes=1024, in_graph=False))
    assert report.max_tensors_per_run == 1 and report.max_bytes_per_run > 1024
    assert report.over_budget == "one tensor pair alone holds 2.0 KiB"
    assert layerwise(chain, options=LayerwiseOptions(in_graph=False)).over_budget == ""


def test_a_tensor_larger_than_the_budget_runs_alone():
    assert fit_count([10, 100, 5, 5], budget_bytes=20) == 1
    assert fit_count([100, 5], budget_bytes=20) == 1
    assert fit_count([5, 5, 15], budget_bytes=20) == 2
    assert fit_count([5, 5], budget_bytes=20) == 2


def test_layers_per_run_must_be_positive(chain: Pair):
    with pytest.raises(GraphDoctorError, match="at least 1"):
        layerwise(chain, options=LayerwiseOptions(layers_per_run=0))


def test_a_backend_that_cannot_expose_tensors_gives_an_error_not_a_crash(chain: Pair):
    inputs = generate_inputs(load_model(chain[0]).model, seed=0)
    details = layerwise_details(*chain, FailingBackend(), inputs, PRESETS["fp32"], LayerwiseOptions(in_graph=False))
    assert details == {"error": "this backend cannot expose intermediate tensors"}


def test_no_progress_bar_without_a_terminal(chain: Pair, capsys: pytest.CaptureFixture[str]):
    layerwise(chain)
    assert capsys.readouterr().err == ""
    layerwise(chain, options=LayerwiseOptions(progress=True))  # forced on: rich draws it, nothing breaks


# --- reports ------------------------------------------------------------------------------------------------


def test_cli_text_report(gd, chain: Pair):
    code, out, err = gd("verify", *chain, "--layerwise")
    assert (code, err) == (1, "")
    assert "layer-wise: 6 shared tensors compared in 1 run" in out
    assert "first divergence: node 'mm2' (MatMul) → 'h2'[4, 64]: rel err " in out
    assert "its inputs agree exactly: the error starts at this node" in out
    assert "hint: constant input 'W2' differs" in out
    table = out[out.index("along the diverging path:") :].splitlines()[1:7]
    assert [line.split()[0] for line in table] == ["node", "relu1", "mm2", "relu2", "mm3", "add"]
    assert table[1].endswith("(input)") and table[2].split()[-1] == "new"


def test_cli_text_report_of_identical_models(gd, chain: Pair):
    code, out, _ = gd("verify", chain[0], chain[0], "--layerwise", "--layers-per-run", "2")
    assert code == 0
    assert "layer-wise: 6 shared tensors compared in 3 runs (at most 2 tensors" in out
    assert "--layers-per-run 2): all within tolerance" in out
    assert "first divergence" not in out


def test_cli_json_report_holds_every_tensor(gd, chain: Pair):
    code, out, _ = gd("verify", *chain, "--layerwise", "--format", "json")
    assert code == 1
    details = json.loads(out, parse_constant=_reject)["verify"]["verdicts"][0]["details"]["layerwise"]
    assert details["first_divergence"]["node"] == "mm2"
    assert details["first_divergence"]["inputs"] == [{"name": "a1", "rel_err": 0.0}]
    assert [t["name"] for t in details["tensors"]] == ["h1", "a1", "h2", "a2", "h3", "y"]
    assert details["tensors"][2]["growth"] == "inf"  # JSON has no inf: written as a string
    assert {type(v) for t in details["tensors"] for v in t.values()} <= {str, bool, int, float, list, type(None)}


def _reject(constant: str) -> None:
    raise ValueError(f"non-standard JSON constant {constant}")


def test_layerwise_refuses_a_torch_reference(gd, chain: Pair):
    code, _, err = gd("verify", chain[0], "--torch", chain[0], "--layerwise")
    assert code == 2 and "--layerwise" in err


def test_lint_never_imports_the_layerwise_modules():
    script = textwrap.dedent(
        f"""
        import io, sys
        from graphdoctor import api
        from graphdoctor.report import text
        text.render_lint([api.lint({str(ROOT / "examples" / "yolo_demo.onnx")!r})], io.StringIO(), color=False)
        loaded = [m for m in ("graphdoctor.verify.layerwise", "graphdoctor.report.layerwise") if m in sys.modules]
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)


# --- real exports -------------------------------------------------------------------------------------------


@pytest.mark.torch
def test_yolo_pair_names_the_rounded_conv_and_the_growth_per_stage():
    """The YOLO-World report: the error starts at the first FP16-rounded Conv and grows stage by stage."""
    report = layerwise(divergence.yolo_pair())
    first = report.first_divergence
    assert first.record.node == divergence.YOLO_FIRST_PERTURBED
    assert all(error == 0.0 for _, error in first.inputs) and first.record.growth == math.inf
    assert "'model.2.cv1.conv.weight'" in first.hints[0] and first.hints[0].endswith("rounded to FP16")
    assert len(report.path) == 8 and report.path[0] == first.record.name
    stages = {s["stage"]: s for s in report.stages}
    assert stages["/model.0"]["rel_err"] == stages["/model.1"]["rel_err"] == 0.0
    assert stages["/model.2"]["beyond_tolerance"] == stages["/model.2"]["tensors"]
    backbone = [stages[f"/model.{i}"]["rel_err"] for i in (2, 4, 6, 8)]
    assert backbone == sorted(backbone) and backbone[-1] > 2.5 * first.record.rel_err  # grows stage by stage


@pytest.mark.torch
def test_yolo_pair_text_report_shows_the_stages(gd):
    code, out, _ = gd("verify", *divergence.yolo_pair(), "--layerwise")
    assert code == 1
    assert f"first divergence: node '{divergence.YOLO_FIRST_PERTURBED}' (Conv)" in out
    assert "error per stage (worst tensor of each) (stages before /model.2 are exact):" in out
    assert len(out.splitlines()) < 60  # a screenful, not one line per tensor


@pytest.mark.torch
def test_resnet50_layerwise_peak_rss_stays_under_1_gb():
    """Polygraphy's `--onnx-outputs '*'` takes 2.17 GB on this model; slices keep it well below 1 GB.

    The peak is the child's own VmHWM: getrusage's ru_maxrss carries the parent's peak across fork and exec,
    so under a large pytest process it would measure pytest."""
    from fixtures import torch_exports

    model = torch_exports.path("resnet50")
    script = textwrap.dedent(
        f"""
        import json, re
        from graphdoctor import api
        result = api.verify({str(model)!r}, {str(model)!r}, layerwise=True)
        details = result.verdicts[0].details["layerwise"]
        with open("/proc/self/status") as status:
            peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) * 1024
        print(json.dumps({{"peak": peak, "compared": details["tensors_compared"],
                          "beyond": details["tensors_beyond_tolerance"]}}))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, capture_output=True, text=True)
    numbers = json.loads(run.stdout.splitlines()[-1])
    assert numbers["compared"] > 100 and numbers["beyond"] == 0
    assert numbers["peak"] < 2**30, f"peak RSS {numbers['peak'] / 2**20:.0f} MiB"


# --- integer tensors: compared exactly --------------------------------------------------------------------

N_IDS = 16384
SCALE = 1.0009765625  # 1 + 2^-10: exact in FP16; x * SCALE is not, for x beyond 2048


def bucket_model(half: bool, table: np.ndarray) -> onnx.ModelProto:
    """x int64 -> Cast float -> Mul SCALE -> Floor -> Cast int64 (ids) -> Gather(table, ids) -> y float32: an
    integer computed in float, as T5's bucket ids are. `half` is the same graph FP16-ized by hand: the
    float part in float16 under the same tensor names, y cast back to float32."""
    from onnx import TensorProto, helper, numpy_helper

    dtype = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    numpy_dtype = np.float16 if half else np.float32
    initializers = [
        numpy_helper.from_array(np.array(SCALE, numpy_dtype), "scale"),
        numpy_helper.from_array(table.astype(numpy_dtype), "table"),
    ]
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], name="to_float", to=dtype),
        helper.make_node("Mul", ["xf", "scale"], ["scaled"], name="mul"),
        helper.make_node("Floor", ["scaled"], ["floored"], name="floor"),
        helper.make_node("Cast", ["floored"], ["ids"], name="to_ids", to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "ids"], ["y_half" if half else "y"], name="gather"),
    ]
    if half:
        nodes.append(helper.make_node("Cast", ["y_half"], ["y"], name="to_fp32", to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "buckets",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [N_IDS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N_IDS])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def bucket_pair(folder: Path, table: np.ndarray) -> tuple[Pair, dict[str, np.ndarray], int]:
    """The FP32 model, its FP16 version, inputs 2048.. where FP16 rounds x, and how many ids FP16 moves."""
    paths = []
    for half in (False, True):
        path = folder / f"buckets{'_fp16' if half else ''}.onnx"
        onnx.save_model(bucket_model(half, table), path)
        paths.append(path)
    x = np.arange(2048, 2048 + N_IDS, dtype=np.int64)
    exact = np.floor(x * SCALE)
    rounded = np.floor(x.astype(np.float16) * np.float16(SCALE))
    return (paths[0], paths[1]), {"x": x}, int(np.count_nonzero(exact != rounded))


def fp16_emulation():
    """The gate's FP16 backend: every FP16 tensor rounded as a GPU stores it. ONNX Runtime CPU is no oracle here:
    it runs Mul and Floor of the FP16 model in FP32 and rounds only where a tensor is exposed."""
    from graphdoctor.verify.backends import get_backend

    return get_backend("fp16-emulation")


def test_integer_tensor_computed_in_float_is_compared_exactly(tmp_path: Path):
    table = np.random.default_rng(0).standard_normal(20000).astype(np.float32)
    pair, inputs, moved = bucket_pair(tmp_path, table)
    report = compare_layerwise(*pair, fp16_emulation(), inputs, PRESETS["fp16"])
    by_name = {r.name: r for r in report.records}
    assert moved > 0
    assert by_name["floored"].passed  # off by one at ~2000 is within the fp16 tolerance: a float check misses it
    ids = by_name["ids"]
    assert not ids.passed and ids.op == "Cast"
    assert ids.reason == f"integer tensor: {moved} of {N_IDS} elements differ (exact comparison)"
    assert not by_name["y"].passed  # the gathered floats differ too
    assert report.first_divergence.record.name == "ids"  # the first tensor beyond tolerance is the integer one


def test_integer_tensors_narrowed_to_int32_compare_by_value(tmp_path: Path):
    """A fix may narrow an intermediate int64 to int32 under the same name: its values are what is compared."""
    table = np.random.default_rng(0).standard_normal(20000).astype(np.float32)
    (reference, _), inputs, _ = bucket_pair(tmp_path, table)
    narrowed = bucket_model(False, table)
    cast = next(node for node in narrowed.graph.node if node.name == "to_ids")
    cast.attribute[0].i = onnx.TensorProto.INT32
    onnx.save_model(narrowed, tmp_path / "narrowed.onnx")
    backend = OnnxruntimeBackend("onnxruntime-cpu")
    report = compare_layerwise(reference, tmp_path / "narrowed.onnx", backend, inputs, PRESETS["exact"])
    ids = next(r for r in report.records if r.name == "ids")
    assert ids.passed and ids.max_abs == 0.0 and report.first_divergence is None


def test_gate_fails_on_a_moved_integer_even_when_the_float_outputs_pass(tmp_path: Path):
    from graphdoctor.verify.compare import verify_models

    smooth = np.arange(20000, dtype=np.float32)  # table[i] = i: a moved id moves y by 1 in ~2000, within fp16
    pair, inputs, moved = bucket_pair(tmp_path, smooth)
    backend = fp16_emulation()
    result = verify_models(*pair, [backend], inputs, "test", PRESETS["fp16"])
    (verdict,) = result.verdicts
    assert all(c.passed for c in verdict.outputs)  # the float output alone would pass
    assert verdict.status == "failed" and not result.passed
    integers = verdict.details["integer_tensors"]
    assert integers["compared"] == 1 and [d["name"] for d in integers["differing"]] == ["ids"]
    assert verdict.reason == (
        "1 of 1 integer tensors computed from floats differ; first 'ids' (Cast 'to_ids'):"
        f" integer tensor: {moved} of {N_IDS} elements differ (exact comparison)"
    )
    cpu = OnnxruntimeBackend("onnxruntime-cpu")  # the FP32 model against itself (emulation would round it)
    same = verify_models(pair[0], pair[0], [cpu], inputs, "test", PRESETS["fp16"]).verdicts[0]
    assert same.status == "passed" and same.details["integer_tensors"] == {"compared": 1, "differing": []}


def test_string_tensors_are_left_out_and_counted(tmp_path: Path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"], name="id")],
        "strings",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.STRING, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.STRING, [2])],
    )
    path = tmp_path / "strings.onnx"
    onnx.save_model(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    inputs = {"x": np.array(["a", "b"], dtype=object)}
    report = compare_layerwise(path, path, OnnxruntimeBackend("onnxruntime-cpu"), inputs, PRESETS["exact"])
    assert report.records == [] and report.skipped == {"strings": 1}
