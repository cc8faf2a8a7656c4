"""The fuzz runner: a fork server that runs the real CLI entry point (`graphdoctor.cli.main`) on every case
and checks graphdoctor's promises after each command.

Starting Python and importing onnx, onnxruntime and graphdoctor costs about a second; the runner imports
them once and forks a child per command. The child sets its limits (RLIMIT_AS, RLIMIT_FSIZE when the case
asks, no core files), an alarm, redirects fds 0/1/2, changes into the case folder, installs an audit hook
that records every Python-level `open`, and calls `main(argv)`. The parent collects stdout, stderr and the
audit record through pipes, delivers the case's signal on time, kills the child past its wall-time limit and
reads its peak RSS from `wait4`.

Invariants checked per command (the violation categories of the table):
    traceback       "Traceback (most recent call last)" on stderr
    internal-error  "internal error" on stderr (the CLI's catch-all for exceptions it did not expect)
    bad-exit        exit status outside {0, 1, 2} (killed by a signal included)
    stderr-lines    exit 2 without exactly one line on stderr
    input-modified  a file that existed before the case (model, data, links, bait outside the model's
                    folder) changed, vanished or was replaced
    leftover        a *.graphdoctor-tmp folder, a file `fix` wrote although it failed, or any file the
                    command was not asked to write
    read-outside    a Python-level open of a path outside the model's folder (and the output folders, the
                    files options name, the interpreter's own files, config files above the model). The hook
                    sees Python's open()/os.open() only: reads done natively by ONNX Runtime or onnx's C++
                    checker are not covered, so native escapes show only where Python also opens the file.
    unloadable      a model `fix` wrote that fails onnx.checker.check_model(path), does not build an ONNX
                    Runtime InferenceSession with its external data, or references data outside its folder
    over-memory     peak RSS (ru_maxrss) above 2 GB, or a MemoryError
    over-time       still running at the wall-time limit (30 s; 10 s where refusing takes no time)
    signal-ignored  SIGINT/SIGTERM delivered at least a second before the command ended, yet it exited 0/1
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import resource
import selectors
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.fuzz.cases import Case, Command, generate, materialize

__all__ = ["CATEGORIES", "CaseResult", "run_case", "run_cases", "warm_up"]

REPO = Path(__file__).resolve().parents[2]
ADDRESS_SPACE = 4 * 2**30
RSS_LIMIT_KB = 2 * 10**9 // 1024  # "peak RSS under 2 GB"
SIGNAL_GRACE = 1.0  # seconds between a delivered signal and an exit 0/1 that count as ignoring it
OUTPUT_CAP = 256 * 1024  # bytes of stdout/stderr kept per command
CATEGORIES = (
    "traceback",
    "internal-error",
    "bad-exit",
    "stderr-lines",
    "input-modified",
    "leftover",
    "read-outside",
    "unloadable",
    "over-memory",
    "over-time",
    "signal-ignored",
    "harness",  # the fuzzer itself failed on the case: a bug here, not in graphdoctor
)
CONFIG_NAMES = {"pyproject.toml", ".graphdoctor.toml", "setup.cfg"}
WRITING_FOLDERS = ("m", "out", "out16")  # where a case's model and outputs live: reading there is fine


def warm_up() -> None:
    """Import everything a command may import, once, in the parent: each forked child then starts at once,
    no child writes bytecode (RLIMIT_FSIZE would kill it), and a run keeps one version of graphdoctor's code
    even while the checkout changes under it (a module imported lazily in a child would be read afresh)."""
    import importlib
    import pkgutil

    import graphdoctor.rules
    import onnx.checker
    import onnx.reference  # noqa: F401
    import onnxruntime  # noqa: F401
    import sympy  # noqa: F401

    import graphdoctor
    from graphdoctor.rule import load_rules

    for package in (graphdoctor, graphdoctor.rules):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if module.name.endswith("__main__"):  # running it is the CLI itself
                continue
            with contextlib.suppress(Exception):  # optional backends (torch, TensorRT) may be missing
                importlib.import_module(module.name)
    load_rules()


# --- one forked command -----------------------------------------------------------------------------------


@dataclass
class Spawned:
    code: int | None  # exit code, or None when killed by a signal
    killed_by: int | None
    seconds: float
    rss_kb: int
    stdout: str
    stderr: str
    opened: list[tuple[str, str]]  # (resolved path, mode) of every Python-level open
    timed_out: bool
    signal_sent_at: float | None  # seconds after start


def _audit_hook(record: set[tuple[str, str]]) -> Callable[[str, tuple], None]:
    def hook(event: str, args: tuple) -> None:
        if event != "open" or len(record) > 10_000:
            return
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        try:
            resolved = os.path.realpath(os.fsdecode(path))
        except (ValueError, OSError, TypeError):  # a NUL byte: the open itself fails
            return
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else f"flags={args[2] if len(args) > 2 else 0}"
        record.add((resolved, mode))

    return hook


def _child(target: Callable[[], int], cwd: Path, fsize: int | None, time_limit: float, pipes) -> None:
    """In the forked child: limits, fds, audit hook, then `target`; never returns."""
    out_w, err_w, report_w = pipes
    code = 70
    try:
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.chdir(cwd)
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.alarm(int(time_limit) + 5)  # the parent kills it at the limit; this is the backstop
        sys.dont_write_bytecode = True
        # fresh streams on fds 1 and 2 (under pytest, sys.stdout is its capture, not fd 1) and no inherited
        # logging handlers: the CLI configures its own, as in a fresh interpreter
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        logging.root.handlers.clear()
        for name in ("GRAPHDOCTOR_DEBUG", "FORCE_COLOR"):
            os.environ.pop(name, None)
        os.environ["NO_COLOR"] = "1"
        opened: set[tuple[str, str]] = set()
        sys.addaudithook(_audit_hook(opened))
        try:
            code = target()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # what the interpreter would do: print the traceback, exit 1
            traceback.print_exc()
            code = 1
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(Exception):
            os.write(report_w, json.dumps(sorted(opened)).encode())
    finally:
        os._exit(code)


def spawn(
    target: Callable[[], int],
    cwd: Path,
    *,
    time_limit: float = 30.0,
    fsize: int | None = None,
    signal_at: tuple[int, float] | None = None,
) -> Spawned:
    """Run `target` in a forked child (see the module docstring) and collect what it did."""
    pipes = [os.pipe() for _ in range(3)]
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        for read_end, _ in pipes:
            os.close(read_end)
        _child(target, cwd, fsize, time_limit, [w for _, w in pipes])
    for _, write_end in pipes:
        os.close(write_end)
    buffers = {read_end: bytearray() for read_end, _ in pipes}
    selector = selectors.DefaultSelector()
    for read_end in buffers:
        selector.register(read_end, selectors.EVENT_READ)
    timed_out = False
    sent_at = None
    while selector.get_map():
        elapsed = time.perf_counter() - start
        if signal_at is not None and sent_at is None and elapsed >= signal_at[1]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_at[0])
            sent_at = elapsed
        if elapsed > time_limit and not timed_out:
            timed_out = True
            for kill in (os.killpg, os.kill):  # the group, and the child if it had not made it yet
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
        wait = 0.05 if signal_at is not None and sent_at is None else 0.25
        for key, _ in selector.select(timeout=wait):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fd)
                os.close(key.fd)
            elif len(buffers[key.fd]) < OUTPUT_CAP * 4:
                buffers[key.fd] += chunk
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    out, err, report = (bytes(buffers[read_end]) for read_end, _ in pipes)
    try:
        opened = [tuple(item) for item in json.loads(report)] if report else []
    except ValueError:
        opened = []
    return Spawned(
        code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        killed_by=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        seconds=seconds,
        rss_kb=usage.ru_maxrss,
        stdout=_clip(out),
        stderr=_clip(err),
        opened=opened,
        timed_out=timed_out,
        signal_sent_at=sent_at,
    )


def _clip(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= OUTPUT_CAP else text[: OUTPUT_CAP // 2] + "\n[...]\n" + text[-OUTPUT_CAP // 2 :]


def _cli(argv: list[str]) -> Callable[[], int]:
    def target() -> int:
        from graphdoctor.cli import main

        main(argv)  # exits through sys.exit
        return 0

    return target


def _check_written(path: str) -> Callable[[], int]:
    """In a child: the written model passes the checker, references data only inside its folder, and builds
    an ONNX Runtime session with its external data."""

    def target() -> int:
        import onnx
        import onnx.checker
        import onnxruntime as ort

        try:
            onnx.checker.check_model(path)
            _check_references(Path(path))
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # reported, not raised: this is the verdict
            print(
                f"{type(error).__name__}: {str(error).strip().splitlines()[0][:400] if str(error) else ''}",
                file=sys.stderr,
            )
            return 1
        return 0

    return target


def _check_references(path: Path) -> None:
    import onnx

    from tests.fuzz.mutate import all_tensors

    model = onnx.load_model(os.fspath(path), load_external_data=False)
    folder = path.resolve().parent
    for tensor in all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        target = (folder / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(folder) or not target.is_file():
            raise ValueError(f"tensor '{tensor.name}' references '{location}', not a file in {folder}")
        end = int(entries.get("offset", 0) or 0) + int(entries.get("length", 0) or 0)
        if end > target.stat().st_size:
            raise ValueError(f"tensor '{tensor.name}' needs {end} bytes of '{location}' ({target.stat().st_size})")


# --- one case ---------------------------------------------------------------------------------------------


@dataclass
class CommandResult:
    argv: list[str]
    exit: int | None
    killed_by: int | None
    seconds: float
    rss_mb: float
    stderr: str
    violations: list[tuple[str, str]] = field(default_factory=list)  # (category, detail)


@dataclass
class CaseResult:
    id: str
    family: str
    description: str
    commands: list[CommandResult]
    saved: str | None = None  # the pristine case folder, kept for replay when something failed

    @property
    def violations(self) -> list[tuple[str, str]]:
        return [v for command in self.commands for v in command.violations]

    def to_json(self) -> dict:
        return asdict(self)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` with what identifies its content (never opening FIFOs or following links)."""
    state: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if os.path.islink(path):
                state[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[rel] = ("dir",)
            elif os.path.isfile(path):
                digest = hashlib.sha256()
                with open(path, "rb") as file:
                    for block in iter(lambda f=file: f.read(1 << 20), b""):
                        digest.update(block)
                state[rel] = ("file", info.st_size, digest.hexdigest(), info.st_ino)
            else:
                state[rel] = ("special", info.st_mode)
    return state


def _system_roots() -> list[str]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, tempfile.gettempdir()}
    roots |= {p for p in map(os.path.realpath, sys.path) if p and p != str(REPO) and os.path.isdir(p)}
    roots |= {
        str(REPO / name) for name in ("graphdoctor", "rules", "tests", "fixtures", ".venv", "graphdoctor.egg-info")
    }
    roots |= {"/usr", "/lib", "/lib64", "/etc", "/proc", "/sys", "/dev/shm", "/opt"}
    return sorted(os.path.realpath(root) for root in roots)


