"""The HTML report (`--report FILE.html`): one self-contained page to look at and to attach to a ticket.

Everything is inline (CSS and SVG, no script, no font, no network): the file opens the same from a CI
artifact, a mail or an air-gapped machine. Plots are drawn here as SVG, since a picture says what a table of
370 tensors cannot: where along the graph the error starts and how it grows, stage by stage; which boxes a
detector lost. Every string a model provides (node, tensor and file names can hold `<&>"'`) goes through
`html.escape`.

`render_verify`, `render_lint` and `render_fix` take what the JSON renderers take and write one HTML5 document.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from graphdoctor import __version__
from graphdoctor.analysis.format import format_bytes, format_count
from graphdoctor.api import LintFailure, LintResult
from graphdoctor.rule import Severity

__all__ = ["render_fix", "render_lint", "render_verify"]

PLOT_WIDTH, PLOT_AREA_HEIGHT = 1000, 264  # the axes' box; stage labels and axis titles add to the height
MAX_IMAGE_SIDE = 640  # detection images are scaled down to this
_MARGIN = {"left": 64, "right": 16, "top": 96, "bottom": 40}  # the top holds the stage labels, when any
_PASS, _FAIL, _FIRST, _NONFINITE = "#2e7d32", "#c62828", "#e65100", "#6a1b9a"
_LABEL_GAP = 13  # px between stage labels
_REFERENCE, _CANDIDATE = "#1565c0", "#ef6c00"
_SEVERITIES = (Severity.ERROR, Severity.WARNING, Severity.INFO)

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 24px 32px 48px; max-width: 1100px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.muted { color: var(--muted); } .small { font-size: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin: 12px 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 12px;
         color: #fff; vertical-align: middle; }
.passed, .ok { background: #1a7f37; } .failed, .error { background: #cf222e; } .skipped { background: #6e7781; }
.warning { background: #9a6700; } .info { background: #0969da; }
.verdict { font-size: 16px; padding: 3px 12px; }
table { border-collapse: collapse; margin: 6px 0 10px; width: 100%; } table.counts { width: auto; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; font-size: 12.5px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.bad td { background: #fff5f5; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 6px 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; word-break: break-word; }
.callout { border-left: 4px solid #e65100; background: #fff8f1; padding: 8px 12px; margin: 10px 0; }
.callout.nonfinite { border-color: #6a1b9a; background: #faf5ff; }
ul.hints { margin: 4px 0 0; padding-left: 20px; }
svg { max-width: 100%; height: auto; } svg text { font-family: system-ui, sans-serif; }
.legend span { display: inline-block; margin-right: 16px; } .swatch { display: inline-block; width: 22px;
  height: 0; border-top: 3px solid; vertical-align: middle; margin-right: 6px; }
details > summary { cursor: pointer; color: var(--muted); margin: 6px 0; }
.card > h2:first-child { margin-top: 2px; } .scroll { overflow-x: auto; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


# --- entry points -------------------------------------------------------------------------------------------


def render_verify(result, stream: TextIO) -> None:
    """The verify report: the verdict, the inputs, per backend its outputs and its extra reports (layer-wise
    error growth, detections, integer tensors)."""
    verdict = "PASSED" if result.passed else "FAILED"
    body = [_heading("verify", f"{result.reference} vs {result.candidate}", verdict.lower(), verdict)]
    body.append(_verification(result))
    _page(stream, f"graphdoctor verify: {verdict}", body)


def render_lint(results: Iterable[LintResult | LintFailure], stream: TextIO) -> None:
    """Per model its findings (errors and warnings in full, info findings folded away), then, with several
    models, the counts over all."""
    results = list(results)
    linted = [r for r in results if isinstance(r, LintResult)]
    counts = {s: sum(r.count(s) for r in linted) for s in _SEVERITIES}
    worst = next((s for s in _SEVERITIES if counts[s]), None)
    unlinted = len(results) - len(linted)
    status = "error" if unlinted or worst == Severity.ERROR else str(worst) if worst else "ok"
    label = _counts(counts) + (f" · {unlinted} not linted" if unlinted else "")
    models = format_count(len(results), "model")
    body = [_heading("lint", models, status, label)]
    body += [_lint_model(r) if isinstance(r, LintResult) else _lint_failure(r) for r in results]
    _page(stream, f"graphdoctor lint: {label}", body)


def render_fix(result, stream: TextIO) -> None:
    """The fix report: what was written, what each rule changed, the FP16 conversion (what stayed FP32 and
    why), and the gate's verification."""
    from graphdoctor.report.text import fix_failure_line, size_change

    status, label = _fix_outcome(result)
    body = [_heading("fix", f"{result.path} → {result.output}", status, label)]
    facts = [("target", result.target.label), ("took", f"{result.seconds:.1f} s")]
    if result.written and result.size_after is not None:
        facts.insert(0, ("size", size_change(result.size_before, result.size_after)))
    body.append(_facts(facts))
    if result.verification is not None and not result.verification.passed and not result.written:
        body.append(f'<div class="callout">{_e(fix_failure_line(result))}</div>')
    if not result.converged:
        body.append('<div class="callout">fixes still changed the model after 10 rounds: stopped</div>')
    body.append(_rule_fixes(result))
    if result.fp16 is not None:
        body.append(_fp16(result))
    if result.verification is not None:
        runner = result.verification.reference_runner
        body.append(f"<h2>Verification</h2><p>the fixed model against the original on {_e(runner)}</p>")
        body.append(_verification(result.verification))
    _page(stream, f"graphdoctor fix: {label}", body)


