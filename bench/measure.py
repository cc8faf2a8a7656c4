"""Run a command in a fresh process, N times, and collect wall time and peak RSS.

Every run is a new process because what users pay for a linter includes interpreter start-up and imports
(polygraphy imports torch when it is installed, graphdoctor imports onnx-ir): timing a function inside one
warm process would hide exactly the costs that differ most between the tools.

Peak RSS comes from GNU time's "Maximum resident set size" (`/usr/bin/time -v`), i.e. the kernel's
ru_maxrss of the measured process, so it needs no polling and misses no short spike. Wall time is taken
in this process around the child, at perf_counter resolution (GNU time prints only hundredths).

A run that fails, times out or hits the memory limit becomes a `Run` with a readable `reason`; it is never
an exception, because a peer failing on a model is a result worth reporting, not a bench crash.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "Limits",
    "Run",
    "Series",
    "inputs_command",
    "judge_target",
    "measure",
    "median_ratio",
    "run_once",
    "session_command",
    "session_judge",
]

GNU_TIME = "/usr/bin/time"
MIB = 1024 * 1024
TAIL_LINES = 40
FAILURE_LINES = (  # (pattern, which match): first lint error, last exception, last error-looking line
    (r"\[E\] LINT|\[!\]", 0),
    (r"^\w+(\.\w+)*(Error|Exception|Fail)\w*: ", -1),
    (r"Error|\[E\](?!.*FAILED \| Runtime)", -1),
)


@dataclass(frozen=True)
class Limits:
    """What one run may take: wall seconds, then address space (RLIMIT_AS), so a peer that would OOM the
    shared machine fails alone with MemoryError/bad_alloc instead."""

    timeout_s: float = 600.0
    address_space_bytes: int | None = 16 * 1024 * MIB


@dataclass
class Run:
    """One fresh-process run of a command."""

    wall_s: float
    peak_rss_mib: float | None
    returncode: int | None  # None: killed by us on timeout
    ok: bool
    reason: str = ""  # why it is not ok, one line
    cpu_s: float | None = None  # user + system: less sensitive than wall time to other load on the machine
    output_tail: list[str] = field(default_factory=list)


@dataclass
class Series:
    """The runs of one command and their medians."""

    command: list[str]
    runs: list[Run]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(run.ok for run in self.runs)

    @property
    def reason(self) -> str:
        return next((run.reason for run in self.runs if not run.ok), "")

    @property
    def counted(self) -> list[Run]:
        """The successful runs; when none succeeded, the failed ones (how long and how big until it failed)."""
        return [run for run in self.runs if run.ok] or self.runs

    @property
    def median_wall_s(self) -> float | None:
        return _median([run.wall_s for run in self.counted])

    @property
    def median_peak_rss_mib(self) -> float | None:
        return _median([run.peak_rss_mib for run in self.counted if run.peak_rss_mib is not None])

    @property
    def median_cpu_s(self) -> float | None:
        return _median([run.cpu_s for run in self.counted if run.cpu_s is not None])

    def to_json(self) -> dict:
        return {
            "command": self.command,
            "ok": self.ok,
            "reason": self.reason,
            "median_wall_s": self.median_wall_s,
            "median_peak_rss_mib": self.median_peak_rss_mib,
            "median_cpu_s": self.median_cpu_s,
            "runs": [asdict(run) for run in self.runs],
        }


Judge = Callable[[int, list[str]], str]
"""(returncode, output tail) -> "" when the run counts as ok, else a one-line reason."""


def measure(
    command: Sequence[str],
    runs: int,
    limits: Limits,
    judge: Judge | None = None,
    env: Mapping[str, str] | None = None,
    stop_on_failure: bool = True,
) -> Series:
    """Run `command` `runs` times, each in a fresh process.

    Stops at the first failure by default: failures here (OOM, timeout, an unsupported model) are
    deterministic, and repeating a 10-minute timeout three times teaches nothing.
    """
    series = Series(command=list(command), runs=[])
    for _ in range(runs):
        run = run_once(command, limits, judge or default_judge, env)
        series.runs.append(run)
        if not run.ok and stop_on_failure:
            break
    return series


def run_once(command: Sequence[str], limits: Limits, judge: Judge, env: Mapping[str, str] | None = None) -> Run:
    """One run under GNU time, in its own session so a timeout kills the whole process tree."""
    with tempfile.TemporaryDirectory(prefix="gd-bench-") as scratch:
        time_file = Path(scratch) / "time.txt"
        output_file = Path(scratch) / "output.txt"
        wrapped = [GNU_TIME, "-v", "-o", str(time_file), *command]
        with output_file.open("wb") as output:
            start = time.perf_counter()
            returncode = _run_with_limits(wrapped, output, limits, env)
            wall = time.perf_counter() - start
        tail = _tail(output_file)
        time_report = time_file.read_text(errors="replace") if time_file.exists() else ""
    peak, cpu = _peak_rss_mib(time_report), _cpu_seconds(time_report)
    if returncode is None:
        reason = f"timeout after {limits.timeout_s:.0f} s"
        return Run(wall, peak, None, False, reason, cpu_s=cpu, output_tail=tail)
    reason = _signal_reason(time_report) or judge(returncode, tail)
    return Run(wall, peak, returncode, not reason, reason, cpu_s=cpu, output_tail=tail)


def default_judge(returncode: int, tail: list[str]) -> str:
    """Exit 0 is ok; anything else fails, explained by the most telling line of the output."""
    if returncode == 0:
        return ""
    return f"exit {returncode}: {explain_failure(tail)}"


def explain_failure(tail: list[str]) -> str:
    """Pick the line that says why, most telling first: running out of memory; a linter's own error entry
    (polygraphy's `[E] LINT`, `[!]`); the exception a traceback ends with; any error line; the last line."""
    memory = [line for line in tail if re.search(r"MemoryError|bad_alloc|[Oo]ut of memory|Cannot allocate", line)]
    if memory:
        return shorten(f"out of memory ({memory[-1]})")
    for pattern, pick in FAILURE_LINES:
        matches = [line for line in tail if re.search(pattern, line)]
        if matches:
            return shorten(matches[pick])
    return shorten(tail[-1] if tail else "no output")


def _run_with_limits(command: list[str], output, limits: Limits, env: Mapping[str, str] | None) -> int | None:
    """Return the exit status, or None when the wall-clock limit killed the process group."""
    process = subprocess.Popen(
        command,
        stdout=output,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        preexec_fn=_limit_address_space(limits.address_space_bytes),
    )
    try:
        return process.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def _limit_address_space(limit: int | None) -> Callable[[], None] | None:
    """RLIMIT_AS in the child (inherited by GNU time's child): over-allocation raises, the machine lives."""
    if limit is None:
        return None

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _peak_rss_mib(time_report: str) -> float | None:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_report)
    return int(match.group(1)) / 1024 if match else None


