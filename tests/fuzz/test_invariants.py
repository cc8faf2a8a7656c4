"""The fuzzer's checks have teeth: a command that breaks a promise on purpose is caught by each invariant
(a fuzzer whose checks never fire would report zero violations for any product)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.fuzz import runner
from tests.fuzz.cases import MODEL, Case, Command, materialize


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "case"
    materialize(Case("t-0", "test", "", files={MODEL: b"model", "m/weights.bin": b"data"}), folder)
    return folder


def _violations(root: Path, target, command: Command | None = None, **spawn_options) -> set[str]:
    command = command or Command(["fix", MODEL, "-o", "out/fixed.onnx"], output="out/fixed.onnx")
    before = runner._snapshot(root)
    spawned = runner.spawn(target, root, **spawn_options)
    after = runner._snapshot(root)
    found = runner._check_command(command, spawned, before, after, before, root, set())
    return {category for category, _ in found}


def _exit_with(code: int, err: str = "") -> int:
    if err:
        print(err, file=sys.stderr)
    return code


def test_a_clean_command_breaks_nothing(root: Path) -> None:
    assert _violations(root, lambda: _exit_with(2, "graphdoctor: error: refused")) == set()


def test_tracebacks_internal_errors_and_several_lines(root: Path) -> None:
    def crash() -> int:
        raise RuntimeError("boom")

    assert {"traceback", "stderr-lines"} <= _violations(root, crash) | _violations(
        root, lambda: _exit_with(2, "one\ntwo")
    )
    assert "internal-error" in _violations(root, lambda: _exit_with(2, "graphdoctor: error: internal error: X"))


def test_reading_the_bait_outside_the_model_folder(root: Path) -> None:
    def read_bait() -> int:
        with open("m/../secret.bin", "rb") as file:
            file.read(1)
        return 0

    assert "read-outside" in _violations(root, read_bait)


def test_changing_the_input_data_or_leaving_a_staging_folder(root: Path) -> None:
    def overwrite() -> int:
        Path("m/weights.bin").write_bytes(b"")
        return 0

    def stage_and_fail() -> int:
        Path("out/.fixed.onnx.1234.graphdoctor-tmp").mkdir()
        Path("out/fixed.onnx").write_bytes(b"half")
        return 2

    assert "input-modified" in _violations(root, overwrite)
    assert "leftover" in _violations(root, stage_and_fail)


def test_exit_codes_time_and_signals(root: Path) -> None:
    def hang() -> int:
        time.sleep(60)
        return 0

    def ignore_sigint() -> int:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        time.sleep(1.5)
        return 0

    assert "bad-exit" in _violations(root, lambda: _exit_with(3))
    assert "over-time" in _violations(root, hang, time_limit=1.0)
    assert "signal-ignored" in _violations(root, ignore_sigint, signal_at=(signal.SIGINT, 0.1))


def test_an_unloadable_written_model(root: Path) -> None:
    (root / "out" / "fixed.onnx").write_bytes(b"not a model")
    assert runner.spawn(runner._check_written(os.fspath(root / "out" / "fixed.onnx")), root).code == 1
