"""Graph patterns that crash ONNX Runtime's default session, which graphdoctor's FP16 output must not contain.

Transpose -> MatMul, where the Transpose moves axis 0 into the matrix axes (perm [1, 0, 2]: what dynamo exports of
`nn.MultiheadAttention(batch_first=True)` write before each in_proj) and the MatMul's other operand has a lower
rank (a 2-D weight). ONNX Runtime's CPU provider has no FP16 MatMul kernel and runs it in FP32 behind a Cast it
inserts; since 1.23 a second optimization loop (after FuseFp16InitializerToFp32NodeTransformer) shows
MatmulTransposeFusion the chain Transpose -> Cast -> MatMul. Its ReorderCastAndTranspose swaps Cast and Transpose
(new nodes) before the rank check, which then drops the fusion without marking the graph modified: the graph is
not resolved, the new nodes have no schema, and NchwcTransformer dereferences it (SIGSEGV; microsoft/onnxruntime
#28392). A Cast written in the model, an FP32 MatMul behind an FP16 Transpose, takes the same path on every
release from 1.20 on.

Each test builds the default session (every optimization on) in a child process, so that a crash fails the test
instead of ending pytest, and skips where the installed runtime loads the raw pattern (the runtime bug absent).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor import api
from graphdoctor.fp16 import Fp16Options

SEQ, BATCH, WIDTH, OUT = 5, 2, 8, 6
WEIGHT = np.random.default_rng(0).standard_normal((WIDTH, OUT)).astype(np.float32)
_WEIGHT_TEXT = ", ".join(f"{v:.9g}" for v in WEIGHT.flat)
_WEIGHT_FP16_BITS = ", ".join(str(bits) for bits in WEIGHT.astype(np.float16).view(np.uint16).flat)  # text syntax
_HEADER = '<ir_version: 10, opset_import: ["" : 20]>'

# The exporter's FP32 graph: sequence-first activations transposed to batch-first, then a linear layer.
SOURCE = f"""{_HEADER}
g (float[{SEQ},{BATCH},{WIDTH}] x) => (float[{BATCH},{SEQ},{OUT}] y)
<float[{WIDTH},{OUT}] w = {{{_WEIGHT_TEXT}}}>
{{
    t = Transpose <perm = [1, 0, 2]> (x)
    y = MatMul (t, w)
}}
"""

# The runtime bug without graphdoctor: an FP16 MatMul (ONNX Runtime inserts the Cast) ...
RAW_FP16_MATMUL = f"""{_HEADER}
g (float16[{SEQ},{BATCH},{WIDTH}] x) => (float16[{BATCH},{SEQ},{OUT}] y)
<float16[{WIDTH},{OUT}] w = {{{_WEIGHT_FP16_BITS}}}>
{{
    t = Transpose <perm = [1, 0, 2]> (x)
    y = MatMul (t, w)
}}
"""

# ... and an FP32 MatMul behind an FP16 Transpose (the model holds the Cast).
RAW_CAST_MATMUL = f"""{_HEADER}
g (float16[{SEQ},{BATCH},{WIDTH}] x) => (float[{BATCH},{SEQ},{OUT}] y)
<float[{WIDTH},{OUT}] w = {{{_WEIGHT_TEXT}}}>
{{
    t = Transpose <perm = [1, 0, 2]> (x)
    t32 = Cast <to = 1> (t)
    y = MatMul (t32, w)
}}
"""

# Builds a default CPU session (all optimizations on, as users load models) and runs it on the saved inputs.
_CHILD = """
import sys
import numpy as np
import onnxruntime as ort
model, inputs, output = sys.argv[1:4]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
feeds = dict(np.load(inputs))
np.save(output, session.run(None, feeds)[0])
"""


def run_default_session(model: Path, feeds: dict[str, np.ndarray], workdir: Path) -> np.ndarray:
    """The model's first output from a default session built in a child process; fails on a crash or an error."""
    inputs, output = workdir / "inputs.npz", workdir / "output.npy"
    np.savez(inputs, **feeds)
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(model), str(inputs), str(output)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == 0, (
        f"onnxruntime {ort.__version__} failed building a default session for {model.name} "
        f"(exit status {child.returncode}; negative: killed by that signal): {child.stderr.strip()[-400:]}"
    )
    return np.load(output)


def require_runtime_crash(raw_text: str, workdir: Path) -> None:
    """Skip unless the installed onnxruntime crashes on the raw pattern: the test then documents the bug."""
    raw = save(model_from_text(raw_text), workdir / "raw.onnx")
    load = "import sys, onnxruntime as ort; ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    child = subprocess.run([sys.executable, "-c", load, str(raw)], capture_output=True, check=False)
    if child.returncode >= 0:
        pytest.skip(f"onnxruntime {ort.__version__} loads the raw pattern (exit status {child.returncode})")


@pytest.mark.parametrize(
    ("raw_text", "options"),
    [
        pytest.param(RAW_FP16_MATMUL, Fp16Options(), id="fp16-matmul"),
        pytest.param(RAW_CAST_MATMUL, Fp16Options(keep_fp32=("MatMul",)), id="fp32-matmul-behind-fp16-transpose"),
    ],
)
def test_batch_transpose_into_matmul_loads_by_default(raw_text: str, options: Fp16Options, tmp_path: Path):
    require_runtime_crash(raw_text, tmp_path)
    source = save(model_from_text(SOURCE), tmp_path / "source.onnx")
    converted = tmp_path / "converted.onnx"

    result = api.fix(source, converted, fp16=options, verify=False)

    assert result.written
    x = np.random.default_rng(1).standard_normal((SEQ, BATCH, WIDTH)).astype(np.float32)
    y = run_default_session(converted, {"x": x}, tmp_path)
    np.testing.assert_allclose(y, x.transpose(1, 0, 2) @ WEIGHT, rtol=1e-2, atol=2e-2)


@pytest.mark.torch
def test_dynamo_vit_fp16_loads_by_default(tmp_path: Path):
    from fixtures import torch_exports

    require_runtime_crash(RAW_FP16_MATMUL, tmp_path)
    source = torch_exports.path("dynamo_vit")
    converted = tmp_path / "dynamo_vit.fp16.onnx"

    result = api.fix(source, converted, fp16=Fp16Options(), verify=False)

    assert result.written
    feeds = torch_exports.sample_inputs(source)
    y = run_default_session(converted, feeds, tmp_path)
    reference = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.isfinite(y).all()
    assert np.abs(y - reference).max() <= 1e-2 * np.abs(reference).max()
