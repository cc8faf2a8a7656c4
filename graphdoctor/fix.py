"""`graphdoctor fix`: the rules' fixes to a fixed point, the FP16 conversion, the gate that verifies the
result against the original, and the write that cannot hurt the input.

The input and every file it reads are never written: an output, or its data file, that is one of them (or a
link to one) is refused before any work. What is written is self-contained (every tensor inline or in its own
data file beside it), loads (checked before the rename, by the gate or, with --no-verify, by ONNX Runtime),
and computes what the report says; a failed verification or an interrupt writes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from graphdoctor.engine import RuleFixes, select_rules
from graphdoctor.errors import GraphDoctorError, first_line
from graphdoctor.model import disk_size, input_files, load_model, refuse_overwriting, stage_model, writing
from graphdoctor.rule import load_rules
from graphdoctor.targets import DEFAULT_TARGET, Target, as_target
from graphdoctor.verify import sample_batches

if TYPE_CHECKING:
    from graphdoctor.fp16 import Fp16Options, Fp16Report
    from graphdoctor.verify.compare import VerifyResult

__all__ = ["SEGMENTED_ABOVE", "FixResult", "fix"]


@dataclass(frozen=True)
class FixResult:
    """What `fix` did: per-rule repairs, the FP16 conversion, sizes, the gate's verification, and what it wrote."""

    path: Path
    output: Path
    size_before: int  # bytes on disk: the model file and its external data
    fixes: list[RuleFixes]
    converged: bool
    fp16: Fp16Report | None  # None without --fp16
    fp16_repaired: list[tuple[str, str]]  # nodes kept FP32 after a failed verification, and why
    size_after: int | None  # None when nothing was written
    written: bool
    verification: VerifyResult | None  # None with --no-verify, a dry run, or nothing to verify
    blamed: list[str]  # codes of the rules whose fixes alone fail verification
    seconds: float
    dry_run: bool = False
    keep_fp32_hint: list[str] = field(default_factory=list)  # after a failed FP16 verification: what to keep FP32
    target: Target = DEFAULT_TARGET  # the runtime the rules' fixes were chosen for

    @property
    def changed(self) -> bool:
        return bool(self.fixes) or (self.fp16 is not None and not self.fp16.already_fp16)

    @property
    def passed(self) -> bool:
        return self.verification is None or self.verification.passed


def _fix_result(source, target, size_before, dry_run, pipeline, size_after, written, verification, blamed, seconds):
    return FixResult(
        source,
        target,
        size_before,
        pipeline.fixes,
        pipeline.converged,
        pipeline.fp16,
        list(pipeline.repaired),
        size_after,
        written,
        verification,
        blamed,
        seconds,
        dry_run,
        list(pipeline.keep_hint),
        pipeline.target,
    )


