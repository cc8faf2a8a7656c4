"""Runs rules over a model: selection, per-rule options, strict checking of what rules report, and their
fixes applied to a fixed point.

A rule that raises is a bug, and stops the run loudly, on a well-formed model. On a malformed one (a tensor
whose payload contradicts its dims, an attribute of the wrong type: `Analysis.defects`, reported by GD016),
readers skip what is defective, but a rule may still trip over a contradiction nobody foresaw: there its
exception becomes a finding saying that the rule could not check the model, and the other rules go on."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from graphdoctor.analysis import Analysis
from graphdoctor.analysis.constants import stored_bytes
from graphdoctor.analysis.graph import iter_graph_sites, node_label
from graphdoctor.analysis.validity import Defect
from graphdoctor.errors import GraphDoctorError, first_line
from graphdoctor.rule import Finding, FixSafety, Rule, Severity, resolve_selectors
from graphdoctor.targets import DEFAULT_TARGET, Target

__all__ = [
    "FixPolicy",
    "RuleContext",
    "RuleFixes",
    "apply_fixes",
    "can_fix",
    "count_nodes",
    "run_rules",
    "select_rules",
]

logger = logging.getLogger(__name__)


class RuleContext:
    """What a rule's check sees: the shared analysis, its options, and `report` to make findings."""

    def __init__(self, rule: Rule, analysis: Analysis, options: Any = None, policy: FixPolicy | None = None) -> None:
        self.rule = rule
        self.analysis = analysis
        self.options = options if options is not None else rule.meta.options
        self.policy = policy  # set when fixing: only findings whose fix it allows are of use

    def wants(self, message_id: str) -> bool:
        """Whether findings of this message are of use: all are when linting, only those with an allowed fix
        when fixing. A rule may skip a costly search nobody will use (GD003's W/Wᵀ pairs without the opt-in)."""
        if self.policy is None:
            return True
        message = self.rule.meta.messages[message_id]
        return self.policy.allows_fix(message.fix or self.rule.meta.fix, message.opt_in)

    def report(
        self,
        message_id: str,
        *,
        node: ir.Node | None = None,
        values: Sequence[ir.Value | str] = (),
        nbytes: int | None = None,
        severity=None,
        repair: Callable[[], bool] | None = None,
        **data: Any,
    ) -> Finding:
        """A finding from one of the rule's declared messages; unknown ids or missing placeholders raise.

        `repair`, given by rules that can fix what they found, rewrites the model in place (see `apply_fixes`);
        it is kept only when the message declares a fix safety, and the finding states that safety only when
        it has a repair: a report never promises a fix `graphdoctor fix` would not make."""
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
            fix=(message.fix or meta.fix) if repair is not None else None,
            opt_in=message.opt_in,
            repair=repair if (message.fix or meta.fix) is not None else None,
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
    defects = analysis.defects  # before any rule: shape inference must not have retyped the model yet
    for rule in rules:
        options = _options_for(rule, (rule_options or {}).get(rule.name))
        context = RuleContext(rule, analysis, options)
        try:
            findings.extend(rule.check(analysis.model, context))  # what it found before raising is kept
        except GraphDoctorError:
            raise
        except Exception as error:
            if not defects:
                raise
            findings.append(_unchecked(rule, error, defects))
    return sorted(findings, key=Finding.sort_key)


def _unchecked(rule: Rule, error: Exception, defects: Sequence[Defect]) -> Finding:
    """What a rule that raised on a malformed model reports: that it could not check it, and why."""
    more = f" and {len(defects) - 1} more" if len(defects) > 1 else ""
    return Finding(
        code=rule.code,
        name=rule.name,
        severity=Severity.WARNING,
        message=f"could not check this model, which is malformed ({defects[0].text}{more}): the rule stopped on"
        f" {type(error).__name__}: {first_line(error)}",
        help="repair the defects GD016 malformed-model reports, then lint again",
        message_id="unchecked",
        data={"error": first_line(error), "defects": len(defects)},
    )


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
    for key, value in keys.items():
        _check_option_type(rule, key, value, getattr(defaults, key))
    return dataclasses.replace(defaults, **keys)


