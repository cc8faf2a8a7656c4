"""`fix --fp16` over every ONNX node-test model: which outcomes, and no internal error.

    .venv/bin/python bench/fp16_node_tests.py                          # all 1,884 node tests, 2 workers
    .venv/bin/python bench/fp16_node_tests.py --pattern 'test_split*' --jobs 1 --timeout 60
    .venv/bin/python bench/fp16_node_tests.py --root DIR --details outcomes.json   # any folder of node tests

The node tests of the onnx package (one small graph per operator feature, with input_N.pb and the expected
output_N.pb) are valid models of every op, dtype and value kind (sequences, optionals, maps), so they show
where `graphdoctor.api.fix(model, output=..., fp16=Fp16Options())` raises what it should not. Wheels of
onnx >= 1.19 no longer ship the folders: they are then generated once, from the test cases the package does
ship, into .cache/onnx-node-tests/<onnx version>/ (about 30 s).

Each model runs in-process in a worker (a pool of `--jobs` long-lived processes; one past its deadline is
killed and replaced), on the test's own inputs when graphdoctor's loader takes them, else on generated ones.
Outcomes:
- written+verified: converted, the gate passed, the model written;
- nothing to convert: no node or tensor became FP16 (the verified copy was written);
- refused: a GraphDoctorError, one line (fine: grouped by its first words);
- verification failed: the gate compared numbers and they were off;
- verification error: a backend could not run one of the models (a verdict with status 'error');
- timeout, and INTERNAL ERROR: any other exception, the class to eliminate (traceback's last frames shown).
For each written model, the sanity column runs it on ONNX Runtime CPU with the test's inputs and compares
with the test's expected outputs at FP16-level tolerance (|d| <= 1e-2 + 1e-2·|expected|, integers, bools and
strings exact); a disagreement that the FP32 original shows too is ONNX Runtime's, counted apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "onnx-node-tests"
CLASSES = (
    "written+verified",
    "nothing to convert",
    "refused",
    "verification failed",
    "verification error",
    "timeout",
    "INTERNAL ERROR",
)
FRAMES = 4  # traceback frames shown for an internal error
FP16_ATOL = FP16_RTOL = 1e-2


@dataclass
class Outcome:
    name: str
    kind: str
    message: str = ""
    inputs: str = ""  # 'test data' or 'generated'
    sanity: str = ""  # 'agrees' | 'differs' | 'differs in the original too' | 'not checked: why'
    seconds: float = 0.0
    detail: list[str] = field(default_factory=list)


# --- the node-test folders ----------------------------------------------------------------------------------


def node_test_folder() -> Path:
    """The installed package's data/node, else the cached generated copy (generated on first use)."""
    import onnx
    import onnx.backend.test

    shipped = Path(onnx.backend.test.__file__).parent / "data" / "node"
    if shipped.is_dir() and any(shipped.iterdir()):
        return shipped
    cached = CACHE / onnx.__version__ / "node"
    if not (cached / ".complete").exists():
        generate_node_tests(cached)
    return cached


def generate_node_tests(folder: Path) -> None:
    """Write every node test case of the installed onnx as model.onnx + test_data_set_0/{input,output}_N.pb."""
    from onnx.backend.test.case import node

    print(f"generating the onnx node tests into {folder} ...", file=sys.stderr)
    if folder.exists():
        shutil.rmtree(folder)
    for case in node.collect_testcases():
        target = folder / case.name
        data = target / "test_data_set_0"
        data.mkdir(parents=True)
        (target / "model.onnx").write_bytes(case.model.SerializeToString())
        inputs, outputs = case.data_sets[0]
        _write_values(data, "input", inputs, case.model.graph.input)
        _write_values(data, "output", outputs, case.model.graph.output)
    (folder / ".complete").touch()


def _write_values(folder: Path, prefix: str, values, declared) -> None:
    for index, (value, info) in enumerate(zip(values, declared, strict=False)):
        (folder / f"{prefix}_{index}.pb").write_bytes(_to_proto(value, info).SerializeToString())


