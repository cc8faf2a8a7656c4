"""Model-against-model verification: same inputs, reference on the oracle, candidate on each backend.

The reference model always runs on ONNX Runtime's CPU provider in its own precision: the oracle. The
candidate (the reference itself when none is given, to compare backends) runs on every selected backend,
and each backend gets its own verdict naming the backend and the precision its arithmetic really had.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphdoctor.errors import GraphDoctorError
from graphdoctor.verify.metrics import TensorComparison, Tolerance, compare_arrays
from graphdoctor.verify.runners import Backend, OnnxruntimeBackend

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

    @property
    def passed(self) -> bool:
        """At least one backend ran, and every backend that ran passed."""
        ran = [v for v in self.verdicts if v.ran]
        return bool(ran) and all(v.status == "passed" for v in ran)


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
    tolerance: Tolerance,
) -> VerifyResult:
    start = time.perf_counter()
    expected = OnnxruntimeBackend(ORACLE).run(reference, inputs)
    verdicts = [_verdict(backend, candidate, inputs, expected, tolerance) for backend in backends]
    return VerifyResult(reference, candidate, tolerance, inputs, input_source, verdicts, time.perf_counter() - start)


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
    return BackendVerdict(backend.name, backend.precision, status, reason, outputs)
