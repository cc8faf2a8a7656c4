"""The terminal report: per model its findings grouped by rule, worst first within a rule, and a summary line;
with several models, an overall summary.

Errors and warnings are what a deployment engineer acts on, so they are always shown in full. Info findings
come by the hundred on real exports (one per folded shape computation): each rule's info findings of one
message are one entry, with a count and the first places, unless asked for in full.
Colour comes from rich, and only when writing to a terminal: CI logs and pipes get plain text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import TextIO

from graphdoctor.analysis.format import format_bytes, format_count
from graphdoctor.api import LintFailure, LintResult
from graphdoctor.rule import Finding, Rule, Severity
from graphdoctor.targets import TARGET_CHOICES, Target, parse_target

__all__ = [
    "comparison_line",
    "fix_failure_line",
    "render_explain",
    "render_lint",
    "render_rules",
    "render_verify",
    "size_change",
]

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_SEVERITIES = (Severity.ERROR, Severity.WARNING, Severity.INFO)
_LISTED_PLACES = 3  # places an entry of grouped info findings names; --show-info lists them all


def render_lint(
    results: Iterable[LintResult | LintFailure],
    stream: TextIO,
    color: bool,
    *,
    show_info: bool = False,
    quiet: bool = False,
    statistics: bool = False,
    fail_on: Severity = Severity.WARNING,
) -> None:
    """Each model: its path and target, its findings, its summary line; a model that could not be linted,
    its path and the error. Info findings are grouped per rule and message unless `show_info`; `quiet`
    leaves them out (it wins over `show_info`); `statistics` replaces the findings by a table of counts per
    rule and severity. With more than one model, an overall summary ends the report, counting the models
    that fail at `fail_on`."""
    out = _Writer(stream, color)
    shown = list(results)
    for result in shown:
        if isinstance(result, LintFailure):
            _render_failure(result, out)
        elif statistics:
            _render_head(result, out)
            _render_statistics(result.findings, out)
            _render_summary(result, out)
        else:
            _render_one(result, out, show_info=show_info, quiet=quiet)
    if len(shown) > 1:
        _render_overall(shown, out, fail_on, statistics)


def _render_head(result: LintResult, out: _Writer) -> None:
    out.line(f"[bold]{_escape(str(result.path))}[/bold]", plain=str(result.path))
    out.line(f"[dim]target: {_escape(result.target.label)}[/dim]", plain=f"target: {result.target.label}")


def _render_one(result: LintResult, out: _Writer, *, show_info: bool, quiet: bool) -> None:
    _render_head(result, out)
    for (code, name), group in groupby(result.findings, key=lambda f: (f.code, f.name)):
        entries = _entries(sorted(group, key=lambda f: -f.severity), show_info=show_info, quiet=quiet)
        if not entries:
            continue
        count = sum(len(entry) for entry in entries)
        out.line("")
        out.line(f"[bold]{code}[/bold] {name} ({count})", plain=f"{code} {name} ({count})")
        for entry in entries:
            if len(entry) == 1:
                _render_finding(entry[0], out)
            else:
                _render_group(entry, out)
    _render_summary(result, out)


def _entries(findings: list[Finding], *, show_info: bool, quiet: bool) -> list[list[Finding]]:
    """What a rule's section shows, one entry per list: every error and warning alone; info findings alone
    with `show_info`, none with `quiet`, else one entry per message id."""
    entries = [[f] for f in findings if f.severity > Severity.INFO]
    infos = [f for f in findings if f.severity == Severity.INFO]
    if quiet:
        return entries
    if show_info:
        return entries + [[f] for f in infos]
    by_message: dict[str, list[Finding]] = {}
    for finding in infos:
        by_message.setdefault(finding.message_id, []).append(finding)
    return entries + list(by_message.values())


def _render_finding(finding: Finding, out: _Writer) -> None:
    label = f"{finding.severity!s:<7}"
    style = _STYLE[finding.severity]
    out.line(f"  [{style}]{label}[/{style}] {_escape(finding.location)}", plain=f"  {label} {finding.location}")
    out.line(f"          {_escape(finding.message)}", plain=f"          {finding.message}")
    if finding.help:
        out.line(f"          [dim]fix: {_escape(finding.help)}[/dim]", plain=f"          fix: {finding.help}")


def _render_group(findings: list[Finding], out: _Writer) -> None:
    """Findings of one rule, message and severity as one entry: how many, where the first are, the first's
    message as the example; the advice as `fix:` when all share it, else the first's as `fix, e.g.:`."""
    first = findings[0]
    label = f"{first.severity!s:<7}"
    style = _STYLE[first.severity]
    places = "; ".join(f.location for f in findings[:_LISTED_PLACES])
    more = len(findings) - _LISTED_PLACES
    where = f"{len(findings)} alike: {places}" + (f"; and {more} more (--show-info lists each)" if more > 0 else "")
    out.line(f"  [{style}]{label}[/{style}] {_escape(where)}", plain=f"  {label} {where}")
    example = f"e.g. {first.message}"
    out.line(f"          {_escape(example)}", plain=f"          {example}")
    if first.help:
        advice = "fix" if all(f.help == first.help for f in findings) else "fix, e.g."
        line = f"{advice}: {first.help}"
        out.line(f"          [dim]{_escape(line)}[/dim]", plain=f"          {line}")