_SYSTEM_FILES = {"/dev/null", "/dev/urandom", "/dev/random", "/dev/tty"}


def _outside(path: str, root: Path, explicit: set[str], system: list[str]) -> bool:
    """Whether a recorded open escapes what the command may read (see the module docstring). A file an
    option names may be opened, and so may a temporary beside it that carries its name (atomic writes)."""
    real_root = os.path.realpath(root)
    folder, name = os.path.split(path)
    if path in explicit or any(folder == os.path.dirname(e) and os.path.basename(e) in name for e in explicit):
        return False
    if path == real_root or path.startswith(real_root + os.sep):
        rel = os.path.relpath(path, real_root)
        return rel.split(os.sep)[0] not in WRITING_FOLDERS
    if path in _SYSTEM_FILES or any(path == r or path.startswith(r + os.sep) for r in system):
        return False
    return not (name in CONFIG_NAMES and (real_root + os.sep).startswith(folder.rstrip(os.sep) + os.sep))


def _check_command(
    command: Command, spawned: Spawned, before: dict, after: dict, pristine: dict, root: Path, explicit: set[str]
) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    code, err = spawned.code, spawned.stderr
    if spawned.timed_out:
        found.append(("over-time", f"killed after {command.time_limit:.0f} s"))
    elif code not in (0, 1, 2):
        how = f"killed by {signal.Signals(spawned.killed_by).name}" if spawned.killed_by else f"exit {code}"
        found.append(("bad-exit", how))
    if "Traceback (most recent call last)" in err:
        found.append(("traceback", _last_line(err)))
    if "internal error" in err.lower():
        found.append(("internal-error", _first_match(err, "internal error")))
    if "MemoryError" in err or spawned.rss_kb > RSS_LIMIT_KB:
        found.append(("over-memory", f"peak RSS {spawned.rss_kb / 1024:.0f} MiB; {_first_match(err, 'Memory')}"))
    if code == 2 and len([line for line in err.splitlines() if line.strip()]) != 1:
        found.append(("stderr-lines", f"{len(err.splitlines())} lines: {err.strip()[:300]!r}"))
    sent = spawned.signal_sent_at
    if sent is not None and code in (0, 1) and spawned.seconds - sent >= SIGNAL_GRACE:
        found.append(
            ("signal-ignored", f"signal at {spawned.signal_sent_at:.2f} s, exit {code} at {spawned.seconds:.2f} s")
        )
    asked = set(command.extra_outputs) if code == 0 else set()  # --save-inputs may replace the file it names
    for path, state in pristine.items():
        if after.get(path) != state and (path not in asked or path.startswith("m" + os.sep)):
            now = after.get(path)
            found.append(("input-modified", f"{path}: {_describe(state)} -> {_describe(now)}"))
    allowed = set()
    if code == 0 and command.output:
        allowed = {command.output, command.output + ".data"}
    if code == 0:
        allowed |= set(command.extra_outputs)
    for path in sorted(set(after) - set(before)):
        if path.endswith(".graphdoctor-tmp") or ".graphdoctor-tmp" + os.sep in path:
            found.append(("leftover", f"{path} (staging folder)"))
        elif path not in allowed and os.path.normpath(path) not in {os.path.normpath(a) for a in allowed}:
            found.append(("leftover", f"{path} written by a command that exited {code}"))
    system = _system_roots()
    outside = sorted({p for p, _ in spawned.opened if _outside(p, root, explicit, system)})
    if outside:
        found.append(("read-outside", ", ".join(outside[:3]) + (f" (+{len(outside) - 3})" if len(outside) > 3 else "")))
    return found