# --- the page -----------------------------------------------------------------------------------------------


def _page(stream: TextIO, title: str, body: Sequence[str]) -> None:
    stream.write(
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_CSS}</style></head>\n<body>\n"
    )
    stream.write("\n".join(body))
    stream.write(f"\n<footer>graphdoctor {_e(__version__)}</footer>\n</body></html>\n")


def _heading(command: str, subject: str, status: str, label: str) -> str:
    return (
        f'<h1>graphdoctor {command} <span class="badge verdict {status}">{_e(label)}</span></h1>'
        f'<div class="mono muted">{_e(subject)}</div>'
    )


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _facts(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs if v not in ("", None))
    return f'<dl class="facts">{rows}</dl>'


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = (), bad=None) -> str:
    """A table of escaped cells; columns in `numeric` right-aligned; rows for which `bad(row)` holds tinted."""
    numeric = set(numeric)
    cls = lambda i: ' class="num"' if i in numeric else ""  # noqa: E731
    out = ["<table><tr>", *(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(head)), "</tr>"]
    for row in rows:
        tinted = ' class="bad"' if bad is not None and bad(row) else ""
        out.append(f"<tr{tinted}>" + "".join(f"<td{cls(i)}>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return '<div class="scroll">' + "".join(out) + "</div>"


def _num(value: Any) -> str:
    """3 significant digits; numbers that went through JSON may be the strings "inf" and "nan"."""
    if value is None:
        return "-"
    number = float(value)
    if number == 0.0:
        return "0"
    if not math.isfinite(number):
        return str(number)
    return f"{number:.3g}" if 1e-3 <= abs(number) < 1e4 else f"{number:.2e}"


def _cosine(value: Any) -> str:
    return f"{float(value):.8f}" if value is not None else "-"


def _percent(value: Any) -> str:
    return f"{float(value):.2%}" if value is not None else "-"


# --- verify -------------------------------------------------------------------------------------------------


def _verification(result) -> str:
    inputs = ", ".join(f"{name} {array.dtype}{list(array.shape)}" for name, array in result.inputs.items())
    facts = _facts(
        [
            ("reference", f"{result.reference} (on {result.reference_runner})"),
            ("candidate", result.candidate),
            ("inputs", f"{result.input_source}: {inputs}"),
            ("tolerance", result.tolerance.describe()),
            ("took", f"{result.seconds:.1f} s"),
        ]
    )
    return facts + "".join(_verdict(v) for v in result.verdicts)


def _verdict(verdict) -> str:
    head = (
        f'<h2>{_e(verdict.backend)} <span class="badge {_e(verdict.status)}">{_e(verdict.status.upper())}</span></h2>'
    )
    facts = _facts(
        [
            ("precision", verdict.precision),
            ("tolerance", verdict.tolerance.describe() if verdict.tolerance else ""),
            ("placement", verdict.placement),
            ("reason", verdict.reason),
        ]
    )
    parts = [head, facts]
    if verdict.outputs:
        parts.append(_outputs(verdict.outputs))
    details = dict(verdict.details)
    if "layerwise" in details:
        parts.append(_layerwise(details.pop("layerwise"), verdict.tolerance))
    if "detections" in details:
        parts.append(_detections(details.pop("detections")))
    if "integer_tensors" in details:
        parts.append(_integer_tensors(details.pop("integer_tensors")))
    parts += [_other_detail(name, value) for name, value in details.items()]
    return '<section class="card">' + "".join(parts) + "</section>"


def _outputs(outputs) -> str:
    rows = [
        (
            "ok" if c.passed else "FAIL",
            c.name,
            f"{c.kind or 'tensor'} {list(c.shape)}",
            _num(c.max_abs),
            _num(c.max_rel),
            _cosine(c.cosine),
            _percent(c.mismatch),
            _top(c),
            f"{c.ref_nonfinite} → {c.cand_nonfinite}" if c.ref_nonfinite or c.cand_nonfinite else "",
            c.reason,
        )
        for c in outputs
    ]
    head = ("", "output", "kind, shape", "max abs", "max rel", "cosine", "mismatch", "top-1 / top-5", "inf/NaN", "why")
    kept = [i for i in range(len(head)) if i < 7 or any(row[i] for row in rows)]  # no empty optional columns
    head, rows = [head[i] for i in kept], [[row[i] for i in kept] for row in rows]
    return "<h3>Outputs</h3>" + _table(head, rows, numeric=(3, 4, 5, 6), bad=lambda row: row[0] == "FAIL")


def _top(c) -> str:
    if c.top1_agreement is None:
        return ""
    return f"{c.top1_agreement:.1%} / {c.top5_overlap:.1%}"


def _other_detail(name: str, value: Any) -> str:
    """A report this page has no view for (fp16-emulation's first overflow): its message, else its fields."""
    if isinstance(value, Mapping):
        text = value.get("message") or "; ".join(f"{k}: {v}" for k, v in value.items())
    else:
        text = value
    return f"<h3>{_e(name.replace('_', ' '))}</h3><p>{_e(text)}</p>"


def _integer_tensors(report: Mapping[str, Any]) -> str:
    if "error" in report:
        return f"<h3>Integer tensors</h3><p>not compared: {_e(report['error'])}</p>"
    differing = report.get("differing", [])
    head = f"<h3>Integer tensors computed from floats</h3><p>{report['compared']} compared exactly"
    head += f", {len(differing)} differ</p>" if differing else ", all equal</p>"
    if not differing:
        return head
    rows = [(d["name"], d["node"], d["op"], d["reason"]) for d in differing]
    return head + _table(("tensor", "node", "op", "why"), rows)


# --- layer-wise ---------------------------------------------------------------------------------------------


def _layerwise(details: Mapping[str, Any], tolerance) -> str:
    """The first divergence and its hints, the error growth plot, the diverging path and the stages."""
    if "error" in details:
        return f"<h3>Layer-wise comparison</h3><p>not run: {_e(details['error'])}</p>"
    records = {r["name"]: r for r in details.get("tensors", [])}
    compared, beyond = details["tensors_compared"], details["tensors_beyond_tolerance"]
    summary = (
        f"{compared} shared tensors compared in {format_count(details['runs'], 'run')}, "
        + (f"{beyond} beyond tolerance" if beyond else "all within tolerance")
        + f" ({float(details['seconds']):.1f} s)"
    )
    parts = [f"<h3>Layer-wise comparison</h3><p>{_e(summary)}</p>"]
    first = details.get("first_divergence")
    for cls, title, event, _colour in _marks(details):
        parts.append(_divergence(title, event, records, " nonfinite" if cls == "first-nonfinite" else ""))
    if first is None and details.get("first_difference") in records:
        record = records[details["first_difference"]]
        parts.append(f"<p>first difference (within tolerance): {_where(record)}: {_e(_numbers(record))}</p>")
    if records:
        parts.append(error_growth_svg(details, tolerance))
    if first is not None:
        parts.append(_path_table(first, details.get("path", []), records))
    if details.get("stages"):
        parts.append(_stage_table(details["stages"]))
    return "".join(parts)


def _divergence(title: str, event: Mapping[str, Any], records: Mapping[str, Any], kind: str) -> str:
    record = records[event["tensor"]]
    known = [float(i["rel_err"]) for i in event["inputs"] if i["rel_err"] is not None]
    if not known:
        upstream = "its inputs were not compared"
    elif max(known) == 0.0:
        upstream = "its inputs agree exactly: the error starts at this node"
    else:
        upstream = f"its inputs' rel err is at most {_num(max(known))}: growth {_growth(record['growth'])} here"
    hints = "".join(f"<li>{_e(h)}</li>" for h in event.get("hints", []))
    return (
        f'<div class="callout{kind}"><b>{_e(title)}</b>: {_where(record)}<br>{_e(_numbers(record))}; '
        f"{_e(upstream)}" + (f'<ul class="hints">{hints}</ul>' if hints else "") + "</div>"
    )


def _where(record: Mapping[str, Any]) -> str:
    return (
        f"node <code>{_e(record['node'])}</code> ({_e(record['op'])}) → "
        f"<code>{_e(record['name'])}</code>{_e(list(record['shape']))}"
    )


def _numbers(record: Mapping[str, Any]) -> str:
    if record["cand_nonfinite"] > record["ref_nonfinite"]:
        return f"{record['cand_nonfinite']} inf/NaN values (reference: {record['ref_nonfinite']})"
    return f"rel err {_num(record['rel_err'])}, max abs {_num(record['max_abs'])}, cosine {_cosine(record['cosine'])}"


def _growth(value: Any) -> str:
    if value is None:
        return "-"
    number = float(value)
    return "new" if math.isinf(number) else f"×{number:.3g}"


def _path_table(first: Mapping[str, Any], path: Sequence[str], records: Mapping[str, Any]) -> str:
    upstream = [(records[i["name"]], "input") for i in first["inputs"] if i["name"] in records][:3]
    rows = [*upstream, *((records[name], "") for name in path if name in records)]
    table = _table(
        ("node", "op", "max abs", "rel err", "cosine", "growth", ""),
        (
            (r["node"], r["op"], _num(r["max_abs"]), _num(r["rel_err"]), _cosine(r["cosine"]), _growth(r["growth"]), n)
            for r, n in rows
        ),
        numeric=(2, 3, 4, 5),
        bad=lambda row: row[6] == "" and row[0] == first["node"],
    )
    return "<h3>Along the diverging path</h3>" + table


def _stage_table(stages: Sequence[Mapping[str, Any]]) -> str:
    numbers = ((s, _num(s["max_abs"]), _num(s["rel_err"]), _cosine(s["min_cosine"])) for s in stages)
    rows = [(s["stage"], s["tensors"], s["beyond_tolerance"], *worst) for s, *worst in numbers]
    head = ("stage", "tensors", "beyond tolerance", "max abs", "rel err (worst)", "min cosine")
    return "<h3>Error per stage</h3>" + _table(head, rows, numeric=(1, 2, 3, 4, 5), bad=lambda row: row[2] > 0)


def _stage_index(records: Sequence[Mapping[str, Any]], stages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Each record's stage (index into `stages`): the longest stage name that scopes its node; -1 for none."""
    names = [s["stage"] for s in stages]
    by_length = sorted(range(len(names)), key=lambda i: -len(names[i]))
    index = []
    for record in records:
        node = record["node"]
        index.append(next((i for i in by_length if node.startswith(names[i] + "/")), -1))
    return index


def error_growth_svg(details: Mapping[str, Any], tolerance=None) -> str:
    """Each compared tensor's relative L2 error, in the reference's graph order, on a log axis: stages as
    shaded bands with their names on top, the tolerance's rtol as a guide line, passing tensors green and
    failing ones red, the first divergence (and a later first non-finite output) marked and labelled.
    Exact tensors (error 0) sit on a band below the axis, non-finite ones (inf/NaN) on a band above it."""
    records = details["tensors"]
    left, top = _MARGIN["left"], _MARGIN["top"] if details.get("stages") else 16
    width, height = PLOT_WIDTH - left - _MARGIN["right"], PLOT_AREA_HEIGHT
    svg_height = top + height + _MARGIN["bottom"]
    errors = [float(r["rel_err"]) for r in records]
    rtol = tolerance.rtol if tolerance is not None and tolerance.rtol > 0 else None
    positive = [e for e in errors if 0 < e < math.inf] + ([rtol] if rtol else [])
    low = math.floor(math.log10(min(positive))) if positive else -8
    high = max(math.ceil(math.log10(max(positive))) if positive else 0, low + 1)
    axis_top, axis_bottom = top + 24, top + height - 20  # the inf band above, the exact band below

    def x_of(i: int) -> float:
        return left + (i + 0.5) * width / len(records)

    def y_of(error: float) -> float:
        if error == 0.0:
            return top + height - 6
        if not math.isfinite(error):
            return top + 6
        return axis_bottom - (math.log10(error) - low) / (high - low) * (axis_bottom - axis_top)

    out = [
        f'<svg id="error-growth" xmlns="http://www.w3.org/2000/svg" width="{PLOT_WIDTH}" height="{svg_height}"'
        f' viewBox="0 0 {PLOT_WIDTH} {svg_height}" role="img" aria-label="layer-wise error growth">',
        f'<rect x="0" y="0" width="{PLOT_WIDTH}" height="{svg_height}" fill="#fff"/>',
    ]
    out += _stage_bands(records, details.get("stages", []), x_of, top, height, width / len(records))
    for decade in range(low, high + 1):
        y = y_of(10.0**decade)
        out.append(f'<line class="grid" x1="{left}" x2="{left + width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        out.append(_axis_label(left - 6, y + 4, _decade(decade)))
    out += [_axis_label(left - 6, top + height - 2, "0 (exact)"), _axis_label(left - 6, top + 10, "inf/NaN")]
    out.append(
        f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#9ca3af"/>'
        f'<text x="14" y="{top + height / 2}" font-size="12" fill="#333" text-anchor="middle"'
        f' transform="rotate(-90 14 {top + height / 2})">relative L2 error</text>'
        f'<text x="{left + width / 2}" y="{svg_height - 10}" font-size="12" fill="#333" text-anchor="middle">'
        f"compared tensors in graph order ({len(records)})</text>"
    )
    if rtol:
        y = y_of(rtol)
        out.append(
            f'<line class="tolerance" x1="{left}" x2="{left + width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c62828"'
            f' stroke-dasharray="6 4" stroke-width="1.2"/><text x="{left + width - 4}" y="{y - 4:.1f}" font-size="11"'
            f' fill="#c62828" text-anchor="end">tolerance rtol {rtol:g}</text>'
        )
    points = " ".join(f"{x_of(i):.1f},{y_of(e):.1f}" for i, e in enumerate(errors))
    out.append(f'<polyline class="series" points="{points}" fill="none" stroke="#64748b" stroke-width="1"/>')
    for i, (record, error) in enumerate(zip(records, errors, strict=True)):
        kind, colour = ("pass", _PASS) if record["passed"] else ("fail", _FAIL)
        tip = f"{record['node']} ({record['op']}) → {record['name']}: rel err {_num(error)}"
        out.append(
            f'<circle class="pt {kind}" cx="{x_of(i):.1f}" cy="{y_of(error):.1f}" r="2.6" fill="{colour}">'
            f"<title>{_e(tip)}</title></circle>"
        )
    order = {r["name"]: i for i, r in enumerate(records)}
    marks = [m for m in _marks(details) if m[2]["tensor"] in order]
    for row, (cls, title, event, colour) in enumerate(marks):
        i = order[event["tensor"]]
        box = (left, left + width, top, height)
        out.append(_mark(cls, title, event, x_of(i), y_of(errors[i]), colour, row, box))
    out.append("</svg>")
    legend = (
        '<div class="legend small">'
        f'<span><span class="swatch" style="border-color:{_PASS}"></span>within tolerance</span>'
        f'<span><span class="swatch" style="border-color:{_FAIL}"></span>beyond tolerance</span>'
        f'<span><span class="swatch" style="border-color:{_FIRST}"></span>first divergence</span>'
        '<span class="muted">the rtol line is a guide: a tensor is judged element by element'
        " (atol + rtol·|ref|, cosine), its colour is that verdict</span></div>"
    )
    return "<h3>Error growth along the graph</h3>" + "".join(out) + legend


def _axis_label(x: float, y: float, text: str) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="11" text-anchor="end" fill="#555">{_e(text)}</text>'


def _decade(exponent: int) -> str:
    return f"1e{exponent}" if exponent else "1"


def _stage_bands(records, stages, x_of, top: float, height: float, step: float) -> list[str]:
    """Alternate shading per stage, a line at each stage's start, its name above the plot (rotated; a stage
    too close to the one labelled before it keeps its name in the band's tooltip only)."""
    if not stages:
        return []
    index = _stage_index(records, stages)
    spans: list[tuple[int, int, int]] = []  # (stage, first record, last record)
    for i, stage in enumerate(index):
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], i)
        else:
            spans.append((stage, i, i))
    out, labelled = [], -math.inf  # where the last label stands: labels closer than _LABEL_GAP would overlap
    for n, (stage, start, end) in enumerate(spans):
        x0, x1 = x_of(start) - step / 2, x_of(end) + step / 2
        name = stages[stage]["stage"] if stage >= 0 else "(unscoped)"
        if n % 2:
            out.append(
                f'<rect x="{x0:.1f}" y="{top}" width="{x1 - x0:.1f}" height="{height}" fill="#eef0f3">'
                f"<title>{_e(name)}</title></rect>"
            )
        if n:
            out.append(
                f'<line class="stage-boundary" x1="{x0:.1f}" x2="{x0:.1f}" y1="{top - 4}" y2="{top + height}"'
                ' stroke="#9ca3af" stroke-dasharray="2 3"/>'
            )
        label = name.rsplit("/", 1)[-1] or name
        mid = (x0 + x1) / 2
        if mid - labelled < _LABEL_GAP:
            continue
        labelled = mid
        out.append(
            f'<text class="stage-label" x="{mid:.1f}" y="{top - 6}" font-size="10.5" fill="#374151"'
            f' transform="rotate(-60 {mid:.1f} {top - 6})"><title>{_e(name)}</title>{_e(label)}</text>'
        )
    return out


def _marks(details: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any], str]]:
    """(class, title, event, colour) of the first divergence and of the first inf/NaN, one mark when they are
    the same tensor."""
    first, nonfinite = details.get("first_divergence"), details.get("first_nonfinite")
    if first is not None and nonfinite is not None and first["tensor"] == nonfinite["tensor"]:
        return [("first-divergence", "first divergence and first inf/NaN", first, _FIRST)]
    marks = [("first-divergence", "first divergence", first, _FIRST)] if first is not None else []
    return marks + ([("first-nonfinite", "first inf/NaN", nonfinite, _NONFINITE)] if nonfinite is not None else [])


