"""All rules together on real torch exports: clean models stay clean, the demo shows what it should."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from graphdoctor import api
from graphdoctor.rule import Severity

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[1]
CLEAN_MODELS = ["resnet50", "mobilenet_v3_large", "efficientnet_b0"]


def exported(name: str) -> Path:
    from fixtures import torch_exports

    return torch_exports.path(name)


@pytest.mark.parametrize("name", CLEAN_MODELS)
def test_clean_exports_have_no_warning_or_error(name: str):
    """False positives are bugs: a weight-perturbed torchvision export must pass the gate."""
    result = api.lint(exported(name))
    serious = [f"{f.code} {f.location}: {f.message}" for f in result.findings if f.severity >= Severity.WARNING]
    assert serious == []


def test_lint_never_modifies_the_model():
    path = exported("yolo")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    api.lint(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_demo_model_shows_actionable_findings():
    """The committed example that `make demo` lints: an eps outlier among 57 BatchNorms, a dynamic batch."""
    result = api.lint(ROOT / "examples" / "yolo_demo.onnx")
    codes = {(f.code, f.severity) for f in result.findings}
    assert ("GD004", Severity.WARNING) in codes
    assert ("GD011", Severity.INFO) in codes
    assert not any(f.severity == Severity.ERROR for f in result.findings)