def _render_summary(result: LintResult, out: _Writer) -> None:
    out.line("")
    summary = _summary(result)
    out.line(_escape(summary), plain=summary)


def _render_failure(failure: LintFailure, out: _Writer) -> None:
    """The path, then the error without the path it usually starts with."""
    error = failure.error.removeprefix(f"{failure.path}: ")
    out.line(f"[bold]{_escape(str(failure.path))}[/bold]", plain=str(failure.path))
    out.line(f"[bold red]error:[/bold red] {_escape(error)}", plain=f"error: {error}")


def _render_statistics(findings: Sequence[Finding], out: _Writer) -> None:
    """Counts per rule and severity, worst severity first, then most frequent (as `ruff --statistics`)."""
    out.line("")
    if not findings:
        out.line("  no findings")
        return
    counts = Counter((f.code, f.name, f.severity) for f in findings)
    fixable = Counter((f.code, f.name, f.severity) for f in findings if f.fix is not None)
    rows = sorted(counts, key=lambda key: (-key[2], -counts[key], key[0]))
    width = max(len(name) for _, name, _ in rows)
    head = f"  {'count':>5}  {'code':<6} {'rule':<{width}}  {'severity':<8}  fixable"
    out.line(f"[dim]{head}[/dim]", plain=head)
    for key in rows:
        code, name, severity = key
        line = f"  {counts[key]:>5}  {code:<6} {name:<{width}}  {severity!s:<8}  {fixable[key]:>7}"
        out.line(_escape(line), plain=line)


def _render_overall(results: list[LintResult | LintFailure], out: _Writer, fail_on: Severity, statistics: bool) -> None:
    """Models linted and not, findings per severity over all, and how many models fail the gate."""
    linted = [r for r in results if isinstance(r, LintResult)]
    findings = [f for result in linted for f in result.findings]
    out.line("")
    out.line("[bold]overall[/bold]", plain="overall")
    if statistics:
        _render_statistics(findings, out)
        out.line("")
    unlinted = len(results) - len(linted)
    failing = sum(1 for result in linted if result.fails(fail_on))
    parts = [
        f"{format_count(len(results), 'model')}: {len(linted)} linted"
        + (f", {unlinted} could not be linted" if unlinted else ""),
        _findings_phrase(findings),
        f"{failing} of {len(linted)} linted {'fails' if failing == 1 else 'fail'} --fail-on {fail_on}",
    ]
    line = "; ".join(parts)
    style = "bold red" if failing or unlinted else "bold green"
    out.line(f"[{style}]{_escape(line)}[/{style}]", plain=line)


def _findings_phrase(findings: Sequence[Finding]) -> str:
    """'60 findings (1 warning, 59 info)'."""
    counts = Counter(f.severity for f in findings)
    detail = ", ".join(
        format_count(counts[s], str(s)) if s != Severity.INFO else f"{counts[s]} info" for s in _SEVERITIES if counts[s]
    )
    return format_count(len(findings), "finding") + (f" ({detail})" if detail else "")


def _summary(result: LintResult) -> str:
    wasted = sum(f.nbytes or 0 for f in result.findings if f.nbytes)
    size = f"; {format_bytes(wasted)} at stake" if wasted else ""
    rules = format_count(len(result.rules), "rule")
    return f"{_findings_phrase(result.findings)}{size}; {rules} in {result.seconds:.2f} s"


def render_rules(rules: Iterable[Rule], stream: TextIO, target: Target | None = None) -> None:
    """The catalogue; with a target, each target-aware rule's lines about it below its own line."""
    for rule in rules:
        fix = "+".join(safety.value for safety in rule.meta.fix_safeties()) or "-"
        stream.write(f"{rule.code}  {rule.qualified_name:<24} {rule.meta.severity!s:<8}{fix:<12}{rule.meta.summary}\n")
        if target is not None and rule.describe_target is not None:
            stream.write(f"       on {target.label}:\n")
            stream.writelines(f"       - {line}\n" for line in rule.describe_target(target))