def _mark(cls: str, title: str, event, x: float, y: float, colour: str, row: int, box) -> str:
    """A vertical line through the tensor, a ring around its point, and its node's name beside the line."""
    left, right, top, height = box
    anchor, dx = ("end", -6) if x > (left + right) / 2 else ("start", 6)
    label_y = top + 34 + 16 * row
    return (
        f'<g class="{cls}"><line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + height}" stroke="{colour}"'
        f' stroke-width="2"/><circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="none" stroke="{colour}" stroke-width="2.5"/>'
        f'<text x="{x + dx:.1f}" y="{label_y}" font-size="12" font-weight="600" fill="{colour}"'
        f' text-anchor="{anchor}" paint-order="stroke" stroke="#fff" stroke-width="3">'
        f"{_e(title)}: {_e(event['node'])} ({_e(event['op'])})</text></g>"
    )


# --- detections ---------------------------------------------------------------------------------------------


def _detections(report: Mapping[str, Any]) -> str:
    """The settings and verdict, a table of the numbers per image, and per image both models' boxes."""
    status = "passed" if report.get("passed") else "failed"
    preset = report.get("preset", {})
    facts = _facts(
        [
            ("layout", f"{report.get('layout')} ({'guessed: ' if report.get('auto') else ''}{report.get('why', '')})"),
            ("thresholds", f"score >= {report.get('score_threshold')}, NMS IoU {report.get('nms_iou')}"),
            ("matching", report.get("match", "")),
            ("passes when", f"IoU >= {preset.get('min_iou')} and |score change| <= {preset.get('max_score_delta')}"),
        ]
    )
    head = (
        f'<h3>Detections <span class="badge {status}">{status.upper()}</span></h3>'
        f"<p>{_e(report.get('message', ''))}</p>" + facts
    )
    images = report.get("images", [])
    rows = [
        (
            image["index"],
            image.get("source", ""),
            image["reference"],
            image["candidate"],
            image["matched"],
            image["missing"],
            image["extra"],
            image["class_changes"],
            image["borderline"],
            _num(image["max_box_shift_px"]),
            _num(image["max_score_delta"]),
            _num(image.get("iou", {}).get("min")),
            _num(image.get("iou", {}).get("median")),
        )
        for image in images
    ]
    columns = ("#", "image", "ref", "cand", "matched", "missing", "extra", "class Δ", "border")
    columns += ("max shift px", "max score Δ", "IoU min", "IoU med.")
    table = _table(columns, rows, numeric=range(2, 13), bad=lambda row: row[5] or row[6] or row[7])
    return head + table + "".join(_detection_image(image) for image in images)


