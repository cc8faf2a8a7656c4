"""`verify model.onnx --torch model.pt2`: the torch.export program is the reference, the ONNX model exported
from it runs on each backend. A faithful export passes at fp32; an ONNX model whose weight was changed fails."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from graphdoctor import api
from graphdoctor.cli import main
from graphdoctor.errors import GraphDoctorError

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class TwoHeads(torch.nn.Module):
    """Two inputs, a tuple holding a dict: outputs must come out flattened in the exporter's order."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 12)

    def forward(self, x: torch.Tensor, scale: torch.Tensor):
        hidden = torch.relu(self.fc(x))
        return hidden * scale.sum(), {"probs": hidden.softmax(-1)}


class OneHead(torch.nn.Module):
    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x.sum(-1) * scale.sum()


def export(module: torch.nn.Module, folder: Path, dynamo: bool = True) -> tuple[Path, Path]:
    """The module saved both ways: torch.export.save (.pt2) and torch.onnx.export (.onnx)."""
    args = (torch.randn(2, 8), torch.randn(2, 12))
    stem = "model" if dynamo else "model_ts"
    program, onnx_path = folder / f"{stem}.pt2", folder / f"{stem}.onnx"
    torch.export.save(torch.export.export(module, args), program)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, args, onnx_path, dynamo=True, external_data=False, verbose=False)
        else:
            torch.onnx.export(module, args, onnx_path, dynamo=False, input_names=["x", "scale"])
    return program, onnx_path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("torch_reference")
    torch.manual_seed(0)
    program, dynamo_onnx = export(TwoHeads().eval(), folder)
    _, torchscript_onnx = export(TwoHeads().eval(), folder, dynamo=False)  # other weights: not used with program
    perturbed = onnx.load(dynamo_onnx)
    weight = max(perturbed.graph.initializer, key=lambda init: np.prod(init.dims))
    changed = onnx.numpy_helper.to_array(weight) + np.float32(0.1)
    weight.CopyFrom(onnx.numpy_helper.from_array(changed, weight.name))
    onnx.save(perturbed, folder / "perturbed.onnx")
    one_folder = folder / "one"
    one_folder.mkdir()
    _, one_head = export(OneHead(), one_folder)
    return {
        "program": program,
        "onnx": dynamo_onnx,
        "torchscript": torchscript_onnx,
        "perturbed": folder / "perturbed.onnx",
        "one_head": one_head,
    }


def test_a_faithful_export_passes_at_fp32(exported):
    result = api.verify(exported["onnx"], torch_program=exported["program"])
    assert (result.reference, result.candidate) == (exported["program"], exported["onnx"])
    assert result.reference_runner == "torch-cpu" and result.tolerance.name == "fp32"
    [cpu] = result.verdicts
    assert cpu.status == "passed", cpu.reason
    onnx_outputs = [output.name for output in onnx.load(exported["onnx"]).graph.output]
    assert [c.name for c in cpu.outputs] == onnx_outputs and len(onnx_outputs) == 2
    assert all(c.max_abs < 1e-5 for c in cpu.outputs)


def test_a_changed_weight_fails(exported):
    result = api.verify(exported["perturbed"], torch_program=exported["program"])
    [cpu] = result.verdicts
    assert cpu.status == "failed" and not result.passed
    assert all(not c.passed for c in cpu.outputs)


def test_the_cli_reports_torch_as_the_reference(exported, capsys):
    with pytest.raises(SystemExit) as passed:
        main(["verify", str(exported["onnx"]), "--torch", str(exported["program"])])
    assert passed.value.code == 0
    assert f"verify {exported['program']} (reference, on torch-cpu) vs {exported['onnx']}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as failed:
        main(["verify", str(exported["perturbed"]), "--torch", str(exported["program"]), "--format", "json"])
    assert failed.value.code == 1
    report = json.loads(capsys.readouterr().out)["verify"]
    assert report["reference_runner"] == "torch-cpu" and report["passed"] is False


def test_inputs_go_by_position_whatever_the_exporter_named_them(exported):
    """The TorchScript exporter names things its own way; only the order of inputs and outputs matters.
    Its model was exported from other weights, so it must differ."""
    result = api.verify(exported["torchscript"], torch_program=exported["program"])
    [cpu] = result.verdicts
    assert cpu.status == "failed"
    assert [c.shape for c in cpu.outputs] == [(2, 12), (2, 12)]


def test_output_count_mismatch_is_an_input_error(exported):
    with pytest.raises(GraphDoctorError, match="returns 2 tensors, the ONNX model has 1 outputs"):
        api.verify(exported["one_head"], torch_program=exported["program"])


@pytest.mark.parametrize("program", ["onnx", "missing"])
def test_a_file_that_is_no_program_exits_two_with_one_line(exported, capsys, program):
    path = exported["onnx"] if program == "onnx" else exported["program"].with_name("missing.pt2")
    with pytest.raises(SystemExit) as error:
        main(["verify", str(exported["onnx"]), "--torch", str(path)])
    err = capsys.readouterr().err
    assert error.value.code == 2 and len(err.strip().splitlines()) == 1
    assert ("not a torch.export program" if program == "onnx" else "no such file") in err
