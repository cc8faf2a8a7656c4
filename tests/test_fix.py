"""`graphdoctor fix`: where it writes, the verification gate, and that nothing is lost when writing fails.

The rules' own fixes are tested in tests/fix/. Here two plugin rules, installed as a real distribution, give
fixes with known behaviour: one removes Identity nodes (bit-exact, as declared) and one claims to be safe but
turns Relu into Abs, which the gate must catch.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor import api

PLUGIN = '''
"""ACME010 identity: Identity nodes, removed.

What it finds
    Identity nodes.
Why it matters
    They prove the fix engine runs third-party fixes.
How to fix
    `graphdoctor fix` removes them.
"""
from graphdoctor.rewrite import is_attached, remove_node, replace_value
from graphdoctor.rule import FixSafety, Message, RuleKind, RuleMeta, Severity

META = RuleMeta(
    code="ACME010", name="identity", kind=RuleKind.SUGGESTION, severity=Severity.INFO, fix=FixSafety.SAFE,
    summary="Identity nodes", messages={"identity": Message("Identity '{name}'")},
)

def check(model, ctx):
    for node in ctx.analysis.nodes("Identity"):
        yield ctx.report("identity", node=node, name=node.name, repair=lambda node=node: _remove(node))

def _remove(node):
    if not is_attached(node):
        return False
    replace_value(node.outputs[0], node.inputs[0])
    remove_node(node)
    return True
'''

BROKEN_PLUGIN = '''
"""ACME011 relu-to-abs: a fix that claims to be safe and is not.

What it finds
    Relu nodes.
Why it matters
    It proves the gate catches a wrong fix.
How to fix
    Do not.
"""
from graphdoctor.rule import FixSafety, Message, RuleKind, RuleMeta, Severity

META = RuleMeta(
    code="ACME011", name="relu-to-abs", kind=RuleKind.SUGGESTION, severity=Severity.INFO, fix=FixSafety.SAFE,
    summary="Relu nodes", messages={"relu": Message("Relu '{name}'")},
)

def check(model, ctx):
    for node in ctx.analysis.nodes("Relu"):
        yield ctx.report("relu", node=node, name=node.name, repair=lambda node=node: _break(node))

def _break(node):
    node.op_type = "Abs"
    return True
'''

NUDGE_PLUGIN = '''
"""ACME012 nudge: a "safe" fix that changes one bit of one output, as $ACME_NUDGE says.

What it finds
    The initializer 'k'.
Why it matters
    The gate must catch a change of one ULP, of a zero's sign or of a NaN's payload, in any output.
How to fix
    Do not.