def render_explain(rule: Rule, stream: TextIO) -> None:
    meta = rule.meta
    safeties = " and ".join(safety.value for safety in meta.fix_safeties())
    fix = f"fix: {safeties}" if safeties else "fix: none (check only)"
    if meta.opt_ins():
        fix += "; opt-in: " + ", ".join(f"--{name}" for name in meta.opt_ins())
    if meta.deep:
        fix += "; runs only with lint --deep"
    if meta.needs_inputs:
        fix += "; checks activations with lint --inputs/--shape"
    stream.write(f"{meta.code} {rule.qualified_name} ({meta.kind.value}; default severity {meta.severity}; {fix})\n")
    stream.write(f"{meta.summary}\n\n{rule.doc}\n")
    if rule.describe_target is not None:
        for name in TARGET_CHOICES:
            target = parse_target(name)
            stream.write(f"\nOn {target.label} (--target {name}):\n")
            stream.writelines(f"    - {line}\n" for line in rule.describe_target(target))


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


class _Writer:
    """Writes rich markup on a terminal and the plain twin elsewhere."""

    def __init__(self, stream: TextIO, color: bool) -> None:
        self.stream = stream
        self.console = None
        if color:
            from rich.console import Console

            self.console = Console(file=stream, highlight=False, soft_wrap=True)

    def line(self, markup: str, plain: str | None = None) -> None:
        if self.console is not None:
            self.console.print(markup)
        else:
            self.stream.write((markup if plain is None else plain) + "\n")


def render_verify(result, stream: TextIO, color: bool) -> None:
    """Per backend: its precision, its verdict and one line per output; then the overall verdict."""
    _register_detail_renderers()
    out = _Writer(stream, color)
    head = _verify_head(result)
    out.line(f"[bold]verify[/bold] {_escape(head.removeprefix('verify '))}", plain=head)
    shapes = ", ".join(f"{name} {array.dtype}{list(array.shape)}" for name, array in result.inputs.items())
    out.line(f"inputs: {result.input_source}: {_escape(shapes)}", plain=f"inputs: {result.input_source}: {shapes}")
    for verdict in result.verdicts:
        out.line("")
        _render_verdict(verdict, out)
    out.line("")
    summary = _verify_summary(result)
    style = "bold green" if result.passed else "bold red"
    out.line(f"[{style}]{_escape(summary)}[/{style}]", plain=summary)


def _verify_head(result) -> str:
    return f"verify {result.reference} (reference, on {result.reference_runner}) vs {result.candidate}"


_STATUS_STYLE = {"passed": "green", "failed": "bold red", "skipped": "dim", "error": "bold red"}


def _render_verdict(verdict, out: _Writer) -> None:
    style = _STATUS_STYLE[verdict.status]
    head = f"{verdict.backend}: {verdict.status.upper()}"
    out.line(
        f"[{style}]{head}[/{style}] [dim]({_escape(verdict.precision)})[/dim]", plain=f"{head} ({verdict.precision})"
    )
    if verdict.tolerance is not None:
        line = f"  tolerance: {verdict.tolerance.describe()}"
        out.line(_escape(line), plain=line)
    if verdict.placement:
        line = f"  placement: {verdict.placement}"
        out.line(_escape(line), plain=line)
    if verdict.reason:
        out.line(f"  {_escape(verdict.reason)}", plain=f"  {verdict.reason}")
    for comparison in verdict.outputs:
        line = comparison_line(comparison)
        out.line(f"  {_escape(line)}", plain=f"  {line}")
    for name, renderer in _DETAIL_RENDERERS.items():
        if name in verdict.details:
            renderer(verdict.details[name], out)


def comparison_line(c) -> str:
    """One output's comparison on one line: the verify text report's and the JUnit report's."""
    mark = "ok  " if c.passed else "FAIL"
    parts = [
        f"{mark} {c.name}{list(c.shape)}",
        f"max abs {c.max_abs:.3g}",
        f"max rel {c.max_rel:.3g}",
        f"cosine {c.cosine:.6f}",
        f"mismatch {c.mismatch:.2%}",
    ]
    if c.top1_agreement is not None:
        parts.append(f"top-1 agreement {c.top1_agreement:.1%}, top-5 overlap {c.top5_overlap:.1%}")
    if c.cand_nonfinite or c.ref_nonfinite:
        parts.append(f"inf/NaN {c.ref_nonfinite} → {c.cand_nonfinite}")
    if c.reason:
        parts.append(c.reason)
    return "  ".join(parts)


