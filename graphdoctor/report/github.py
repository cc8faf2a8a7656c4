"""GitHub Actions annotations: one workflow command per finding, which the runner turns into an annotation on
the model file in the run's summary and the pull request, then a plain summary line for the log.

    ::warning file=models/yolo.onnx,title=GD004 eps-mismatch::node 'bn_3': 3 of 57 ...%0Afix: check ...

error -> `::error`, warning -> `::warning`, info -> `::notice`. The message is the finding's location and
message, then its help on a second line. `file` is the model's path relative to the current directory when the
model lies under it (GitHub resolves it against the workspace, where CI runs lint), else its absolute path. A
model that could not be linted is `::error file=PATH,title=graphdoctor::<its error>`. Escaping is the runner's
(actions/toolkit, command.ts): in the message % CR LF become %25 %0D %0A; in properties : and , too, as %3A %2C.

GitHub turns only a limited number of lines of each level per step into annotations; the summary line gives
the totals, and --select/--ignore keep what matters in view.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from graphdoctor.analysis.format import format_count
from graphdoctor.api import LintFailure, LintResult
from graphdoctor.report.output import workspace_path
from graphdoctor.rule import Finding, Severity

__all__ = ["render_lint"]

_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def render_lint(results: Iterable[LintResult | LintFailure], stream: TextIO) -> None:
    results = list(results)
    for result in results:
        if isinstance(result, LintFailure):
            stream.write(_command("error", result.path, "graphdoctor", result.error))
            continue
        for finding in result.findings:
            stream.write(_command(_COMMAND[finding.severity], result.path, _title(finding), _message(finding)))
    stream.write(_summary_line(results) + "\n")


def _title(finding: Finding) -> str:
    return f"{finding.code} {finding.name}"


def _message(finding: Finding) -> str:
    text = f"{finding.location}: {finding.message}"
    return f"{text}\nfix: {finding.help}" if finding.help else text


def _command(command: str, path: Path, title: str, message: str) -> str:
    file = _escape_property(str(workspace_path(path)))
    return f"::{command} file={file},title={_escape_property(title)}::{_escape_data(message)}\n"


def _summary_line(results: list[LintResult | LintFailure]) -> str:
    """'graphdoctor: 3 models, 1 not linted; 2 error, 5 warning, 10 info findings' (not a command: a log line)."""
    linted = [r for r in results if isinstance(r, LintResult)]
    counts = ", ".join(
        f"{sum(r.count(s) for r in linted)} {s}" for s in (Severity.ERROR, Severity.WARNING, Severity.INFO)
    )
    failed = len(results) - len(linted)
    models = format_count(len(results), "model") + (f", {failed} not linted" if failed else "")
    return f"graphdoctor: {models}; {counts} findings"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
