"""GD014 external-data: missing, truncated, mis-sized and hard-linked external data, from file sizes alone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pytest

from fixtures.handmade import function_with_external_constant
from graphdoctor import api
from graphdoctor.cli import main
from graphdoctor.rule import Severity

MiB = 1024 * 1024


def fc_model() -> onnx.ModelProto:
    """A 1024→1024 fully connected layer: 'fc.weight' is 4.0 MiB, 'fc.bias' 4.0 KiB."""
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.random((1024, 1024), dtype=np.float32), "fc.weight")
    bias = onnx.numpy_helper.from_array(rng.random(1024, dtype=np.float32), "fc.bias")
    node = onnx.helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1, name="fc")
    graph = onnx.helper.make_graph(
        [node],
        "fc",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1024])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1024])],
        initializer=[weight, bias],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def save_external(folder: Path, model: onnx.ModelProto | None = None, one_file: bool = True) -> Path:
    """Save with every tensor as external data: one 'weights.bin', or one file per tensor."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        model or fc_model(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=one_file,
        location="weights.bin" if one_file else None,
        size_threshold=0,
    )
    return path


def set_external_entry(path: Path, tensor: str, key: str, value: str) -> None:
    """Rewrite one external_data entry (location, offset, length) of one initializer in the saved model."""
    model = onnx.load_model(path, load_external_data=False)
    [init] = [t for t in model.graph.initializer if t.name == tensor]
    [entry] = [e for e in init.external_data if e.key == key]
    entry.value = value
    onnx.save_model(model, path)


def gd014(path: Path) -> list:
    return api.lint(path, select=["GD014"]).findings


def test_intact_external_data_gives_no_finding(tmp_path):
    assert gd014(save_external(tmp_path)) == []


def test_missing_file_is_one_error_per_file(tmp_path):
    path = save_external(tmp_path)
    (tmp_path / "weights.bin").unlink()
    [finding] = gd014(path)
    assert finding.severity == Severity.ERROR
    assert finding.message == (
        "external data file 'weights.bin' is missing: 2 tensor(s) (4.0 MiB) should be read from it,"
        " e.g. 'fc.weight', 'fc.bias'"
    )
    assert finding.values == ("fc.weight", "fc.bias")


def test_each_missing_file_is_reported(tmp_path):
    path = save_external(tmp_path, one_file=False)
    for name in ("fc.weight", "fc.bias"):
        (tmp_path / name).unlink()
    findings = gd014(path)
    assert sorted(f.data["location"] for f in findings) == ["fc.bias", "fc.weight"]
    assert all(f.message_id == "missing" for f in findings)


def test_truncated_file_names_the_first_tensor_past_its_end(tmp_path):
    path = save_external(tmp_path)
    os.truncate(tmp_path / "weights.bin", 1 * MiB)
    [finding] = gd014(path)
    assert finding.severity == Severity.ERROR
    assert finding.message == (
        "'weights.bin' is 1.0 MiB but tensor 'fc.weight' needs bytes 0..4.0 MiB;"
        " 2 tensors (4.0 MiB) in all run past its end"
    )


def test_file_short_by_a_few_bytes(tmp_path):
    path = save_external(tmp_path)
    data = tmp_path / "weights.bin"
    os.truncate(data, data.stat().st_size - 3)
    [finding] = gd014(path)
    assert finding.data["tensor"] == "fc.bias"
    assert finding.values == ("fc.bias",)


def test_declared_length_that_contradicts_dtype_and_shape(tmp_path):
    path = save_external(tmp_path)
    set_external_entry(path, "fc.bias", "length", "1000")
    [finding] = gd014(path)
    assert finding.message_id == "size_mismatch"
    assert finding.message == (
        "tensor 'fc.bias' declares 1000 B of external data in 'weights.bin' but its dtype and shape need 4.0 KiB"
    )


def test_hard_linked_data_is_a_warning(tmp_path):
    """onnx-ir refuses hard-linked data (a containment bypass); the model still loads, GD014 says why."""
    path = save_external(tmp_path)
    os.link(tmp_path / "weights.bin", tmp_path / "backup.bin")
    [finding] = gd014(path)
    assert finding.severity == Severity.WARNING
    assert finding.message_id == "hard_link"
    assert "'weights.bin' has 2 hard links" in finding.message


def test_location_naming_a_directory(tmp_path):
    """'.' stays inside the folder, so the loader accepts it; its data cannot be read, and GD014 says so."""
    path = save_external(tmp_path)
    set_external_entry(path, "fc.bias", "location", ".")
    [finding] = gd014(path)
    assert finding.message_id == "not_a_file"
    assert finding.values == ("fc.bias",)


def test_external_data_inside_a_function_body_is_checked(tmp_path):
    """Constants in function bodies are tensors like any other: their data is checked too."""
    model = function_with_external_constant("lost.bin")
    path = tmp_path / "model.onnx"
    onnx.save_model(model, path)
    [finding] = gd014(path)
    assert finding.message_id == "missing"
    assert finding.data["location"] == "lost.bin"


@pytest.mark.parametrize("damage", ["delete", "truncate", "hard_link"])
def test_every_rule_survives_broken_external_data_and_the_cli_exits_1(tmp_path, capsys, damage: str):
    """Not a crash: other rules skip unreadable weights, GD014 reports them, `lint` exits 1."""
    path = save_external(tmp_path)
    data = tmp_path / "weights.bin"
    if damage == "delete":
        data.unlink()
    elif damage == "truncate":
        os.truncate(data, 100)
    else:
        os.link(data, tmp_path / "backup.bin")
    assert any(f.code == "GD014" for f in api.lint(path).findings)
    with pytest.raises(SystemExit) as exit_info:
        main(["lint", str(path)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1
    assert "GD014 external-data" in out
    assert err == ""