def _verify_summary(result) -> str:
    ran = [v for v in result.verdicts if v.ran]
    skipped = [v for v in result.verdicts if v.status == "skipped"]
    errors = [v for v in result.verdicts if v.status == "error"]
    verdict = "PASSED" if result.passed else "FAILED"
    parts = [f"{verdict} on {', '.join(f'{v.backend} ({v.status})' for v in ran) or 'no backend'}"]
    if skipped:
        parts.append(f"skipped: {', '.join(v.backend for v in skipped)}")
    if errors:
        parts.append(f"errors: {', '.join(v.backend for v in errors)}")
    return "; ".join(parts) + f" ({result.seconds:.1f} s)"


# Extra reports a verdict may carry (layer-wise comparison), rendered after its outputs.
_DETAIL_RENDERERS: dict = {}


def _register_detail_renderers() -> None:
    """Imported here, at render time: `lint` renders through this module and never needs them."""
    from graphdoctor.report.detections import render_detections
    from graphdoctor.report.layerwise import render_layerwise

    _DETAIL_RENDERERS.setdefault("detections", render_detections)
    _DETAIL_RENDERERS.setdefault("layerwise", render_layerwise)


def render_fix(result, stream: TextIO, color: bool) -> None:
    """What each rule fixed (repairs, nodes, bytes), the size before and after, the gate, and what was written."""
    out = _Writer(stream, color)
    head = f"fix {result.path} → {result.output}"
    out.line(f"[bold]fix[/bold] {_escape(head.removeprefix('fix '))}", plain=head)
    out.line(f"[dim]target: {_escape(result.target.label)}[/dim]", plain=f"target: {result.target.label}")
    if not result.changed:
        out.line("nothing to fix: no finding of the selected rules has a fix to apply here")
    for fixes in result.fixes:
        line = _fix_line(fixes)
        out.line(f"  {_escape(line)}", plain=f"  {line}")
    if result.fp16 is not None:
        _render_fp16(result, out)
    if not result.converged:
        out.line("  [bold red]fixes still changed the model after 10 rounds: stopped[/bold red]", plain="  stopped")
    if result.verification is not None:
        _register_detail_renderers()
        line = f"verified against: the original on {result.verification.reference_runner}"
        out.line("")
        out.line(_escape(line), plain=line)
        for verdict in result.verification.verdicts:
            out.line("")
            _render_verdict(verdict, out)
    out.line("")
    _render_fix_outcome(result, out)


_LISTED_FP16 = 8  # kept nodes and changed constants listed one by one; the rest are counted


def _render_fp16(result, out: _Writer) -> None:
    """What the converter did and, node by node, what it kept in FP32 and why; every value it changed."""
    report = result.fp16
    if report.already_fp16:
        out.line("  FP16: the model holds no float32 tensor: already FP16, nothing to convert")
        return
    head = (
        f"  {report.precision}: {report.converted_nodes} nodes converted, {len(report.kept)} kept FP32,"
        f" {report.tensors_converted} constants converted, {report.casts_added} Casts at region boundaries"
    )
    out.line(_escape(head), plain=head)
    measured = (
        "activations measured on the sample inputs"
        if report.ranges_measured
        else ("activations not measured (no sample inputs with --no-verify): only constants were checked")
    )
    out.line(f"    {measured}")
    for note in report.opset_notes:
        out.line(_escape(f"    {note}"), plain=f"    {note}")
    for kept in report.kept[:_LISTED_FP16]:
        line = f"    kept FP32: '{kept.node}' ({kept.op_type}): {kept.reason}"
        out.line(_escape(line), plain=line)
    if len(report.kept) > _LISTED_FP16:
        out.line(f"    kept FP32: {len(report.kept) - _LISTED_FP16} more (--format json lists them all)")
    for region in report.regions[:_LISTED_FP16]:
        line = f"    {_region_line(region)}"
        out.line(_escape(line), plain=line)
    for node, why in result.fp16_repaired:
        line = f"    kept FP32 after verification: '{node}': {why}"
        out.line(_escape(line), plain=line)
    for change in report.changed[:_LISTED_FP16]:
        line = f"    '{change.tensor}': {change.count} value(s) {change.what} (worst {change.worst:.3g})"
        out.line(_escape(line), plain=line)
    if len(report.changed) > _LISTED_FP16:
        more = sum(c.count for c in report.changed[_LISTED_FP16:])
        out.line(f"    {len(report.changed) - _LISTED_FP16} more constants with {more} changed value(s)")
    if report.functions_kept:
        out.line(f"    {report.functions_kept} model-local function(s) left in FP32")


