"""The terminal rendering of a layer-wise report (a verdict's `details["layerwise"]`, plain data).

A user needs three things, in this order: where the models first disagree and what may explain it; how the
error travels from there (the diverging path: a few nodes, not hundreds of lines); and how large it is per
stage of the model. The JSON report carries every compared tensor; this view stays a screenful.
`graphdoctor.report.text` imports this module only when it renders a verify report, so `lint` never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from graphdoctor.analysis.format import format_bytes, format_count

__all__ = ["render_layerwise"]

MAX_STAGES = 30  # the layer-wise module picks a scope depth giving at most this many
MAX_UPSTREAM = 3  # input rows shown above the first divergence
MAX_LABEL = 56


class Writer(Protocol):
    def line(self, markup: str, plain: str | None = None) -> None: ...


def render_layerwise(details: Mapping[str, Any], out: Writer) -> None:
    """Summary line, the first divergence with its hints, the diverging path, the error per stage."""
    if "error" in details:
        _plain(out, f"  layer-wise: not run: {details['error']}")
        return
    _plain(out, "  " + _summary(details))
    records = {r["name"]: r for r in details.get("tensors", [])}
    first, nonfinite = details.get("first_divergence"), details.get("first_nonfinite")
    same = first is not None and nonfinite is not None and nonfinite["tensor"] == first["tensor"]
    if first is not None:
        title = "first divergence, and first non-finite output" if same else "first divergence"
        _render_divergence(title, first, records, out)
    if nonfinite is not None and not same:
        _render_divergence("first non-finite output", nonfinite, records, out)
    elif first is None and details.get("first_difference"):
        name = details["first_difference"]
        _plain(out, f"  first difference (within tolerance): {_where(records[name])}: {_numbers(records[name])}")
    if first is not None:
        _render_path(first, details.get("path", []), records, out)
    if details.get("first_difference") and details.get("stages"):
        _render_stages(details["stages"], out)


def _summary(details: Mapping[str, Any]) -> str:
    count, beyond = details["tensors_compared"], details["tensors_beyond_tolerance"]
    skipped = {k: v for k, v in details.get("skipped", {}).items() if k != "not float" and v}
    left_out = "; not compared: " + ", ".join(f"{v} {k}" for k, v in skipped.items()) if skipped else ""
    verdict = f"{beyond} beyond tolerance" if beyond else "all within tolerance"
    runs = details["runs"]
    return (
        f"layer-wise: {count} shared tensors compared in {format_count(runs, 'run')}"
        f" ({_method(details)}){left_out}: {verdict} ({details['seconds']:.1f} s)"
    )


def _method(details: Mapping[str, Any]) -> str:
    """How the tensors were compared: by statistics computed in the graph, fetched a slice at a time, or both
    (the pairs the statistics cannot judge: inf/NaN, shapes that differ, sequences)."""
    per_run = f"at most {details['max_tensors_per_run']} tensors, {_mib(details['max_bytes_per_run'])} per run"
    limit = (
        f"--layers-per-run {details['layers_per_run']}"
        if details.get("layers_per_run")
        else f"budget {_mib(details['budget_bytes'])}"
    )
    if details.get("over_budget") and not details.get("layers_per_run"):
        limit += f", exceeded: {details['over_budget']}"
    fetched = f"{per_run}; {limit}"
    if not details.get("in_graph"):
        why = details.get("in_graph_unavailable")
        return f"{fetched}; no statistics in the graph: {why}" if why else fetched
    in_graph = "both models in one session, statistics computed in the graph"
    return f"{in_graph}; {details['fetched']} fetched, {fetched}" if details.get("fetched") else in_graph


def _render_divergence(title: str, event: Mapping[str, Any], records: Mapping[str, Any], out: Writer) -> None:
    record = records[event["tensor"]]
    _plain(out, f"  {title}: {_where(record)}: {_numbers(record)}")
    _plain(out, f"    {_upstream(event, record)}")
    for hint in event.get("hints", []):
        _plain(out, f"    hint: {hint}")


def _where(record: Mapping[str, Any]) -> str:
    return f"node '{record['node']}' ({record['op']}) → '{record['name']}'{list(record['shape'])}"


def _numbers(record: Mapping[str, Any]) -> str:
    if record["cand_nonfinite"] > record["ref_nonfinite"]:  # the other numbers cover the finite part only
        return f"{record['cand_nonfinite']} inf/NaN values (reference: {record['ref_nonfinite']})"
    return f"rel err {_num(record['rel_err'])}, max abs {_num(record['max_abs'])}, cosine {_cosine(record['cosine'])}"


def _upstream(event: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    """How the error came in: exact inputs (it starts here), or the inputs' error and the node's growth."""
    known = [i["rel_err"] for i in event["inputs"] if i["rel_err"] is not None]
    missing = len(event["inputs"]) - len(known)
    unknown = f" ({format_count(missing, 'input')} not compared)" if missing else ""
    if not known:
        return f"its inputs were not compared{unknown}"
    upstream = max(_as_float(e) for e in known)
    if upstream == 0.0:
        return f"its inputs agree exactly{unknown}: the error starts at this node"
    return f"its inputs' rel err is at most {_num(upstream)}{unknown}: growth {_growth(record['growth'])} here"


def _render_path(first: Mapping[str, Any], path: Sequence[str], records: Mapping[str, Any], out: Writer) -> None:
    """The first divergence's compared inputs, then the path downstream of it."""
    upstream = [i["name"] for i in first["inputs"] if i["name"] in records][:MAX_UPSTREAM]
    rows = [(records[n], "input") for n in upstream] + [(records[n], "") for n in path if n in records]
    if not rows:
        return
    width = min(MAX_LABEL, max(len("node"), *(len(r["node"]) for r, _ in rows)))
    op_width = max(len("op"), *(len(r["op"]) for r, _ in rows))
    _plain(out, "  along the diverging path:")
    head = f"    {'node':<{width}}  {'op':<{op_width}}  {'max abs':>9}  {'rel err':>9}  {'cosine':>11}  growth"
    _plain(out, head)
    for record, note in rows:
        line = (
            f"    {_clip(record['node'], width):<{width}}  {record['op']:<{op_width}}  {_num(record['max_abs']):>9}"
            f"  {_num(record['rel_err']):>9}  {_cosine(record['cosine']):>11}  {_growth(record['growth'])}"
        )
        _plain(out, f"{line}  ({note})" if note else line)