def _detection_image(image: Mapping[str, Any]) -> str:
    """The image (when it came with the report) with the reference's boxes solid and the candidate's dashed."""
    boxes = image.get("boxes", {})
    reference, candidate = boxes.get("reference", []), boxes.get("candidate", [])
    width, height = image.get("size") or _extent([*reference, *candidate])
    scale = min(1.0, MAX_IMAGE_SIDE / max(width, height, 1))
    out = [
        f'<figure class="detections"><svg xmlns="http://www.w3.org/2000/svg" width="{width * scale:.0f}"'
        f' height="{height * scale:.0f}" viewBox="0 0 {width} {height}" role="img">',
        f'<rect width="{width}" height="{height}" fill="#eceff1"/>',
    ]
    if image.get("image_png"):
        out.append(
            f'<image href="data:image/png;base64,{_e(image["image_png"])}" x="0" y="0" width="{width}"'
            f' height="{height}" preserveAspectRatio="none"/>'
        )
    out += [_box(row, _REFERENCE, "ref", "") for row in reference]
    out += [_box(row, _CANDIDATE, "cand", ' stroke-dasharray="6 4"') for row in candidate]
    out.append("</svg>")
    changes = "".join(f"<li>{_e(c)}</li>" for c in image.get("changes", []))
    legend = (
        f'<figcaption class="legend small"><b>#{image["index"]}</b> {_e(image.get("source", ""))} '
        f'<span><span class="swatch" style="border-color:{_REFERENCE}"></span>reference ({len(reference)})</span>'
        f'<span><span class="swatch" style="border-color:{_CANDIDATE};border-top-style:dashed"></span>'
        f"candidate ({len(candidate)})</span>" + (f'<ul class="hints">{changes}</ul>' if changes else "")
    )
    return "".join(out) + legend + "</figcaption></figure>"


