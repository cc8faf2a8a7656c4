"""The short cuts of `fix --fp16 --no-verify` keep its safety checks: the default-session child, started before
the rules run, still judges what is written and a crash or refusal there still blocks the write; staged files
reach the disk before the rename; one-node folds are remembered by value, never by node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from fixtures import fp16_cases
from fixtures.handmade import save
from graphdoctor import api, folding
from graphdoctor.errors import GraphDoctorError
from graphdoctor.fp16 import Fp16Options
from graphdoctor.model import load_model, stage_model
from graphdoctor.verify.backends import onnxruntime as ort_backend

# The child as it is, except that it dies of a segmentation fault once it has the model's path (ONNX Runtime's
# optimizers do so on some FP16 graphs).
_CRASHING_SESSION = ort_backend._DEFAULT_SESSION.replace(
    "options = ort.SessionOptions()",
    "import signal; os.kill(os.getpid(), signal.SIGSEGV)\noptions = ort.SessionOptions()",
)


def _model(tmp_path: Path) -> Path:
    return save(fp16_cases.scaled_by(2.0), tmp_path / "model.onnx")


@pytest.mark.parametrize("verify", [False, True])
def test_a_crash_of_the_default_session_blocks_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verify):
    """The child, started before the rules ran, crashes on the staged model: nothing is written, nothing left;
    with the gate too, which passes while the child runs beside it."""
    assert "options = ort.SessionOptions()" in ort_backend._DEFAULT_SESSION
    monkeypatch.setattr(ort_backend, "_DEFAULT_SESSION", _CRASHING_SESSION)
    path, output = _model(tmp_path), tmp_path / "out.onnx"
    with pytest.raises(GraphDoctorError, match=r"ONNX Runtime crashed \(signal 11\).*; nothing was written$"):
        api.fix(path, output, fp16=Fp16Options(), verify=verify)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def _loads_as_deployed(model: Path) -> None:
    check = ort_backend.DeployedSessionCheck()
    try:
        check.submit(model)
        check.verdict()
    finally:
        check.close()


def test_the_default_session_judges_the_model_written(tmp_path: Path):
    """Without the crash the same conversion is written, and loads; the check refuses what ONNX Runtime refuses
    and passes any file name (the path goes to the child as hex)."""
    path, output = _model(tmp_path), tmp_path / "out.onnx"
    result = api.fix(path, output, fp16=Fp16Options(), verify=False)
    assert result.written and output.is_file()
    odd = tmp_path / "new\nline é.onnx"
    odd.write_bytes(output.read_bytes())
    _loads_as_deployed(odd)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(output.read_bytes()[:100])
    with pytest.raises(GraphDoctorError, match="does not load in a default ONNX Runtime session: "):
        _loads_as_deployed(broken)


def test_a_child_never_given_a_model_is_ended(tmp_path: Path):
    """Nothing to convert (a dry run, an FP16 model): the child started early is ended, not left waiting."""
    check = ort_backend.DeployedSessionCheck()
    check.close()
    assert check._child.returncode is not None
    path = _model(tmp_path)
    result = api.fix(path, tmp_path / "out.onnx", fp16=Fp16Options(), dry_run=True)
    assert not result.written and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_staged_files_are_synced_before_the_rename(tmp_path: Path):
    """`commit` syncs what nobody synced; `sync` once is enough."""
    model = load_model(_model(tmp_path)).model
    staged = stage_model(model, tmp_path / "a.onnx", external_data=True)
    assert not staged.synced
    staged.commit()
    assert staged.synced and (tmp_path / "a.onnx").is_file() and (tmp_path / "a.onnx.data").is_file()
    staged = stage_model(model, tmp_path / "b.onnx", external_data=False)
    staged.sync()
    assert staged.synced
    staged.commit()
    assert load_model(tmp_path / "b.onnx").model.graph.num_nodes() == model.graph.num_nodes()


def test_folds_are_remembered_by_value():
    """The same node on other operands is computed anew; what a caller does to a result stays its own; the
    checks on a result (the dtype its node declares) still apply to a remembered one."""
    node = ir.Node("", "Add", [ir.Value(name="a"), ir.Value(name="b")], num_outputs=1)
    versions, budget = (17, 8), 1024
    one = np.array([1, 2], np.int64)
    first = folding.run_node(node, [one, one], versions, budget)
    assert first is not None and first[0].tolist() == [2, 4]
    first[0][:] = 0
    assert folding.run_node(node, [one, one], versions, budget)[0].tolist() == [2, 4]
    assert folding.run_node(node, [one, one * 5], versions, budget)[0].tolist() == [6, 12]
    node.outputs[0].dtype = ir.DataType.INT32  # declared INT32, computed INT64: not folded
    assert folding.run_node(node, [one, one], versions, budget) is None
