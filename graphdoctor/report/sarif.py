"""SARIF 2.1.0, the format code scanners read (GitHub code scanning, GitLab, Azure DevOps).

One run, tool.driver "graphdoctor" with one reportingDescriptor per rule that ran on any model: `id` the code,
`name` the (plugin-qualified) kebab name, shortDescription the summary, fullDescription the docstring's
"What it finds", help.text the whole docstring (no help.markdown: the docstrings are plain text whose `*`, `_`
and `^` Markdown would misrender), defaultConfiguration.level the default severity (info is SARIF's "note"),
properties {"kind", "fixSafeties"}. The project declares no home page, so the driver has no informationUri.

Each finding is a result: ruleId, ruleIndex, level (the finding's own severity, which may differ from the
rule's default), message.text the message then " — fix: " and the finding's help (the action for this
finding, which the rule's help cannot name), one location, partialFingerprints and properties {"messageId",
"fix" ("safe" | "unsafe" | null), "nbytes", "data"}. The location's physicalLocation is the model file,
without a region (a model has no lines): its URI is relative to the current directory when the model lies under
it (scanners resolve it against the repository root, where CI runs lint), else a file:// URI. Its
logicalLocations name the node (kind "member": a node is a member of its graph) and the values (kind
"variable": tensors), each with fullyQualifiedName "<graph path>/<name>", or the name alone in the main graph.

partialFingerprints {"graphdoctor/v1": sha256 of code, graph, node, values and message id} let a scanner track
a finding across runs and commits while its numbers change; the model's path is the location's, not the
fingerprint's. A model that could not be linted is a toolExecutionNotification (level error, naming the model)
of the run's one invocation, whose executionSuccessful is then false. run.artifacts lists every model given,
with its size and target when linted.
"""

from __future__ import annotations

import hashlib
import json
import math
import textwrap
from collections.abc import Iterable
from itertools import takewhile
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from graphdoctor import __version__
from graphdoctor.api import LintFailure, LintResult
from graphdoctor.report.output import workspace_path
from graphdoctor.rule import Finding, Rule, Severity

__all__ = ["FINGERPRINT", "SCHEMA_URI", "render_lint"]

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
FINGERPRINT = "graphdoctor/v1"  # the partialFingerprints key; a new version when what it hashes changes
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def render_lint(results: Iterable[LintResult | LintFailure], stream: TextIO) -> None:
    results = list(results)
    linted = [r for r in results if isinstance(r, LintResult)]
    rules = _rules_that_ran(linted)
    rule_index = {rule.code: i for i, rule in enumerate(rules)}
    models: dict[str, LintResult | LintFailure] = {}  # by URI, in order: run.artifacts
    for result in results:
        models.setdefault(_artifact_uri(result.path), result)
    uris = list(models)
    run = {
        "tool": {"driver": _driver(rules)},
        "invocations": [_invocation([r for r in results if isinstance(r, LintFailure)], uris)],
        "artifacts": [_artifact(result, uri) for uri, result in models.items()],
        "results": [
            _result(finding, rule_index[finding.code], _model_location(result.path, uris))
            for result in linted
            for finding in result.findings
        ],
    }
    document = {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}
    json.dump(document, stream, indent=2, ensure_ascii=False, allow_nan=False)
    stream.write("\n")


def _artifact_uri(path: Path) -> str:
    """The model's URI: relative (percent-encoded, forward slashes) under the current directory, else file://."""
    located = workspace_path(path)
    if located.is_absolute():
        return located.as_uri()
    return quote(located.as_posix())


def _rules_that_ran(results: list[LintResult]) -> list[Rule]:
    """Every rule that ran on some model, once, by code: a descriptor each, even for rules that found nothing."""
    rules = {rule.code: rule for result in results for rule in result.rules}
    return [rules[code] for code in sorted(rules)]


def _driver(rules: list[Rule]) -> dict[str, Any]:
    return {
        "name": "graphdoctor",
        "version": __version__,
        "semanticVersion": __version__,
        "rules": [_descriptor(rule) for rule in rules],
    }


def _descriptor(rule: Rule) -> dict[str, Any]:
    meta = rule.meta
    return {
        "id": meta.code,
        "name": rule.qualified_name,
        "shortDescription": {"text": meta.summary},
        "fullDescription": {"text": _doc_section(rule.doc, "What it finds") or meta.summary},
        "help": {"text": rule.doc},
        "defaultConfiguration": {"level": _LEVEL[meta.severity]},
        "properties": {"kind": meta.kind.value, "fixSafeties": [safety.value for safety in meta.fix_safeties()]},
    }


def _doc_section(doc: str, heading: str) -> str:
    """The body of one section of a rule docstring (the indented lines under its heading), dedented."""
    lines = doc.splitlines()
    if heading not in lines:
        return ""
    start = lines.index(heading) + 1
    body = takewhile(lambda line: not line or line[0].isspace(), lines[start:])
    return textwrap.dedent("\n".join(body)).strip()


def _model_location(path: Path, uris: list[str]) -> dict[str, Any]:
    """The model file as a SARIF location, pointing at its entry in run.artifacts."""
    uri = _artifact_uri(path)
    return {"physicalLocation": {"artifactLocation": {"uri": uri, "index": uris.index(uri)}}}


def _result(finding: Finding, rule_index: int, model: dict[str, Any]) -> dict[str, Any]:
    text = f"{finding.message} — fix: {finding.help}" if finding.help else finding.message
    logical = _logical_locations(finding)
    location = {**model, "logicalLocations": logical} if logical else model
    return {
        "ruleId": finding.code,
        "ruleIndex": rule_index,
        "level": _LEVEL[finding.severity],
        "message": {"text": text},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT: _fingerprint(finding)},
        "properties": {
            "messageId": finding.message_id,
            "fix": finding.fix.value if finding.fix else None,
            "nbytes": finding.nbytes,
            "data": _plain(finding.data),
        },
    }


def _logical_locations(finding: Finding) -> list[dict[str, str]]:
    named = [(finding.node, "member")] if finding.node else []
    named += [(value, "variable") for value in finding.values]
    return [
        {"name": name, "fullyQualifiedName": f"{finding.graph}/{name}" if finding.graph else name, "kind": kind}
        for name, kind in named
    ]


def _fingerprint(finding: Finding) -> str:
    """Stable across runs: what the finding is about and which message, not its numbers or wording."""
    identity = [finding.code, finding.graph, finding.node or "", list(finding.values), finding.message_id]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def _invocation(failures: list[LintFailure], uris: list[str]) -> dict[str, Any]:
    notifications = [
        {
            "level": "error",
            "message": {"text": failure.error},
            "locations": [_model_location(failure.path, uris)],
            "properties": {"exitCode": failure.exit_code},
        }
        for failure in failures
    ]
    return {"executionSuccessful": not failures, "toolExecutionNotifications": notifications}


def _artifact(result: LintResult | LintFailure, uri: str) -> dict[str, Any]:
    artifact: dict[str, Any] = {"location": {"uri": uri}, "roles": ["analysisTarget"]}
    if isinstance(result, LintResult):
        artifact["length"] = result.file_size
        artifact["properties"] = {"target": result.target.name}
    return artifact


def _plain(value: Any) -> Any:
    """Finding data as JSON can hold it: numpy scalars and arrays as Python numbers and lists, non-finite
    numbers as the strings "inf", "-inf", "nan" (as the json report writes them), anything else as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=str)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)