def _describe(state: tuple | None) -> str:
    if state is None:
        return "gone"
    return f"{state[0]} {state[1] if len(state) > 1 else ''}".strip()


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _first_match(text: str, needle: str) -> str:
    return next((line.strip()[:300] for line in text.splitlines() if needle.lower() in line.lower()), "")


def run_case(case: Case, root: Path, keep: Path | None = None) -> CaseResult:
    """Materialize `case` in `root` (which must not exist), run its commands, check every invariant;
    when something failed and `keep` is given, save a pristine copy of the case there for replay."""
    materialize(case, root)
    pristine = _snapshot(root)
    explicit = {os.path.realpath(root / path) for path in case.explicit}
    explicit |= {os.path.realpath(root / path) + ".npz" for path in case.explicit}
    results = []
    for command in case.commands:
        argv = list(command.argv)
        if command.candidate is not None and (root / command.candidate).is_file():
            argv.append(command.candidate)
        before = _snapshot(root)
        spawned = spawn(_cli(argv), root, time_limit=command.time_limit, fsize=command.fsize, signal_at=command.signal)
        after = _snapshot(root)
        violations = _check_command(command, spawned, before, after, pristine, root, explicit)
        if command.output and spawned.code == 0 and after.get(command.output) not in (None, before.get(command.output)):
            check = spawn(_check_written(os.fspath(root / command.output)), root)
            if check.code != 0:
                violations.append(("unloadable", f"{command.output}: {_last_line(check.stderr) or check.killed_by}"))
        results.append(
            CommandResult(
                argv,
                spawned.code,
                spawned.killed_by,
                round(spawned.seconds, 3),
                round(spawned.rss_kb / 1024, 1),
                spawned.stderr[-2000:],
                violations,
            )
        )
    result = CaseResult(case.id, case.family, case.description, results)
    if result.violations and keep is not None:
        shutil.rmtree(keep, ignore_errors=True)
        keep.parent.mkdir(parents=True, exist_ok=True)
        materialize(case, keep)
        result.saved = os.fspath(keep)
    return result


