"""Linting many models: files and folders in, one result per model out, whatever happens to the others.

A model zoo is given as folders (searched recursively for `*.onnx`, hidden folders and symlinked folders
skipped) and files. With more than one model, each is linted in a child process of its own, `jobs` at a
time: a model that crashes a library, exhausts memory or fails to load costs its own result only, reported
as a `LintFailure` beside the others' findings. A single model is linted here, in this process, as before.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from graphdoctor.errors import GraphDoctorError, first_line
from graphdoctor.model import describe_foreign_file

__all__ = ["find_models", "lint_paths"]

_MODEL_SUFFIX = ".onnx"


def find_models(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files given, and the `*.onnx` files under the folders given, in order, each once. A path that
    does not exist stays in the list: linting it reports the error in its place."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and describe_foreign_file(path) is None:  # a SavedModel folder is one (wrong) model
            found.update(dict.fromkeys(_models_under(path)))
        else:
            found[path] = None
    return list(found)


def _models_under(folder: Path) -> Iterator[Path]:
    """`*.onnx` files below `folder`, sorted, not descending into hidden or symlinked folders (a link loop
    must not hang the gate)."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not Path(root, d).is_symlink())
        for name in sorted(files):
            if name.endswith(_MODEL_SUFFIX) and not name.startswith("."):
                yield Path(root, name)


def lint_paths(paths: Iterable[str | os.PathLike[str]], lint: Callable[..., Any], jobs: int | None = None, **options):
    """`lint(path, **options)` for every model `find_models` finds, in order: a LintResult each, or a
    LintFailure for a model that could not be linted. Raises only when there is nothing to lint."""
    from graphdoctor.api import LintFailure

    models = find_models(paths)
    if not models:
        shown = ", ".join(str(p) for p in paths)
        raise GraphDoctorError(f"no ONNX model (*.onnx) found in {shown}")
    if len(models) == 1:
        return [lint(models[0], **options)]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(models)))
    return _run_in_children(models, lint, options, workers, LintFailure)


def _run_in_children(models: list[Path], lint, options: dict, workers: int, failure) -> list:
    """Each model in a child process of its own, `workers` at a time; results in the models' order."""
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    results: list = [None] * len(models)
    pending = list(enumerate(models))
    running: dict[Connection, tuple[int, Any]] = {}
    while pending or running:
        while pending and len(running) < workers:
            index, path = pending.pop(0)
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(target=_lint_one, args=(sender, lint, path, options), daemon=True)
            child.start()
            sender.close()
            running[receiver] = (index, child)
        for receiver in wait(list(running)):
            index, child = running.pop(receiver)
            results[index] = _receive(receiver, child, models[index], failure)
    return results


def _lint_one(sender: Connection, lint, path: Path, options: dict) -> None:
    """In the child: lint, and send back the result, or the failure, pickled."""
    from graphdoctor.api import LintFailure

    try:
        result = lint(path, **options)
        outcome = dataclasses.replace(result, findings=[dataclasses.replace(f, repair=None) for f in result.findings])
    except GraphDoctorError as error:
        outcome = LintFailure(path, str(error), error.exit_code)
    except Exception as error:  # a bug, reported in the model's place; the others go on
        outcome = LintFailure(path, f"internal error: {type(error).__name__}: {first_line(error)}")
    sender.send_bytes(pickle.dumps(outcome))
    sender.close()


def _receive(receiver: Connection, child, path: Path, failure):
    """The child's result; a child that died before sending one (a crash, the OOM killer) is its failure."""
    try:
        outcome = pickle.loads(receiver.recv_bytes())
    except (EOFError, OSError, pickle.UnpicklingError):
        child.join()
        code = child.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        outcome = failure(path, f"{path}: the process linting it {how} before reporting")
    finally:
        receiver.close()
    child.join()
    return outcome
