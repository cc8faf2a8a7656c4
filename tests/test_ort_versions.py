"""graphdoctor's FP16 BERT (opset 14) loads and runs, with default session options, on every ONNX Runtime listed.

Opt-in: the runtimes are venvs outside this one, listed colon-separated in GRAPHDOCTOR_ORT_VENVS, each holding
onnxruntime and numpy (`python bench/ort_versions.py --install 1.20.0,1.24.4` builds them under
.cache/ort-versions/):

    GRAPHDOCTOR_ORT_VENVS=.cache/ort-versions/1.20.0:.cache/ort-versions/1.24.4 \\
        .venv/bin/python -m pytest -q tests/test_ort_versions.py

DESIGN.md promises loading on 1.20 and newer. ONNX Runtime 1.24.4 refuses the decomposed LayerNorms of this
export once they are FP16 ("Attempting to get index by a name which does not exist: InsertedPrecisionFreeCast_
..." in SimplifiedLayerNormFusion), so on 1.24.4 this test fails until fp16.py stops writing an FP16 Pow whose
exponent is an FP16 constant there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from graphdoctor import api
from graphdoctor.fp16 import Fp16Options

ROOT = Path(__file__).resolve().parents[1]
VENVS = [Path(p) for p in os.environ.get("GRAPHDOCTOR_ORT_VENVS", "").split(os.pathsep) if p]

pytestmark = pytest.mark.skipif(
    not VENVS,
    reason="opt-in: set GRAPHDOCTOR_ORT_VENVS to venvs holding onnxruntime and numpy (colon-separated), "
    "e.g. those `python bench/ort_versions.py --install 1.20.0,1.24.4` builds under .cache/ort-versions/",
)


def _ort_versions() -> ModuleType:
    """bench/ort_versions.py, whose loader and runtime probe this test shares (bench/ is no package)."""
    if "ort_versions" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ort_versions", ROOT / "bench" / "ort_versions.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["ort_versions"] = module  # dataclasses resolve their module by name
        spec.loader.exec_module(module)
    return sys.modules["ort_versions"]


@pytest.fixture(scope="module")
def bert14_fp16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bert_opset14 converted as `graphdoctor fix --fp16` converts it, verification included."""
    from fixtures import torch_exports

    output = tmp_path_factory.mktemp("ort_versions") / "bert_opset14.fp16.onnx"
    result = api.fix(torch_exports.path("bert_opset14"), output, fp16=Fp16Options())
    assert result.written and result.passed
    return output


@pytest.mark.torch
@pytest.mark.parametrize("venv", VENVS, ids=str)
def test_bert_opset14_fp16_loads_and_runs(venv: Path, bert14_fp16: Path):
    from fixtures.torch_exports import SAMPLE_DIMS

    ort_versions = _ort_versions()
    runtime = ort_versions.runtime_at(venv)
    inputs = tuple(ort_versions.input_specs(bert14_fp16, {}, SAMPLE_DIMS))
    job = ort_versions.ModelJob("bert_opset14", bert14_fp16, inputs)
    outcome = ort_versions.check_models([job], runtime)[bert14_fp16]
    assert (outcome.loads, outcome.runs) == (True, True), f"{runtime.label} ({runtime.python}): {outcome.error}"