def _check_option_type(rule: Rule, key: str, value: Any, default: Any) -> None:
    """An option takes its default's type (an int where a float is meant; never a bool for a number): a
    `min-bytes = "big"` in a config file must be one line, not an error deep inside the rule."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, int if isinstance(default, int) else (int, float)) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = default is None or isinstance(value, type(default))
    if not ok:
        raise GraphDoctorError(
            f"rule {rule.name}: option {key.replace('_', '-')} takes {type(default).__name__} values"
            f" (default {default!r}), got {type(value).__name__} {value!r}"
        )


@dataclass
class RuleFixes:
    """What one rule's fixes did to the model, summed over the rounds of `apply_fixes`."""

    rule: Rule
    repairs: Counter[str] = field(default_factory=Counter)  # message id -> findings repaired
    safety: set[FixSafety] = field(default_factory=set)
    nodes_removed: int = 0  # net: a fix that adds a node (W/Wᵀ as one Transpose) counts -1
    bytes_saved: int = 0  # net stored tensor bytes; negative when a fix grew the file

    @property
    def count(self) -> int:
        return sum(self.repairs.values())


@dataclass(frozen=True)
class FixPolicy:
    """Which findings' fixes to apply: safe ones always; unsafe ones with `unsafe`; opt-in ones when named."""

    unsafe: bool = False
    opt_ins: frozenset[str] = frozenset()

    def allows(self, finding: Finding) -> bool:
        return finding.repair is not None and self.allows_fix(finding.fix, finding.opt_in)

    def allows_fix(self, safety: FixSafety | None, opt_in: str = "") -> bool:
        """Whether a fix of this safety (None: no fix), opt-in name aside, may be applied."""
        if safety is None or (opt_in and opt_in not in self.opt_ins):
            return False
        return safety is FixSafety.SAFE or self.unsafe


def can_fix(rule: Rule) -> bool:
    return bool(rule.meta.fix_safeties())


def apply_fixes(
    model: ir.Model,
    rules: Iterable[Rule],
    policy: FixPolicy,
    rule_options: Mapping[str, Mapping[str, Any]] | None = None,
    path: Path | None = None,
    target: Target = DEFAULT_TARGET,
    max_rounds: int = 10,
    well_formed: bool = False,
) -> tuple[list[RuleFixes], bool]:
    """Apply the allowed fixes of `rules`, rule by rule, until a whole round changes nothing (a fixed point:
    one rule's fix may expose work for another, as dedup leaves dead Identity nodes). Every rule checks a
    fresh analysis after any change, since cached facts describe the graph before it.

    `target` is the runtime the rules check for (GD001's sentinels matter only on TensorRT 8.x).
    `well_formed`: the caller found no defect in the model, and the analyses do not search for any again.
    Returns what each rule did and whether the fixed point was reached within `max_rounds`."""
    fixers = [rule for rule in rules if can_fix(rule)]
    done = {rule.code: RuleFixes(rule) for rule in fixers}
    analysis = Analysis(model, path, target=target, well_formed=well_formed)
    for _ in range(max_rounds):
        changed = False
        for rule in fixers:
            options = _options_for(rule, (rule_options or {}).get(rule.name))
            context = RuleContext(rule, analysis, options, policy)
            chosen = [f for f in _checked(rule, model, context) if policy.allows(f)]
            if chosen and _repair(chosen, model, done[rule.code]):
                changed = True
                analysis = Analysis(model, path, target=target, well_formed=well_formed)
        if not changed:
            return [fixes for fixes in done.values() if fixes.count], True
    return [fixes for fixes in done.values() if fixes.count], False


def _checked(rule: Rule, model: ir.Model, context: RuleContext) -> list[Finding]:
    """The rule's findings when fixing; on a malformed model it raised on, one clear line instead (`fix`
    refuses malformed models before this; a fix that made one is a bug, and says so)."""
    defects = context.analysis.defects
    try:
        return list(rule.check(model, context))
    except GraphDoctorError:
        raise
    except Exception as error:
        if not defects:
            raise
        raise GraphDoctorError(
            f"{rule.code} could not check the model, which is malformed: {defects[0].text} ({first_line(error)});"
            " nothing was written"
        ) from error


def _repair(findings: list[Finding], model: ir.Model, fixes: RuleFixes) -> bool:
    """Run the findings' repairs; record what they did. A repair that raises is a bug in its rule: stop with
    its name rather than write a half-rewritten graph."""
    nodes, stored = count_nodes(model), stored_bytes(model)
    repaired = 0
    for finding in findings:
        try:
            done = finding.repair()
        except Exception as error:
            raise GraphDoctorError(
                f"the {finding.code} fix failed at {finding.location}: {first_line(error)} (nothing was written)"
            ) from error
        if done:
            repaired += 1
            fixes.repairs[finding.message_id] += 1
            fixes.safety.add(finding.fix)
    fixes.nodes_removed += nodes - count_nodes(model)
    fixes.bytes_saved += stored - stored_bytes(model)
    return repaired > 0


def count_nodes(model: ir.Model) -> int:
    return sum(len(graph) for graph, _ in iter_graph_sites(model))
