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
Relative error is |d| / (|ref| + 1e-3·rms(ref)): the floor keeps near-zero reference values from turning
tiny absolute differences into huge relative ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphdoctor.errors import GraphDoctorError

__all__ = ["PRESETS", "TensorComparison", "Tolerance", "compare_arrays", "tolerance_for"]


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

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def compare_arrays(name: str, ref: np.ndarray, cand: np.ndarray, tolerance: Tolerance) -> TensorComparison:
    if ref.shape != cand.shape:
        return _failed_shape(name, ref, cand)
    if tolerance.name == "exact" or not np.issubdtype(ref.dtype, np.inexact):
        return _compare_exact(name, ref, cand, tolerance)
    return _compare_float(name, ref.astype(np.float64), cand.astype(np.float64), tolerance)


def _failed_shape(name: str, ref: np.ndarray, cand: np.ndarray) -> TensorComparison:
    return TensorComparison(
        name, tuple(ref.shape), False, float("inf"), float("inf"), 0.0, 1.0, 0, 0,
        reason=f"shape {list(cand.shape)} differs from the reference's {list(ref.shape)}",
    )  # fmt: skip


def _compare_exact(name: str, ref: np.ndarray, cand: np.ndarray, tolerance: Tolerance) -> TensorComparison:
    """Bit-level equality (NaN equals NaN), with the float metrics kept for the report. Strings (object arrays,
    whose bytes are pointers) are equal element by element; their distance is 0 or inf."""
    textual = ref.dtype.kind in "OUS" or cand.dtype.kind in "OUS"
    if textual:
        same = ref.dtype.kind == cand.dtype.kind and bool(np.array_equal(ref, cand))
    else:
        same = ref.dtype == cand.dtype and ref.tobytes() == cand.tobytes()
    if np.issubdtype(ref.dtype, np.inexact) and not textual:
        metrics = _compare_float(name, ref.astype(np.float64), cand.astype(np.float64), tolerance)
    else:
        differ = ref != cand
        distance = (
            (0.0 if same else float("inf")) if textual else float(np.abs(ref.astype(np.float64) - cand).max(initial=0))
        )
        metrics = TensorComparison(
            name, tuple(ref.shape), True, distance, 0.0, 1.0,
            float(differ.mean()) if differ.size else 0.0, 0, 0, _worst(differ.astype(np.float64)),
        )  # fmt: skip
    reason = "" if same else (metrics.reason or f"not bit-identical: {metrics.mismatch:.2%} of elements differ")
    return TensorComparison(**{**metrics.__dict__, "passed": same, "reason": reason})


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
    reason = _failure(comparison, tolerance)
    return TensorComparison(**{**comparison.__dict__, "passed": not reason, "reason": reason})


def _failure(c: TensorComparison, tolerance: Tolerance) -> str:
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