"""
import os

import numpy as np
import onnx_ir as ir

from graphdoctor.rule import FixSafety, Message, RuleKind, RuleMeta, Severity

META = RuleMeta(
    code="ACME012", name="nudge", kind=RuleKind.SUGGESTION, severity=Severity.INFO, fix=FixSafety.SAFE,
    summary="one bit of k", messages={"nudge": Message("k")},
)

def check(model, ctx):
    value = model.graph.initializers.get("k")
    if value is not None and not value.meta.get("nudged"):
        yield ctx.report("nudge", values=[value], repair=lambda: _nudge(value))

def _nudge(value):
    bits = value.const_value.numpy().copy().view(np.uint32)
    index, change = {"ulp": (0, 1), "zero-sign": (1, 0x80000000), "nan-payload": (2, 1)}[os.environ["ACME_NUDGE"]]
    bits[index] ^= change
    value.const_value = ir.Tensor(bits.view(np.float32), name="k")
    value.meta["nudged"] = True
    return True
'''

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] y) {
  a = Identity(x)
  b = Relu(a)
  y = Identity(b)
}
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two plugin rules in one real installed distribution; returns a folder to put models in."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_identity.py").write_text(textwrap.dedent(PLUGIN))
    (site / "acme_broken.py").write_text(textwrap.dedent(BROKEN_PLUGIN))
    (site / "acme_nudge.py").write_text(textwrap.dedent(NUDGE_PLUGIN))
    (site / "acme_fixes.py").write_text(
        "import acme_identity, acme_broken, acme_nudge\nRULES = [acme_identity, acme_broken, acme_nudge]\n"
    )
    info = site / "graphdoctor_acme-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: graphdoctor-acme\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[graphdoctor.rules]\nacme = acme_fixes\n")
    monkeypatch.syspath_prepend(str(site))
    models = tmp_path / "models"
    models.mkdir()
    return models


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outputs(path: Path) -> np.ndarray:
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.array([[-1, 2, -3], [4, -5, 6]], np.float32)})[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "graphdoctor-tmp" in p.name)


def test_writes_beside_the_input_and_never_touches_it(plugins: Path, gd):
    model = save(model_from_text(MODEL), plugins / "net.onnx")
    before = _digest(model)
    code, out, err = gd("fix", model, "--select", "acme/identity")
    fixed = plugins / "net.fixed.onnx"
    assert (code, err) == (0, "")
    assert "ACME010 identity" in out and "2 × identity" in out and "-2 nodes" in out
    assert "onnxruntime-cpu-unoptimized: PASSED" in out and "exact" in out
    assert f"wrote {fixed}" in out
    assert _digest(model) == before
    assert [n.op_type for n in onnx.load(fixed).graph.node] == ["Relu"]
    assert [o.name for o in onnx.load(fixed).graph.output] == ["y"]
    assert np.array_equal(_outputs(fixed), _outputs(model))
    assert _leftovers(plugins) == []


def test_fixing_a_fixed_model_changes_nothing(plugins: Path, gd):
    model = save(model_from_text(MODEL), plugins / "net.onnx")
    gd("fix", model, "--select", "acme/identity", "-o", plugins / "once.onnx")
    code, out, _ = gd("fix", plugins / "once.onnx", "--select", "acme/identity", "-o", plugins / "twice.onnx")
    assert code == 0 and "nothing to fix" in out
    assert (plugins / "once.onnx").read_bytes() == (plugins / "twice.onnx").read_bytes()
    code, out, _ = gd("fix", plugins / "once.onnx", "--select", "acme/identity")
    assert code == 0 and "nothing written" in out and not (plugins / "once.fixed.onnx").exists()


def test_the_gate_names_the_fix_that_breaks_outputs_and_writes_nothing(plugins: Path, gd):
    model = save(model_from_text(MODEL), plugins / "net.onnx")
    before = _digest(model)
    code, out, _ = gd("fix", model, "--select", "ACME")
    assert code == 1
    assert "onnxruntime-cpu-unoptimized: FAILED" in out
    assert "fixes that fail alone: ACME011" in out and "ACME010" not in out.split("fail alone:")[1]
    assert not (plugins / "net.fixed.onnx").exists()
    assert _digest(model) == before and _leftovers(plugins) == []
    code, out, _ = gd("fix", model, "--select", "ACME", "--no-verify")
    assert code == 0 and "not verified (--no-verify)" in out
    assert [n.op_type for n in onnx.load(plugins / "net.fixed.onnx").graph.node] == ["Abs"]


def test_dry_run_reports_and_writes_nothing(plugins: Path, gd):
    model = save(model_from_text(MODEL), plugins / "net.onnx")
    code, out, _ = gd("fix", model, "--select", "acme/identity", "--dry-run", "-o", plugins / "out.onnx")
    assert code == 0 and "2 × identity" in out and "dry run: nothing written" in out
    assert sorted(p.name for p in plugins.iterdir()) == ["net.onnx"]


def test_the_input_is_overwritten_only_in_place(plugins: Path, gd):
    model = save(model_from_text(MODEL), plugins / "net.onnx")
    before = _digest(model)
    code, _, err = gd("fix", model, "--select", "acme/identity", "-o", model)
    assert code == 2 and "is the input model: pass --in-place" in err and len(err.splitlines()) == 1
    assert _digest(model) == before
    code, _, _ = gd("fix", model, "--select", "acme/identity", "--in-place")
    assert code == 0 and [n.op_type for n in onnx.load(model).graph.node] == ["Relu"]
    assert sorted(p.name for p in plugins.iterdir()) == ["net.onnx"]


def test_external_data_is_written_beside_the_model(plugins: Path):
    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,64] x) => (float[2,64] y) { a = Identity(x)  y = MatMul(a, w) }
    """
    proto = model_from_text(text, check=False)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    model = save(proto, plugins / "mm.onnx")
    result = api.fix(model, select=["acme/identity"], external_data=True)
    assert result.written and result.verification.passed
    assert sorted(p.name for p in plugins.iterdir()) == ["mm.fixed.onnx", "mm.fixed.onnx.data", "mm.onnx"]
    assert (plugins / "mm.fixed.onnx.data").stat().st_size >= weight.nbytes
    feeds = {"x": np.ones((2, 64), np.float32)}
    fixed = ort.InferenceSession(os.fspath(plugins / "mm.fixed.onnx"), providers=["CPUExecutionProvider"])
    assert fixed.run(None, feeds)[0].tobytes() == (feeds["x"] @ weight).tobytes()


