"""Model-against-model verification: same inputs, reference on the oracle, candidate on each backend.

The reference model always runs on ONNX Runtime's CPU provider in its own precision: the oracle. The
candidate (the reference itself when none is given, to compare backends) runs on every selected backend,
and each backend gets its own verdict naming the backend and the precision its arithmetic really had.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from graphdoctor.errors import GraphDoctorError
from graphdoctor.verify.metrics import TensorComparison, Tolerance, compare_arrays
from graphdoctor.verify.runners import Backend, OnnxruntimeBackend

if TYPE_CHECKING:
    from graphdoctor.verify.layerwise import LayerwiseOptions

__all__ = ["BackendVerdict", "VerifyResult", "compare_outputs", "verify_models"]

ORACLE = "onnxruntime-cpu"


@dataclass(frozen=True)
class BackendVerdict:
    backend: str
    precision: str
    status: str  # 'passed' | 'failed' | 'skipped' | 'error'
    reason: str = ""
    outputs: list[TensorComparison] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # extra reports (layer-wise) by name
    tolerance: Tolerance | None = None  # what this backend was judged by (None when it did not run)

    @property
    def ran(self) -> bool:
        return self.status in ("passed", "failed")


@dataclass(frozen=True)
class VerifyResult:
    reference: Path
    candidate: Path
    tolerance: Tolerance
    inputs: Mapping[str, np.ndarray]
    input_source: str  # 'generated (seed 0)' or the file they came from
    verdicts: list[BackendVerdict]
    seconds: float
    reference_runner: str = "onnxruntime-cpu"  # what computed the reference outputs (the oracle)

    @property
    def passed(self) -> bool:
        """At least one backend ran, every backend that ran passed, and none that was available failed to run
        the model (TensorRT's parser rejecting it is a failure to deploy, not a pass). Skipped ones don't count."""
        ran = [v for v in self.verdicts if v.ran]
        return bool(ran) and all(v.status in ("passed", "skipped") for v in self.verdicts)


def compare_outputs(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], tolerance: Tolerance
) -> list[TensorComparison]:
    """One comparison per reference output; a candidate lacking one fails on it."""
    comparisons = []
    for name, expected in reference.items():
        if name not in candidate:
            comparisons.append(
                TensorComparison(
                    name,
                    tuple(expected.shape),
                    False,
                    float("inf"),
                    float("inf"),
                    0.0,
                    1.0,
                    0,
                    0,
                    reason="the candidate has no output of this name",
                )
            )
            continue
        comparisons.append(compare_arrays(name, expected, np.asarray(candidate[name]), tolerance))
    return comparisons


def verify_models(
    reference: Path,
    candidate: Path,
    backends: Sequence[Backend],
    inputs: Mapping[str, np.ndarray],
    input_source: str,
    tolerance: Tolerance | Callable[[Backend], Tolerance],
    reference_outputs: Mapping[str, np.ndarray] | None = None,
    layerwise: LayerwiseOptions | None = None,
    oracle: Backend | None = None,
) -> VerifyResult:
    """`tolerance` is one for all backends, or a function choosing one per backend (FP16 backends get the
    fp16 preset under 'auto'); `VerifyResult.tolerance` is the first backend's.

    `reference_outputs`, when given, replace the oracle's run of `reference` (a torch.export program
    computed them): the candidate is then compared with those on each backend. `oracle` runs the reference
    (default: ONNX Runtime CPU as deployed; `fix`'s gate runs it with graph optimizations and weight prepacking off).
    `layerwise` adds, to each verdict whose backend ran, the comparison of the tensors both ONNX models
    share (details["layerwise"])."""
    start = time.perf_counter()
    expected = reference_outputs
    if expected is None:
        expected = (oracle or OnnxruntimeBackend(ORACLE)).run(reference, inputs)
    tolerance_of = tolerance if callable(tolerance) else (lambda _backend: tolerance)
    verdicts = [_verdict(backend, candidate, inputs, expected, tolerance_of(backend)) for backend in backends]
    if layerwise is not None and reference_outputs is None:
        verdicts = [
            _with_layerwise(verdict, backend, reference, candidate, inputs, tolerance_of(backend), layerwise)
            for verdict, backend in zip(verdicts, backends, strict=True)
        ]
    first = tolerance_of(backends[0])
    return VerifyResult(reference, candidate, first, inputs, input_source, verdicts, time.perf_counter() - start)


def _verdict(
    backend: Backend,
    candidate: Path,
    inputs: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    tolerance: Tolerance,
) -> BackendVerdict:
    reason = backend.unavailable_reason()
    if reason:
        return BackendVerdict(backend.name, backend.precision, "skipped", reason)
    try:
        actual = backend.run(candidate, inputs)
    except GraphDoctorError as error:
        return BackendVerdict(backend.name, backend.precision, "error", str(error))
    outputs = compare_outputs(expected, actual, tolerance)
    failed = [c for c in outputs if not c.passed]
    status = "failed" if failed else "passed"
    reason = f"{len(failed)} of {len(outputs)} outputs differ beyond {tolerance.describe()}" if failed else ""
    details = _explain(backend, candidate, inputs, actual) if failed else {}
    reason += "".join(f"; {d['message']}" for d in details.values() if isinstance(d, dict) and "message" in d)
    return BackendVerdict(backend.name, backend.precision, status, reason, outputs, details, tolerance)


def _explain(backend: Backend, candidate: Path, inputs: Mapping[str, np.ndarray], actual) -> dict:
    """A backend may say why it failed: `explain(candidate, inputs, actual) -> dict | None`, details by name
    (fp16-emulation names the first node whose output overflows); a 'message' in one joins the reason."""
    explain = getattr(backend, "explain", None)
    if explain is None:
        return {}
    try:
        return dict(explain(candidate, inputs, actual) or {})
    except GraphDoctorError as error:
        return {"explain_error": str(error)}


def _with_layerwise(
    verdict: BackendVerdict,
    backend: Backend,
    reference: Path,
    candidate: Path,
    inputs: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    options: LayerwiseOptions,
) -> BackendVerdict:
    """The verdict with the layer-wise report (plain data) attached, when its backend ran; the outputs'
    verdict stands as it is (the report locates a difference, it does not add one)."""
    if not verdict.ran:
        return verdict
    from graphdoctor.verify.layerwise import layerwise_details

    details = layerwise_details(reference, candidate, backend, inputs, tolerance, options)
    return dataclasses.replace(verdict, details={**verdict.details, "layerwise": details})