def _box(row: Sequence[float], colour: str, cls: str, dash: str) -> str:
    x1, y1, x2, y2, score, label = row[:6]
    tip = f"class {int(label)}, score {score:.3f}, ({x1:.0f}, {y1:.0f})–({x2:.0f}, {y2:.0f})"
    return (
        f'<rect class="box {cls}" x="{x1:.1f}" y="{y1:.1f}" width="{max(x2 - x1, 0):.1f}"'
        f' height="{max(y2 - y1, 0):.1f}"'
        f' fill="none" stroke="{colour}" stroke-width="2" vector-effect="non-scaling-stroke"{dash}>'
        f"<title>{_e(tip)}</title></rect>"
    )


def _extent(rows: Sequence[Sequence[float]]) -> tuple[int, int]:
    """Without the image's size: the smallest frame holding every box."""
    if not rows:
        return 640, 640
    return math.ceil(max(r[2] for r in rows)), math.ceil(max(r[3] for r in rows))


# --- lint ---------------------------------------------------------------------------------------------------


def _lint_model(result: LintResult) -> str:
    counts = _counts({s: result.count(s) for s in _SEVERITIES})
    wasted = sum(f.nbytes or 0 for f in result.findings if f.nbytes)
    facts = _facts(
        [
            ("target", result.target.label),
            ("findings", counts + (f"; {format_bytes(wasted)} at stake" if wasted else "")),
            ("rules", f"{len(result.rules)} in {result.seconds:.2f} s"),
            ("file size", format_bytes(result.file_size)),
        ]
    )
    head = f'<section class="card"><h2 class="mono">{_e(result.path)}</h2>{facts}'
    serious = [f for f in result.findings if f.severity > Severity.INFO]
    infos = [f for f in result.findings if f.severity == Severity.INFO]
    parts = [head]
    if result.findings:
        parts.append(_rule_counts(result.findings))
    if serious:
        parts.append(_findings_table(sorted(serious, key=lambda f: (-f.severity, f.sort_key()))))
    if infos:
        parts.append(f"<details><summary>{len(infos)} info findings</summary>{_findings_table(infos)}</details>")
    return "".join(parts) + "</section>"


