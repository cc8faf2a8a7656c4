"""TensorRT's own ONNX parser run on a model, beside GD013's static checks (`lint --deep`).

The parser needs `tensorrt` and a CUDA device (`trt.Builder` fails without one). Where it runs, each parser
error is reported at its node, and the two are compared: a node the static checks refused that the parser
took, or a parser error no static check foresaw, is how the tables get corrected. After a failed parse the
nodes behind the failing one were never imported, so only a parse that succeeded can contradict a refusal.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphdoctor.errors import first_line
from graphdoctor.rule import Finding, Severity
from graphdoctor.verify.backends.tensorrt import import_tensorrt, tensorrt_logger

if TYPE_CHECKING:
    from graphdoctor.engine import RuleContext

__all__ = ["ParserError", "ParserRun", "ParserUnavailable", "compare_with_parser", "run_parser"]


class ParserUnavailable(Exception):
    """TensorRT's parser cannot run here; the message says why."""


@dataclass(frozen=True)
class ParserError:
    node: str
    operator: str
    message: str


@dataclass(frozen=True)
class ParserRun:
    version: str
    parsed: bool
    errors: tuple[ParserError, ...]


def run_parser(path: Path) -> ParserRun:
    """Parse the file (from its path, so external data resolves beside it) into an empty network."""
    trt, reason = import_tensorrt()
    if trt is None:
        raise ParserUnavailable(reason)
    log = tensorrt_logger(trt)
    try:
        builder = trt.Builder(log)
    except TypeError as error:  # "factory function returned nullptr": CUDA cannot start
        raise ParserUnavailable(f"TensorRT {trt.__version__} cannot start CUDA: {first_line(error)}") from None
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, log)
    parsed = bool(parser.parse_from_file(os.fspath(path)))
    errors = tuple(_error(parser.get_error(index)) for index in range(parser.num_errors))
    return ParserRun(trt.__version__, parsed, errors)


def _network_flags(trt: Any) -> int:
    """Explicit batch, which TensorRT 8.6 asks for and 10 always has (its flag is deprecated there)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    major = int(trt.__version__.split(".")[0])
    return 1 << int(flag) if flag is not None and major < 10 else 0


def _error(error: Any) -> ParserError:
    node = error.node_name() if hasattr(error, "node_name") else ""
    operator = error.node_operator() if hasattr(error, "node_operator") else ""
    return ParserError(node, operator, first_line(error.desc()))


def compare_with_parser(ctx: RuleContext, static: Iterable[Finding]) -> Iterator[Finding]:
    """The parser's errors at their nodes, and each disagreement with the static findings; or one info
    finding saying that only the static checks ran, and why."""
    if ctx.analysis.path is None:
        yield ctx.report("static-only", reason="the model has no file to parse")
        return
    try:
        run = run_parser(ctx.analysis.path)
    except ParserUnavailable as why:
        yield ctx.report("static-only", reason=str(why))
        return
    nodes = {node.name: node for node in ctx.analysis.nodes() if node.name}
    refused = {f.node: f for f in static if f.severity == Severity.ERROR and f.node}
    version = _version_against_target(run.version, ctx.analysis.target)
    for error in run.errors:
        unforeseen = "" if error.node in refused else " (no static check foresaw it)"
        yield ctx.report(
            "parser", node=nodes.get(error.node), version=version, error=_where(error), unforeseen=unforeseen
        )
    if run.parsed:
        for name, finding in refused.items():
            yield ctx.report("disagree", node=nodes.get(name), static=finding.message, version=version)


def _version_against_target(version: str, target) -> str:
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    if major_minor[0] == target.version[0] and (target.family or major_minor == target.version):
        return version
    return f"{version} (not the target, {target.label})"


def _where(error: ParserError) -> str:
    return f"{error.message} [{error.operator} '{error.node}']" if error.node else error.message