def _to_proto(value, info):
    """The proto the value's declared type calls for (a TensorProto, SequenceProto, OptionalProto or MapProto)."""
    from onnx import TensorProto, numpy_helper

    kind = info.type.WhichOneof("value")
    if kind == "sequence_type":
        return numpy_helper.from_list(value, info.name)
    if kind == "optional_type":
        return numpy_helper.from_optional(value, info.name)
    if kind == "map_type":
        return numpy_helper.from_dict(value, info.name)
    if isinstance(value, TensorProto):
        return value
    return numpy_helper.from_array(value, info.name)


def read_values(folder: Path, prefix: str, declared) -> list[Any]:
    """The test's values as ONNX Runtime takes and returns them: arrays, lists, dicts, or None."""
    from onnx import MapProto, OptionalProto, SequenceProto, TensorProto, numpy_helper

    protos = {"sequence_type": SequenceProto, "optional_type": OptionalProto, "map_type": MapProto}
    readers = {
        "sequence_type": numpy_helper.to_list,
        "optional_type": numpy_helper.to_optional,
        "map_type": numpy_helper.to_dict,
    }
    values = []
    for index, info in enumerate(declared):
        path = folder / f"{prefix}_{index}.pb"
        if not path.exists():
            break
        kind = info.type.WhichOneof("value")
        proto = protos.get(kind, TensorProto)()
        proto.ParseFromString(path.read_bytes())
        values.append(readers.get(kind, numpy_helper.to_array)(proto))
    return values


# --- one model ----------------------------------------------------------------------------------------------


def fix_one(folder: Path) -> Outcome:
    """Run fix --fp16 on one node test and classify what came of it."""
    from graphdoctor import api
    from graphdoctor.errors import GraphDoctorError
    from graphdoctor.fp16 import Fp16Options

    start = time.perf_counter()
    model, data = folder / "model.onnx", folder / "test_data_set_0"
    inputs = data if _loader_takes(model, data) else None
    outcome = Outcome(folder.name, "", inputs="test data" if inputs else "generated")
    with tempfile.TemporaryDirectory(prefix="gd-node-") as scratch:
        output = Path(scratch) / "model.fp16.onnx"
        try:
            result = api.fix(model, output=output, fp16=Fp16Options(), inputs=inputs)
            outcome.kind, outcome.message = _classify(result)
            if result.written:
                outcome.sanity = sanity_check(model, output, data)
        except GraphDoctorError as error:
            outcome.kind, outcome.message = "refused", str(error)
        except _Timeout:
            outcome.kind = "timeout"
        except Exception as error:  # the bug class this bench hunts: any exception that is not a refusal
            outcome.kind, outcome.message = "INTERNAL ERROR", f"{type(error).__name__}: {error}"
            outcome.detail = traceback.format_tb(error.__traceback__)[-FRAMES:]
    outcome.seconds = time.perf_counter() - start
    return outcome


def _loader_takes(model: Path, data: Path) -> bool:
    """Whether graphdoctor's input loader reads the test's input_N.pb files and binds them to the model."""
    from graphdoctor.errors import GraphDoctorError
    from graphdoctor.model import load_model
    from graphdoctor.verify.inputs import bind_inputs, load_inputs

    if not any(data.glob("input_*.pb")):
        return False
    try:
        bind_inputs(load_model(model).model, load_inputs(data))
    except GraphDoctorError:
        return False
    return True


def _classify(result) -> tuple[str, str]:
    verification = result.verification
    if verification is not None and not verification.passed:
        bad = [v for v in verification.verdicts if v.status not in ("passed", "skipped")]
        errors = [v for v in bad if v.status == "error"]
        kind = "verification error" if errors and len(errors) == len(bad) else "verification failed"
        return kind, "; ".join(f"{v.backend}: {v.status}: {v.reason}" for v in bad)
    report = result.fp16
    if report is None or report.already_fp16 or report.converted_nodes + report.tensors_converted == 0:
        return "nothing to convert", ""
    return "written+verified", ""


