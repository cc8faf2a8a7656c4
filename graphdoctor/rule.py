"""Rules, their metadata and findings, and the registry that loads them.

A rule is a module with `META` (a `RuleMeta`) and `check(model, ctx)`, a generator of findings made by
`ctx.report(...)`, and optionally `describe_target(target)`, what it holds against a target, a line each.
Its docstring, in three parts (What it finds / Why it matters / How to fix), is what
`graphdoctor explain` prints. Built-in rules and third-party plugins register the same way, through the
`graphdoctor.rules` entry-point group, so there is one loading path for both.
"""

from __future__ import annotations

import enum
import importlib.metadata
import inspect
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from graphdoctor.errors import GraphDoctorError

if TYPE_CHECKING:
    import onnx_ir as ir

    from graphdoctor.engine import RuleContext
    from graphdoctor.targets import Target

__all__ = [
    "ENTRY_POINT_GROUP",
    "Finding",
    "FixSafety",
    "Message",
    "Rule",
    "RuleKind",
    "RuleMeta",
    "Severity",
    "load_rules",
    "resolve_selectors",
]

ENTRY_POINT_GROUP = "graphdoctor.rules"
_CODE = re.compile(r"^[A-Z]+[0-9]{3}$")
_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class Severity(enum.IntEnum):
    """How bad a finding is for deployment; ordered so that `--fail-on` compares."""

    INFO = 1  # worth knowing; nothing breaks
    WARNING = 2  # wrong numbers, wasted bytes or fragile exports likely
    ERROR = 3  # will not load, or results will be wrong

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            choices = ", ".join(s.name.lower() for s in cls)
            raise GraphDoctorError(f"unknown severity '{text}' (choose from {choices})") from None

    def __str__(self) -> str:
        return self.name.lower()


class RuleKind(enum.Enum):
    PROBLEM = "problem"  # wrong results, or the model will not build
    SUGGESTION = "suggestion"  # waste: bytes, kernels, fragility


class FixSafety(enum.Enum):
    SAFE = "safe"  # bit-exact outputs, graph I/O unchanged
    UNSAFE = "unsafe"  # changes values within a tolerance, or the I/O signature


@dataclass(frozen=True)
class Message:
    """A finding's text with `{placeholders}`, the advice that goes with it, and its severity."""

    text: str
    help: str = ""
    severity: Severity | None = None  # None: the rule's default
    fix: FixSafety | None = None  # None: the rule's; a rule may mix safe and unsafe fixes
    opt_in: str = ""  # a fix applied only when named (`graphdoctor fix --dedup-transposed`), even if safe

    def placeholders(self) -> set[str]:
        fields = (f for part in (self.text, self.help) for _, f, _, _ in string.Formatter().parse(part))
        return {f for f in fields if f}


