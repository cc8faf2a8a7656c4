"""Many models in one lint: folders searched, each model in its own process, a bad one reported in place."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor import api
from graphdoctor.batch import find_models, lint_paths
from graphdoctor.errors import GraphDoctorError

DOUBLE = model_from_text(  # GD010: a Cast to float64 (a warning) feeding a float64 output (an error)
    '<ir_version: 8, opset_import: ["" : 17]>\ng (float[2] x) => (double[2] y) {\n  y = Cast<to = 11>(x)\n}'
)
CLEAN = model_from_text('<ir_version: 8, opset_import: ["" : 17]>\ng (float[2] x) => (float[2] y) {\n  y = Relu(x)\n}')


@pytest.fixture
def zoo(tmp_path: Path) -> Path:
    """zoo/a.onnx, zoo/sub/b.onnx (+ its external data file), zoo/.hidden/c.onnx, zoo/notes.txt, and a
    symlinked folder looping back to zoo."""
    save(DOUBLE, tmp_path / "zoo" / "a.onnx")
    save(CLEAN, tmp_path / "zoo" / "sub" / "b.onnx")
    (tmp_path / "zoo" / "sub" / "b.onnx.data").write_bytes(b"\0" * 8)
    save(CLEAN, tmp_path / "zoo" / ".hidden" / "c.onnx")
    (tmp_path / "zoo" / "notes.txt").write_text("not a model")
    (tmp_path / "zoo" / "loop").symlink_to(tmp_path / "zoo", target_is_directory=True)
    return tmp_path / "zoo"


def test_folders_are_searched_for_onnx_files_only(zoo: Path):
    assert find_models([zoo]) == [zoo / "a.onnx", zoo / "sub" / "b.onnx"]


def test_files_and_folders_keep_their_order_each_model_once(zoo: Path):
    missing = zoo / "missing.onnx"
    assert find_models([zoo / "sub" / "b.onnx", zoo, missing]) == [zoo / "sub" / "b.onnx", zoo / "a.onnx", missing]


def test_a_folder_without_models_is_one_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GraphDoctorError, match="no ONNX model"):
        lint_paths([tmp_path / "empty"], api.lint)


def test_each_model_is_linted_in_its_place_and_a_missing_one_fails_alone(zoo: Path):
    results = lint_paths([zoo, zoo / "missing.onnx"], api.lint, jobs=2, select=["GD010"])
    assert [type(r).__name__ for r in results] == ["LintResult", "LintResult", "LintFailure"]
    assert {f.message_id for f in results[0].findings} == {"graph_io", "cast"}
    assert results[1].findings == []
    assert results[2].exit_code == 2 and "missing.onnx" in results[2].error


def _crash_on_b(path: Path, **options):
    """A lint that kills its own process on b.onnx: what a segfaulting library does to the process."""
    if path.name == "b.onnx":
        os.kill(os.getpid(), signal.SIGKILL)
    return api.lint(path, **options)


def test_a_model_that_kills_its_process_costs_only_its_own_result(zoo: Path):
    results = lint_paths([zoo], _crash_on_b, jobs=1, select=["GD010"])
    assert isinstance(results[0], api.LintResult) and results[0].findings
    assert isinstance(results[1], api.LintFailure)
    assert "killed by signal 9" in results[1].error


def test_cli_reports_every_model_and_exits_with_the_worst_code(zoo: Path, gd):
    code, out, err = gd("lint", zoo, zoo / "missing.onnx", "--select", "GD010", "--format", "json")
    assert code == 2  # the missing model (2) beats the findings (1)
    document = json.loads(out)
    assert [Path(m["path"]).name for m in document["models"]] == ["a.onnx", "b.onnx", "missing.onnx"]
    assert document["models"][2]["exit_code"] == 2
    assert document["summary"] == {"models": 3, "not_linted": 1, "error": 1, "warning": 1, "info": 0}
    assert len(err.strip().splitlines()) == 1 and "missing.onnx" in err


def test_cli_exit_code_without_failures_is_the_gate(zoo: Path, gd):
    assert gd("lint", zoo, "--select", "GD010", "--format", "json")[0] == 1
    assert gd("lint", zoo, "--select", "GD010", "--format", "json", "--fail-on", "error", "--ignore", "GD010")[0] == 0


def test_report_to_a_file_is_written_whole(zoo: Path, gd, tmp_path: Path):
    report = tmp_path / "report.json"
    code, out, _ = gd("lint", zoo / "a.onnx", "--select", "GD010", "--format", "json", "--output", report)
    assert code == 1 and out == ""
    assert json.loads(report.read_text())["summary"]["error"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_report_path_that_is_a_folder_is_refused(zoo: Path, gd, tmp_path: Path):
    code, _, err = gd("lint", zoo / "a.onnx", "--format", "json", "--output", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
