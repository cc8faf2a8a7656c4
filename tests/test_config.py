"""[tool.graphdoctor] configuration: discovery, precedence, rule options, and strictness."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize(
    ("value", "accepted"),
    [('"big"', False), ("true", False), ("1.5", False), ("[1]", False), ("4096", True)],
)
def test_rule_option_values_take_their_defaults_type(project: Path, gd, value: str, accepted: bool):
    (project / "pyproject.toml").write_text(f"[tool.graphdoctor.rules.duplicate-initializers]\nmin-bytes = {value}\n")
    code, _, err = gd("lint", project / "models" / "m.onnx", "--exit-zero")
    if accepted:
        assert (code, err) == (0, "")
    else:
        assert_one_line((code, "", err), "")
        assert "option min-bytes takes int values" in err


def test_broken_toml_is_one_line_exit_two(project: Path):
    (project / "pyproject.toml").write_text("[tool.graphdoctor\n")
    assert lint(project / "models" / "m.onnx") == 2


def assert_one_line(result: tuple[int, str, str], message: str) -> None:
    code, out, err = result
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and err.startswith("graphdoctor: error: ")
    assert "Traceback" not in err and "internal error" not in err
    assert message in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"select = ['GD010']\n\xff\xfe\n", "cannot read configuration: not UTF-8 text (byte 0xff at offset 19)"),
        (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "cannot read configuration: values nested too deeply to parse"),
        (b"a = " + b"{b = " * 5000 + b"1" + b"}" * 5000 + b"\n", "cannot read configuration: values nested too deeply"),
        (b"# padding\n" * 200_000, "cannot read configuration: 2,000,000 bytes, over the 1,048,576 read"),
        (b"select = 5\n", "select in [tool.graphdoctor] must be a string or a list of strings, got 5"),
        (b"select = ['GD010', 3]\n", "select in [tool.graphdoctor] must be a string or a list of strings"),
        (b"[fix]\nunsafe-fixes = 'no'\n", "unsafe-fixes in [tool.graphdoctor.fix] must be true or false, got 'no'"),
        (b"lint = 5\n", "[tool.graphdoctor.lint] must be a table, got int 5"),
        (b"fail-on = 3\n", "fail-on in [tool.graphdoctor] must be a string, got 3"),
    ],
)
def test_hostile_config_files_are_one_line(gd, tmp_path: Path, content: bytes, message: str):
    model = save(MODEL, tmp_path / "m.onnx")
    (tmp_path / "given.toml").write_bytes(content)
    assert_one_line(gd("lint", model, "--config", tmp_path / "given.toml"), f"given.toml: {message}")


def test_config_paths_that_are_not_files(gd, tmp_path: Path):
    model = save(MODEL, tmp_path / "m.onnx")
    os.mkfifo(tmp_path / "pipe.toml")
    assert_one_line(gd("lint", model, "--config", tmp_path / "pipe.toml"), "is not a regular file")
    assert_one_line(gd("lint", model, "--config", tmp_path), "is a directory")
    assert_one_line(gd("lint", model, "--config", "missing.toml"), "missing.toml: cannot read configuration: No such")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[tool.graphdoctor\n", "pyproject.toml: cannot read configuration: Expected ']'"),
        (b"tool = 5\n", "pyproject.toml: [tool] must be a table, got int 5"),
        (b"[tool]\ngraphdoctor = 'yes'\n", "pyproject.toml: [tool.graphdoctor] must be a table, got str 'yes'"),
        (b"\xc3\x28 = 1\n", "pyproject.toml: cannot read configuration: not UTF-8 text (byte 0xc3 at offset 0)"),
    ],
)
def test_broken_pyproject_found_above_the_model_is_named(gd, project: Path, content: bytes, message: str):
    (project / "pyproject.toml").write_bytes(content)
    result = gd("lint", project / "models" / "m.onnx")
    assert_one_line(result, message)
    assert str(project / "pyproject.toml") in result[2]


def test_a_fifo_on_the_way_up_is_skipped(project: Path):
    """find_config only reads regular files: a pyproject.toml that is a pipe is not a configuration."""
    os.mkfifo(project / "pyproject.toml")
    assert find_config(project / "models" / "m.onnx") is None
