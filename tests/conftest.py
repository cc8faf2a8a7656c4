"""Shared test helpers: lint a hand-made model, and the torch-exported fixtures (built once, cached)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from fixtures.handmade import save
from graphdoctor import api
from graphdoctor.rule import Finding


@pytest.fixture
def lint_proto(tmp_path: Path) -> Callable[..., list[Finding]]:
    """Save an ONNX proto under tmp_path and lint it with the selected rules."""

    def run(model: onnx.ModelProto, select: str | list[str], name: str = "model.onnx", **kwargs) -> list[Finding]:
        path = save(model, tmp_path / name)
        selectors = [select] if isinstance(select, str) else select
        return api.lint(path, select=selectors, **kwargs).findings

    return run