def _cpu_seconds(time_report: str) -> float | None:
    times = re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", time_report)
    return sum(float(value) for value in times) if len(times) == 2 else None


def _signal_reason(time_report: str) -> str:
    """GNU time notes a child killed by a signal; SIGKILL without our timeout means the OOM killer."""
    match = re.search(r"Command terminated by signal (\d+)", time_report)
    if not match:
        return ""
    number = int(match.group(1))
    name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
    hint = " (out of memory?)" if number == signal.SIGKILL else ""
    return f"killed by {name}{hint}"


def _tail(path: Path) -> list[str]:
    """The last lines of a run's output, stripped of blank lines (enough to explain a failure)."""
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - 64 * 1024))
        text = file.read().decode(errors="replace")
    return [line.rstrip() for line in text.splitlines() if line.strip()][-TAIL_LINES:]


def shorten(text: str, width: int = 160) -> str:
    """One line, safe inside a markdown table, at most `width` characters."""
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- the floor: one plain ONNX Runtime session and one run --------------------------------------------------

# What any check of a model pays at least: a fresh interpreter imports onnxruntime, creates one CPU session
# with default options and runs it once. A program of its own, run with `python -c`, so that the floor
# imports nothing more (this module's imports cost ~60 ms and ~4.5 MiB, a few percent of a small model's
# floor). It also checks that a converted model loads as deployed: on an old ONNX Runtime, whose venv has
# only numpy and onnxruntime, and optionally at a lower graph optimization level (e.g. ORT_ENABLE_EXTENDED).
# Prints one JSON line: loads, runs, and whether every float output is finite; or the error.
SESSION_SCRIPT = """\
import json, sys
import numpy as np
import onnxruntime

def answer(**fields):
    print(json.dumps(fields))
    sys.exit(0)

def first_line(error):
    text = " ".join(str(error).split()).replace("|", "/")
    return text[:199] + "…" if len(text) > 200 else text

model, inputs, level = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
options = onnxruntime.SessionOptions()
if level:
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
try:
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
except Exception as error:
    answer(loads=False, runs=False, error="load: " + first_line(error))
saved = np.load(inputs)
dtypes = {"tensor(float16)": np.float16, "tensor(float)": np.float32}
feeds = {i.name: saved[i.name].astype(dtypes.get(i.type, saved[i.name].dtype)) for i in session.get_inputs()}
try:
    outputs = session.run(None, feeds)
except Exception as error:
    answer(loads=True, runs=False, error="run: " + first_line(error))
floats = [o for o in outputs if np.issubdtype(np.asarray(o).dtype, np.floating)]
answer(loads=True, runs=True, finite=bool(all(np.isfinite(o).all() for o in floats)))
"""