@pytest.mark.parametrize("where", ["missing/out.onnx", "net.onnx/out.onnx"])
def test_an_unwritable_destination_is_one_line_and_exit_2(plugins: Path, gd, where: str):
    model = save(model_from_text(MODEL), plugins / "net.onnx")
    before = _digest(model)
    code, _, err = gd("fix", model, "--select", "acme/identity", "-o", plugins / where)
    assert code == 2 and err.startswith("graphdoctor: error: Invalid value for '-o'") and len(err.splitlines()) == 1
    assert "is not an existing folder" in err or "Not a directory" in err
    assert _digest(model) == before and _leftovers(plugins) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line_and_exit_2(plugins: Path, gd):
    model = save(model_from_text(MODEL), plugins / "net.onnx")
    plugins.chmod(0o555)
    try:
        code, _, err = gd("fix", model, "--select", "acme/identity")
    finally:
        plugins.chmod(0o755)
    assert code == 2 and "cannot write" in err and len(err.splitlines()) == 1


def _fix_in_child(model: Path, plugins: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins.parent / "site"), *sys.path])}
    command = [sys.executable, "-m", "graphdoctor", "fix", str(model), "--select", "acme/identity", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _big_model(folder: Path) -> Path:
    """8 MiB of weights behind an Identity: enough to outgrow a small file-size limit."""
    proto = model_from_text(
        '<ir_version: 8, opset_import: ["" : 17]>\ng (float[1,1024] x) => (float[1,2048] y) { a = Identity(x)'
        " y = MatMul(a, w) }",
        check=False,
    )
    weight = np.random.default_rng(1).standard_normal((1024, 2048)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    return save(proto, folder / "big.onnx")


def test_a_full_disk_leaves_no_output_and_the_input_untouched(plugins: Path):
    """A file-size limit (RLIMIT_FSIZE) makes the write fail with EFBIG, as a full disk fails with ENOSPC."""
    import resource

    model = _big_model(plugins)
    before = _digest(model)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))

    child = _fix_in_child(model, plugins, "--no-verify", preexec_fn=limit)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 2, err
    assert err.startswith("graphdoctor: error: cannot write") and "nothing was written" in err
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in plugins.iterdir()) == ["big.onnx"] and _digest(model) == before