def fix(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    rule_options: Mapping[str, Mapping[str, Any]] | None = None,
    unsafe_fixes: bool = False,
    opt_ins: Iterable[str] = (),
    dry_run: bool = False,
    in_place: bool = False,
    external_data: bool | None = None,
    verify: bool = True,
    inputs: str | os.PathLike[str] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    fp16: Fp16Options | None = None,
    fp16_repairs: int = 4,
    strip_metadata: bool = False,
    target: str | Target = DEFAULT_TARGET,
) -> FixResult:
    """Apply the selected rules' fixes to a fixed point (and convert to FP16 with `fp16`), verify the result
    against the original, then write it atomically to `output` (default: NAME.fixed.onnx, or NAME.fp16.onnx,
    beside the input; the input itself only with `in_place`).

    Safe fixes (bit-exact) run by default, unsafe ones with `unsafe_fixes`, opt-in ones (`dedup-transposed`)
    when named in `opt_ins`. The gate runs both models on inputs generated with `seed` (or `inputs`/`shapes`):
    on ONNX Runtime CPU with graph optimizations and weight prepacking off, bit-exact when only safe fixes
    ran, else the fp32 preset; after FP16 conversion, under FP16 emulation and on ONNX Runtime CPU at the
    fp16 preset. When it fails nothing is written and the rules whose fixes alone fail are named; an FP16
    conversion instead keeps the first diverging node in FP32 and tries again, `fp16_repairs` times at most.
    `external_data`: None chooses (kept when the input uses it, forced above 2 GB). `strip_metadata` drops doc
    strings and the metadata of nodes and values (the dynamo exporter's provenance: source lines, module names).
    `target` ('tensorrt-10', ...) is the runtime the rules know (GD001 clamps INT64 sentinels only for 8.6).

    When nothing is to fix, nothing is written, unless `output` asks for a copy: that copy is verified too (a
    rewrite drops duplicated value_info, so its bytes differ). Refused with GraphDoctorError, before any work: an
    output or data file that is one of the input's files or a link to one, a malformed model, and external data
    that is missing or shorter than declared (what it holds cannot be written)."""
    from graphdoctor.analysis.types import infer_types
    from graphdoctor.engine import FixPolicy
    from graphdoctor.verify.backends import require_onnxruntime

    if not dry_run:
        require_onnxruntime("fix (its gate, and the check that what it writes loads)")
    start = time.perf_counter()
    source = Path(path)
    destination = _fix_target(source, output, in_place, f".{fp16.precision.key}" if fp16 is not None else ".fixed")
    with _DeployedChecks(fp16 is not None and not dry_run) as deployed:
        chosen = select_rules(load_rules(), select, ignore)
        policy = FixPolicy(unsafe=unsafe_fixes, opt_ins=frozenset(opt_ins))
        pipeline = _Pipeline(chosen, policy, rule_options, fp16, as_target(target))
        loaded = load_model(source)
        _refuse_unreadable(loaded)
        use_external = _use_external_data(external_data, loaded.model)  # from the input, before weights are replaced
        if not in_place:
            data_file = [destination.with_name(f"{destination.name}.data")] if use_external else []
            refuse_overwriting([destination, *data_file], input_files(loaded))
        size_before = disk_size(loaded)
        gate = verify and not dry_run
        measure = gate or (fp16 is not None and (inputs is not None or bool(shapes)))
        batches = sample_batches(loaded.model, inputs, shapes, seed) if measure else None
        feeds = batches[0] if batches else None
        input_source = _input_source(inputs, seed, batches)
        stated = _typed_values(loaded.model)  # what the file types; the rest is forgotten before writing
        if batches:
            infer_types(loaded.model)  # for the ranges and the gate's plan, as the lint pass would first
        reference_outputs: dict = {}  # the source's outputs on `feeds`, from the ranges' run: the gate's reference
        if fp16 is not None and batches:
            pipeline.ranges = _activation_ranges(source, loaded.model, batches, size_before, reference_outputs)
        detection, integers = _gate_needs(loaded.model, fp16 is not None) if gate else (None, False)
        pipeline.strip_metadata = strip_metadata
        pipeline.run(loaded.model, loaded.path, stated=stated)
        result = functools.partial(_fix_result, source, destination, size_before, dry_run)
        if dry_run or not (pipeline.changed or output is not None):
            return result(pipeline, None, False, None, [], time.perf_counter() - start)
        check = None
        if gate:
            check = _Gate(source, feeds, input_source, size_before, detection, integers, reference_outputs)
        with writing(destination):
            return _write_verified(
                loaded.model, destination, use_external, pipeline, check, fp16_repairs, result, start, deployed
            )


def _gate_needs(model, converting: bool):
    """What the gate looks for, read before the rewrite: whether the model is a detector (recognised beyond
    doubt), whose FP16 verdicts the detect preset decides, and whether it computes integer tensors from
    floats, which are compared exactly. Imported here: without the gate the verifier is never loaded."""
    from graphdoctor.verify.compare import detection_task
    from graphdoctor.verify.layerwise import computes_integers_from_floats

    return (detection_task("auto", model) if converting else None), computes_integers_from_floats(model)


def _write_verified(
    model, target: Path, use_external: bool, pipeline: _Pipeline, check, repairs: int, result, start, deployed
):
    """Stage, verify, commit; after a failed FP16 verification, keep the diverging node FP32 and try again."""
    while True:
        staged = deploying = None
        try:
            staged = stage_model(model, target, use_external)
            deploying = _submit_deployable(staged, pipeline, deployed)
            staged.sync()  # waits for the disk while the child builds its session
            _check_valid(staged.path)
            if check is None and deploying is None:
                _check_loads(staged, pipeline)
            verification = _verified_while_deploying(check, staged, pipeline, deploying)
            _refuse_unrunnable_reference(verification)
            if verification is None or verification.passed:
                size_after = staged.size()
                staged.commit()
                if verification is not None:  # the report names where the model is, not where it was staged
                    verification = dataclasses.replace(verification, candidate=target)
                return result(pipeline, size_after, True, verification, [], time.perf_counter() - start)
            if pipeline.fp16 is None:
                blamed = _blame(check.source, target, pipeline, check)
                return result(pipeline, None, False, verification, blamed, time.perf_counter() - start)
            # FP16 diverged: the rules' fixes are bit-exact on their own; keep the diverging region FP32
            diverging = None if _could_not_run(verification) else check.first_diverging(staged.path, pipeline)
            if diverging is None or not pipeline.can_repair(repairs):
                pipeline.hint(diverging)
                return result(pipeline, None, False, verification, [], time.perf_counter() - start)
        finally:
            if deploying is not None:
                deploying.close()
            if staged is not None:
                staged.discard()
        model = pipeline.retry(check.source, diverging)


