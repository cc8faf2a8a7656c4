"""The machine-readable report. Schema (version 1):

    {"schema_version": 1, "tool": "graphdoctor", "version": "0.1.0",
     "summary": {"models": int, "not_linted": int, "error": int, "warning": int, "info": int},
     "models": [{"path": str, "target": str, "file_size": int, "seconds": float, "rules": [code, ...],
                 "summary": {"error": int, "warning": int, "info": int},
                 "findings": [{"code", "name", "severity", "message", "help", "message_id",
                               "node", "values", "graph", "nbytes", "data", "fix"}]}]}

A model that could not be linted is {"path": str, "error": str, "exit_code": int} in `models`.
`data` holds the numbers behind the message (placeholder values); `node` and `nbytes` may be null;
`fix` is "safe", "unsafe" or null (no automatic fix).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, TextIO

from graphdoctor import __version__
from graphdoctor.api import LintFailure, LintResult
from graphdoctor.rule import Finding, Severity

__all__ = ["SCHEMA_VERSION", "render_fix", "render_lint", "render_verify"]

SCHEMA_VERSION = 1


def render_lint(results: Iterable[LintResult | LintFailure], stream: TextIO) -> None:
    results = list(results)
    linted = [r for r in results if isinstance(r, LintResult)]
    document = {
        "schema_version": SCHEMA_VERSION,
        "tool": "graphdoctor",
        "version": __version__,
        "models": [_model(result) if isinstance(result, LintResult) else _failure(result) for result in results],
        "summary": {
            "models": len(results),
            "not_linted": len(results) - len(linted),
            **{str(s): sum(r.count(s) for r in linted) for s in (Severity.ERROR, Severity.WARNING, Severity.INFO)},
        },
    }
    json.dump(document, stream, indent=2, default=_jsonable)
    stream.write("\n")


def _model(result: LintResult) -> dict[str, Any]:
    return {
        "path": str(result.path),
        "target": result.target.name,
        "file_size": result.file_size,
        "seconds": round(result.seconds, 4),
        "rules": [rule.code for rule in result.rules],
        "summary": {str(s): result.count(s) for s in (Severity.ERROR, Severity.WARNING, Severity.INFO)},
        "findings": [_finding(f) for f in result.findings],
    }


def _failure(failure: LintFailure) -> dict[str, Any]:
    return {"path": str(failure.path), "error": failure.error, "exit_code": failure.exit_code}


def _finding(finding: Finding) -> dict[str, Any]:
    return {
        "code": finding.code,
        "name": finding.name,
        "severity": str(finding.severity),
        "message": finding.message,
        "help": finding.help,
        "message_id": finding.message_id,
        "node": finding.node,
        "values": list(finding.values),
        "graph": finding.graph,
        "nbytes": finding.nbytes,
        "data": dict(finding.data),
        "fix": finding.fix.value if finding.fix else None,
    }


def _jsonable(value: Any) -> Any:
    """numpy scalars and other number-likes in finding data."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def render_verify(result, stream: TextIO) -> None:
    """Schema (version 1): {"schema_version", "tool", "version", "verify": {"reference", "candidate",
    "reference_runner" (what computed the reference outputs), "passed",
    "tolerance": {name, atol, rtol, min_cosine, max_mismatch}, "inputs": {name: {"dtype", "shape"}},
    "input_source", "seconds", "verdicts": [{"backend", "precision", "status", "reason",
    "placement" (where a GPU backend ran the kernels, "" where unknown),
    "outputs": [TensorComparison fields], "details": {...}, "tolerance": {...} | null}]}}

    `details` may hold "layerwise" (schema in graphdoctor.verify.layerwise.LayerwiseReport.as_dict),
    "fp16_overflow" or "fp16_nonfinite" (the first node whose output overflows FP16, from fp16-emulation).
    Non-finite numbers are written as the strings "inf", "-inf", "nan"."""
    document = {"schema_version": SCHEMA_VERSION, "tool": "graphdoctor", "version": __version__}
    document["verify"] = _verification(result)
    json.dump(_strict(document), stream, indent=2, default=_jsonable)
    stream.write("\n")


