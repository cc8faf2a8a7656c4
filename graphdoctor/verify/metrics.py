"""Comparing two tensors: the numbers a verdict rests on, and the tolerance presets.

Presets (stated in every report):
- `exact`: bit-identical, NaN equal to NaN. For safe fixes, which must not change a single bit.
- `fp32`: |d| <= 1e-5 + 1e-4·|ref| everywhere and cosine >= 0.99999. Re-ordered float32 arithmetic (fusions,
  folded constants) stays within this; onnxsim's own check uses the same atol/rtol.
- `fp16`: |d| <= 1e-2 + 1e-2·|ref| for at least 99% of the elements, and cosine >= 0.999. FP16 keeps 11
  significant bits (relative step 9.8e-4), and rounding errors add up over tens of layers; measured FP16
  ResNet-50 logits differ by up to 0.05 with cosine 0.9998, BERT-base hidden states by 0.009 with cosine
  0.999999. Elementwise checks alone would fail every FP16 model on a few outliers; cosine catches
  what matters (an overflow to inf or a collapsed layer drives it far below 0.999).
- `bf16`: |d| <= 5e-2 + 5e-2·|ref| for at least 98% of the elements, and cosine >= 0.999. BF16 keeps 8
  significant bits (relative step 7.8e-3, 8× FP16's): measured under BF16 emulation, ResNet-50 logits differ
  by up to 0.14 (0.4% of them beyond 4e-2, cosine 0.999995), BERT hidden states by 0.06 (cosine 0.99998).
Relative error is |d| / (|ref| + 1e-3·rms(ref)): the floor keeps near-zero reference values from turning
tiny absolute differences into huge relative ones.

Integer, bool and string tensors compare exactly under every preset: an FP16 conversion must never change an
index, a count or a bucket id, and no cosine can tell that one did. Sequences compare element by element,
optionals by presence then value, maps by keys then values (`compare_values`): ONNX Runtime returns them as
lists, None and dicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphdoctor.errors import GraphDoctorError

__all__ = [
    "PRESETS",
    "TensorComparison",
    "Tolerance",
    "compare_arrays",
    "compare_values",
    "differing_reason",
    "failure_reason",
    "kind_of",
    "not_identical_reason",
    "tolerance_for",
]


@dataclass(frozen=True)
class Tolerance:
    name: str
    atol: float
    rtol: float
    min_cosine: float
    max_mismatch: float = 0.0  # fraction of elements allowed outside atol + rtol·|ref|

    def describe(self) -> str:
        if self.name == "exact":
            return "exact (bit-identical)"
        allowance = f", up to {self.max_mismatch:.0%} of elements outside" if self.max_mismatch else ""
        return f"{self.name} (atol {self.atol:g}, rtol {self.rtol:g}, cosine >= {self.min_cosine:g}{allowance})"


PRESETS = {
    "exact": Tolerance("exact", 0.0, 0.0, 1.0),
    "fp32": Tolerance("fp32", 1e-5, 1e-4, 0.99999),
    "fp16": Tolerance("fp16", 1e-2, 1e-2, 0.999, max_mismatch=0.01),
    "bf16": Tolerance("bf16", 5e-2, 5e-2, 0.999, max_mismatch=0.02),
}


def tolerance_for(preset: str, atol: float | None = None, rtol: float | None = None, min_cosine=None) -> Tolerance:
    """A preset, with explicit --atol/--rtol/--min-cosine overriding its numbers."""
    if preset not in PRESETS:
        raise GraphDoctorError(f"unknown tolerance preset '{preset}' (choose from {', '.join(PRESETS)})")
    base = PRESETS[preset]
    if atol is None and rtol is None and min_cosine is None:
        return base
    return Tolerance(
        name="custom",
        atol=base.atol if atol is None else atol,
        rtol=base.rtol if rtol is None else rtol,
        min_cosine=base.min_cosine if min_cosine is None else min_cosine,
        max_mismatch=base.max_mismatch,
    )


@dataclass(frozen=True)
class TensorComparison:
    """How one candidate tensor differs from its reference."""

    name: str
    shape: tuple[int, ...]
    passed: bool
    max_abs: float
    max_rel: float
    cosine: float
    mismatch: float  # fraction of elements outside atol + rtol·|ref|
    ref_nonfinite: int
    cand_nonfinite: int
    worst_index: tuple[int, ...] | None = None
    top1_agreement: float | None = None  # for classifier-score outputs [N, C]
    top5_overlap: float | None = None  # mean share of each row's 5 best classes found in both
    reason: str = ""  # why it failed, in words
    kind: str = ""  # 'float tensor' | 'integer tensor' | 'bool tensor' | 'string tensor' | 'sequence' | ...

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def compare_arrays(name: str, ref: np.ndarray, cand: np.ndarray, tolerance: Tolerance) -> TensorComparison:
    if ref.shape != cand.shape:
        return _failed_shape(name, ref, cand)
    if tolerance.name == "exact" or not np.issubdtype(ref.dtype, np.inexact):
        return _compare_exact(name, ref, cand, tolerance)
    comparison = _compare_float(name, ref.astype(np.float64), cand.astype(np.float64), tolerance)
    return TensorComparison(**{**comparison.__dict__, "kind": "float tensor"})


def kind_of(value: Any) -> str:
    """What a value that ONNX Runtime returns is, in words: a tensor by its element kind, else its type."""
    if value is None:
        return "empty optional"
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    kind = np.asarray(value).dtype.kind
    return {"f": "float", "c": "float", "b": "bool", "O": "string", "U": "string", "S": "string"}.get(
        kind, "integer"
    ) + " tensor"


def compare_values(name: str, ref: Any, cand: Any, tolerance: Tolerance) -> TensorComparison:
    """Any value ONNX Runtime returns: a tensor (an array), a sequence (a list), an optional (None when
    empty) or a map (a dict); sequences and maps element by element, each element as a tensor is."""
    ref_kind, cand_kind = kind_of(ref), kind_of(cand)
    containers = ("sequence", "map", "empty optional")
    if (ref_kind in containers or cand_kind in containers) and ref_kind != cand_kind:
        return _failed(
            name, _shape_of(ref), ref_kind, f"the candidate's value is {_a(cand_kind)}, the reference's {_a(ref_kind)}"
        )
    if ref_kind == "empty optional":
        return TensorComparison(name, (), True, 0.0, 0.0, 1.0, 0.0, 0, 0, kind=ref_kind)
    if ref_kind == "sequence":
        return _compare_sequence(name, ref, cand, tolerance)
    if ref_kind == "map":
        return _compare_map(name, ref, cand, tolerance)
    return compare_arrays(name, np.asarray(ref), np.asarray(cand), tolerance)


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _shape_of(value: Any) -> tuple[int, ...]:
    """A tensor's shape; a sequence's or map's length; () for an empty optional."""
    if value is None:
        return ()
    if isinstance(value, list | dict):
        return (len(value),)
    return tuple(np.asarray(value).shape)