class _Pipeline:
    """What `fix` does to a model: the rules' fixes, then the FP16 conversion and its clean-up; re-run from
    the original with one more node kept in FP32 after each failed FP16 verification."""

    def __init__(self, rules, policy, rule_options, fp16: Fp16Options | None, target: Target) -> None:
        self.rules = rules
        self.target = target
        self.policy = policy
        self.rule_options = rule_options
        self.fp16_options = fp16
        self.ranges = None
        self.fixes: list[RuleFixes] = []
        self.converged = True
        self.fp16: Fp16Report | None = None
        self.repaired: list[tuple[str, str]] = []  # (node kept FP32 after verification, why)
        self.keep_hint: list[str] = []  # what to keep FP32 when the repairs ran out
        self.rounds = 0  # repair rounds run
        self.strip_metadata = False

    @property
    def changed(self) -> bool:
        return bool(self.fixes) or (self.fp16 is not None and not self.fp16.already_fp16)

    def run(self, model, path: Path, rules=None, stated: set[int] | None = None) -> None:
        """Fix `model` (and convert it); `stated`: the values whose types its file states, when types were
        inferred since it was loaded (their types are kept, the inferred ones dropped before writing)."""
        from graphdoctor.engine import FixPolicy, apply_fixes, select_rules

        typed = _typed_values(model) if stated is None else stated
        options = self.rule_options if self.fp16_options is None else _keeping_fences(self.rule_options)
        # well formed: `fix` refused malformed input (_refuse_unreadable) before any rule ran
        self.fixes, self.converged = apply_fixes(
            model, rules or self.rules, self.policy, options, path, self.target, well_formed=True
        )
        if self.fp16_options is not None:
            from graphdoctor.fp16 import convert_to_fp16

            self.fp16 = convert_to_fp16(model, self.fp16_options, self.ranges)
            cleanup = select_rules(load_rules(), _FP16_CLEANUP)
            tidied, converged = apply_fixes(
                model, cleanup, FixPolicy(), self.rule_options, path, self.target, well_formed=True
            )
            self.fixes, self.converged = _merged(self.fixes, tidied), self.converged and converged
        _forget_inferred_types(model, typed)
        if self.strip_metadata:
            _strip_metadata(model)

    def kept_fp32(self) -> set[str]:
        """Labels of the nodes the conversion keeps in FP32 (for whatever reason)."""
        return {kept.node for kept in self.fp16.kept} if self.fp16 is not None else set()

    def can_repair(self, bound: int) -> bool:
        return self.fp16_options is not None and self.rounds < bound

    def retry(self, source: Path, diverging: _Divergence):
        """Again from the original, with the diverging region kept FP32."""
        self.rounds += 1
        self.repaired += [(node, diverging.why) for node in diverging.region]
        kept = self.fp16_options.keep_nodes | set(diverging.region)
        self.fp16_options = dataclasses.replace(self.fp16_options, keep_nodes=kept)
        loaded = load_model(source)
        self.run(loaded.model, loaded.path)
        return loaded.model

    def hint(self, diverging: _Divergence | None) -> None:
        """The --keep-fp32 list to try when repairs ran out: what they kept, and the region still diverging."""
        if diverging is not None:
            self.keep_hint = [node for node, _ in self.repaired] + list(diverging.region)

    def alone(self, rules, source: Path):
        """The original with only these rules' fixes (to find which fix fails the gate, or to build the
        reference when fixes change outputs on purpose)."""
        loaded = load_model(source)
        single = _Pipeline(list(rules), self.policy, self.rule_options, None, self.target)
        single.run(loaded.model, loaded.path)
        return loaded, single


_FP16_CLEANUP = ["GD002", "GD003", "GD009"]  # Cast pairs at region boundaries, copies, constants left unread


