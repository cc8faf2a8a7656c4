"""Rule registration: built-ins and third-party plugins load through the same entry-point group."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor import api
from graphdoctor.engine import select_rules
from graphdoctor.errors import GraphDoctorError
from graphdoctor.rule import FixSafety, Message, RuleKind, RuleMeta, Severity, load_rules

PLUGIN = '''
"""ACME001 relu-count: counts Relu nodes.

What it finds
    Relu nodes.
Why it matters
    It proves third-party rules are first-class.
How to fix
    Nothing to fix.
"""
from graphdoctor.rule import Message, RuleKind, RuleMeta, Severity

META = RuleMeta(
    code="ACME001", name="relu-count", kind=RuleKind.SUGGESTION, severity=Severity.INFO,
    summary="counts Relu nodes", messages={"count": Message("{count} Relu node(s)")},
)

def check(model, ctx):
    relus = list(ctx.analysis.nodes("Relu"))
    if relus:
        yield ctx.report("count", node=relus[0], count=len(relus))
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real installed distribution (a .dist-info on sys.path) exposing one rule."""
    (tmp_path / "acme_rules.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "graphdoctor_acme-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: graphdoctor-acme\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[graphdoctor.rules]\nacme = acme_rules\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_builtins_are_sorted_and_documented():
    rules = load_rules()
    codes = [r.code for r in rules]
    assert codes == sorted(codes)
    assert "GD010" in codes
    assert all(not r.plugin for r in rules if r.code.startswith("GD"))


def test_plugin_rule_is_first_class(plugin, tmp_path: Path):
    rules = load_rules()
    [acme] = [r for r in rules if r.code == "ACME001"]
    assert acme.qualified_name == "acme/relu-count"
    model = save(
        model_from_text('<ir_version: 8, opset_import: ["" : 17]>\ng (float[2] x) => (float[2] y) { y = Relu(x) }'),
        tmp_path / "relu.onnx",
    )
    [finding] = api.lint(model, select=["acme/relu-count"]).findings
    assert (finding.code, finding.node, finding.message) == ("ACME001", "Relu_0", "1 Relu node(s)")
    assert [r.code for r in select_rules(rules, ["ACME"])] == ["ACME001"]


def test_meta_is_validated():
    base = dict(
        code="GD999",
        name="x-y",
        kind=RuleKind.PROBLEM,
        severity=Severity.ERROR,
        summary="s",
        messages={"m": Message("t")},
        fix=FixSafety.SAFE,
    )
    RuleMeta(**base)
    for bad in ({"code": "gd1"}, {"name": "Not_Kebab"}, {"messages": {}}):
        with pytest.raises(ValueError):
            RuleMeta(**{**base, **bad})


def test_undeclared_message_and_missing_placeholder_raise(tmp_path: Path):
    from graphdoctor.analysis import Analysis
    from graphdoctor.engine import RuleContext
    from graphdoctor.model import load_model

    [rule] = [r for r in load_rules() if r.code == "GD010"]
    path = save(
        model_from_text('<ir_version: 8, opset_import: ["" : 17]>\ng (float[2] x) => (float[2] y) { y = Relu(x) }'),
        tmp_path / "m.onnx",
    )
    ctx = RuleContext(rule, Analysis(load_model(path).model))
    with pytest.raises(ValueError, match="undeclared"):
        ctx.report("nope")
    with pytest.raises(ValueError, match="lacks"):
        ctx.report("cast")


def test_unknown_selector_is_an_error():
    with pytest.raises(GraphDoctorError, match="GD999"):
        select_rules(load_rules(), ["GD999"])


def test_options_dataclass_defaults_are_frozen_copies():
    rules = [r for r in load_rules() if r.meta.options is not None]
    for rule in rules:
        assert dataclasses.is_dataclass(rule.meta.options)


def test_wheel_ships_every_rule_module(tmp_path: Path):
    """`package_dir` maps graphdoctor.rules to rules/: a regular (non-editable) install must carry them all."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"  # a clean copy: no stale build/ from earlier builds
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    for package in ("graphdoctor", "rules"):
        shutil.copytree(root / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source)]
    subprocess.run([*command, "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    [wheel] = tmp_path.glob("graphdoctor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("graphdoctor/rules/") for n in names if n.startswith("graphdoctor/rules/")}
    expected = {p.name for p in (root / "rules").glob("*.py")}
    assert shipped == expected
    packages = {
        f"{p.parent.relative_to(root).as_posix()}/__init__.py" for p in (root / "graphdoctor").rglob("__init__.py")
    }
    assert packages <= names  # every subpackage is listed in setup.cfg
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "builtin = graphdoctor.rules" in zipfile.ZipFile(wheel).read(entry_points).decode()
