"""The Python API: what the CLI calls, and what users call from their own scripts.

from graphdoctor.api import lint
result = lint("model.onnx", ignore=["GD011"])
for finding in result.findings: print(finding.code, finding.message)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphdoctor.analysis import Analysis
from graphdoctor.engine import run_rules, select_rules
from graphdoctor.model import load_model
from graphdoctor.rule import Finding, Rule, Severity, load_rules

__all__ = ["LintResult", "lint"]


@dataclass(frozen=True)
class LintResult:
    path: Path
    findings: list[Finding]
    rules: list[Rule]  # the rules that ran
    seconds: float
    file_size: int

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def fails(self, fail_on: Severity) -> bool:
        return any(f.severity >= fail_on for f in self.findings)


def lint(
    path: str | os.PathLike[str],
    *,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    rule_options: Mapping[str, Mapping[str, Any]] | None = None,
    rules: Iterable[Rule] | None = None,
) -> LintResult:
    """Load the model at `path` (lazily; the file is never modified) and run the selected rules on it."""
    start = time.perf_counter()
    chosen = select_rules(load_rules() if rules is None else rules, select, ignore)
    loaded = load_model(path)
    analysis = Analysis(loaded.model, loaded.path, loaded.file_size)
    findings = run_rules(chosen, analysis, rule_options)
    return LintResult(
        path=loaded.path,
        findings=findings,
        rules=chosen,
        seconds=time.perf_counter() - start,
        file_size=loaded.file_size,
    )
