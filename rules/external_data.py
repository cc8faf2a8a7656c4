"""GD014 external-data: external data files that are missing, truncated, sized wrong or hard-linked.

What it finds
    Tensors stored outside the .onnx file (`save_as_external_data`, every model over 2 GB) whose data
    cannot be read as declared, checked from file sizes alone (no weight is read):
    - a data file that is missing, or is a directory or another non-file (error, one per file, with the
      number of tensors and bytes it should hold);
    - a data file shorter than its tensors need (error, one per file: "'weights.bin' is 1.0 MiB but
      tensor 'fc.weight' needs bytes 0..4.0 MiB");
    - a tensor whose declared `length` differs from what its dtype and shape need (error, one per tensor);
    - a data file with several hard links (warning, one per file): onnx-ir, which graphdoctor loads
      models with, refuses to read hard-linked data because a hard link can bring a file from outside
      the model's folder inside it.
    Locations that escape the model's folder (`../`, absolute paths, symlinks pointing out) never reach
    this rule: graphdoctor refuses to open such a model at all (exit code 2), because reading them would
    read files the model has no business naming. External data spread over many files is not flagged: it
    loads as well as one file does.

Why it matters
    ONNX Runtime and TensorRT fail to load the model, or worse, read whatever bytes are there. Missing and
    short files are the usual result of copying only the .onnx file, of an interrupted upload or download,
    or of a tool that wrote the model but not all its data. Every other check graphdoctor makes on these
    weights is skipped, since their values cannot be read.

How to fix
    Copy the data files next to the .onnx file, under the names the model gives (locations are relative
    to the model's folder), and compare their sizes with the originals. If the data is lost, re-export the
    model. A wrong `length` means the tool that wrote the model is broken: re-save it with
    `onnx.save_model(model, path, save_as_external_data=True)`. Replace a hard-linked file with a copy
    (`cp weights.bin w.tmp && mv w.tmp weights.bin`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx_ir as ir

from graphdoctor.analysis.external import ExternalDataProblem
from graphdoctor.analysis.format import format_bytes
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "check"]

META = RuleMeta(
    code="GD014",
    name="external-data",
    kind=RuleKind.PROBLEM,
    severity=Severity.ERROR,
    summary="external data files that are missing, truncated, sized wrong or hard-linked",
    messages={
        "missing": Message(
            "external data file '{location}' is missing: {count} tensor(s) ({size}) should be read from it,"
            " e.g. {examples}",
            help="copy '{location}' next to the model (external data locations are relative to the model's"
            " folder), or re-export the model",
        ),
        "not_a_file": Message(
            "external data location '{location}' is not a regular file (a directory?): {count} tensor(s)"
            " ({size}) should be read from it, e.g. {examples}",
            help="point the tensors at their data file, or re-export the model",
        ),
        "truncated": Message(
            "'{location}' is {file_size} but tensor '{tensor}' needs bytes {start}..{end}{more}",
            help="the file was cut short (an interrupted copy or download?): copy it again and compare its size"
            " with the original, or re-export the model",
        ),
        "size_mismatch": Message(
            "tensor '{tensor}' declares {declared} of external data in '{location}' but its dtype and shape"
            " need {needed}",
            help="the tool that wrote the model got 'length' wrong: re-save it with"
            " onnx.save_model(model, path, save_as_external_data=True)",
        ),
        "hard_link": Message(
            "'{location}' has {links} hard links: onnx-ir refuses to read hard-linked external data (a hard"
            " link can bring a file from outside the model's folder), so its {count} tensor(s) ({size}) go"
            " unchecked",
            help="replace it with a copy: cp '{location}' tmp && mv tmp '{location}'",
            severity=Severity.WARNING,
        ),
    },
)

_PER_FILE = ("missing", "not_a_file", "truncated", "hard_link")


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    problems = ctx.analysis.external_data_problems
    for kind in _PER_FILE:
        for location, group in _by_location(p for p in problems if p.kind == kind).items():
            yield _file_finding(kind, location, group, ctx)
    for problem in problems:
        if problem.kind == "size_mismatch":
            yield ctx.report(
                "size_mismatch",
                values=[problem.tensor],
                tensor=problem.tensor,
                location=problem.location,
                declared=format_bytes(problem.available),
                needed=format_bytes(problem.expected),
            )


def _by_location(problems: Iterable[ExternalDataProblem]) -> dict[str, list[ExternalDataProblem]]:
    groups: dict[str, list[ExternalDataProblem]] = {}
    for problem in problems:
        groups.setdefault(problem.location, []).append(problem)
    return groups


def _file_finding(kind: str, location: str, group: list[ExternalDataProblem], ctx: RuleContext) -> Finding:
    if kind == "truncated":
        return _truncated(location, group, ctx)
    names = [p.tensor for p in group]
    common = {"location": location, "count": len(group), "size": format_bytes(sum(p.expected for p in group))}
    if kind == "hard_link":
        return ctx.report(kind, values=names, links=group[0].available, **common)
    return ctx.report(kind, values=names, examples=_examples(names), **common)


def _truncated(location: str, group: list[ExternalDataProblem], ctx: RuleContext) -> Finding:
    """One finding per file, naming the first tensor that runs past its end."""
    first = min(group, key=lambda p: p.offset)
    more = ""
    if len(group) > 1:
        more = f"; {len(group)} tensors ({format_bytes(sum(p.expected for p in group))}) in all run past its end"
    return ctx.report(
        "truncated",
        values=[p.tensor for p in group],
        location=location,
        file_size=format_bytes(first.file_size or 0),
        tensor=first.tensor,
        start=_position(first.offset),
        end=format_bytes(first.offset + first.expected),
        more=more,
        count=len(group),
    )


def _position(offset: int) -> str:
    return "0" if offset == 0 else format_bytes(offset)


def _examples(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
