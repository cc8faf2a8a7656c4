"""The command line: exit codes, output formats, selection, explain, and the import budget of lint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fixtures.handmade import model_from_text, save
from graphdoctor import __version__
from graphdoctor.cli import cli, main

DOUBLE_MODEL = model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (double[N,4] y) {
    y = Cast<to=11>(x)
}""")

CLEAN_MODEL = model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4] x) => (float[1,4] y) {
    y = Relu(x)
}""")


@pytest.fixture
def double_path(tmp_path: Path) -> Path:
    return save(DOUBLE_MODEL, tmp_path / "double.onnx")


@pytest.fixture
def clean_path(tmp_path: Path) -> Path:
    return save(CLEAN_MODEL, tmp_path / "clean.onnx")


def run(*args: str) -> tuple[int, str, str]:
    """Run main() as the console script does: exit code, stdout, stderr."""
    completed = subprocess.run(
        [sys.executable, "-m", "graphdoctor", *args], capture_output=True, text=True, check=False
    )
    return completed.returncode, completed.stdout, completed.stderr


def test_clean_model_exits_zero(clean_path: Path):
    code, out, _ = run("lint", str(clean_path))
    assert code == 0
    assert "0 findings" in out


def test_findings_exit_one_and_name_the_node(double_path: Path):
    code, out, _ = run("lint", str(double_path), "--select", "GD010")
    assert code == 1
    assert "GD010 float64" in out
    assert "node 'Cast_0'" in out
    assert "fix:" in out


def test_fail_on_error_and_exit_zero(double_path: Path):
    assert run("lint", str(double_path), "--fail-on", "error")[0] == 1
    assert run("lint", str(double_path), "--exit-zero")[0] == 0
    assert run("lint", str(double_path), "--ignore", "float64")[0] == 0


def test_json_report(double_path: Path):
    code, out, _ = run("lint", str(double_path), "--select", "GD010", "--format", "json")
    assert code == 1
    document = json.loads(out)
    assert document["schema_version"] == 1
    assert document["version"] == __version__
    [model] = document["models"]
    assert (model["rules"], model["target"]) == (["GD010"], "tensorrt-10")
    # the DOUBLE output becomes a float32 binding (error); the Cast to DOUBLE computes in float32 (warning)
    assert (model["summary"]["error"], model["summary"]["warning"]) == (1, 1)
    assert {f["node"] for f in model["findings"]} == {"Cast_0", None}


@pytest.mark.parametrize(
    "args",
    [
        ("lint", "missing.onnx"),
        ("lint", "--bogus-option", "x.onnx"),
        ("lint", "{model}", "--select", "GD999"),
        ("lint", "{model}", "--fail-on", "fatal"),
        ("explain", "GD999"),
    ],
)
def test_usage_and_input_errors_exit_two_with_one_line(args, double_path: Path):
    code, out, err = run(*(a.format(model=double_path) for a in args))
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_rules_and_explain():
    runner = CliRunner()
    listing = runner.invoke(cli, ["rules"]).output
    assert "GD010  float64" in listing
    explained = runner.invoke(cli, ["explain", "gd010"]).output
    for heading in ("What it finds", "Why it matters", "How to fix"):
        assert heading in explained


def test_version():
    assert run("--version")[1].strip() == f"graphdoctor, version {__version__}"


def test_deferred_sympy_loads_when_used():
    """onnx-ir's symbolic dimension arithmetic and a later `import sympy` (torch does) get the real module."""
    code = (
        "import sys, types, graphdoctor, onnx_ir as ir\n"
        "deferred = type(sys.modules['sympy']) is not types.ModuleType\n"
        "dim = ir.SymbolicDim('N') * 2 + 1\n"
        "import sympy\n"
        "print(deferred, dim, sympy.Symbol('x') + 1, type(sys.modules['sympy']) is types.ModuleType)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "2*N", "+", "1", "x", "+", "1", "True"]


def test_main_turns_graphdoctor_errors_into_exit_two(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["lint", "/nonexistent/model.onnx"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("graphdoctor: error: /nonexistent/model.onnx: no such file")


LEAVING = """
import atexit, sys, threading, time
from graphdoctor.cli import _leave
atexit.register(lambda: print("exit handler ran", file=sys.stderr))
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
sys.stdout.write("x" * 300_000 + "\\n")
_leave(int(sys.argv[2]))
"""


@pytest.mark.parametrize("thread", ["none", "thread"])
def test_the_console_exit_keeps_output_handlers_codes_and_threads(thread: str):
    """`run` leaves without Python's teardown: what is buffered still comes out whole, exit handlers still
    run, the code is kept, and a thread still running is waited for (Python's own exit then)."""
    completed = subprocess.run([sys.executable, "-c", LEAVING, thread, "3"], capture_output=True, text=True)
    assert completed.returncode == 3
    assert completed.stdout.startswith("x" * 300_000 + "\n")
    assert "exit handler ran" in completed.stderr
    assert ("thread finished" in completed.stdout) == (thread == "thread")


def test_lint_path_never_imports_heavy_modules(double_path: Path):
    """lint must start fast: no torch, onnxsim or tensorrt on its import path, and sympy (which onnx-ir
    imports) left a placeholder until something asks for it."""
    code = (
        "import sys, types; from graphdoctor.cli import main\n"
        "try: main(['lint', sys.argv[1], '--exit-zero'])\n"
        "except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'onnxsim', 'tensorrt', 'onnxslim') if m in sys.modules]\n"
        "heavy += ['sympy'] if type(sys.modules.get('sympy')) is types.ModuleType else []\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(double_path)], capture_output=True, text=True).stdout
    assert "HEAVY []" in out
