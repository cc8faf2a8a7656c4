"""The Python API: what the CLI calls, and what users call from their own scripts.

from graphdoctor.api import lint
result = lint("model.onnx", ignore=["GD011"])
for finding in result.findings: print(finding.code, finding.message)
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphdoctor.analysis import Analysis
from graphdoctor.analysis.graph import holds_type
from graphdoctor.engine import run_rules, select_rules
from graphdoctor.fix import FixResult, fix
from graphdoctor.model import input_files, load_model, refuse_overwriting
from graphdoctor.rule import Finding, Rule, Severity, load_rules
from graphdoctor.targets import DEFAULT_TARGET, Target, as_target
from graphdoctor.verify import sample_inputs

if TYPE_CHECKING:
    from graphdoctor.verify.compare import VerifyResult
    from graphdoctor.verify.detections import DetectOptions
    from graphdoctor.verify.images import Preprocessing

__all__ = ["FixResult", "LintFailure", "LintResult", "fix", "lint", "verify"]


@dataclass(frozen=True)
class LintResult:
    path: Path
    findings: list[Finding]
    rules: list[Rule]  # the rules that ran
    seconds: float
    file_size: int
    target: Target = DEFAULT_TARGET  # the runtime the rules checked for

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def fails(self, fail_on: Severity) -> bool:
        return any(f.severity >= fail_on for f in self.findings)


@dataclass(frozen=True)
class LintFailure:
    """A model that could not be linted (missing, not ONNX, malformed beyond reading): every report format
    names it, and the run exits with the worst code (2 beats 1)."""

    path: Path
    error: str  # one line, as the CLI prints it
    exit_code: int = 2


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
    target: str | Target = DEFAULT_TARGET,
) -> LintResult:
    """Load the model at `path` (lazily; the file is never modified) and run the selected rules on it.

    `deep` adds the slow rules (they run other tools); `inputs` (a file) or `shapes` give sample inputs,
    generated with `seed` when only shapes are given, so rules can check activations, not only constants.
    `target` ('tensorrt-8.6', 'tensorrt-10', 'tensorrt-10.3', 'tensorrt-11', 'onnxruntime') is the runtime
    the rules check for.
    """
    start = time.perf_counter()
    deploy = as_target(target)
    chosen = [
        r for r in select_rules(load_rules() if rules is None else rules, select, ignore) if deep or not r.meta.deep
    ]
    if inputs is not None or shapes or deep:
        from graphdoctor.verify.backends import require_onnxruntime

        require_onnxruntime("lint with sample inputs or --deep (the rules run the model)")
    loaded = load_model(path)
    samples = sample_inputs(loaded.model, inputs, shapes, seed) if inputs is not None or shapes else None
    analysis = Analysis(loaded.model, loaded.path, loaded.file_size, samples, target=deploy, deep=deep)
    findings = run_rules(chosen, analysis, rule_options)
    return LintResult(
        path=loaded.path,
        findings=findings,
        rules=chosen,
        seconds=time.perf_counter() - start,
        file_size=loaded.file_size,
        target=deploy,
    )


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
    torch_program: str | os.PathLike[str] | None = None,
    layerwise: bool = False,
    layers_per_run: int | None = None,
    task: str = "auto",
    detect: DetectOptions | None = None,
    images: Sequence[str | os.PathLike[str]] = (),
    preprocessing: Preprocessing | None = None,
) -> VerifyResult:
    """Run `reference` on ONNX Runtime CPU and `candidate` (default: the reference itself) on each backend,
    on the same inputs, and compare every output at the tolerance preset ('auto': fp16 when either model
    holds FLOAT16 tensors or a backend computes in FP16, else fp32).

    With `torch_program` (a torch.export .pt2), that program is the reference instead, and `reference`, the
    ONNX model exported from it, runs on each backend; no `candidate` then.

    `layerwise` also compares every tensor both models compute under the same name, and names the first node
    beyond tolerance: where both backends run on ONNX Runtime CPU, in one session that reduces each pair to
    statistics inside the graph; else, and with `layers_per_run`, fetched a slice per run (`layers_per_run`
    tensors, else a 256 MiB budget).

    `task` 'detect' compares what both models detect (`detect` says how to read detections; the detect preset
    decides), 'auto' does so when the reference is a detector beyond doubt (saying why), 'tensor' never.
    `images` (files or folders) are the inputs, preprocessed by `preprocessing` (letterbox, pad, channels)."""
    from graphdoctor.errors import GraphDoctorError
    from graphdoctor.verify import inputs as verify_inputs
    from graphdoctor.verify.backends import get_backend, require_onnxruntime
    from graphdoctor.verify.compare import detection_task, verify_models

    require_onnxruntime("verify (ONNX Runtime CPU computes the reference)")
    if torch_program is not None and candidate is not None:
        raise GraphDoctorError("--torch compares REFERENCE with the program it was exported from: give no CANDIDATE")
    if layerwise and torch_program is not None:
        raise GraphDoctorError("--layerwise compares the tensors of two ONNX models: it does not combine with --torch")
    ref = load_model(reference, weights_in_place=True)  # ONNX Runtime reads the weights: not parsed here
    cand = load_model(candidate, weights_in_place=True) if candidate is not None else ref
    _refuse_malformed(ref, cand)
    chosen = [get_backend(name) for name in backends]
    pictures, sources = [], []
    if images:
        if inputs is not None or shapes:
            raise GraphDoctorError("--image gives the inputs: it does not combine with --inputs or --shape")
        from graphdoctor.verify.images import find_images, image_batch

        found = find_images(Path(image) for image in images)
        feeds, source, pictures, sources = image_batch(ref.model, found, preprocessing)
    elif inputs is not None:
        feeds = verify_inputs.bind_inputs(ref.model, verify_inputs.load_inputs(inputs))
        source = str(inputs)
    else:
        feeds = verify_inputs.generate_inputs(ref.model, seed=seed, shapes=shapes)
        source = f"generated (seed {seed})"
    if save_inputs is not None:
        refuse_overwriting([Path(save_inputs)], input_files(ref) | input_files(cand))  # a slip for the model's name
        verify_inputs.save_inputs(feeds, save_inputs)
    tolerance = _tolerance_per_backend(preset, _low_precision_held(ref.model, cand.model), atol, rtol, min_cosine)
    if torch_program is not None:
        return _verify_against_torch(ref, Path(torch_program), chosen, feeds, source, tolerance)
    layers = _layerwise_options(layers_per_run) if layerwise else None
    detection = detection_task(task, ref.model, detect, sources, pictures)
    paths = ref.path, cand.path
    del ref, cand  # the parsed graphs hold the weights; the runs read the files themselves
    gc.collect()  # graphs are reference cycles: freed only by the collector
    return verify_models(*paths, chosen, feeds, source, tolerance, layerwise=layers, detect=detection)


def _refuse_malformed(*models) -> None:
    """A model whose tensors or attributes contradict themselves gives no verdict worth having (ONNX Runtime
    may read what the file does not hold); lint names every defect (GD016)."""
    from graphdoctor.analysis.validity import first_defect
    from graphdoctor.errors import GraphDoctorError

    for loaded in dict.fromkeys(models):
        defect = first_defect(loaded.model)
        if defect is not None:
            raise GraphDoctorError(f"{loaded.path}: {defect}")


def _low_precision_held(*models) -> str | None:
    """'bf16' when a model holds BFLOAT16, 'fp16' when one holds FLOAT16, else None."""
    import onnx_ir as ir

    if any(holds_type(model, ir.DataType.BFLOAT16) for model in models):
        return "bf16"
    return "fp16" if any(holds_type(model, ir.DataType.FLOAT16) for model in models) else None


def _tolerance_per_backend(preset: str, models_hold: str | None, atol, rtol, min_cosine):
    """'auto': bf16 for BF16 models or BF16 emulation, fp16 for a backend computing in FP16 or models holding
    FP16, else fp32; explicit presets as given."""
    from graphdoctor.verify.metrics import tolerance_for

    def tolerance_of(backend):
        chosen = preset
        if preset == "auto":
            storage = getattr(backend, "storage", None)  # the emulations say which format they store
            emulated = storage.key if storage is not None else None
            chosen = models_hold or emulated or ("fp16" if backend.computes_fp16 else "fp32")
        return tolerance_for(chosen, atol, rtol, min_cosine)

    tolerance_for(preset if preset != "auto" else "fp32", atol, rtol, min_cosine)  # bad values fail before any run
    return tolerance_of


def _layerwise_options(layers_per_run: int | None):
    from graphdoctor.verify.layerwise import LayerwiseOptions

    return LayerwiseOptions(layers_per_run=layers_per_run)


def _verify_against_torch(onnx_model, program: Path, backends, feeds, source: str, tolerance) -> VerifyResult:
    """The torch.export program is the oracle (inputs by position, outputs named after the ONNX outputs);
    the ONNX model runs on each backend."""
    from graphdoctor.verify.compare import verify_models
    from graphdoctor.verify.inputs import input_specs
    from graphdoctor.verify.torch_reference import RUNNER, run_exported_program

    start = time.perf_counter()
    args = [feeds[spec.name] for spec in input_specs(onnx_model.model)]
    expected = run_exported_program(program, args, [value.name for value in onnx_model.model.graph.outputs])
    result = verify_models(program, onnx_model.path, backends, feeds, source, tolerance, reference_outputs=expected)
    return dataclasses.replace(result, reference_runner=RUNNER, seconds=time.perf_counter() - start)
