"""What the README tells users to paste into their CI works: the pre-commit hook definition and the README's
YAML snippets parse, name a hook that exists, and their commands run as written on real models."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest

from fixtures.handmade import model_from_text, save

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
GOOD = '<ir_version: 8, opset_import: ["" : 17]>\ng (float[4] x) => (float[4] y) { [neg] y = Neg(x) }'
UNUSED_WEIGHT = (  # GD009, a warning: fails the default --fail-on
    '<ir_version: 8, opset_import: ["" : 17]>\ng (float[4] x) => (float[4] y) <float[2] w = {1.0, 2.0}> '
    "{ [neg] y = Neg(x) }"
)


def readme_yaml_blocks() -> list:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", README, flags=re.S)]


def console_scripts() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    entries = parser["options.entry_points"]["console_scripts"]
    return {line.split("=")[0].strip() for line in entries.strip().splitlines()}


def test_pre_commit_hook_runs_graphdoctor_lint_on_onnx_files_only():
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "graphdoctor-lint"
    assert shlex.split(hook["entry"])[:2] == ["graphdoctor", "lint"]
    assert "graphdoctor" in console_scripts()
    files = re.compile(hook["files"])
    assert files.search("models/yolo.onnx")
    assert not any(files.search(name) for name in ("yolo.onnx.data", "weights.bin", "model.pt"))


def test_readme_snippets_parse_and_name_the_hook():
    blocks = readme_yaml_blocks()
    hooks = [hook for block in blocks if "repos" in block for repo in block["repos"] for hook in repo["hooks"]]
    assert {hook["id"] for hook in hooks} == {"graphdoctor-lint"}
    [workflow] = [block for block in blocks if "jobs" in block]
    steps = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    assert any("--format github" in run for run in steps) and any("--format sarif" in run for run in steps)


@pytest.mark.parametrize(("text", "code"), [(GOOD, 0), (UNUSED_WEIGHT, 1)])
def test_hook_entry_with_the_readme_args_gates_a_commit(gd, tmp_path, text, code):
    """pre-commit runs `entry args... FILES`: the README's args, two staged models, the exit code decides."""
    [hook] = [h for block in readme_yaml_blocks() if "repos" in block for r in block["repos"] for h in r["hooks"]][:1]
    models = [save(model_from_text(GOOD), tmp_path / "a.onnx"), save(model_from_text(text), tmp_path / "b.onnx")]
    assert gd("lint", *hook.get("args", []), *models)[0] == code


@pytest.mark.parametrize("run_line", ["sarif", "github"])
def test_workflow_commands_run_on_a_folder(gd, tmp_path, monkeypatch, run_line):
    """The workflow's lint steps, run as written in a checkout that holds models/."""
    [workflow] = [block for block in readme_yaml_blocks() if "jobs" in block]
    [command] = [
        step["run"]
        for job in workflow["jobs"].values()
        for step in job["steps"]
        if f"--format {run_line}" in step.get("run", "")
    ]
    save(model_from_text(UNUSED_WEIGHT), tmp_path / "models" / "nested" / "b.onnx")
    monkeypatch.chdir(tmp_path)
    code, out, _ = gd(*shlex.split(command)[1:])
    if run_line == "github":
        assert code == 1
        assert out.startswith("::warning file=models/nested/b.onnx,title=GD009")
    else:
        assert code == 0  # --exit-zero: the upload step still gets its file
        assert '"ruleId": "GD009"' in (tmp_path / "graphdoctor.sarif").read_text()
