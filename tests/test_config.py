"""[tool.graphdoctor] configuration: discovery, precedence, rule options, and strictness."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor.config import find_config, load_config
from graphdoctor.errors import GraphDoctorError

MODEL = model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (double[N,4] y) {
    y = Cast<to=11>(x)
}""")


def lint(model: Path, *args: str) -> int:
    command = [sys.executable, "-m", "graphdoctor", "lint", str(model), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False).returncode


@pytest.fixture
def project(tmp_path: Path) -> Path:
    save(MODEL, tmp_path / "models" / "m.onnx")
    return tmp_path


def test_pyproject_is_found_above_the_model(project: Path):
    (project / "pyproject.toml").write_text('[tool.graphdoctor]\nignore = ["GD010"]\n')
    assert find_config(project / "models" / "m.onnx") == project / "pyproject.toml"
    assert lint(project / "models" / "m.onnx") == 0


def test_pyproject_without_our_table_is_skipped(project: Path):
    (project / "pyproject.toml").write_text("[tool.black]\nline-length = 90\n")
    assert find_config(project / "models") is None


def test_command_line_overrides_the_file(project: Path):
    (project / "pyproject.toml").write_text('[tool.graphdoctor.lint]\nfail-on = "error"\nignore = "GD010"\n')
    assert lint(project / "models" / "m.onnx") == 0
    assert lint(project / "models" / "m.onnx", "--ignore", "GD011") == 1


def test_dedicated_file_wins_and_takes_top_level_keys(project: Path):
    (project / "pyproject.toml").write_text('[tool.graphdoctor]\nignore = ["GD011"]\n')
    (project / "models" / ".graphdoctor.toml").write_text('select = ["GD011"]\n')
    config = load_config(find_config(project / "models" / "m.onnx"), "lint")
    assert config.settings == {"select": ["GD011"]}


def test_unknown_keys_are_errors(project: Path):
    (project / "pyproject.toml").write_text('[tool.graphdoctor]\nignroe = ["GD010"]\n')
    with pytest.raises(GraphDoctorError, match="ignroe"):
        load_config(project / "pyproject.toml", "lint")
    assert lint(project / "models" / "m.onnx") == 2


def test_rule_options_are_validated(project: Path):
    (project / "pyproject.toml").write_text("[tool.graphdoctor.rules.float64]\nthreshold = 3\n")
    config = load_config(project / "pyproject.toml", "lint")
    assert config.rule_options == {"float64": {"threshold": 3}}
    assert lint(project / "models" / "m.onnx") == 2  # float64 takes no options


def test_broken_toml_is_one_line_exit_two(project: Path):
    (project / "pyproject.toml").write_text("[tool.graphdoctor\n")
    assert lint(project / "models" / "m.onnx") == 2