def _render_stages(stages: Sequence[Mapping[str, Any]], out: Writer) -> None:
    """One line per stage from the first that differs (the stages before it are exact), MAX_STAGES at most."""
    start = next((i for i, s in enumerate(stages) if _as_float(s["rel_err"]) > 0 or s["max_abs"] != 0), 0)
    shown = stages[start : start + MAX_STAGES]
    width = max(len("stage"), *(len(s["stage"]) for s in shown))
    exact = f" (stages before {shown[0]['stage']} are exact)" if start else ""
    _plain(out, f"  error per stage (worst tensor of each){exact}:")
    _plain(out, f"    {'stage':<{width}}  {'tensors':>7}  {'beyond':>6}  {'max abs':>9}  {'rel err':>9}  min cosine")
    for s in shown:
        _plain(
            out,
            f"    {s['stage']:<{width}}  {s['tensors']:>7}  {s['beyond_tolerance']:>6}  {_num(s['max_abs']):>9}"
            f"  {_num(s['rel_err']):>9}  {_cosine(s['min_cosine'])}",
        )
    if len(stages) > start + len(shown):
        _plain(out, f"    … {len(stages) - start - len(shown)} more stages in the JSON report")


def _plain(out: Writer, text: str) -> None:
    out.line(text.replace("[", r"\["), plain=text)


def _as_float(value: Any) -> float:
    """Numbers may arrive as the strings "inf"/"nan" when the details went through JSON."""
    return float(value)


def _num(value: Any) -> str:
    number = _as_float(value)
    if number == 0.0:
        return "0"
    if not math.isfinite(number):
        return str(number)
    return f"{number:.2e}"


def _cosine(value: Any) -> str:
    """Eight decimals: the differences a layer-wise view is about sit in the 7th and 8th."""
    return f"{_as_float(value):.8f}"


def _growth(value: Any) -> str:
    """'new' where the error starts (exact inputs), '×N' the output's error over its inputs', '-' unknown."""
    if value is None:
        return "-"
    number = _as_float(value)
    if math.isinf(number):
        return "new"
    return f"×{number:.3g}"


def _clip(label: str, width: int) -> str:
    return label if len(label) <= width else "…" + label[-(width - 1) :]


def _mib(nbytes: int) -> str:
    return format_bytes(int(nbytes))