def _region_line(region) -> str:
    """'FP32 region of 4 nodes ('/Pow' … '/Sqrt'): values up to 1.2e+05 at 'x'; back in range after '/Sqrt''."""
    span = f"'{region.nodes[0]}'" if len(region.nodes) == 1 else f"'{region.nodes[0]}' … '{region.nodes[-1]}'"
    count = format_count(len(region.nodes), "node")
    ends = ", ".join(f"'{end}'" for end in region.ends)
    return f"FP32 region of {count} ({span}): values up to {region.peak:.3g} at '{region.peak_at}'; ends at {ends}"


def _fix_line(fixes) -> str:
    """'GD003 duplicate-initializers  2 × identical  -4 nodes  288.0 KiB saved (safe)'."""
    what = ", ".join(f"{count} × {message_id}" for message_id, count in sorted(fixes.repairs.items()))
    parts = [f"{fixes.rule.code} {fixes.rule.name:<24}", what]
    if fixes.nodes_removed:
        parts.append(f"{-fixes.nodes_removed:+d} node{'s' if abs(fixes.nodes_removed) != 1 else ''}")
    if fixes.bytes_saved > 0:
        parts.append(f"{format_bytes(fixes.bytes_saved)} saved")
    elif fixes.bytes_saved < 0:
        parts.append(f"{format_bytes(-fixes.bytes_saved)} added")
    parts.append("(" + ", ".join(sorted(s.value for s in fixes.safety)) + ")")
    return "  ".join(parts)


def _render_fix_outcome(result, out: _Writer) -> None:
    seconds = f"({result.seconds:.1f} s)"
    if result.dry_run:
        out.line(f"dry run: nothing written {seconds}")
        return
    if result.written:
        change = size_change(result.size_before, result.size_after)
        out.line(
            f"[bold green]wrote {_escape(str(result.output))}[/bold green]: {change} {seconds}",
            plain=f"wrote {result.output}: {change} {seconds}",
        )
        if result.verification is None and result.fixes:
            out.line("not verified (--no-verify)")
        return
    if result.verification is not None and not result.verification.passed:
        line = fix_failure_line(result)
        out.line(f"[bold red]{_escape(line)}[/bold red]", plain=line)
        return
    out.line(f"nothing written: the model needs no fix {seconds}")


def fix_failure_line(result) -> str:
    """Why nothing was written, and the way forward: a backend that could not run a model reached no
    verdict; an FP16 conversion that still diverges names what to keep FP32 (the rules' fixes are bit-exact
    on their own and are not what failed); failing fixes are named, to skip."""
    unrunnable = [v for v in result.verification.verdicts if v.status == "error"]
    if unrunnable:
        why = "; ".join(v.reason for v in unrunnable)
        return (
            f"verification could not run: {why}. Nothing written: no verdict was reached (a graphdoctor bug"
            " if the model is valid: please report it); --no-verify writes it without this check"
        )
    if result.fp16 is not None:
        keep = ",".join(result.keep_fp32_hint)
        advice = f" Keep FP32 what still diverges: --keep-fp32 '{keep}'" if keep else ""
        judged = (
            "changes detections beyond the detect preset"
            if _detections_failed(result)
            else "exceeds the fp16 tolerance"
        )
        return (
            f"verification FAILED: nothing written; the FP16 conversion {judged} after"
            f" {len(result.fp16_repaired)} node(s) were kept FP32.{advice}; or write anyway with --no-verify"
        )
    blamed = ", ".join(result.blamed) or "no single rule (only their combination)"
    return (
        f"verification FAILED: nothing written; fixes that fail alone: {blamed}."
        " Skip them with --ignore, or write anyway with --no-verify"
    )


def _detections_failed(result) -> bool:
    """A failed verdict that the detect preset decided (the model is a detector)."""
    for verdict in result.verification.verdicts:
        report = verdict.details.get("detections")
        if verdict.status == "failed" and report and report.get("decides") and not report["passed"]:
            return True
    return False


def size_change(before: int, after: int) -> str:
    ratio = (after - before) / before if before else 0.0
    return f"{format_bytes(before)} → {format_bytes(after)} ({ratio:+.1%})"
