"""What `graphdoctor lint` imports: nothing that linting a model does not need.

Start-up is most of what lint costs on a small model in a pre-commit hook or a CI gate (issue 14: a tiny model
in at most 0.5 s), and one top-level import of torch, ONNX's reference evaluator or scipy would cost more than
the whole budget. The child runs lint as the console script does, then reports which modules it holds. Timing
itself is measured by `make bench-lint`, never asserted here: it depends on the machine and its load.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fixtures.handmade import model_from_text, save

TINY_MODEL = model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4] x) => (float[1,4] y) {
    a = Relu(x)
    y = Add(a, x)
}""")

# Each costs from a tenth of a second (onnxruntime) to seconds (torch) of import, and none is needed to lint
# a model that has nothing to fold: the simplifiers and backends run only in `fix`, `verify` and `lint --deep`,
# ONNX's reference evaluator only when GD001 folds a node.
NOT_NEEDED_BY_LINT = (
    "torch",
    "onnxsim",
    "onnxslim",
    "onnxscript",
    "tensorrt",
    "polygraphy",
    "onnx.reference",
    "scipy",
    "sympy",
    "onnxruntime",
)

CHILD = """
import json, sys, types
from graphdoctor.cli import main
code = None
try:
    main(["lint", sys.argv[1], "--exit-zero", "--format", "json"])
except SystemExit as exit_info:
    code = exit_info.code
print()
print(json.dumps({
    "exit_code": code,
    # sympy stands in sys.modules as graphdoctor._deferred's placeholder until something asks for it
    "imported": sorted(name for name, module in sys.modules.items() if type(module) is types.ModuleType),
}))
"""


@pytest.fixture(scope="module")
def lint_imports(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The modules a fresh interpreter holds after `graphdoctor lint TINY --exit-zero`."""
    path = save(TINY_MODEL, tmp_path_factory.mktemp("startup") / "tiny.onnx")
    completed = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
    report = json.loads(completed.stdout.splitlines()[-1])
    assert report["exit_code"] == 0, completed.stderr
    return set(report["imported"])


def test_lint_ran_through_its_rules(lint_imports: set[str]):
    """The child linted the model (not failed before the rules), so what it left out is meaningful."""
    assert {"graphdoctor.api", "graphdoctor.engine", "onnx_ir"} <= lint_imports


@pytest.mark.parametrize("module", NOT_NEEDED_BY_LINT)
def test_lint_does_not_import(module: str, lint_imports: set[str]):
    assert module not in lint_imports


def test_a_module_the_child_imports_is_seen():
    """The check itself: a real import shows up as a module, a deferred one does not (else the tests above
    could pass by looking in the wrong place)."""
    code = (
        "import sys, types, graphdoctor, onnx_ir\n"
        "import onnx.reference\n"
        "print(type(sys.modules['onnx.reference']) is types.ModuleType, type(sys.modules['sympy']) is types.ModuleType)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.split() == ["True", "False"]


FOLDING_CHILD = """
import contextlib, io, json, sys
from graphdoctor.cli import main
with contextlib.redirect_stdout(io.StringIO()) as report:
    try:
        main(["lint", sys.argv[1], "--exit-zero", "--format", "json", "--select", "GD001"])
    except SystemExit:
        pass
findings = json.loads(report.getvalue())["models"][0]["findings"]
print(json.dumps({
    "folded": sum(f["message_id"] == "static_shape_arithmetic" for f in findings),
    "reference_runtime": "onnx.reference" in sys.modules,
}))
"""


@pytest.mark.parametrize("name", ["dynamo_bert", "t5_encoder_dynamo", "bert_opset17"])
def test_folding_torch_shape_arithmetic_needs_no_reference_runtime(name: str):
    """GD001 folds the exports' Shape/Slice/Gather/Cast/Reshape arithmetic in numpy (graphdoctor.integer_ops):
    ONNX's reference runtime, 0.1-0.3 s of import, is not loaded."""
    from fixtures import torch_exports

    if name not in torch_exports.NAMES:
        pytest.skip(f"fixture {name!r} is not built by fixtures.torch_exports")
    completed = subprocess.run(
        [sys.executable, "-c", FOLDING_CHILD, str(torch_exports.path(name))], capture_output=True, text=True, check=True
    )
    report = json.loads(completed.stdout.splitlines()[-1])
    assert report["folded"] > 0 and not report["reference_runtime"]