def _keeping_fences(rule_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    """Before an FP16 conversion, GD002 leaves float32→float32 Casts: they mark what computes in FP32."""
    merged = dict(rule_options or {})
    merged["redundant-cast"] = {**merged.get("redundant-cast", {}), "keep_float32_fences": True}
    return merged


def _merged(first: list[RuleFixes], second: list[RuleFixes]) -> list[RuleFixes]:
    """One entry per rule: the FP16 clean-up may run a rule that the first pass ran too."""
    by_code = {fixes.rule.code: fixes for fixes in first}
    for fixes in second:
        if fixes.rule.code not in by_code:
            by_code[fixes.rule.code] = fixes
            continue
        into = by_code[fixes.rule.code]
        into.repairs.update(fixes.repairs)
        into.safety |= fixes.safety
        into.nodes_removed += fixes.nodes_removed
        into.bytes_saved += fixes.bytes_saved
    return list(by_code.values())


def _strip_metadata(model) -> None:
    """Doc strings and metadata of nodes and values, and the types of intermediate values (value_info), in
    every graph: none of it changes what the model computes."""
    from graphdoctor.analysis.graph import iter_graph_sites, iter_values

    for graph, _ in iter_graph_sites(model):
        for node in graph:
            node.metadata_props.clear()
            node.doc_string = None
    for value in iter_values(model):
        value.metadata_props.clear()
        value.doc_string = None
    _forget_inferred_types(model, set())


def _typed_values(model) -> set[int]:
    """Ids of the node outputs whose type the file itself states (its value_info)."""
    from graphdoctor.analysis.graph import iter_graph_sites

    return {id(v) for graph, _ in iter_graph_sites(model) for node in graph for v in node.outputs if v.type}


def _forget_inferred_types(model, typed: set[int]) -> None:
    """Drop the types shape inference added to intermediate values (and initializers' own, which the tensor
    states), so the written file gains no value_info the input did not have."""
    from graphdoctor.analysis.graph import iter_graph_sites

    for graph, _ in iter_graph_sites(model):
        values = [v for node in graph for v in node.outputs if id(v) not in typed]
        for value in values:
            if not value.is_graph_output():
                value.type, value.shape = None, None
        for value in graph.initializers.values() if isinstance(graph, ir.Graph) else ():
            if not value.is_graph_input():
                _type_as_stored(value)


def _type_as_stored(initializer) -> None:
    """No value_info for an initializer, unless it carries metadata (the dynamo exporter's provenance), which
    writes one anyway: then it states the tensor's type and shape, never none or a stale one."""
    keeps_entry = bool(initializer.metadata_props) or bool(initializer.doc_string)
    tensor = initializer.const_value
    if keeps_entry and tensor is not None:
        initializer.type, initializer.shape = ir.TensorType(tensor.dtype), tensor.shape
    else:
        initializer.type, initializer.shape = None, None


def _refuse_unreadable(loaded) -> None:
    """A model `fix` cannot read whole cannot be written whole: external data that is missing, short, not a
    file or hard-linked (GD014 in lint), or a malformed model (GD016)."""
    from graphdoctor.analysis.external import find_external_data_problems
    from graphdoctor.analysis.validity import first_defect

    defect = first_defect(loaded.model)
    if defect is not None:
        raise GraphDoctorError(f"{loaded.path}: {defect}; nothing was written")
    problems = find_external_data_problems(loaded.model)
    if problems:
        first = problems[0]
        what = _EXTERNAL_PROBLEMS[first.kind]
        raise GraphDoctorError(
            f"{loaded.path}: tensor '{first.tensor}' cannot be read: its external data '{first.location}' {what}"
            f" ({len(problems)} tensor(s) affected, see `graphdoctor lint`, GD014); nothing was written"
        )


_EXTERNAL_PROBLEMS = {
    "missing": "does not exist",
    "not_a_file": "is not a regular file",
    "truncated": "is shorter than the tensor needs",
    "size_mismatch": "declares a length that does not match the tensor",
    "hard_link": "is a hard link (refused: it may be a file outside the model's folder)",
}


def _check_valid(written: Path) -> None:
    """What is written passes ONNX's checker: a model it rejects (two value fields in one tensor, an ir_version
    too old for its initializers) is refused by other tools down the line, whatever ONNX Runtime accepts."""
    import onnx

    try:
        onnx.checker.check_model(os.fspath(written))
    except onnx.checker.ValidationError as error:
        raise GraphDoctorError(
            f"the model as written fails ONNX's checker: {first_line(error)}; nothing was written"
            " (`python -c \"import onnx; onnx.checker.check_model('MODEL')\"` shows whether the input does too)"
        ) from None


class _DeployedChecks:
    """Children building the default ONNX Runtime session a converted model must load in (`_submit_deployable`).
    With --fp16 the first starts with `fix`, so it imports ONNX Runtime while the rules and the conversion run;
    each later one (after a repair) when it is needed."""

    def __init__(self, early: bool) -> None:
        from graphdoctor.verify.backends.onnxruntime import DeployedSessionCheck

        self._ready = DeployedSessionCheck() if early else None

    def take(self):
        from graphdoctor.verify.backends.onnxruntime import DeployedSessionCheck

        ready, self._ready = self._ready, None
        return ready if ready is not None else DeployedSessionCheck()

    def __enter__(self) -> _DeployedChecks:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._ready is not None:
            self._ready.close()


def _submit_deployable(staged, pipeline: _Pipeline, deployed: _DeployedChecks):
    """A converted model must load where users load it: a default ONNX Runtime session, all optimizations
    on, where fusions meet FP16 patterns no test of ours runs (models of 1 GiB or less). Handed to a child
    now, judged by `_deployable_verdict`; None when not checked."""
    converted = pipeline.fp16 is not None and not pipeline.fp16.already_fp16
    if not converted or staged.size() > SEGMENTED_ABOVE:
        return None
    child = deployed.take()
    child.submit(staged.path, tolerate_missing_kernels=pipeline.fp16_options.precision.key == "bf16")
    return child


def _verified_while_deploying(check, staged, pipeline: _Pipeline, deploying):
    """The gate's verification of the staged model while the child builds its default session on the other
    core (on BERT-base the child's 1.8 s had come before the gate's 3.1 s); the child's refusal still comes
    first, replacing the gate's verdict or error. Above ALONGSIDE_UP_TO the gate waits for the child, so that
    the two never hold a large model's weights at once."""
    if check is None or deploying is None or staged.size() > ALONGSIDE_UP_TO:
        _deployable_verdict(deploying)
        return check.run(staged.path, pipeline) if check is not None else None
    try:
        verification = check.run(staged.path, pipeline)
    except GraphDoctorError:
        _deployable_verdict(deploying)
        raise
    _deployable_verdict(deploying)
    return verification


ALONGSIDE_UP_TO = 256 * 1024**2  # staged bytes up to which the gate runs beside the default-session child


def _deployable_verdict(deploying) -> None:
    if deploying is None:
        return
    try:
        deploying.verdict()
    except GraphDoctorError as error:
        raise GraphDoctorError(f"{error}; nothing was written") from None


def _check_loads(staged, pipeline: _Pipeline) -> None:
    """Without the gate, still never write what does not load: ONNX Runtime builds a session from the staged
    model (nothing is run). A converted model is judged by the default session alone (`_submit_deployable`),
    the one its users load: a second one with optimizations off cost 0.1-0.2 s on yolov8n, and would refuse
    only a node without a kernel that the default session's optimizations remove. Models over 1 GiB are left
    to the reference check that staging did, and BF16 models to ONNX's checker (ONNX Runtime's CPU provider has
    no BF16 kernel for most ops)."""
    from graphdoctor.verify.backends.onnxruntime import check_loads

    bf16 = pipeline.fp16_options is not None and pipeline.fp16_options.precision.key == "bf16"
    if staged.size() <= SEGMENTED_ABOVE and not bf16:
        check_loads(staged.path)


def _fix_target(source: Path, output: str | os.PathLike[str] | None, in_place: bool, suffix: str = ".fixed") -> Path:
    """Where the fixed model goes; never the input itself unless `in_place`, never into a missing folder."""

    if in_place and output is not None and Path(output).resolve() != source.resolve():
        raise GraphDoctorError("--in-place writes over the input: give no -o/--output with it")
    if in_place:
        return source
    stem = source.name.removesuffix(".onnx")
    target = Path(output) if output is not None else source.with_name(f"{stem}{suffix}.onnx")
    if target.resolve() == source.resolve():
        raise GraphDoctorError(f"{target} is the input model: pass --in-place to overwrite it")
    if not target.parent.is_dir():
        raise GraphDoctorError(f"cannot write {target}: folder {target.parent} does not exist")
    if target.exists() and not target.is_file():  # a rename would replace a FIFO or device unasked
        raise GraphDoctorError(f"cannot write {target}: it exists and is not a regular file")
    return target


def _use_external_data(requested: bool | None, model) -> bool:
    """As asked; otherwise kept when the input stores weights externally, and forced near protobuf's 2 GiB."""
    from graphdoctor.analysis.constants import stored_bytes
    from graphdoctor.model import PROTOBUF_LIMIT, iter_external_tensors

    if requested is not None:
        return requested
    return any(True for _ in iter_external_tensors(model)) or stored_bytes(model) > PROTOBUF_LIMIT - 64 * 1024**2


SEGMENTED_ABOVE = 1024**3  # models larger than this on disk are verified a segment at a time


class _Gate:
    """The verification every written model passes. After rules' fixes: both models on ONNX Runtime CPU with
    graph optimizations and weight prepacking off (every node as written, so no fused or packed kernel
    hides or causes a difference), bit-exact after safe fixes, the fp32 preset after unsafe ones. After FP16
    conversion: the fp16 preset under FP16 emulation (what FP16 storage does to every tensor, overflow
    included), on ONNX Runtime CPU (the model loads; weights rounded) and on any GPU backend present. Models over 1
    GiB run a segment at a time, so verifying never holds all their weights at once (FP16 emulation, which cannot,
    is then left out and the verdicts say so)."""

    def __init__(
        self, source: Path, feeds, input_source: str, size: int, detection=None, integers=True, expected=None
    ) -> None:
        self.source = source
        self.feeds = feeds
        self.input_source = input_source
        self.large = size > SEGMENTED_ABOVE
        self.detection = detection  # a detector: the FP16 verdicts by the detect preset (compare.DetectionTask)
        self.integers = integers  # the source computes integers from floats: compare them exactly
        self.expected = expected or None  # the source's outputs on `feeds`, computed with the ranges (FP32, CPU)

    def run(self, candidate: Path, pipeline: _Pipeline) -> VerifyResult:
        """Verify `candidate` against the original, or, when fixes changed outputs on purpose (inference
        mode), against the original with only those fixes applied."""
        intended = [f.rule for f in pipeline.fixes if f.rule.meta.fix_changes_outputs]
        if not intended:
            return self._verify(self.source, candidate, pipeline)
        loaded, _ = pipeline.alone(intended, self.source)
        reference = candidate.parent.parent / f"reference-{candidate.name}"
        staged = stage_model(loaded.model, reference, _use_external_data(None, loaded.model))
        try:
            result = self._verify(staged.path, candidate, pipeline)
        finally:
            staged.discard()
        codes = ", ".join(rule.code for rule in intended)
        runner = (
            f"{result.reference_runner}, on the original with {codes}'s fixes only (they change outputs on purpose)"
        )
        return dataclasses.replace(result, reference=self.source, reference_runner=runner)

    def _verify(self, reference: Path, candidate: Path, pipeline: _Pipeline) -> VerifyResult:
        from graphdoctor.rule import FixSafety
        from graphdoctor.verify.compare import verify_models
        from graphdoctor.verify.metrics import tolerance_for

        if pipeline.fp16 is not None and pipeline.fp16.converted_nodes + pipeline.fp16.tensors_converted:
            key = pipeline.fp16_options.precision.key
            backends, oracle = self._fp16_backends(key)
            low = tolerance_for(key)
            result = verify_models(
                reference,
                candidate,
                backends,
                self.feeds,
                self.input_source,
                low,
                oracle=oracle,
                integers=self.integers,
                detect=self.detection,
                expected=self.expected if reference == self.source and oracle is None else None,
            )
            return result if key == "fp16" else _without_missing_bf16_kernels(result)
        # nothing became FP16 (FP16 emulation would then round the FP32 model as if converting it)
        oracle = self._exact_backend()
        judged = [f for f in pipeline.fixes if not f.rule.meta.fix_changes_outputs]
        safe = all(f.safety <= {FixSafety.SAFE} for f in judged)
        tolerance = tolerance_for("exact" if safe else "fp32")
        result = verify_models(
            reference,
            candidate,
            [oracle],
            self.feeds,
            self.input_source,
            tolerance,
            oracle=oracle,
            integers=self.integers,
        )
        if not (safe and result.passed) or self.large:
            return result
        deployed = _as_deployed(reference, candidate, self.feeds, [f.rule.code for f in judged])
        return dataclasses.replace(result, verdicts=[*result.verdicts, deployed])

    def _exact_backend(self):
        from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend
        from graphdoctor.verify.segmented import SegmentedOnnxruntimeBackend

        return SegmentedOnnxruntimeBackend() if self.large else OnnxruntimeBackend("onnxruntime-cpu", optimize=False)

    def _fp16_backends(self, key: str):
        """The emulation of `key` ('fp16', 'bf16'), ONNX Runtime CPU, and the GPU backends present: CUDA, and
        native TensorRT building the converted model strongly typed (each tensor in the dtype the file gives it,
        the nodes kept FP32 in FP32), not with the FP16 flag, which lets TensorRT run those in FP16 too."""
        from graphdoctor.verify.backends import get_backend
        from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend

        if self.large:
            segmented = self._exact_backend()
            return [segmented, _Unavailable(f"{key}-emulation", _TOO_LARGE)], segmented
        gpus = [get_backend(name) for name in ("onnxruntime-cuda", "tensorrt")]  # tensorrt: strongly typed
        present = [backend for backend in gpus if backend.unavailable_reason() is None]
        return [get_backend(f"{key}-emulation"), OnnxruntimeBackend("onnxruntime-cpu"), *present], None

    def first_diverging(self, candidate: Path, pipeline: _Pipeline) -> _Divergence | None:
        """The region to keep FP32 next: the first diverging node, and after an inf or NaN the nodes that
        follow it up to the next normalization (values of that size do not come back into range before)."""
        key = pipeline.fp16_options.precision.key
        diverging = self.first_diverging_node(candidate, pipeline.kept_fp32(), key)
        if diverging is None:
            return None
        node, why, nonfinite = diverging
        region = [node, *_tail_to_normalization(self.source, node)] if nonfinite else [node]
        return _Divergence(tuple(region), why)

    def first_diverging_node(self, candidate: Path, kept: set[str], key: str = "fp16") -> tuple[str, str, bool] | None:
        """Where the emulation of `key` ('fp16', 'bf16') first leaves that preset's tolerance (or first makes
        inf/NaN): the node to keep FP32,
        why, and whether it was an inf or NaN. When that node is FP32 already, the error came in through its
        inputs (x + 1000 rounded in FP16, then `- 1000` in FP32 cancels what is left): the producer of its most
        diverged input is the one to keep."""
        from graphdoctor.verify.backends import get_backend
        from graphdoctor.verify.layerwise import LayerwiseOptions, compare_layerwise
        from graphdoctor.verify.metrics import tolerance_for

        if self.large:
            return None
        emulation, tolerance = get_backend(f"{key}-emulation"), tolerance_for(key)
        try:
            report = compare_layerwise(self.source, candidate, emulation, self.feeds, tolerance, LayerwiseOptions())
        except GraphDoctorError:
            return None
        divergence = report.first_nonfinite or report.first_divergence
        if divergence is None or divergence.record.node is None:
            return None
        record = divergence.record
        what = "inf/NaN first appear" if divergence.kind == "nonfinite" else f"the {key} tolerance is first exceeded"
        why = f"{what} at '{record.name}' under {key.upper()} emulation (rel err {record.rel_err:.3g})"
        node = record.node
        if node in kept:
            node = _producer_of_worst_input(self.source, divergence.inputs)
            why += ", computed in FP32 from this node's FP16 output"
        return (node, why, divergence.kind == "nonfinite") if node is not None and node not in kept else None


@dataclass(frozen=True)
class _Divergence:
    region: tuple[str, ...]  # node labels to keep FP32
    why: str


_NORMALIZING_OPS = frozenset({"Sqrt", "Div", "Reciprocal", "Softmax", "LogSoftmax", "LayerNormalization"})
_TAIL_LENGTH = 6


def _tail_to_normalization(source: Path, label: str) -> list[str]:
    """The single-reader chain after `label` up to and including the next normalizing op, within a few nodes
    (GD007's advice for an overflow); empty when there is none that close."""
    from graphdoctor.analysis.graph import iter_graph_sites, node_label

    model = load_model(source).model
    node = next((n for g, _ in iter_graph_sites(model) for n in g if node_label(n) == label), None)
    tail: list[str] = []
    while node is not None and len(tail) < _TAIL_LENGTH:
        readers = [use.node for value in node.outputs for use in value.uses()]
        if len(readers) != 1:
            return []
        node = readers[0]
        tail.append(node_label(node))
        if node.op_type in _NORMALIZING_OPS:
            return tail
    return []


def _without_missing_bf16_kernels(result: VerifyResult) -> VerifyResult:
    """ONNX Runtime's CPU provider has no BF16 kernel for many ops (Conv, LayerNormalization, ...): a BF16
    model it cannot run is a limit of that provider, not of the model. Its verdict is skipped, saying so;
    the BF16 arithmetic was judged by bf16-emulation, and loading by the ONNX checker."""
    from graphdoctor.verify.compare import BackendVerdict

    verdicts = [
        BackendVerdict(
            v.backend,
            v.precision,
            "skipped",
            f"{v.reason} (no BF16 kernel on this provider; the BF16 arithmetic is judged by bf16-emulation)",
        )
        if v.backend == "onnxruntime-cpu" and v.status == "error" and v.cannot_run == "candidate"
        else v
        for v in result.verdicts
    ]
    return dataclasses.replace(result, verdicts=verdicts)


def _refuse_unrunnable_reference(verification: VerifyResult | None) -> None:
    """The original itself does not run on ONNX Runtime: nothing can be verified against it (one line)."""
    for verdict in verification.verdicts if verification is not None else ():
        if verdict.status == "error" and verdict.cannot_run == "reference":
            raise GraphDoctorError(verdict.reason)


def _could_not_run(verification: VerifyResult) -> bool:
    """A backend that could not run a model reached no verdict: no repair can fix that."""
    return any(verdict.status == "error" for verdict in verification.verdicts)


def _as_deployed(reference: Path, candidate: Path, feeds, codes: list[str]):
    """Safe fixes are judged bit-exact with every node as written; users diff-test in default sessions, where
    ONNX Runtime fuses nodes and packs weights, and a fix can change which kernel runs (a MatMul reading its
    weight through an Identity is not prepacked). So both models also run in a default session: bit-exact
    there too, or the verdict says by how much they differ, and fails beyond the fp32 preset."""
    from graphdoctor.verify.backends.onnxruntime import OnnxruntimeBackend
    from graphdoctor.verify.compare import BackendVerdict, compare_outputs
    from graphdoctor.verify.metrics import tolerance_for

    backend = OnnxruntimeBackend("onnxruntime-cpu")
    expected, actual = backend.run(reference, feeds), backend.run(candidate, feeds)
    exact = tolerance_for("exact")
    outputs = compare_outputs(expected, actual, exact)
    if all(c.passed for c in outputs):
        return BackendVerdict(backend.name, backend.precision, "passed", "", outputs, tolerance=exact)
    fp32 = tolerance_for("fp32")
    outputs = compare_outputs(expected, actual, fp32)
    worst = max(outputs, key=lambda c: c.max_abs)
    reason = (
        f"not bit-exact in ONNX Runtime's default session (graph optimizations and weight prepacking on), only with"
        f" every node as written: max abs {worst.max_abs:.3g} on '{worst.name}', a kernel choice of ONNX Runtime"
        f" after the fixes of {', '.join(codes) or 'no rule'} (bit-exact as written)"
    )
    status = "passed" if all(c.passed for c in outputs) else "failed"
    return BackendVerdict(backend.name, backend.precision, status, reason, outputs, tolerance=fp32)


_TOO_LARGE = (
    "needs the whole model in memory at once; skipped for models over 1 GiB (the FP32 model's activation ranges"
    " were measured a segment at a time instead, and overflowing nodes kept FP32)"
)


class _Unavailable:
    """A backend the gate leaves out, named in the report with the reason."""

    computes_fp16 = False
    precision = ""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason

    def unavailable_reason(self) -> str:
        return self.reason


def _producer_of_worst_input(source: Path, inputs) -> str | None:
    """The label of the node producing the most diverged of a node's inputs ((name, rel_err) pairs)."""
    from graphdoctor.analysis.graph import iter_values, node_label

    compared = [(error, name) for name, error in inputs if error is not None]
    if not compared:
        return None
    _, worst = max(compared)
    value = next((v for v in iter_values(load_model(source).model) if v.name == worst), None)
    producer = value.producer() if value is not None else None
    return node_label(producer) if producer is not None else None


def _blame(source: Path, target: Path, pipeline: _Pipeline, gate: _Gate) -> list[str]:
    """The rules whose fixes, applied alone to the original, already fail the gate."""
    blamed = []
    for done in pipeline.fixes:
        loaded, single = pipeline.alone([done.rule], source)
        staged = stage_model(loaded.model, target, _use_external_data(None, loaded.model))
        try:
            if single.fixes and not gate.run(staged.path, single).passed:
                blamed.append(done.rule.code)
        finally:
            staged.discard()
    return blamed


def _input_source(inputs, seed: int, batches) -> str:
    """What the gate's inputs were: a folder of batches is calibrated over whole, and verified on its first."""
    if inputs is None:
        return f"generated (seed {seed})"
    sources = getattr(batches, "sources", ())
    if len(sources) > 1:
        return f"{sources[0]} (the first of {len(sources)} batches in {inputs}; FP16 ranges measured over all)"
    return str(inputs)


def _activation_ranges(source: Path, model, batches, size: int, outputs: dict):
    """Ranges of the FP32 model's activations over the sample batches, for the converter; run a segment at
    a time for models over 1 GiB. `model` is the source, loaded and typed (not loaded again); `outputs`
    receives its outputs on the first batch, where the same run computed them."""
    from graphdoctor.verify.ranges import value_ranges_over
    from graphdoctor.verify.segmented import SegmentedOnnxruntimeBackend

    run = None
    if size > SEGMENTED_ABOVE:
        run = functools.partial(SegmentedOnnxruntimeBackend().run, source)
    return value_ranges_over(source, batches, model=model, run=run, outputs=outputs)