# --- many cases, two workers ------------------------------------------------------------------------------


def run_cases(
    seed: int,
    indices: list[int],
    work: Path,
    keep: Path,
    workers: int = 2,
    on_result: Callable[[CaseResult, int, int], None] | None = None,
) -> list[CaseResult]:
    """Run cases `indices` of run `seed` in `workers` forked workers (each a fork server of its own);
    return their results in index order, calling `on_result(result, done, total)` as each arrives. Case
    folders live under `work` while they run; failing cases are saved under `keep/<case id>`."""
    warm_up()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    readers = {}
    for worker in range(min(workers, max(len(indices), 1))):
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _worker(seed, indices[worker::workers], work, keep, write_end)
        os.close(write_end)
        readers[read_end] = pid
    results: dict[str, CaseResult] = {}
    buffers = {fd: b"" for fd in readers}
    selector = selectors.DefaultSelector()
    for fd in readers:
        selector.register(fd, selectors.EVENT_READ)
    while selector.get_map():
        for key, _ in selector.select():
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                selector.unregister(key.fd)
                os.close(key.fd)
                continue
            buffers[key.fd] += chunk
            *lines, buffers[key.fd] = buffers[key.fd].split(b"\n")
            for line in lines:
                result = _result_from_json(json.loads(line))
                results[result.id] = result
                if on_result is not None:
                    on_result(result, len(results), len(indices))
    for pid in readers.values():
        os.waitpid(pid, 0)
    shutil.rmtree(work, ignore_errors=True)
    return [results[f"{seed}-{index}"] for index in indices if f"{seed}-{index}" in results]


def _worker(seed: int, indices: list[int], work: Path, keep: Path, out_fd: int) -> None:
    code = 0
    try:
        with os.fdopen(out_fd, "w", buffering=1) as out:
            for index in indices:
                result = _run_one(seed, index, work, keep)
                out.write(json.dumps(result.to_json()) + "\n")
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _run_one(seed: int, index: int, work: Path, keep: Path) -> CaseResult:
    case_id = f"{seed}-{index}"
    root = work / case_id
    try:
        case = generate(seed, index)
        result = run_case(case, root, keep / case_id)
    except Exception as error:  # a harness bug must show, not stop the run
        failure = CommandResult([], None, None, 0.0, 0.0, traceback.format_exc()[-2000:], [("harness", repr(error))])
        result = CaseResult(case_id, "harness", "the harness failed on this case", [failure])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _result_from_json(data: dict) -> CaseResult:
    commands = [CommandResult(**{**c, "violations": [tuple(v) for v in c["violations"]]}) for c in data["commands"]]
    return CaseResult(data["id"], data["family"], data["description"], commands, data.get("saved"))
