"""Model-against-model verification: same inputs, reference on the oracle, candidate on each backend.

The reference model always runs on ONNX Runtime's CPU provider in its own precision: the oracle. The
candidate (the reference itself when none is given, to compare backends) runs on every selected backend,
and each backend gets its own verdict naming the backend and the precision its arithmetic really had.

Every output is compared, whatever it holds: float tensors at the tolerance, integer, bool and string tensors
exactly, sequences element by element, optionals and maps too (`compare_values`). The integer and bool
tensors both models compute from float values (indices, counts, bucket ids) are compared exactly as well:
an FP16 conversion that moves one of them fails, even where the float outputs stay within tolerance.

A verdict is 'failed' only when numbers were compared and were off. A backend that cannot run the candidate,
or an oracle that cannot run the reference, gives 'error', its reason "<backend> cannot run the candidate
model: <why>" (or "the reference model"), and `cannot_run` names which of the two it was.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from graphdoctor.errors import GraphDoctorError, first_line
from graphdoctor.verify.backends import Backend, BackendUnavailable
from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend
from graphdoctor.verify.metrics import TensorComparison, Tolerance, compare_values

if TYPE_CHECKING:
    from graphdoctor.verify.detections import DetectOptions
    from graphdoctor.verify.layerwise import LayerwiseOptions

__all__ = ["BackendVerdict", "DetectionTask", "VerifyResult", "compare_outputs", "detection_task", "verify_models"]

ORACLE = "onnxruntime-cpu"


@dataclass(frozen=True)
class BackendVerdict:
    backend: str
    precision: str
    status: str  # 'passed' | 'failed' | 'skipped' | 'error'
    reason: str = ""
    outputs: list[TensorComparison] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # extra reports (layer-wise, integer tensors) by name
    tolerance: Tolerance | None = None  # what this backend was judged by (None when it did not run)
    cannot_run: str = ""  # status 'error' from a run: 'candidate' or 'reference', the model that could not run
    placement: str = ""  # where the backend ran the nodes, where it knows ("52 kernels: 50 on CUDA, 2 on CPU")

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
    """One comparison per reference output (tensors, sequences, optionals, maps); a candidate lacking one fails
    on it."""
    comparisons = []
    for name, expected in reference.items():
        if name not in candidate:
            shape = tuple(np.shape(expected)) if isinstance(expected, np.ndarray) else ()
            missing = TensorComparison(name, shape, False, float("inf"), float("inf"), 0.0, 1.0, 0, 0)
            comparisons.append(dataclasses.replace(missing, reason="the candidate has no output of this name"))
            continue
        comparisons.append(compare_values(name, expected, candidate[name], tolerance))
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
    integers: bool = True,
    detect: DetectionTask | None = None,
    expected: Mapping[str, np.ndarray] | None = None,
) -> VerifyResult:
    """`tolerance` is one for all backends, or a function choosing one per backend (FP16 backends get the
    fp16 preset under 'auto'); `VerifyResult.tolerance` is the first backend's.

    `reference_outputs`, when given, replace the oracle's run of `reference` (a torch.export program
    computed them): the candidate is then compared with those on each backend. `oracle` runs the reference
    (default: ONNX Runtime CPU as deployed; `fix`'s gate runs it with graph optimizations and weight prepacking off).
    `layerwise` adds, to each verdict whose backend ran, the comparison of the tensors both ONNX models
    share (details["layerwise"]). `integers` compares, on each backend that ran, the integer and bool tensors
    both ONNX models compute from float values, exactly (details["integer_tensors"]); a difference fails.

    `detect` compares what both models detect (details["detections"]): the detect preset then decides each
    verdict that has detections to compare, the tensor metrics stay beside it.

    `expected`, when given, are the outputs of `reference` on `inputs` computed already on ONNX Runtime CPU
    (fix's range statistics run computes them): the oracle does not run it again for them.

    A reference the oracle cannot run gives every available backend a verdict 'error', not an exception."""
    start = time.perf_counter()
    tolerance_of = tolerance if callable(tolerance) else (lambda _backend: tolerance)
    first = tolerance_of(backends[0])
    oracle = oracle or OnnxruntimeBackend(ORACLE)
    expected = reference_outputs if reference_outputs is not None else expected
    if expected is None:
        try:
            expected = oracle.run(reference, inputs)
        except GraphDoctorError as error:
            verdicts = [_without_reference(backend, oracle.name, error) for backend in backends]
            return VerifyResult(
                reference, candidate, first, inputs, input_source, verdicts, time.perf_counter() - start
            )
    verdicts = [
        _verdict(backend, reference, candidate, inputs, expected, tolerance_of(backend), detect) for backend in backends
    ]
    if integers and reference_outputs is None:
        verdicts = [
            _with_integer_tensors(verdict, backend, reference, candidate, inputs, oracle)
            for verdict, backend in zip(verdicts, backends, strict=True)
        ]
    if layerwise is not None and reference_outputs is None:
        verdicts = [
            _with_layerwise(verdict, backend, reference, candidate, inputs, tolerance_of(backend), layerwise)
            for verdict, backend in zip(verdicts, backends, strict=True)
        ]
    return VerifyResult(reference, candidate, first, inputs, input_source, verdicts, time.perf_counter() - start)


def _verdict(
    backend: Backend,
    reference: Path,
    candidate: Path,
    inputs: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    detect: DetectionTask | None = None,
) -> BackendVerdict:
    reason = backend.unavailable_reason()
    if reason:
        return BackendVerdict(backend.name, backend.precision, "skipped", reason)
    try:
        actual = backend.run(candidate, inputs)
    except BackendUnavailable as error:
        return BackendVerdict(backend.name, backend.precision, "skipped", str(error))
    except GraphDoctorError as error:
        return _limit_of_backend(backend, reference, candidate, inputs) or _unrunnable(
            backend, backend.name, "candidate", error
        )
    placement = backend.placement() or ""
    outputs = compare_outputs(expected, actual, tolerance)
    failed = [c for c in outputs if not c.passed]
    status = "failed" if failed else "passed"
    reason = f"{len(failed)} of {len(outputs)} outputs differ beyond {tolerance.describe()}" if failed else ""
    details = _explain(backend, candidate, inputs, actual) if failed else {}
    reason += "".join(f"; {d['message']}" for d in details.values() if isinstance(d, dict) and "message" in d)
    if detect is not None:
        status, reason, details = _judged_by_detections(detect, expected, actual, status, reason, details)
    return BackendVerdict(
        backend.name, backend.precision, status, reason, outputs, details, tolerance, placement=placement
    )


@dataclass(frozen=True)
class DetectionTask:
    """`verify --task detect`: how to read detections, and where the inputs came from (one name per image)."""

    options: DetectOptions
    sources: tuple[str, ...] = ()
    images: tuple = ()  # per image, the preprocessed input as uint8 HWC RGB, for the report's drawings
    auto: bool = False  # not asked for: the model was recognised as a detector


def detection_task(task: str, model, options=None, sources=(), pictures=()) -> DetectionTask | None:
    """What `task` asks of the comparison: detections when asked ('detect', or `options` given), or, under
    'auto', when `model` (onnx_ir) is a detector beyond doubt; None for tensors only."""
    from graphdoctor.verify.detections import DetectOptions, recognise_detector

    if task not in ("auto", "detect", "tensor"):
        raise GraphDoctorError(f"unknown task '{task}' (choose from auto, detect, tensor)")
    if task == "tensor":
        return None
    asked = task == "detect" or options is not None
    options = options or DetectOptions()
    if options.layout is None and options.boxes is None:
        recognised = recognise_detector(model)
        if recognised is None and not asked:
            return None
        if recognised is not None:
            options = dataclasses.replace(options, layout=recognised[0], layout_why=recognised[1])
    return DetectionTask(options, tuple(sources), tuple(pictures), auto=not asked)


def _judged_by_detections(
    detect: DetectionTask, expected, actual, status: str, reason: str, details: dict
) -> tuple[str, str, dict]:
    """The detect preset decides where the reference detected something; the tensor verdict stays beside it.
    With nothing detected in the reference, the preset would pass anything: the tensor tolerance decides."""
    from graphdoctor.verify.detections import detection_report

    try:
        report = detection_report(expected, actual, detect.options, detect.sources, detect.images)
    except GraphDoctorError as error:
        return status, _joined(reason, f"detections not compared: {error}"), details
    report["auto"] = detect.auto
    details = {**details, "detections": report}
    tensors = f" (tensor metrics: {reason})" if reason else ""
    if not sum(image["reference"] for image in report["images"]):
        report["decides"] = False
        why = f"no detection above {detect.options.score_threshold:g} in the reference: the tensor tolerance decides"
        return status, _joined(reason, why), details
    report["decides"] = True
    if report["passed"]:  # the reason says why it passed when the tensor metrics alone would fail it
        return "passed", f"{report['message']}{tensors}" if reason else "", details
    return "failed", f"detections changed beyond the {detect.options.preset.describe()}{tensors}", details


def _joined(reason: str, more: str) -> str:
    return f"{reason}; {more}" if reason else more


def _limit_of_backend(
    backend: Backend, reference: Path, candidate: Path, inputs: Mapping[str, np.ndarray]
) -> BackendVerdict | None:
    """A GPU backend that cannot run the candidate is asked to run the original too: when it cannot either
    (TensorRT rejects an op both hold), that is a limit of the backend for this model, not a fault of the
    change, and the verdict is skipped, saying so. None when the original runs (the candidate's fault)."""
    if not backend.on_gpu or reference == candidate:
        return None
    try:
        backend.run(reference, inputs)
    except GraphDoctorError as error:
        cause = _CANNOT_RUN.sub("", first_line(error), count=1)
        why = f"{backend.name} cannot run the original model either ({cause}): it judges neither model"
        return BackendVerdict(backend.name, backend.precision, "skipped", why)
    return None


# a runner's own wording of the same thing ("ONNX Runtime CPU cannot run model.onnx: ..."), taken off the cause
_CANNOT_RUN = re.compile(r"^.{0,80}? cannot run [^:]{0,200}: ")


def _unrunnable(backend: Backend, runner: str, which: str, error: GraphDoctorError) -> BackendVerdict:
    """The verdict of a backend that did not get to compare: `runner` could not run the `which` model."""
    cause = _CANNOT_RUN.sub("", first_line(error), count=1)
    reason = f"{runner} cannot run the {which} model: {cause}"
    return BackendVerdict(backend.name, backend.precision, "error", reason, cannot_run=which)


def _without_reference(backend: Backend, oracle: str, error: GraphDoctorError) -> BackendVerdict:
    reason = backend.unavailable_reason()
    if reason:
        return BackendVerdict(backend.name, backend.precision, "skipped", reason)
    return _unrunnable(backend, oracle, "reference", error)


def _with_integer_tensors(
    verdict: BackendVerdict,
    backend: Backend,
    reference: Path,
    candidate: Path,
    inputs: Mapping[str, np.ndarray],
    oracle: Backend,
) -> BackendVerdict:
    """The verdict with the exact comparison of the integer tensors computed from floats that both models
    share: failed when one differs; a backend that cannot fetch them leaves the verdict as it was, and says so."""
    if not verdict.ran:
        return verdict
    from graphdoctor.verify.layerwise import compare_integer_tensors

    try:
        records = compare_integer_tensors(reference, candidate, backend, inputs, oracle)
    except GraphDoctorError as error:
        return dataclasses.replace(verdict, details={**verdict.details, "integer_tensors": {"error": str(error)}})
    if not records:
        return verdict
    differing = [r for r in records if not r.passed]
    report = {
        "compared": len(records),
        "differing": [{"name": r.name, "node": r.node, "op": r.op, "reason": r.reason} for r in differing],
    }
    details = {**verdict.details, "integer_tensors": report}
    if not differing:
        return dataclasses.replace(verdict, details=details)
    first = differing[0]
    what = (
        f"{len(differing)} of {len(records)} integer tensors computed from floats differ; first '{first.name}'"
        f" ({first.op} '{first.node}'): {first.reason}"
    )
    reason = f"{verdict.reason}; {what}" if verdict.reason else what
    return dataclasses.replace(verdict, status="failed", reason=reason, details=details)


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