def _failed(name: str, shape: tuple[int, ...], kind: str, reason: str) -> TensorComparison:
    return TensorComparison(name, shape, False, float("inf"), float("inf"), 0.0, 1.0, 0, 0, reason=reason, kind=kind)


def _compare_sequence(name: str, ref: list, cand: list, tolerance: Tolerance) -> TensorComparison:
    if len(ref) != len(cand):
        return _failed(
            name, (len(ref),), "sequence", f"a sequence of {len(cand)} elements; the reference's has {len(ref)}"
        )
    elements = [compare_values(f"{name}[{i}]", r, c, tolerance) for i, (r, c) in enumerate(zip(ref, cand, strict=True))]
    return _combine(name, "sequence", elements)


def _compare_map(name: str, ref: dict, cand: dict, tolerance: Tolerance) -> TensorComparison:
    if set(ref) != set(cand):
        differ = len(set(ref) ^ set(cand))
        return _failed(name, (len(ref),), "map", f"{differ} keys are in only one of the two maps")
    keys = sorted(ref, key=repr)
    elements = [compare_values(f"{name}[{key!r}]", ref[key], cand[key], tolerance) for key in keys]
    return _combine(name, "map", elements)


def _combine(name: str, kind: str, elements: list[TensorComparison]) -> TensorComparison:
    """One comparison for a sequence or map: the worst numbers of its elements, the mismatch weighted by their
    sizes, and the first failing element's reason."""
    sizes = [max(math.prod(e.shape), 1) for e in elements]
    failed = [e for e in elements if not e.passed]
    worst = max(range(len(elements)), key=lambda i: elements[i].max_abs, default=None)
    reason = ""
    if failed:
        reason = f"{len(failed)} of {len(elements)} {kind} elements differ; first, {failed[0].name}: {failed[0].reason}"
    return TensorComparison(
        name=name,
        shape=(len(elements),),
        passed=not failed,
        max_abs=max((e.max_abs for e in elements), default=0.0),
        max_rel=max((e.max_rel for e in elements), default=0.0),
        cosine=min((e.cosine for e in elements), default=1.0),
        mismatch=sum(e.mismatch * n for e, n in zip(elements, sizes, strict=True)) / sum(sizes) if elements else 0.0,
        ref_nonfinite=sum(e.ref_nonfinite for e in elements),
        cand_nonfinite=sum(e.cand_nonfinite for e in elements),
        worst_index=None if worst is None else (worst, *(elements[worst].worst_index or ())),
        reason=reason,
        kind=kind,
    )