def session_command(python: Path | str, model: Path, inputs: Path, level: str = "") -> list[str]:
    """The floor (or a load check) of `model` on `inputs` (.npz, as `inputs_command` writes them)."""
    return [str(python), "-c", SESSION_SCRIPT, str(model), str(inputs), *([level] if level else [])]


def session_judge(returncode: int, tail: list[str]) -> str:
    """A floor run counts only when the session loaded and ran: the script answers 0 either way."""
    answer = last_json(tail)
    if returncode != 0 or answer is None:
        return default_judge(returncode, tail) or "no answer from the session script"
    return "" if answer.get("runs") else answer.get("error", "did not run")


def last_json(tail: list[str]) -> dict | None:
    """A child's answer: the last line of its output that is a JSON object."""
    for line in reversed(tail):
        if line.startswith("{"):
            return json.loads(line)
    return None


def inputs_command(model: Path, target: Path, shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """Writes graphdoctor's seeded inputs for `model` (seed 0, what `graphdoctor verify --shape` generates) to
    `target` (.npz), in a child of this venv: the inputs the floor runs on are graphdoctor's own."""
    return [sys.executable, __file__, "inputs", str(model), str(target), json.dumps(dict(shapes))]


def write_inputs(model: str, target: str, shapes: str) -> int:
    """The child of `inputs_command`; prints one JSON line: the file written, or the error."""
    from graphdoctor.errors import GraphDoctorError
    from graphdoctor.model import load_model
    from graphdoctor.verify.inputs import generate_inputs, save_inputs

    dims = {name: tuple(value) for name, value in json.loads(shapes).items()}
    try:
        save_inputs(generate_inputs(load_model(model).model, seed=0, shapes=dims), target)
    except GraphDoctorError as error:
        print(json.dumps({"error": shorten(str(error), 200)}))
        return 0
    print(json.dumps({"inputs": target}))
    return 0


# --- ratios and the issues' targets on them ------------------------------------------------------------------


def median_ratio(series: Series | None, base: Series | None, metric: str) -> float | None:
    """`series`' median `metric` ("wall_s", "peak_rss_mib", "cpu_s") over `base`'s; None unless both ran
    every run successfully (a failed run's numbers stop where it failed: no target is judged on them)."""
    if series is None or base is None or not series.ok or not base.ok:
        return None
    value, reference = getattr(series, f"median_{metric}"), getattr(base, f"median_{metric}")
    return value / reference if value is not None and reference else None


def judge_target(ratio: float | None, limit: float) -> str:
    """'met' when the ratio is at most `limit`, 'not met' above it, 'not measured' without a ratio."""
    if ratio is None:
        return "not measured"
    return "met" if ratio <= limit else "not met"


def format_target(ratio: float | None, limit: float) -> str:
    """'3.12× (≤ 4×: met)': two decimals, so that a ratio just over its limit does not read as on it."""
    shown = "—" if ratio is None else f"{ratio:.2f}×"
    return f"{shown} (≤ {limit:g}×: {judge_target(ratio, limit)})"


# --- shared by the bench scripts: environment, formatting ---

# the packages whose versions every bench table states
PACKAGES = ("graphdoctor", "polygraphy", "onnx", "onnxruntime", "onnx-ir", "onnx-graphsurgeon", "torch", "numpy")


def hidden_torch_env() -> dict[str, str]:
    """PYTHONPATH with a `torch` that fails to import: polygraphy then skips its torch import (~3.5 s,
    ~0.9 GB per call, measured in research/polygraphy.md), as on a machine without torch."""
    stub = Path(tempfile.gettempdir()) / "gd-bench-notorch"
    (stub / "torch").mkdir(parents=True, exist_ok=True)
    (stub / "torch" / "__init__.py").write_text('raise ImportError("torch hidden by bench/lint.py")\n')
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(stub), os.environ.get("PYTHONPATH")]))}