def _counts(counts: Mapping[Severity, int]) -> str:
    """'2 errors, 59 info', or 'no findings'."""
    words = [f"{n} {s}{'s' if n != 1 and s != Severity.INFO else ''}" for s, n in counts.items() if n]
    return ", ".join(words) or "no findings"


def _rule_counts(findings) -> str:
    """Findings per rule and severity, worst first: what the model has, before the details."""
    counts = Counter((f.code, f.name, f.severity) for f in findings)
    keys = sorted(counts, key=lambda key: (-key[2], key[0]))
    cells = "".join(
        f'<tr><td><span class="badge {s}">{_e(s)}</span></td><td><b>{_e(code)}</b> {_e(name)}</td>'
        f'<td class="num">{counts[code, name, s]}</td></tr>'
        for code, name, s in keys
    )
    return f'<table class="counts"><tr><th>severity</th><th>rule</th><th class="num">findings</th></tr>{cells}</table>'


def _findings_table(findings) -> str:
    head = "<table><tr><th>severity</th><th>rule</th><th>where</th><th>message</th><th>fix</th></tr>"
    rows = [
        f'<tr><td><span class="badge {f.severity}">{_e(f.severity)}</span></td>'
        f'<td><b>{_e(f.code)}</b> {_e(f.name)}</td><td class="mono">{_e(f.location)}</td>'
        f"<td>{_e(f.message)}</td><td>{_e(f.help)}"
        + (f' <span class="muted small">({_e(f.fix.value)})</span>' if f.fix else "")
        + "</td></tr>"
        for f in findings
    ]
    return '<div class="scroll">' + head + "".join(rows) + "</table></div>"


