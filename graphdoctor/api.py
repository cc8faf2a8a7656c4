"""The Python API: what the CLI calls, and what users call from their own scripts.

from graphdoctor.api import lint
result = lint("model.onnx", ignore=["GD011"])
for finding in result.findings: print(finding.code, finding.message)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphdoctor.analysis import Analysis
from graphdoctor.engine import run_rules, select_rules
from graphdoctor.model import load_model
from graphdoctor.rule import Finding, Rule, Severity, load_rules

if TYPE_CHECKING:
    from graphdoctor.verify.compare import VerifyResult

__all__ = ["LintResult", "lint", "verify"]


@dataclass(frozen=True)
class LintResult:
    path: Path
    findings: list[Finding]
    rules: list[Rule]  # the rules that ran
    seconds: float
    file_size: int

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def fails(self, fail_on: Severity) -> bool:
        return any(f.severity >= fail_on for f in self.findings)


def lint(
    path: str | os.PathLike[str],
    *,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    rule_options: Mapping[str, Mapping[str, Any]] | None = None,
    rules: Iterable[Rule] | None = None,
    deep: bool = False,
    inputs: str | os.PathLike[str] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = 0,
) -> LintResult:
    """Load the model at `path` (lazily; the file is never modified) and run the selected rules on it.

    `deep` adds the slow rules (they run other tools); `inputs` (a file) or `shapes` give sample inputs,
    generated with `seed` when only shapes are given, so rules can check activations, not only constants.
    """
    start = time.perf_counter()
    chosen = [
        r for r in select_rules(load_rules() if rules is None else rules, select, ignore) if deep or not r.meta.deep
    ]
    loaded = load_model(path)
    samples = _sample_inputs(loaded.model, inputs, shapes, seed) if inputs is not None or shapes else None
    analysis = Analysis(loaded.model, loaded.path, loaded.file_size, samples)
    findings = run_rules(chosen, analysis, rule_options)
    return LintResult(
        path=loaded.path,
        findings=findings,
        rules=chosen,
        seconds=time.perf_counter() - start,
        file_size=loaded.file_size,
    )


def _sample_inputs(model, inputs, shapes, seed: int):
    from graphdoctor.verify import inputs as verify_inputs

    if inputs is not None:
        return verify_inputs.bind_inputs(model, verify_inputs.load_inputs(inputs))
    return verify_inputs.generate_inputs(model, seed=seed, shapes=shapes)


def verify(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str] | None = None,
    *,
    backends: Iterable[str] = ("onnxruntime-cpu",),
    preset: str = "auto",
    atol: float | None = None,
    rtol: float | None = None,
    min_cosine: float | None = None,
    inputs: str | os.PathLike[str] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    save_inputs: str | os.PathLike[str] | None = None,
) -> VerifyResult:
    """Run `reference` on ONNX Runtime CPU and `candidate` (default: the reference itself) on each backend,
    on the same inputs, and compare every output at the tolerance preset ('auto': fp16 when either model
    holds FLOAT16 tensors or a backend computes in FP16, else fp32)."""
    from graphdoctor.verify import inputs as verify_inputs
    from graphdoctor.verify.compare import verify_models
    from graphdoctor.verify.metrics import tolerance_for
    from graphdoctor.verify.runners import get_backend

    ref = load_model(reference)
    cand = load_model(candidate) if candidate is not None else ref
    chosen = [get_backend(name) for name in backends]
    if inputs is not None:
        feeds = verify_inputs.bind_inputs(ref.model, verify_inputs.load_inputs(inputs))
        source = str(inputs)
    else:
        feeds = verify_inputs.generate_inputs(ref.model, seed=seed, shapes=shapes)
        source = f"generated (seed {seed})"
    if save_inputs is not None:
        verify_inputs.save_inputs(feeds, save_inputs)
    if preset == "auto":
        preset = "fp16" if _holds_fp16(ref.model, cand.model) or any(b.computes_fp16 for b in chosen) else "fp32"
    tolerance = tolerance_for(preset, atol, rtol, min_cosine)
    return verify_models(ref.path, cand.path, chosen, feeds, source, tolerance)


def _holds_fp16(*models) -> bool:
    import onnx_ir as ir

    return any(
        value.dtype == ir.DataType.FLOAT16
        for model in models
        for value in (*model.graph.inputs, *model.graph.outputs, *model.graph.initializers.values())
    ) or any(
        node.op_type == "Cast" and node.attributes.get_int("to") == ir.DataType.FLOAT16
        for model in models
        for node in model.graph
    )