@dataclass(frozen=True)
class RuleMeta:
    code: str
    name: str
    kind: RuleKind
    severity: Severity
    summary: str
    messages: Mapping[str, Message]
    fix: FixSafety | None = None
    since: str = "0.1.0"
    options: Any = None  # a dataclass instance holding the defaults, or None
    deep: bool = False  # slow (runs tools or models): only with `lint --deep`
    needs_inputs: bool = False  # part of it runs the model on sample inputs: only with `lint --inputs/--shape`
    # Its fixes change outputs on purpose (training mode to inference mode): `fix` then verifies the other
    # fixes against the original with this rule's fixes applied, not against the original itself.
    fix_changes_outputs: bool = False

    def fix_safeties(self) -> list[FixSafety]:
        """The safeties of the fixes its messages declare (the rule's own for those declaring none)."""
        declared = {message.fix or self.fix for message in self.messages.values()}
        return [safety for safety in FixSafety if safety in declared]

    def opt_ins(self) -> list[str]:
        return sorted({message.opt_in for message in self.messages.values() if message.opt_in})

    def __post_init__(self) -> None:
        if not _CODE.match(self.code):
            raise ValueError(f"rule code '{self.code}' must be letters then three digits (GD001)")
        if not _NAME.match(self.name):
            raise ValueError(f"rule name '{self.name}' must be kebab-case")
        if not self.messages:
            raise ValueError(f"rule {self.code} declares no messages")


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem at one place: what, where, with numbers, and what to do."""

    code: str
    name: str
    severity: Severity
    message: str
    help: str
    message_id: str
    node: str | None = None
    values: tuple[str, ...] = ()
    graph: str = ""  # path of the (sub)graph, '' for the main graph
    nbytes: int | None = None  # bytes at stake, where size matters
    data: Mapping[str, Any] = field(default_factory=dict)
    fix: FixSafety | None = None  # how `graphdoctor fix` would repair it, if it can
    opt_in: str = ""  # the name that enables its fix, for fixes applied only when asked
    # Rewrites the model in place to repair this finding; False when there was nothing left to do (an earlier
    # repair already did it). Set by rules that can fix; never serialized.
    repair: Callable[[], bool] | None = field(default=None, compare=False, repr=False)

    @property
    def location(self) -> str:
        """Where to look: the node, else the value(s) (a summary over many names the first and a count)."""
        if self.node:
            where = f"node '{self.node}'"
        elif len(self.values) > 1:
            where = f"'{self.values[0]}' and {len(self.values) - 1} more"
        else:
            where = f"'{self.values[0]}'" if self.values else "model"
        return f"{self.graph}: {where}" if self.graph else where

    def sort_key(self) -> tuple:
        return (self.code, self.graph, self.node or "", self.values, self.message)


CheckFunction = Callable[["ir.Model", "RuleContext"], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    """A loaded rule: metadata, its check, its documentation and who provides it."""

    meta: RuleMeta
    check: CheckFunction
    doc: str
    plugin: str = ""  # '' for built-ins, else the plugin's name
    # What the rule holds against a target, a line each (`rules --target`, `explain`); None when it does not
    # depend on the target.
    describe_target: Callable[[Target], list[str]] | None = None

    @property
    def code(self) -> str:
        return self.meta.code

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}/{self.name}" if self.plugin else self.name

    @classmethod
    def from_module(cls, module: ModuleType, plugin: str = "") -> Rule:
        meta = getattr(module, "META", None)
        check = getattr(module, "check", None)
        if not isinstance(meta, RuleMeta) or not callable(check):
            raise GraphDoctorError(f"rule module {module.__name__} must define META (RuleMeta) and check()")
        doc = inspect.cleandoc(module.__doc__ or "")
        for heading in ("What it finds", "Why it matters", "How to fix"):
            if heading not in doc:
                raise GraphDoctorError(f"rule {meta.code} ({module.__name__}) lacks a '{heading}' section")
        describe = getattr(module, "describe_target", None)
        return cls(meta=meta, check=check, doc=doc, plugin=plugin, describe_target=describe)


def load_rules() -> list[Rule]:
    """Every registered rule, built-in and third-party, sorted by code; duplicate codes are refused."""
    rules: dict[str, Rule] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        plugin = _plugin_name(entry_point)
        for rule in _rules_of(entry_point, plugin):
            if rule.code in rules and rules[rule.code].meta is not rule.meta:
                raise GraphDoctorError(f"two rules claim code {rule.code}: {rules[rule.code].name}, {rule.name}")
            rules[rule.code] = rule
    if not rules:
        raise GraphDoctorError("no rules are registered: is graphdoctor installed (pip install -e .)?")
    return sorted(rules.values(), key=lambda r: r.code)


def _plugin_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist.name if entry_point.dist else ""
    if dist in ("", "graphdoctor"):
        return ""
    return dist.removeprefix("graphdoctor-")


def _rules_of(entry_point: importlib.metadata.EntryPoint, plugin: str) -> Iterator[Rule]:
    """An entry point names one rule module, or a plugin module listing its rule modules in RULES."""
    try:
        module = entry_point.load()
    except Exception as error:
        raise GraphDoctorError(f"cannot load rule plugin '{entry_point.value}': {error}") from None
    for rule_module in getattr(module, "RULES", None) or [module]:
        yield Rule.from_module(rule_module, plugin)


def resolve_selectors(rules: Iterable[Rule], selectors: Iterable[str]) -> set[str]:
    """Codes of the rules matched by selectors: a code, a code prefix ('GD00', 'ALL'), a name, plugin/name."""
    rules = list(rules)
    codes: set[str] = set()
    for raw in selectors:
        selector = raw.strip()
        if not selector:
            continue
        matched = {r.code for r in rules if _matches(r, selector)}
        if not matched:
            raise GraphDoctorError(f"unknown rule selector '{selector}' (see `graphdoctor rules`)")
        codes |= matched
    return codes


def _matches(rule: Rule, selector: str) -> bool:
    if selector.upper() == "ALL":
        return True
    if selector in (rule.name, rule.qualified_name):
        return True
    return bool(re.fullmatch(r"[A-Za-z]+[0-9]*", selector)) and rule.code.startswith(selector.upper())