def _failed_shape(name: str, ref: np.ndarray, cand: np.ndarray) -> TensorComparison:
    return _failed(
        name, tuple(ref.shape), kind_of(ref), f"shape {list(cand.shape)} differs from the reference's {list(ref.shape)}"
    )


def _compare_exact(name: str, ref: np.ndarray, cand: np.ndarray, tolerance: Tolerance) -> TensorComparison:
    """Bit-level equality (NaN equals NaN), with the float metrics kept for the report. Strings (object arrays,
    whose bytes are pointers) are equal element by element; their distance is 0 or inf. Integer and bool
    tensors say how many elements differ, and a dtype that differs fails on its own."""
    kind = kind_of(ref)
    textual = ref.dtype.kind in "OUS" or cand.dtype.kind in "OUS"
    if textual:
        same = ref.dtype.kind == cand.dtype.kind and bool(np.array_equal(ref, cand))
    else:
        same = ref.dtype == cand.dtype and ref.tobytes() == cand.tobytes()
    if np.issubdtype(ref.dtype, np.inexact) and not textual:
        metrics = _compare_float(name, ref.astype(np.float64), cand.astype(np.float64), tolerance)
    else:
        differ = _differing(ref, cand, textual)
        distance = _distance(ref, cand, differ, textual)
        metrics = TensorComparison(
            name, tuple(ref.shape), True, distance, 0.0, 1.0,
            float(differ.mean()) if differ.size else 0.0, 0, 0, _worst(differ.astype(np.float64)),
        )  # fmt: skip
    reason = "" if same else _exact_reason(kind, ref, cand, metrics)
    return TensorComparison(**{**metrics.__dict__, "passed": same, "reason": reason, "kind": kind})


def _differing(ref: np.ndarray, cand: np.ndarray, textual: bool) -> np.ndarray:
    """Which elements differ, by value (an int32 3 equals an int64 3 here; the dtype is judged apart)."""
    if textual and ref.dtype.kind != cand.dtype.kind:
        return np.ones(ref.shape, dtype=bool)
    return np.asarray(ref != cand, dtype=bool).reshape(ref.shape)


def _distance(ref: np.ndarray, cand: np.ndarray, differ: np.ndarray, textual: bool) -> float:
    if textual:
        return float("inf") if differ.any() else 0.0
    if not differ.any():
        return 0.0
    return float(np.abs(ref.astype(np.float64) - cand.astype(np.float64)).max(initial=0))


def _exact_reason(kind: str, ref: np.ndarray, cand: np.ndarray, metrics: TensorComparison) -> str:
    if kind == "float tensor":
        return not_identical_reason(metrics.reason, metrics.mismatch)
    differing = int(np.count_nonzero(_differing(ref, cand, kind == "string tensor")))
    return differing_reason(kind, differing, ref.size, str(ref.dtype), str(cand.dtype))


def not_identical_reason(reason: str, mismatch: float) -> str:
    """Why two float tensors are not bit-identical: the tolerance's reason, else the share that differs."""
    return reason or f"not bit-identical: {mismatch:.2%} of elements differ"


def differing_reason(kind: str, differing: int, size: int, ref_dtype: str, cand_dtype: str) -> str:
    """Why two integer, bool or string tensors are not equal: their dtypes, and how many elements differ."""
    counted = f"{differing} of {size} elements differ"
    if ref_dtype != cand_dtype:
        return f"{kind}: dtype {cand_dtype} differs from the reference's {ref_dtype}" + (
            f"; {counted}" if differing else ""
        )
    return f"{kind}: {counted} (exact comparison)"