def sanity_check(original: Path, candidate: Path, data: Path) -> str:
    """The candidate against the test's expected outputs, on the test's inputs, at FP16-level tolerance."""
    import onnx

    graph = onnx.load_model(os.fspath(original), load_external_data=False).graph
    try:
        inputs = read_values(data, "input", graph.input)
        expected = read_values(data, "output", graph.output)
    except Exception as error:  # a proto our reader cannot turn into values: no sanity column for it
        return f"not checked: {type(error).__name__}"
    if len(inputs) != len(graph.input) or not expected:
        return "not checked: test data incomplete"
    feeds = {info.name: value for info, value in zip(graph.input, inputs, strict=True)}
    candidate_outputs = _ort_outputs(candidate, feeds)
    if isinstance(candidate_outputs, str):
        return f"not checked: {candidate_outputs}"
    if _agree(candidate_outputs, expected):
        return "agrees"
    original_outputs = _ort_outputs(original, feeds)
    if isinstance(original_outputs, str) or not _agree(original_outputs, expected):
        return "differs in the original too"
    return "differs"


def _ort_outputs(model: Path, feeds: dict[str, Any]) -> list[Any] | str:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(os.fspath(model), options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)
    except Exception as error:  # onnxruntime's own exception types
        return f"ONNX Runtime cannot run it ({type(error).__name__})"


def _agree(actual: list[Any], expected: list[Any]) -> bool:
    return len(actual) >= len(expected) and all(_value_agrees(a, e) for a, e in zip(actual, expected, strict=False))


def _value_agrees(actual: Any, expected: Any) -> bool:
    """Element-wise for sequences and maps; FP16-level tolerance for floats, exact for everything else."""
    import numpy as np

    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, dict):
        return isinstance(actual, dict) and actual.keys() == expected.keys()
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and _agree(actual, expected)
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return False
    if expected.dtype.kind == "f" and actual.dtype.kind == "f":
        return bool(np.allclose(actual.astype(np.float64), expected, atol=FP16_ATOL, rtol=FP16_RTOL, equal_nan=True))
    return bool(np.array_equal(actual, expected))


# --- the worker pool ----------------------------------------------------------------------------------------


class _Timeout(Exception):
    pass


def _raise_timeout(_signum, _frame) -> None:
    raise _Timeout


def _serve(connection: Connection, timeout: float) -> None:
    """A worker: models in, outcomes out. A soft alarm stops Python code past the deadline; the parent kills
    a worker stuck in native code."""
    import signal
    import warnings

    warnings.simplefilter("ignore")
    signal.signal(signal.SIGALRM, _raise_timeout)
    while True:
        folder = connection.recv()
        if folder is None:
            return
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            outcome = fix_one(Path(folder))
        except _Timeout:
            outcome = Outcome(Path(folder).name, "timeout")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        connection.send(outcome)


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    connection: Connection
    folder: Path | None = None
    started: float = 0.0