def _verification(result) -> dict[str, Any]:
    return {
        "reference": str(result.reference),
        "candidate": str(result.candidate),
        "reference_runner": result.reference_runner,
        "passed": result.passed,
        "tolerance": dict(result.tolerance.__dict__),
        "inputs": {n: {"dtype": str(a.dtype), "shape": list(a.shape)} for n, a in result.inputs.items()},
        "input_source": result.input_source,
        "seconds": round(result.seconds, 3),
        "verdicts": [
            {
                "backend": v.backend,
                "precision": v.precision,
                "status": v.status,
                "reason": v.reason,
                "placement": v.placement,
                "outputs": [c.as_dict() for c in v.outputs],
                "details": v.details,
                "tolerance": dict(v.tolerance.__dict__) if v.tolerance else None,
            }
            for v in result.verdicts
        ],
    }


def _fp16(result) -> dict[str, Any]:
    report = result.fp16
    return {
        "already_fp16": report.already_fp16,
        "converted_nodes": report.converted_nodes,
        "tensors_converted": report.tensors_converted,
        "casts_added": report.casts_added,
        "ranges_measured": report.ranges_measured,
        "functions_kept": report.functions_kept,
        "max_value": report.max_value,
        "precision": report.precision,
        "opset_notes": list(report.opset_notes),
        "kept_fp32": [dict(k.__dict__) for k in report.kept],
        "fp32_regions": [
            {"graph": r.graph, "nodes": list(r.nodes), "peak": r.peak, "peak_at": r.peak_at, "ends": list(r.ends)}
            for r in report.regions
        ],
        "kept_after_verification": [{"node": node, "reason": why} for node, why in result.fp16_repaired],
        "keep_fp32_hint": list(result.keep_fp32_hint),
        "changed_values": [dict(c.__dict__) for c in report.changed],
    }


def render_fix(result, stream: TextIO) -> None:
    """Schema (version 1): {"schema_version", "tool", "version", "fix": {"path", "output", "target", "written",
    "dry_run", "converged", "size_before", "size_after" (null when nothing was written), "seconds", "blamed" (rules
    whose fixes alone fail verification), "fixes": [{"code", "name", "repairs": {message_id: count}, "safety",
    "nodes_removed", "bytes_saved"}], "fp16" (FP16 or BF16): {"already_fp16", "converted_nodes",
    "tensors_converted", "casts_added", "ranges_measured", "functions_kept", "max_value", "precision" ("FP16" |
    "BF16"), "opset_notes", "kept_fp32": [{"node", "op_type", "graph", "reason", "kind"}], "fp32_regions":
    [{"graph", "nodes", "peak", "peak_at", "ends"}], "kept_after_verification": [{"node", "reason"}],
    "keep_fp32_hint": [node], "changed_values": [{"tensor", "what", "count", "worst"}]} | null, "verify": (as in
    `verify`'s report) | null}}"""
    fixed = {
        "path": str(result.path),
        "output": str(result.output),
        "target": result.target.name,
        "written": result.written,
        "dry_run": result.dry_run,
        "converged": result.converged,
        "size_before": result.size_before,
        "size_after": result.size_after,
        "seconds": round(result.seconds, 3),
        "blamed": result.blamed,
        "fixes": [
            {
                "code": f.rule.code,
                "name": f.rule.name,
                "repairs": dict(f.repairs),
                "safety": sorted(s.value for s in f.safety),
                "nodes_removed": f.nodes_removed,
                "bytes_saved": f.bytes_saved,
            }
            for f in result.fixes
        ],
        "fp16": _fp16(result) if result.fp16 is not None else None,
        "verify": _verification(result.verification) if result.verification is not None else None,
    }
    document = {"schema_version": SCHEMA_VERSION, "tool": "graphdoctor", "version": __version__, "fix": fixed}
    json.dump(_strict(document), stream, indent=2, default=_jsonable)
    stream.write("\n")


def _strict(value: Any) -> Any:
    """JSON has no inf or NaN: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value