def render_environment(environment: dict) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in environment["versions"].items())
    return (
        f"Measured {environment['started']} on {environment['cpu']} ({environment['cpus']} CPUs visible, "
        f"load average {environment['load_before']} before, {environment['load_after']} after), "
        f"Python {environment['python']}; {versions}. Each cell: median over fresh processes "
        f"(`/usr/bin/time -v` max RSS); limits per run: {environment['timeout_s']:.0f} s, "
        f"{environment['address_space_gib']:.0f} GiB address space."
    )


def describe_environment(started: datetime.datetime, load_before: str, limits: Limits) -> dict:
    """What the numbers depend on: the machine, how busy it was, and every package version involved."""
    return {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_average(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in PACKAGES},
        "timeout_s": limits.timeout_s,
        "address_space_gib": (limits.address_space_bytes or 0) / 1024 / MIB,
        "argv": sys.argv,
    }


def format_size(size: int | None) -> str:
    if size is None:
        return "—"
    return f"{size / 1024**3:.2f} GiB" if size >= 1024**3 else f"{size / MIB:.1f} MiB"


def format_number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# --- what every benchmark script shares ---------------------------------------------------------------------


def reporter(bench: str) -> Callable[[str], None]:
    """Progress lines on stderr, named after the benchmark (stdout carries the table)."""

    def progress(message: str) -> None:
        print(f"bench/{bench}: {message}", file=sys.stderr, flush=True)

    return progress


def write_raw(out: Path, bench: str, raw: Mapping) -> None:
    """OUT/BENCH.json beside OUT/BENCH.md: every run and every judgement, for what the table leaves out."""
    (out / f"{bench}.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    reporter(bench)(f"wrote {out / f'{bench}.md'} and {out / f'{bench}.json'}")


def main(argv: list[str]) -> int:
    """`python bench/measure.py inputs MODEL TARGET SHAPES_JSON`: the child of `inputs_command`."""
    if len(argv) != 4 or argv[0] != "inputs":
        print("usage: python bench/measure.py inputs MODEL TARGET.npz SHAPES_JSON", file=sys.stderr)
        return 2
    return write_inputs(*argv[1:])


def run_bench(bench: str, main: Callable[[], int]) -> None:
    """A benchmark's entry point: without GNU time there is no peak RSS, so it stops with one line."""
    if shutil.which(GNU_TIME) is None:
        sys.exit(f"bench/{bench}: needs GNU time at {GNU_TIME} (apt-get install time)")
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