def test_weights_inline_over_2_gib_are_refused_with_one_line(tmp_path: Path):
    """protobuf cannot serialize a model over 2 GiB: asked for no external data, the write says so and leaves
    nothing behind (np.zeros is not touched until serialized, so this costs one 2 GiB copy)."""
    import onnx_ir as ir

    from graphdoctor.errors import GraphDoctorError
    from graphdoctor.model import stage_model

    weight = ir.Value(name="w", const_value=ir.Tensor(np.zeros(2**29 + 16, np.float32), name="w"))
    graph = ir.Graph([], [weight], nodes=[], initializers=[weight], opset_imports={"": 17})
    with pytest.raises(GraphDoctorError, match=r"over protobuf's 2 GiB limit: write it with --external-data$"):
        stage_model(ir.Model(graph, ir_version=8), tmp_path / "big.onnx", external_data=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_write_leaves_no_output(plugins: Path, sig: signal.Signals):
    """Interrupt the child while it writes (its staging folder exists): no output, no staging folder."""
    model = _big_model(plugins)
    before = _digest(model)
    child = _fix_in_child(model, plugins, "--no-verify", "--external-data")
    deadline = time.monotonic() + 60
    while not _leftovers(plugins) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    if child.poll() is not None:
        pytest.skip("the write finished before it could be interrupted")
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    if child.returncode == 0:
        pytest.skip("the signal arrived after the write had been committed")
    assert child.returncode == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("graphdoctor: error: interrupted while writing") and "nothing was written" in err
    assert sorted(p.name for p in plugins.iterdir()) == ["big.onnx"] and _digest(model) == before


def test_inference_mode_is_verified_against_the_original_in_inference_mode(tmp_path: Path, gd):
    """GD006's fix changes outputs on purpose (a training-mode export's Dropout makes them random): the other
    fixes are verified against the original with GD006's fixes alone, bit for bit."""
    from fixtures.torch_exports import path

    model = tmp_path / "training_mode.onnx"
    model.write_bytes(path("training_mode").read_bytes())
    code, out, _ = gd("fix", model)
    assert code == 0 and "nothing to fix" in out  # inference mode is unsafe: not applied by default
    code, out, _ = gd("fix", model, "--unsafe-fixes")
    assert code == 0, out
    assert "GD006 training-mode" in out and "with GD006's fixes only" in out
    assert "tolerance: exact" in out and f"wrote {tmp_path / 'training_mode.fixed.onnx'}" in out


def test_strip_metadata_drops_provenance_only(plugins: Path, gd):
    proto = model_from_text(MODEL)
    entry = proto.graph.node[1].metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.stack_trace", "File model.py, line 12" * 20
    proto.graph.node[1].doc_string = "exported from Relu"
    model = save(proto, plugins / "net.onnx")
    code, _, _ = gd("fix", model, "--select", "acme/identity", "-o", plugins / "kept.onnx")
    assert code == 0 and onnx.load(plugins / "kept.onnx").graph.node[0].metadata_props
    code, _, _ = gd("fix", model, "--select", "acme/identity", "--strip-metadata", "-o", plugins / "stripped.onnx")
    stripped = onnx.load(plugins / "stripped.onnx")
    assert code == 0 and not stripped.graph.node[0].metadata_props and not stripped.graph.node[0].doc_string
    assert (plugins / "stripped.onnx").stat().st_size < (plugins / "kept.onnx").stat().st_size
    assert np.array_equal(_outputs(plugins / "stripped.onnx"), _outputs(model))


NUDGED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[3] x) => (float[3] first, float[3] second) <float[3] k = {1.5, 0.0, nan}, float[3] one = {1, 1, 1}> {
  first = Relu(x)
  second = Mul(k, one)
}
"""


@pytest.mark.parametrize("change", ["ulp", "zero-sign", "nan-payload"])
def test_the_gate_catches_one_changed_bit_in_any_output(plugins: Path, gd, monkeypatch, change: str):
    """Safe fixes are judged bit by bit on every output: one ULP, -0.0 for 0.0, another NaN payload in the
    second output fail the gate, though any tolerance or a check of the first output alone would pass them."""
    monkeypatch.setenv("ACME_NUDGE", change)
    model = save(model_from_text(NUDGED), plugins / "k.onnx")
    code, out, _ = gd("fix", model, "--select", "acme/nudge")
    assert code == 1 and "verification FAILED" in out, out
    assert "ok   first[3]" in out and "FAIL second[3]" in out
    assert not (plugins / "k.fixed.onnx").exists() and _leftovers(plugins) == []
