"""Runs rules over a model: selection, per-rule options, and strict checking of what rules report."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import onnx_ir as ir

from graphdoctor.analysis import Analysis
from graphdoctor.analysis.graph import node_label
from graphdoctor.errors import GraphDoctorError
from graphdoctor.rule import Finding, Rule, resolve_selectors

__all__ = ["RuleContext", "run_rules", "select_rules"]

logger = logging.getLogger(__name__)


class RuleContext:
    """What a rule's check sees: the shared analysis, its options, and `report` to make findings."""

    def __init__(self, rule: Rule, analysis: Analysis, options: Any = None) -> None:
        self.rule = rule
        self.analysis = analysis
        self.options = options if options is not None else rule.meta.options

    def report(
        self,
        message_id: str,
        *,
        node: ir.Node | None = None,
        values: Sequence[ir.Value | str] = (),
        nbytes: int | None = None,
        severity=None,
        **data: Any,
    ) -> Finding:
        """A finding from one of the rule's declared messages; unknown ids or missing placeholders raise."""
        meta = self.rule.meta
        message = meta.messages.get(message_id)
        if message is None:
            raise ValueError(f"rule {meta.code} reports undeclared message id '{message_id}'")
        missing = message.placeholders() - data.keys()
        if missing:
            raise ValueError(f"rule {meta.code} message '{message_id}' lacks {sorted(missing)}")
        value_names = tuple(v if isinstance(v, str) else (v.name or "?") for v in values)
        return Finding(
            code=meta.code,
            name=meta.name,
            severity=severity or message.severity or meta.severity,
            message=message.text.format(**data),
            help=message.help.format(**data),
            message_id=message_id,
            node=node_label(node) if node is not None else None,
            values=value_names,
            graph=self._graph_of(node, values),
            nbytes=nbytes,
            data=dict(data),
            fix=message.fix or meta.fix,
        )

    def _graph_of(self, node: ir.Node | None, values: Sequence[ir.Value | str]) -> str:
        """Where the finding is: the node's graph, else the first value's."""
        if node is not None:
            return self.analysis.graph_path(node)
        first = next((v for v in values if not isinstance(v, str)), None)
        return self.analysis.graph_path(first) if first is not None else ""


def select_rules(rules: Iterable[Rule], select: Iterable[str] = (), ignore: Iterable[str] = ()) -> list[Rule]:
    """Rules chosen by `select` (all when empty) minus `ignore`; unknown selectors are an error."""
    rules = list(rules)
    selected = resolve_selectors(rules, select) if list(select) else {r.code for r in rules}
    ignored = resolve_selectors(rules, ignore)
    return [r for r in rules if r.code in selected and r.code not in ignored]


def run_rules(
    rules: Iterable[Rule],
    analysis: Analysis,
    rule_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Finding]:
    """Every finding of every rule, sorted by code and location."""
    findings: list[Finding] = []
    for rule in rules:
        options = _options_for(rule, (rule_options or {}).get(rule.name))
        context = RuleContext(rule, analysis, options)
        findings.extend(rule.check(analysis.model, context))
    return sorted(findings, key=Finding.sort_key)


def _options_for(rule: Rule, overrides: Mapping[str, Any] | None) -> Any:
    defaults = rule.meta.options
    if not overrides:
        return defaults
    if defaults is None:
        raise GraphDoctorError(f"rule {rule.name} takes no options, got {sorted(overrides)}")
    known = {f.name for f in dataclasses.fields(defaults)}
    keys = {k.replace("-", "_"): v for k, v in overrides.items()}
    unknown = sorted(keys.keys() - known)
    if unknown:
        raise GraphDoctorError(f"rule {rule.name}: unknown option(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(defaults, **keys)