def _lint_failure(failure: LintFailure) -> str:
    error = failure.error.removeprefix(f"{failure.path}: ")
    return (
        f'<section class="card"><h2 class="mono">{_e(failure.path)}</h2>'
        f'<p><span class="badge error">not linted</span> {_e(error)}</p></section>'
    )


# --- fix ----------------------------------------------------------------------------------------------------


def _fix_outcome(result) -> tuple[str, str]:
    if result.dry_run:
        return "skipped", "dry run: nothing written"
    if result.written:
        verified = "not verified" if result.verification is None and result.fixes else "written"
        return "passed", verified
    if result.verification is not None and not result.verification.passed:
        return "failed", "verification failed: nothing written"
    return "skipped", "nothing to fix"


def _rule_fixes(result) -> str:
    if not result.fixes:
        return "<h2>Rules</h2><p>no finding of the selected rules had a fix to apply</p>"
    rows = [
        (
            f"{f.rule.code} {f.rule.name}",
            ", ".join(f"{count} × {message_id}" for message_id, count in sorted(f.repairs.items())),
            f.nodes_removed,
            format_bytes(f.bytes_saved) if f.bytes_saved >= 0 else f"-{format_bytes(-f.bytes_saved)}",
            ", ".join(sorted(s.value for s in f.safety)),
        )
        for f in result.fixes
    ]
    blamed = f"<p>fixes that fail verification alone: {_e(', '.join(result.blamed))}</p>" if result.blamed else ""
    head = ("rule", "what it repaired", "nodes removed", "bytes saved", "safety")
    return "<h2>Rules</h2>" + _table(head, rows, numeric=(2, 3)) + blamed


