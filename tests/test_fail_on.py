"""`lint --fail-on` as the CI gate it is sold as: each level against models whose worst finding is info, warning
or error; the default level; `--exit-zero`; the `fail-on` key in each place a configuration can hold it, with
the command line over it; invalid levels; and exit 2 (a missing model) over exit 1 (findings).

The rules are pinned with --select and --target so that each model's findings stay exactly what the table
assumes: GD015 identity-nodes (info), GD009 dead-code on an unused initializer (warning), GD010 float64 on a
float64 graph input for TensorRT (error). `test_exit_zero_reports_every_finding` checks that assumption.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.handmade import model_from_text, save

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
PINNED = ("--select", "GD009,GD010,GD015", "--target", "tensorrt-10")

# Each model is named by its worst finding; each adds one finding to the one before.
MODELS = {
    "info": model_from_text(f"""{HEADER}
g (float[4] x) => (float[4] y) {{
    t = Identity(x)
    y = Neg(t)
}}"""),
    "warning": model_from_text(f"""{HEADER}
g (float[4] x) => (float[4] y) <float[4] unused = {{1, 2, 3, 4}}> {{
    t = Identity(x)
    y = Neg(t)
}}"""),
    "error": model_from_text(f"""{HEADER}
g (double[4] x) => (float[4] y) <float[4] unused = {{1, 2, 3, 4}}> {{
    t = Identity(x)
    y = Cast<to=1>(t)
}}"""),
}
SUMMARIES = {
    "info": {"error": 0, "warning": 0, "info": 1},
    "warning": {"error": 0, "warning": 1, "info": 1},
    "error": {"error": 1, "warning": 1, "info": 1},
}

# (--fail-on, model) -> exit code: 1 when a finding is at or above the level.
EXIT_CODES = {
    ("info", "info"): 1,
    ("info", "warning"): 1,
    ("info", "error"): 1,
    ("warning", "info"): 0,
    ("warning", "warning"): 1,
    ("warning", "error"): 1,
    ("error", "info"): 0,
    ("error", "warning"): 0,
    ("error", "error"): 1,
}
MISSING_FIRST_OR_LAST = pytest.mark.parametrize("missing_first", [False, True], ids=["good-missing", "missing-good"])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder holding models/<kind>.onnx, where a configuration file can be put above the models."""
    for kind, model in MODELS.items():
        save(model, tmp_path / "models" / f"{kind}.onnx")
    return tmp_path


def model_path(project: Path, kind: str) -> Path:
    return project / "models" / f"{kind}.onnx"


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("level", "kind"), list(EXIT_CODES), ids=[f"{lvl}-on-{kind}" for lvl, kind in EXIT_CODES])
def test_fail_on_level_decides_the_exit_code(gd, project: Path, level: str, kind: str):
    code, out, _ = gd("lint", model_path(project, kind), *PINNED, "--fail-on", level)
    assert code == EXIT_CODES[level, kind]
    assert out  # the report is printed whether the gate passes or not


@pytest.mark.parametrize("kind", list(MODELS))
def test_default_level_is_warning(gd, project: Path, kind: str):
    code, _, _ = gd("lint", model_path(project, kind), *PINNED)
    assert code == EXIT_CODES["warning", kind]


@pytest.mark.parametrize("kind", list(MODELS))
def test_exit_zero_reports_every_finding(gd, project: Path, kind: str):
    """Under the strictest gate every model fails, so exit 0 comes from --exit-zero alone; the report still
    holds every finding, and its counts are the severities the exit-code table is built on."""
    code, out, err = gd(
        "lint", model_path(project, kind), *PINNED, "--fail-on", "info", "--exit-zero", "--format", "json"
    )
    assert (code, err) == (0, "")
    [report] = json.loads(out)["models"]
    assert report["summary"] == SUMMARIES[kind]


@pytest.mark.parametrize(
    ("file", "text", "kind", "config_code", "cli_level", "cli_code"),
    [
        ("pyproject.toml", '[tool.graphdoctor]\nfail-on = "error"\n', "warning", 0, "warning", 1),
        ("pyproject.toml", '[tool.graphdoctor.lint]\nfail-on = "info"\n', "info", 1, "warning", 0),
        (".graphdoctor.toml", 'fail-on = "error"\n', "warning", 0, "info", 1),
    ],
    ids=["tool.graphdoctor", "tool.graphdoctor.lint", ".graphdoctor.toml"],
)
def test_config_sets_the_level_and_the_command_line_overrides_it(
    gd, project: Path, file: str, text: str, kind: str, config_code: int, cli_level: str, cli_code: int
):
    """Each row's configured level gives another exit code than the default would, and the command line's
    level another than the configured one: an ignored key or an ignored override fails the row."""
    (project / file).write_text(text)
    path = model_path(project, kind)
    assert gd("lint", path, *PINNED)[0] == config_code
    assert gd("lint", path, *PINNED, "--fail-on", cli_level)[0] == cli_code


@pytest.mark.parametrize(
    ("config", "args"),
    [(None, ("--fail-on", "fatal")), ('[tool.graphdoctor]\nfail-on = "fatal"\n', ())],
    ids=["command-line", "pyproject"],
)
def test_invalid_level_exits_two_with_one_line(gd, project: Path, config: str | None, args: tuple[str, ...]):
    if config is not None:
        (project / "pyproject.toml").write_text(config)
    code, out, err = gd("lint", model_path(project, "warning"), *PINNED, *args)
    assert (code, out) == (2, "")
    assert one_line(err)
    assert "fail-on" in err


def lint_with_a_missing_model(gd, project: Path, missing_first: bool) -> tuple[int, str, str]:
    """The warning model (exit 1 on its own) and a file that does not exist, in either order."""
    paths = [model_path(project, "warning"), project / "models" / "missing.onnx"]
    return gd("lint", *(reversed(paths) if missing_first else paths), *PINNED)


@MISSING_FIRST_OR_LAST
def test_missing_model_exit_two_beats_findings_exit_one(gd, project: Path, missing_first: bool):
    code, _, err = lint_with_a_missing_model(gd, project, missing_first)
    assert code == 2
    assert one_line(err)
    assert "missing.onnx" in err


@MISSING_FIRST_OR_LAST
def test_missing_model_still_reports_the_good_models_findings(gd, project: Path, missing_first: bool):
    code, out, _ = lint_with_a_missing_model(gd, project, missing_first)
    assert code == 2
    assert "GD009" in out
