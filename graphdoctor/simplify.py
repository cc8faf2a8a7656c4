"""Run a graph simplifier (onnxsim, onnxslim) on a model file in a child process, under a time and a memory cap.

Why a child process: `import onnxsim` pulls in torch (seconds and ~0.7 GB before any work), and both tools are
known to segfault in shape inference, abort in C++, or run for hours on LLM-size graphs (research/simplifiers.md
§5, items 10-11). In a child, a crash, a hang or an allocation failure becomes a `SimplifierRun` with a status
instead of taking `graphdoctor lint` down, and the lint process never imports either tool.

Each tool runs the way users run it, with its defaults: `onnxsim.simplify(model, output_path=...)` (the API
behind `onnxsim in.onnx out.onnx`) and `onnxslim.slim(model, output)` (`onnxslim in.onnx out.onnx`, and what
`yolo export simplify=True` calls). Both write external data themselves when the result is too big for one file.

The child: `python -m graphdoctor.simplify TOOL MODEL OUTPUT [--memory-bytes N]`. It caps its own address space
(RLIMIT_AS) before importing the tool, so an allocation beyond the cap fails inside the child, not the machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_TIMEOUT",
    "SIMPLIFIERS",
    "SimplifierRun",
    "installed_simplifiers",
    "run_simplifier",
    "simplifier_version",
]

SIMPLIFIERS = ("onnxsim", "onnxslim")
DEFAULT_TIMEOUT = 300.0  # seconds of wall time per simplifier
DEFAULT_MEMORY_BYTES = 8 * 1024**3  # address space of the child; onnxsim alone maps ~3.6 GB for ResNet-50
OUTPUT_NAME = "simplified.onnx"
_OUT_OF_MEMORY_EXIT = 3  # the child's exit status when the tool ran out of (capped) memory
# how allocation failures read: Python, C++ (pybind11 turns bad_alloc into MemoryError), glibc, OpenBLAS
_OOM_MARKERS = (
    "memoryerror",
    "bad_alloc",
    "cannot allocate memory",
    "out of memory",
    "memory allocation",
    "failed to map segment",
)
_TAIL_LINES = 20


@dataclass(frozen=True)
class SimplifierRun:
    """What one simplifier did with one model: where its result is, or why there is none."""

    tool: str
    version: str
    status: str  # 'ok' | 'failed' | 'timeout' | 'out-of-memory' | 'crashed'
    output: Path | None  # the simplified model (external data beside it), when status is 'ok'
    seconds: float
    detail: str = ""  # why it failed, in one line

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        """'onnxsim 0.8.1': findings name the exact version, since what a simplifier does changes with it."""
        return f"{self.tool} {self.version}"


def installed_simplifiers(names: Sequence[str] = SIMPLIFIERS) -> list[str]:
    """The simplifiers among `names` that can be imported here, found without importing them (onnxsim pulls torch)."""
    return [name for name in names if importlib.util.find_spec(name) is not None]


def simplifier_version(tool: str) -> str:
    try:
        return importlib.metadata.version(tool)
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


def run_simplifier(
    tool: str,
    model: Path,
    out_dir: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> SimplifierRun:
    """Simplify `model` with `tool` in a child process writing into `out_dir`; never raises for the tool's faults."""
    if tool not in SIMPLIFIERS:
        raise ValueError(f"unknown simplifier '{tool}' (known: {', '.join(SIMPLIFIERS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / OUTPUT_NAME
    command = [
        sys.executable, "-m", "graphdoctor.simplify", tool, os.fspath(model.resolve()), os.fspath(output),
        "--memory-bytes", str(memory_bytes),
    ]  # fmt: skip
    version = simplifier_version(tool)
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=out_dir,  # onnxslim resolves its external-data file name against the working directory
        env=_child_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group, so a timeout kills anything it started too
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        detail = f"no result after {timeout:g} s (the time cap; raise the rule's `timeout` option)"
        return SimplifierRun(tool, version, "timeout", None, time.perf_counter() - start, detail)
    seconds = time.perf_counter() - start
    if process.returncode == 0 and output.exists():
        return SimplifierRun(tool, version, "ok", output, seconds)
    status, detail = _failure(process.returncode, stderr, memory_bytes, output)
    return SimplifierRun(tool, version, status, None, seconds, detail)


def _child_environment() -> dict[str, str]:
    """The parent's environment, with this graphdoctor importable even when it is not installed."""
    env = dict(os.environ)
    root = os.fspath(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.communicate()


def _failure(returncode: int, stderr: str, memory_bytes: int, output: Path) -> tuple[str, str]:
    """Status and one line of detail from how the child ended."""
    cap = f"{memory_bytes / 1024**3:g} GiB"
    tail = "\n".join(stderr.splitlines()[-_TAIL_LINES:]).lower()
    if returncode == _OUT_OF_MEMORY_EXIT or any(marker in tail for marker in _OOM_MARKERS):
        return "out-of-memory", f"ran out of memory under the {cap} cap (raise the rule's `memory_gib` option)"
    if returncode == -signal.SIGKILL:
        return "out-of-memory", "killed by SIGKILL, most likely by the kernel's out-of-memory killer"
    if returncode < 0:  # onnxsim 0.8.1 segfaults when an allocation fails under the cap, instead of raising
        hint = f" (an allocation refused by the {cap} memory cap can end this way: raise `memory_gib` to tell)"
        return "crashed", f"crashed with {_signal_name(-returncode)}{_last_line(stderr, ': ')}{hint}"
    if returncode == 0:
        return "failed", f"exited without writing {output.name}{_last_line(stderr, ': ')}"
    return "failed", _last_line(stderr) or f"exited with status {returncode}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(stderr: str, prefix: str = "") -> str:
    """The error line of a traceback (its last non-empty line), without the tool's log noise before it."""
    lines = [line.strip() for line in stderr.splitlines()[-_TAIL_LINES:] if line.strip()]
    return f"{prefix}{lines[-1][:300]}" if lines else ""


# --- the child ---------------------------------------------------------------------------------------------


def _limit_memory(nbytes: int) -> None:
    """Cap the address space, so an allocation past it raises MemoryError here instead of swapping the host."""
    try:
        import resource
    except ImportError:  # not on this platform (Windows): the time cap still applies
        return
    resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))


