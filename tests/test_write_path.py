"""What `fix` writes can never hurt the input, always loads wherever it is written, and an interrupt writes
nothing: the write path against outputs that are the input's own files, other folders, sparse initializers,
copies of models that need no fix, and signals during verification."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort
import pytest

from graphdoctor import api
from graphdoctor.errors import GraphDoctorError

FEEDS = {"x": np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)}


def external_model(folder: Path, location: str = "weights.bin") -> Path:
    """MatMul + Add + a no-op Cast (GD002 removes it); every tensor in one data file, the 256-byte bias too
    (tensors under 1 KiB are stored inline when graphdoctor writes: they must not keep the old location)."""
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    bias = onnx.numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b")
    nodes = [
        onnx.helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
        onnx.helper.make_node("Add", ["y", "b"], ["z"], name="add"),
        onnx.helper.make_node("Cast", ["z"], ["o"], to=onnx.TensorProto.FLOAT, name="cast"),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [1, 64])],
        [weight, bias],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run(path: Path) -> np.ndarray:
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, FEEDS)[0]


def external_locations(path: Path) -> set[str]:
    proto = onnx.load(os.fspath(path), load_external_data=False)
    return {
        entry.value for tensor in proto.graph.initializer for entry in tensor.external_data if entry.key == "location"
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if "graphdoctor-tmp" in p.name)


@pytest.mark.parametrize("fp16", [[], ["--fp16"]], ids=["fix", "fix --fp16"])
@pytest.mark.parametrize("verify", [[], ["--no-verify"]], ids=["gate", "no-verify"])
@pytest.mark.parametrize(
    ("location", "output", "extra"),
    [
        ("weights.bin", "weights.bin", []),  # the output is the input's data file
        ("o.onnx.data", "o.onnx", ["--external-data"]),  # the output's data file is the input's
        ("o.onnx.data", "o.onnx", []),  # the same, external data kept because the input has it
    ],
    ids=["onto-its-data", "data-onto-its-data", "data-kept-onto-its-data"],
)
def test_an_output_over_a_file_the_input_reads_is_refused(tmp_path, gd, location, output, extra, verify, fp16):
    model = external_model(tmp_path / "m", location)
    expected = run(model)
    before = snapshot(tmp_path)
    code, out, err = gd("fix", model, "-o", tmp_path / "m" / output, *extra, *verify, *fp16)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "a file the input model reads" in err
    assert snapshot(tmp_path) == before
    assert run(model).tobytes() == expected.tobytes()


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
@pytest.mark.parametrize("to", ["model.onnx", "weights.bin"])
def test_an_output_linked_to_a_file_the_input_reads_is_refused(tmp_path, gd, link, to):
    model = external_model(tmp_path)
    if to == "weights.bin" and link == "hardlink":
        pytest.skip("a hard-linked data file is refused as input already (GD014)")
    target = tmp_path / "out.onnx"
    if link == "symlink":
        target.symlink_to(to)
    else:
        os.link(tmp_path / to, target)
    before = snapshot(tmp_path)
    code, _, err = gd("fix", model, "-o", target)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "is a link to" in err or "is the input model" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("options", [[], ["--no-verify"], ["--no-external-data"], ["--fp16"]])
def test_an_output_in_another_folder_is_self_contained(tmp_path, gd, options):
    model = external_model(tmp_path / "in")
    expected = run(model)
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "fixed.onnx"
    code, _, err = gd("fix", model, "-o", target, *options)
    assert (code, err) == (0, "")
    inline = "--no-external-data" in options
    assert external_locations(target) == (set() if inline else {"fixed.onnx.data"})
    onnx.checker.check_model(os.fspath(target))
    (tmp_path / "in" / "weights.bin").unlink()  # nothing written may still read the input's files
    outputs = run(target)
    if "--fp16" in options:
        assert np.allclose(outputs, expected, atol=0.05)
    else:
        assert outputs.tobytes() == expected.tobytes()


def test_a_model_needing_no_fix_is_not_rewritten(tmp_path, gd):
    model = external_model(tmp_path)
    before = snapshot(tmp_path)
    code, out, _ = gd("fix", model, "--ignore", "GD002")
    assert code == 0 and "nothing written" in out
    code, out, _ = gd("fix", model, "--ignore", "GD002", "--in-place")
    assert code == 0 and "nothing written" in out
    assert snapshot(tmp_path) == before


def test_a_copy_asked_for_with_output_is_verified(tmp_path):
    model = external_model(tmp_path)
    result = api.fix(model, tmp_path / "copy.onnx", ignore=["GD002"])
    assert result.written and not result.changed
    assert result.verification is not None and result.verification.passed
    assert run(tmp_path / "copy.onnx").tobytes() == run(model).tobytes()


def test_missing_external_data_is_refused_before_anything_is_written(tmp_path, gd):
    model = external_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    code, _, err = gd("fix", model, "--no-verify")
    assert code == 2 and "cannot be read" in err and "GD014" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "weights.bin"]


def sparse_model(folder: Path) -> Path:
    values = onnx.numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "S")
    indices = onnx.numpy_helper.from_array(np.array([0, 63], np.int64), "S_idx")
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Add", ["x", "S"], ["y"], name="add"),
            onnx.helper.make_node("Identity", ["y"], ["o"], name="id"),  # GD015 removes it
        ],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [1, 64])],
        sparse_initializer=[onnx.helper.make_sparse_tensor(values, indices, [64])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "sparse.onnx")
    return folder / "sparse.onnx"


@pytest.mark.parametrize("options", [[], ["--no-verify"], ["--fp16"]])
def test_sparse_initializers_are_kept(tmp_path, gd, options):
    model = sparse_model(tmp_path)
    target = tmp_path / "out.onnx"
    code, out, err = gd("fix", model, "-o", target, *options)
    assert (code, err) == (0, ""), out
    written = onnx.load(os.fspath(target))
    assert [s.values.name for s in written.graph.sparse_initializer] == ["S"]
    assert "Identity" not in [n.op_type for n in written.graph.node]
    assert run(target).tobytes() == run(model).tobytes()


INTERRUPTER = textwrap.dedent(
    """
    import os, signal, sys
    from graphdoctor.cli import main
    from graphdoctor.verify.backends import onnxruntime as runners

    run = runners.OnnxruntimeBackend.run

    def interrupted_run(self, *args, **kwargs):  # the signal arrives while the gate runs a model
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return run(self, *args, **kwargs)

    runners.OnnxruntimeBackend.run = interrupted_run
    main(sys.argv[2:])
    """
)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", ["fix", "fix --fp16", "verify"])
def test_an_interrupt_during_verification_is_interrupted_not_a_verdict(tmp_path, signum, command):
    model = external_model(tmp_path)
    before = snapshot(tmp_path)
    args = command.split()
    completed = subprocess.run(
        [sys.executable, "-c", INTERRUPTER, signum, *args, str(model)], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.startswith("graphdoctor: error: interrupted") and len(completed.stderr.splitlines()) == 1
    assert "FAILED" not in completed.stdout and "PASSED" not in completed.stdout
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_refusals_are_graphdoctor_errors_through_the_api(tmp_path):
    model = external_model(tmp_path)
    with pytest.raises(GraphDoctorError, match="a file the input model reads"):
        api.fix(model, tmp_path / "weights.bin")


def test_safe_fixes_are_checked_in_a_default_session_too(tmp_path):
    model = external_model(tmp_path)
    result = api.fix(model)
    names = [verdict.backend for verdict in result.verification.verdicts]
    assert names == ["onnxruntime-cpu-unoptimized", "onnxruntime-cpu"]
    deployed = result.verification.verdicts[1]
    assert deployed.status == "passed" and deployed.tolerance.name == "exact"


def test_a_default_session_difference_is_reported_with_its_size(tmp_path):
    """Two models one ULP apart: the default-session check says by how much, and passes at fp32."""
    from graphdoctor.fix import _as_deployed

    model = external_model(tmp_path / "a")
    proto = onnx.load(os.fspath(model))
    bias = next(t for t in proto.graph.initializer if t.name == "b")
    values = onnx.numpy_helper.to_array(bias).copy()
    values[0] = np.nextafter(values[0], np.float32(np.inf))
    bias.CopyFrom(onnx.numpy_helper.from_array(values, "b"))
    (tmp_path / "b").mkdir()
    onnx.save(proto, tmp_path / "b" / "model.onnx")
    verdict = _as_deployed(model, tmp_path / "b" / "model.onnx", FEEDS, ["GD015"])
    assert verdict.status == "passed" and verdict.tolerance.name == "fp32"
    assert "not bit-exact in ONNX Runtime's default session" in verdict.reason and "GD015" in verdict.reason
    assert 0 < verdict.outputs[0].max_abs < 1e-5


DEMO = Path(__file__).resolve().parent.parent / "examples" / "yolo_demo.onnx"
DEMO_SHAPE = {"images": (1, 3, 64, 64)}


def demo_copy(folder: Path) -> Path:
    target = folder / "demo.onnx"
    target.write_bytes(DEMO.read_bytes())
    return target


def test_large_models_are_verified_a_segment_at_a_time(tmp_path, monkeypatch):
    """Models over 1 GiB run in segments of 256 MiB of weights; the same path, on a real export with a
    64 KiB segment budget, must cut it into many segments and still be bit-exact."""
    from graphdoctor.verify import segmented

    cut = []
    monkeypatch.setattr("graphdoctor.fix.SEGMENTED_ABOVE", 0)
    monkeypatch.setattr(segmented, "SEGMENT_BYTES", 64 * 1024)
    segments = segmented._segments
    monkeypatch.setattr(segmented, "_segments", lambda *args: cut.extend(found := list(segments(*args))) or found)
    result = api.fix(demo_copy(tmp_path), shapes=DEMO_SHAPE)
    [verdict] = result.verification.verdicts  # no default-session run: it would hold every weight at once
    assert result.written and verdict.status == "passed" and verdict.tolerance.name == "exact"
    assert "run in segments" in verdict.precision and len(cut) > 10
    assert run_demo(tmp_path / "demo.fixed.onnx").tobytes() == run_demo(DEMO).tobytes()


def test_large_models_converted_to_fp16_say_what_was_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr("graphdoctor.fix.SEGMENTED_ABOVE", 0)
    monkeypatch.setattr("graphdoctor.verify.segmented.SEGMENT_BYTES", 256 * 1024)
    from graphdoctor.fp16 import Fp16Options

    result = api.fix(demo_copy(tmp_path), fp16=Fp16Options(), shapes=DEMO_SHAPE)
    verdicts = {verdict.backend: verdict for verdict in result.verification.verdicts}
    assert verdicts["onnxruntime-cpu-unoptimized"].status == "passed"
    assert verdicts["fp16-emulation"].status == "skipped" and "over 1 GiB" in verdicts["fp16-emulation"].reason


def test_external_data_is_forced_near_the_protobuf_limit(tmp_path, monkeypatch):
    monkeypatch.setattr("graphdoctor.model.PROTOBUF_LIMIT", 64 * 1024**2 + 64 * 1024)
    result = api.fix(demo_copy(tmp_path), shapes=DEMO_SHAPE)
    assert result.written and (tmp_path / "demo.fixed.onnx.data").stat().st_size > 1024**2
    assert external_locations(tmp_path / "demo.fixed.onnx") == {"demo.fixed.onnx.data"}
    assert run_demo(tmp_path / "demo.fixed.onnx").tobytes() == run_demo(DEMO).tobytes()


def run_demo(path: Path) -> np.ndarray:
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    return session.run(None, {"images": image})[0]


@pytest.mark.parametrize("command", [["fix"], ["fix", "--no-verify"], ["fix", "--fp16"], ["verify"]])
def test_a_malformed_model_is_refused_by_fix_and_verify(tmp_path, gd, command):
    """lint reports it (GD016); what rewrites or runs the model refuses it with the first defect, in one line."""
    weight = onnx.TensorProto(
        name="W", data_type=onnx.TensorProto.FLOAT, dims=[2], raw_data=np.zeros(6, np.float32).tobytes()
    )
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "W"], ["y"], name="add")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        [weight],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    code, out, err = gd(*command, tmp_path / "m.onnx")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "initializer 'W' holds 6 float32 values but its dims [2] need 2" in err
    assert snapshot(tmp_path) == before


def test_what_onnxs_checker_rejects_is_not_written(tmp_path, gd):
    """IR version 2 with opset imports: ONNX Runtime may load it, ONNX's checker (and tools built on it) does not."""
    model = external_model(tmp_path / "in")
    proto = onnx.load(os.fspath(model))
    proto.ir_version = 2
    onnx.save(proto, tmp_path / "in" / "old.onnx")
    code, _, err = gd("fix", tmp_path / "in" / "old.onnx", "-o", tmp_path / "out.onnx", "--no-verify")
    assert code == 2 and "fails ONNX's checker" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.onnx").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("location", "length", "refused"),
    [
        ("out.onnx.data", 64, False),
        ("weights.bin", 64, True),
        ("out.onnx.data", 65, True),
        ("out.onnx.data", None, True),
    ],
)
def test_a_reference_outside_the_own_data_file_is_refused(tmp_path: Path, location, length, refused):
    """The last check before a staged model counts as written: every external reference lies in its own data
    file, within its length (the protobuf as serialized is read, so a reference is judged as it is written)."""
    from graphdoctor.model import check_references

    (tmp_path / "out.onnx.data").write_bytes(bytes(64))
    tensor = onnx.TensorProto(name="W", data_type=onnx.TensorProto.FLOAT, dims=[16])
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entries = {"location": location, "offset": "0", **({"length": str(length)} if length is not None else {})}
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], initializer=[tensor]))
    if not refused:
        check_references(proto, tmp_path / "out.onnx", "out.onnx.data")
        return
    with pytest.raises(GraphDoctorError, match="the model as written would not load: tensor 'W' refers to"):
        check_references(proto, tmp_path / "out.onnx", "out.onnx.data")
