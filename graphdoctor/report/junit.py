"""JUnit XML, the test report Jenkins, GitLab and Azure DevOps display: lint as one test per model, verify as
one test per backend.

lint: <testsuites><testsuite name="graphdoctor lint" tests failures errors time> and, per model,
<testcase classname="graphdoctor.lint" name=PATH time=SECONDS>. A model with findings at or above `fail_on`
holds a <failure type=WORST SEVERITY message="N findings at or above SEVERITY">, one line per such finding;
the findings below `fail_on` go to <system-out>. A model that could not be linted holds an <error
type="not-linted" message=ITS ERROR>.

verify: <testsuite name="graphdoctor verify"> with the reference and candidate as <properties>, and per
backend <testcase classname="graphdoctor.verify" name=BACKEND>: a <failure type="failed" message=REASON> when
the outputs differ, an <error type="error" message=REASON> when the backend could not run a model (as a
model lint could not read), <skipped message=REASON> when the backend is not available here; the per-output
comparison lines in the failure's text or in <system-out>.

Text that XML 1.0 cannot hold (control characters other than tab and newline) is dropped, so any message
gives a well-formed file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import TextIO

from graphdoctor.analysis.format import format_count
from graphdoctor.api import LintFailure, LintResult
from graphdoctor.report.text import comparison_line
from graphdoctor.rule import Finding, Severity

__all__ = ["render_lint", "render_verify"]

# what XML 1.0 cannot hold, even escaped (https://www.w3.org/TR/xml/#charsets)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def render_lint(results: Iterable[LintResult | LintFailure], stream: TextIO, fail_on: Severity) -> None:
    results = list(results)
    suite = ET.Element("testsuite", name="graphdoctor lint")
    for result in results:
        if isinstance(result, LintFailure):
            case = _element(suite, "testcase", classname="graphdoctor.lint", name=str(result.path), time="0")
            _element(case, "error", type="not-linted", message=result.error)
        else:
            _lint_case(suite, result, fail_on)
    seconds = sum(r.seconds for r in results if isinstance(r, LintResult))
    _write(suite, stream, seconds)


def _lint_case(suite: ET.Element, result: LintResult, fail_on: Severity) -> None:
    case = _element(
        suite, "testcase", classname="graphdoctor.lint", name=str(result.path), time=f"{result.seconds:.3f}"
    )
    failing = [f for f in result.findings if f.severity >= fail_on]
    passing = [f for f in result.findings if f.severity < fail_on]
    if failing:
        worst = max(f.severity for f in failing)
        count = format_count(len(failing), "finding")
        failure = _element(case, "failure", type=str(worst), message=f"{count} at or above {fail_on}")
        failure.text = _text("\n".join(_finding_line(f) for f in failing))
    if passing:
        _element(case, "system-out").text = _text("\n".join(_finding_line(f) for f in passing))


def _finding_line(finding: Finding) -> str:
    line = f"{finding.severity} {finding.code} {finding.name} {finding.location}: {finding.message}"
    return f"{line} — fix: {finding.help}" if finding.help else line


def render_verify(result, stream: TextIO) -> None:
    """`result` is a graphdoctor.verify.compare.VerifyResult."""
    suite = ET.Element("testsuite", name="graphdoctor verify")
    properties = _element(suite, "properties")
    for name, value in (
        ("reference", str(result.reference)),
        ("candidate", str(result.candidate)),
        ("reference_runner", result.reference_runner),
        ("inputs", result.input_source),
    ):
        _element(properties, "property", name=name, value=value)
    for verdict in result.verdicts:
        _verify_case(suite, verdict)
    _write(suite, stream, result.seconds)


def _verify_case(suite: ET.Element, verdict) -> None:
    case = _element(suite, "testcase", classname="graphdoctor.verify", name=verdict.backend)
    lines = [f"precision: {verdict.precision}"]
    if verdict.tolerance is not None:
        lines.append(f"tolerance: {verdict.tolerance.describe()}")
    if verdict.placement:
        lines.append(f"placement: {verdict.placement}")
    lines += [comparison_line(c) for c in verdict.outputs]
    report = _text("\n".join(lines))
    if verdict.status == "skipped":
        _element(case, "skipped", message=verdict.reason)
    elif verdict.status == "error":
        _element(case, "error", type="error", message=verdict.reason).text = report
    elif verdict.status == "failed":
        _element(case, "failure", type="failed", message=verdict.reason).text = report
    else:
        _element(case, "system-out").text = report


def _element(parent: ET.Element, tag: str, **attributes: str) -> ET.Element:
    return ET.SubElement(parent, tag, {key: _text(value) for key, value in attributes.items()})


def _text(text: str) -> str:
    return _NOT_XML.sub("", text)


def _write(suite: ET.Element, stream: TextIO, seconds: float) -> None:
    """The suite's counts from its test cases, wrapped in <testsuites> with the same counts, indented."""
    cases = suite.findall("testcase")
    counts = {
        "tests": len(cases),
        "failures": sum(1 for c in cases if c.find("failure") is not None),
        "errors": sum(1 for c in cases if c.find("error") is not None),
        "skipped": sum(1 for c in cases if c.find("skipped") is not None),
    }
    attributes = {key: str(value) for key, value in counts.items()} | {"time": f"{seconds:.3f}"}
    suite.attrib.update(attributes)
    root = ET.Element("testsuites", name="graphdoctor", **attributes)
    root.append(suite)
    ET.indent(root)
    stream.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    stream.write(ET.tostring(root, encoding="unicode"))
    stream.write("\n")