def _run_onnxsim(model: str, output: str) -> None:
    import inspect

    import onnxsim

    if "output_path" in inspect.signature(onnxsim.simplify).parameters:
        onnxsim.simplify(model, output_path=output)  # 0.8: streams to disk, external data past 100 MB
        return
    import onnx  # the classic 0.4.x API returns the model: save it

    simplified, _ = onnxsim.simplify(model)
    _save(onnx, simplified, output)


def _save(onnx, model, output: str) -> None:
    """Inline when it fits in one protobuf (2 GB), else with its weights in `<output>.data` beside it."""
    try:
        onnx.save_model(model, output)
    except ValueError:
        location = Path(output).name + ".data"
        onnx.save_model(model, output, save_as_external_data=True, all_tensors_to_one_file=True, location=location)


def _run_onnxslim(model: str, output: str) -> None:
    import onnxslim

    onnxslim.slim(model, output)


_TOOLS: dict[str, Callable[[str, str], None]] = {"onnxsim": _run_onnxsim, "onnxslim": _run_onnxslim}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphdoctor.simplify", description=__doc__)
    parser.add_argument("tool", choices=sorted(_TOOLS))
    parser.add_argument("model")
    parser.add_argument("output")
    parser.add_argument("--memory-bytes", type=int, default=DEFAULT_MEMORY_BYTES)
    args = parser.parse_args(argv)
    _limit_memory(args.memory_bytes)
    try:
        _TOOLS[args.tool](args.model, args.output)
    except MemoryError:
        print(f"MemoryError: {args.tool} ran out of memory", file=sys.stderr)
        return _OUT_OF_MEMORY_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