def _compare_float(name: str, ref: np.ndarray, cand: np.ndarray, tolerance: Tolerance) -> TensorComparison:
    ref_bad, cand_bad = ~np.isfinite(ref), ~np.isfinite(cand)
    both_finite = ~(ref_bad | cand_bad)
    # inf of the same sign and NaN against NaN agree; anything else non-finite is a mismatch
    nonfinite_agree = (ref_bad & cand_bad) & ((np.isnan(ref) & np.isnan(cand)) | (ref == cand))
    diff = np.abs(np.where(both_finite, ref, 0.0) - np.where(both_finite, cand, 0.0))  # no inf - inf warnings
    scale = 1e-3 * _rms(ref[both_finite]) + np.finfo(np.float64).tiny
    rel = diff / (np.abs(np.where(both_finite, ref, 0.0)) + scale)
    outside = (diff > tolerance.atol + tolerance.rtol * np.abs(np.where(both_finite, ref, 0.0))) | (
        ~both_finite & ~nonfinite_agree
    )
    mismatch = float(outside.mean()) if outside.size else 0.0
    cosine = _cosine(np.where(both_finite, ref, 0.0), np.where(both_finite, cand, 0.0))
    comparison = TensorComparison(
        name=name,
        shape=tuple(ref.shape),
        passed=True,
        max_abs=float(diff.max(initial=0.0)) if not (~both_finite & ~nonfinite_agree).any() else float("inf"),
        max_rel=float(rel.max(initial=0.0)),
        cosine=cosine,
        mismatch=mismatch,
        ref_nonfinite=int(ref_bad.sum()),
        cand_nonfinite=int(cand_bad.sum()),
        worst_index=_worst(np.where(outside, np.inf, diff)),
        top1_agreement=_top1_agreement(ref, cand),
        top5_overlap=_topk_overlap(ref, cand, 5),
    )
    reason = failure_reason(comparison, tolerance)
    return TensorComparison(**{**comparison.__dict__, "passed": not reason, "reason": reason})


def failure_reason(c: TensorComparison, tolerance: Tolerance) -> str:
    """Why a float comparison fails `tolerance`, in words; "" when it passes."""
    if c.cand_nonfinite > c.ref_nonfinite:
        return f"{c.cand_nonfinite - c.ref_nonfinite} more non-finite values (inf/NaN) than the reference"
    if c.mismatch > tolerance.max_mismatch:
        return f"{c.mismatch:.2%} of elements outside atol {tolerance.atol:g} + rtol {tolerance.rtol:g}·|ref|"
    # the cosine of values that all lie within atol of each other is noise (an all-zero output against 1e-9
    # has cosine 0): it judges only outputs where some element differs by more than atol
    if c.cosine < tolerance.min_cosine and c.max_abs > tolerance.atol:
        return f"cosine similarity {c.cosine:.6f} < {tolerance.min_cosine:g}"
    return ""


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values * values))) if values.size else 0.0


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norm)


def _worst(diff: np.ndarray) -> tuple[int, ...] | None:
    if diff.size == 0:
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))


def _is_class_scores(ref: np.ndarray, cand: np.ndarray) -> bool:
    """Outputs shaped like classifier scores: [N, C>=10]. Other layouts (detector heads, hidden states) have
    no single class axis to rank along."""
    return ref.ndim == 2 and ref.shape[1] >= 10 and bool(np.isfinite(ref).all() and np.isfinite(cand).all())


def _top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float | None:
    """Share of rows whose arg-max class agrees: what a classifier's user sees change."""
    if not _is_class_scores(ref, cand):
        return None
    return float((ref.argmax(axis=1) == cand.argmax(axis=1)).mean())


def _topk_overlap(ref: np.ndarray, cand: np.ndarray, k: int) -> float | None:
    """Mean share of each row's k best reference classes that are also among the candidate's k best."""
    if not _is_class_scores(ref, cand):
        return None
    best_ref = np.argpartition(-ref, k - 1, axis=1)[:, :k]
    best_cand = np.argpartition(-cand, k - 1, axis=1)[:, :k]
    shared = [len(np.intersect1d(a, b)) / k for a, b in zip(best_ref, best_cand, strict=True)]
    return float(np.mean(shared))