def run_all(folders: list[Path], jobs: int, timeout: float) -> Iterator[Outcome]:
    """Outcomes as they come, from `jobs` workers; a worker past twice the deadline is killed and replaced."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state inherited from the parent
    pending = list(reversed(folders))
    workers = [_start(context, timeout) for _ in range(min(jobs, len(folders)))]
    while any(w.folder is not None for w in workers) or pending:
        for index, worker in enumerate(workers):
            if worker.folder is None and pending:
                if not worker.process.is_alive():  # it died on its last model
                    worker = workers[index] = _start(context, timeout)
                worker.folder, worker.started = pending.pop(), time.monotonic()
                worker.connection.send(os.fspath(worker.folder))
        for ready in wait([w.connection for w in workers if w.folder is not None], timeout=1.0):
            worker = next(w for w in workers if w.connection is ready)
            yield _receive(worker)
        for index, worker in enumerate(workers):
            if worker.folder is not None and time.monotonic() - worker.started > 2 * timeout + 10:
                worker.process.kill()
                yield Outcome(worker.folder.name, "timeout", "killed in native code")
                workers[index] = _start(context, timeout)
    for worker in workers:
        worker.connection.send(None)
        worker.process.join(10)


def _start(context, timeout: float) -> _Worker:
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child, timeout), daemon=True)
    process.start()
    return _Worker(process, parent)


def _receive(worker: _Worker) -> Outcome:
    folder, worker.folder = worker.folder, None
    try:
        return worker.connection.recv()
    except EOFError:  # the worker died (a crash in native code)
        worker.process.join(1)
        name = folder.name if folder else "?"
        return Outcome(name, "INTERNAL ERROR", f"the worker died (exit code {worker.process.exitcode})")


# --- the report ---------------------------------------------------------------------------------------------


def first_words(message: str, count: int = 5) -> str:
    """A refusal's first words, with the model's path and quoted names taken out, to group alike ones."""
    text = re.sub(r"^\S*model\.onnx:\s*", "", message.splitlines()[0] if message else "")
    text = re.sub(r"'[^']*'", "'…'", text)
    return " ".join(text.split()[:count])


def render(outcomes: list[Outcome], seconds: float) -> str:
    counts = Counter(o.kind for o in outcomes)
    sanity = Counter(o.sanity.split(":")[0] for o in outcomes if o.sanity)
    lines = [
        f"fix --fp16 over {len(outcomes)} onnx node tests in {seconds:.0f} s",
        "",
        "| outcome | models |",
        "|---|---:|",
        *(f"| {kind} | {counts.get(kind, 0)} |" for kind in CLASSES),
        "",
        "sanity (written models on their test's inputs against its expected outputs, FP16-level tolerance):",
        *(f"  {what}: {count}" for what, count in sorted(sanity.items())),
        "",
        f"inputs: {Counter(o.inputs for o in outcomes if o.inputs)}",
    ]
    for kind in ("refused", "verification failed", "verification error"):
        groups = defaultdict(list)
        for outcome in (o for o in outcomes if o.kind == kind):
            groups[first_words(outcome.message)].append(outcome)
        if groups:
            lines += ["", f"{kind}, by first words:"]
            for words, members in sorted(groups.items(), key=lambda item: -len(item[1])):
                lines.append(f"  {len(members):4d}  {words} …  e.g. {members[0].name}: {members[0].message[:200]}")
    lines += ["", f"internal errors ({counts.get('INTERNAL ERROR', 0)}):"]
    for outcome in (o for o in outcomes if o.kind == "INTERNAL ERROR"):
        lines.append(f"- {outcome.name}: {outcome.message[:300]}")
        lines += [f"    {frame.rstrip()}" for frame in outcome.detail]
    timeouts = [o.name for o in outcomes if o.kind == "timeout"]
    if timeouts:
        lines += ["", f"timeouts: {', '.join(timeouts)}"]
    differs = [o.name for o in outcomes if o.sanity == "differs"]
    if differs:
        lines += ["", f"sanity 'differs' (the conversion's own): {', '.join(differs)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default="*", help="glob on the test's folder name (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model (default 120)")
    parser.add_argument("--root", type=Path, help="a folder of node tests (default: the installed onnx's)")
    parser.add_argument("--details", type=Path, help="write every outcome to this JSON file")
    args = parser.parse_args(argv)
    root = args.root or node_test_folder()
    folders = sorted(p for p in root.iterdir() if p.is_dir() and fnmatch.fnmatch(p.name, args.pattern))
    if not folders:
        print(f"no node test matches {args.pattern!r} in {root}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    outcomes = []
    for done, outcome in enumerate(run_all(folders, args.jobs, args.timeout), 1):
        outcomes.append(outcome)
        print(f"[{done}/{len(folders)}] {outcome.name}: {outcome.kind} {outcome.sanity}", file=sys.stderr)
    outcomes.sort(key=lambda o: o.name)
    print(render(outcomes, time.perf_counter() - start))
    if args.details:
        args.details.write_text(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=1))
    return 1 if any(o.kind == "INTERNAL ERROR" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