def _fp16(result) -> str:
    report = result.fp16
    title = f"<h2>{_e(report.precision)} conversion</h2>"
    if report.already_fp16:
        return title + "<p>the model holds no float32 tensor: already FP16, nothing to convert</p>"
    facts = _facts(
        [
            ("converted", f"{format_count(report.converted_nodes, 'node')}, {report.tensors_converted} constants"),
            ("kept FP32", format_count(len(report.kept), "node")),
            ("Casts added", f"{report.casts_added} at region boundaries"),
            (
                "activations",
                f"measured on the sample inputs, limit {report.max_value:g}"
                if report.ranges_measured
                else "not measured (no sample inputs): only constants were checked",
            ),
            ("functions left FP32", report.functions_kept or ""),
            *(("opset", note) for note in report.opset_notes),
        ]
    )
    parts = [title, facts]
    if report.kept:
        rows = [(k.node, k.op_type, k.graph or "main", k.kind, k.reason) for k in report.kept]
        parts.append("<h3>Kept FP32, and why</h3>" + _table(("node", "op", "graph", "decided by", "why"), rows))
    if report.regions:
        rows = [(_span(r.nodes), len(r.nodes), _num(r.peak), r.peak_at, ", ".join(r.ends)) for r in report.regions]
        head = ("region", "nodes", "peak |x|", "peak at", "ends at (back in range)")
        parts.append("<h3>FP32 regions</h3>" + _table(head, rows, numeric=(1, 2)))
    if result.fp16_repaired:
        rows = list(result.fp16_repaired)
        parts.append("<h3>Kept FP32 after verification</h3>" + _table(("node", "why"), rows))
    if result.keep_fp32_hint:
        hint = ",".join(result.keep_fp32_hint)
        parts.append(f"<p>still diverging: keep FP32 with <code>--keep-fp32 '{_e(hint)}'</code></p>")
    if report.changed:
        rows = [(c.tensor, c.what, c.count, _num(c.worst)) for c in report.changed]
        head = ("constant", "what FP16 did", "values", "worst original")
        parts.append("<h3>Constants changed beyond rounding</h3>" + _table(head, rows, numeric=(2, 3)))
    return "".join(parts)


def _span(nodes: Sequence[str]) -> str:
    return nodes[0] if len(nodes) == 1 else f"{nodes[0]} … {nodes[-1]}"
