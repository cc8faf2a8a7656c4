"""Shared test helpers: lint a hand-made model, and the torch-exported fixtures (built once, cached)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
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


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def gd(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run the console entry point in-process: exit code, stdout, stderr."""
    from graphdoctor.cli import main

    def run(*args: str | Path) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run


def exported_with_inputs(name: str, tmp_path: Path) -> tuple[Path, Path]:
    """A cached torch-export fixture and its sample inputs saved as an .npz beside the test's files."""
    from fixtures import torch_exports

    path = torch_exports.path(name)
    inputs = tmp_path / f"{name}.npz"
    np.savez(inputs, **torch_exports.sample_inputs(path))
    return path, inputs
