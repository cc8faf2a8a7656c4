"""GD016 malformed-model: each kind of defect is named with its numbers; real models have none; lint of a
malformed model reports it (exit 1) instead of an internal error, and stays in bounded memory."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h

from fixtures.handmade import save
from graphdoctor import api
from graphdoctor.analysis.validity import find_defects, first_defect
from graphdoctor.model import load_model
from graphdoctor.rule import Severity

ROOT = Path(__file__).resolve().parents[2]
X = h.make_tensor_value_info("x", TensorProto.FLOAT, [2])
Y = h.make_tensor_value_info("y", TensorProto.FLOAT, [2])


def _model(nodes, inputs=(X,), outputs=(Y,), initializers=(), value_info=(), opset=17) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "g", list(inputs), list(outputs), list(initializers), value_info=list(value_info))
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _tensor(name: str, data_type: int, dims: list[int], raw: bytes | None = None, **fields) -> TensorProto:
    """A TensorProto as a file may hold it: no consistency check (onnx.helper.make_tensor would refuse)."""
    tensor = TensorProto(name=name, data_type=data_type, dims=dims)
    if raw is not None:
        tensor.raw_data = raw
    for field, values in fields.items():
        getattr(tensor, field).extend(values)
    return tensor


def _add_w(tensor: TensorProto) -> onnx.ModelProto:
    return _model([h.make_node("Add", ["x", "W"], ["y"], name="add")], initializers=[tensor])


def _cast(attribute: onnx.AttributeProto) -> onnx.ModelProto:
    node = h.make_node("Cast", ["x"], ["y"], name="cast")
    node.attribute.append(attribute)
    return _model([node])


def _layer_norm(epsilon: onnx.AttributeProto) -> onnx.ModelProto:
    node = h.make_node("LayerNormalization", ["x", "s", "b"], ["y"], name="ln", axis=-1)
    node.attribute.append(epsilon)
    scale, bias = (
        h.make_tensor("s", TensorProto.FLOAT, [2], [1.0, 1.0]),
        h.make_tensor("b", TensorProto.FLOAT, [2], [0, 0]),
    )
    return _model([node], initializers=[scale, bias])


def _strings_constant(reader: str) -> onnx.ModelProto:
    strings = h.make_tensor("cv", TensorProto.STRING, [2], [b"a", b"b"])
    constant = h.make_node("Constant", [], ["c"], name="c", value=strings)
    inputs = ["x", "c"] if reader == "Add" else ["c"]
    return _model([constant, h.make_node(reader, inputs, ["y"], name="reader")])


def _subgraph_initializer() -> onnx.ModelProto:
    payload = np.arange(5, dtype=np.float32).tobytes()
    then_branch = h.make_graph(
        [h.make_node("Add", ["x", "W2"], ["t"], name="tadd")],
        "then",
        [],
        [h.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
        [_tensor("W2", TensorProto.FLOAT, [2], payload)],
    )
    else_branch = h.make_graph(
        [h.make_node("Identity", ["x"], ["e"], name="eid")], "else", [], [h.make_tensor_value_info("e", 1, [2])]
    )
    node = h.make_node("If", ["cond"], ["y"], name="if", then_branch=then_branch, else_branch=else_branch)
    return _model([node], inputs=[h.make_tensor_value_info("cond", TensorProto.BOOL, []), X])


def _relu(**kwargs) -> onnx.ModelProto:
    return _model([h.make_node("Relu", ["x"], ["y"], name="relu")], **kwargs)


def _constant_value_of_wrong_type() -> onnx.ModelProto:
    """A Constant's `value` given as INTS (the reader of a constant's tensor raised TypeError on it)."""
    constant = h.make_node("Constant", [], ["c"], name="cv")
    constant.attribute.append(h.make_attribute("value", [1, 2]))
    return _model([constant, h.make_node("Add", ["x", "c"], ["y"], name="add")])


def _endless_loop() -> onnx.ModelProto:
    """Loop('', '', x): the spec's `for (;;)`, whose body's condition is ignored: every run hangs."""
    body = h.make_graph(
        [
            h.make_node("Identity", ["c"], ["c_out"], name="c_id"),
            h.make_node("Identity", ["v"], ["v_out"], name="v_id"),
        ],
        "body",
        [
            h.make_tensor_value_info("i", TensorProto.INT64, []),
            h.make_tensor_value_info("c", TensorProto.BOOL, []),
            h.make_tensor_value_info("v", TensorProto.FLOAT, [2]),
        ],
        [
            h.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            h.make_tensor_value_info("v_out", TensorProto.FLOAT, [2]),
        ],
    )
    return _model([h.make_node("Loop", ["", "", "x"], ["y"], name="loop", body=body)])


def _not_importing_ai_onnx() -> onnx.ModelProto:
    model = _relu()
    del model.opset_import[:]
    model.opset_import.append(h.make_opsetid("com.other", 1))
    return model


SIX_FLOATS = np.arange(6, dtype=np.float32).tobytes()
# (model, message id, words the message must hold: the name and the numbers of the contradiction)
INVALID = {
    "raw_data_longer_than_dims": (
        _add_w(_tensor("W", 1, [2], SIX_FLOATS)),
        "tensor",
        ["'W'", "6 float32", "[2] need 2"],
    ),
    "negative_dims": (_add_w(_tensor("W", 1, [-1, -1], SIX_FLOATS[:8])), "tensor", ["'W'", "negative dims [-1, -1]"]),
    "int64_data_in_float": (
        _add_w(_tensor("W", 1, [2], int64_data=[1, 2])),
        "tensor",
        ["'W'", "int64_data", "float32"],
    ),
    "raw_not_whole_elements": (_add_w(_tensor("W", 1, [2], b"\0" * 7)), "tensor", ["'W'", "7 bytes", "4 bytes each"]),
    "undefined_dtype": (_add_w(_tensor("W", 0, [2], b"\0" * 8)), "tensor", ["'W'", "data type 0"]),
    "float_data_short": (
        _add_w(_tensor("W", 1, [2], float_data=[1.0])),
        "tensor",
        ["'W'", "holds 1 float32", "need 2"],
    ),
    "string_weight_for_add": (_add_w(_tensor("W", 8, [2], string_data=[b"a", b"b"])), "type", ["'W'", "string", "Add"]),
    "constant_payload": (
        _model([h.make_node("Constant", [], ["W"], name="cw", value=_tensor("v", 1, [3], SIX_FLOATS))]),
        "tensor",
        ["Constant 'cw'", "6 float32", "[3] need 3"],
    ),
    "cast_to_ints": (_cast(h.make_attribute("to", [1, 2])), "attribute", ["Cast 'cast'", "'to'", "INTS", "takes INT"]),
    "cast_to_string": (_cast(h.make_attribute("to", "float")), "attribute", ["'to'", "STRING"]),
    "cast_to_undefined": (_cast(h.make_attribute("to", 0)), "attribute", ["'to'=0", "UNDEFINED"]),
    "cast_to_out_of_range": (_cast(h.make_attribute("to", 99)), "attribute", ["'to'=99", "no ONNX data type"]),
    "cast_without_to": (_model([h.make_node("Cast", ["x"], ["y"], name="cast")]), "attribute", ["required", "'to'"]),
    "epsilon_ints": (
        _layer_norm(h.make_attribute("epsilon", [1, 2])),
        "attribute",
        ["'ln'", "'epsilon'", "INTS", "FLOAT"],
    ),
    "epsilon_string": (_layer_norm(h.make_attribute("epsilon", "1e-5")), "attribute", ["'epsilon'", "STRING"]),
    "too_few_inputs": (
        _model([h.make_node("Add", ["x"], ["y"], name="add")]),
        "signature",
        ["'add'", "1 inputs", "takes 2"],
    ),
    "strings_into_add": (_strings_constant("Add"), "type", ["input 1 'c'", "string"]),
    "strings_out_as_float": (_strings_constant("Identity"), "type", ["'y' is float32", "'c' is string"]),
    "output_element_type_0": (_relu(outputs=[h.make_tensor_value_info("y", 0, [2])]), "type", ["output 'y'", "type 0"]),
    "input_element_type_0": (_relu(inputs=[h.make_tensor_value_info("x", 0, [2])]), "type", ["input 'x'", "type 0"]),
    "negative_value_info": (
        _model(
            [h.make_node("Relu", ["x"], ["r"], name="r1"), h.make_node("Relu", ["r"], ["y"], name="r2")],
            value_info=[h.make_tensor_value_info("r", TensorProto.FLOAT, [-5])],
        ),
        "type",
        ["'r'", "negative dims [-5]"],
    ),
    "opset_0": (_relu(opset=0), "opset", ["is 0", "start at 1"]),
    "opset_2_62": (_relu(opset=2**62), "opset", [str(2**62), "beyond", onnx.__version__]),
    "subgraph_initializer": (_subgraph_initializer(), "tensor", ["'W2'", "5 float32"]),
    "constant_value_ints": (_constant_value_of_wrong_type(), "attribute", ["Constant 'cv'", "'value'", "INTS"]),
    "endless_loop": (_endless_loop(), "signature", ["Loop 'loop'", "neither a trip count", "loops forever"]),
    "domain_not_imported": (_not_importing_ai_onnx(), "domain", ["Relu 'relu'", "'ai.onnx'", "imports no opset"]),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid(lint_proto, name: str):
    model, message_id, words = INVALID[name]
    findings = lint_proto(model, "GD016")
    assert findings, name
    finding = findings[0]
    assert (finding.message_id, finding.severity) == (message_id, Severity.ERROR)
    for word in words:
        assert word in finding.message, (word, finding.message)


def test_subgraph_defect_names_its_graph(lint_proto):
    [finding] = lint_proto(_subgraph_initializer(), "GD016")
    assert finding.graph == "if.then_branch"


def test_first_defect_is_one_line_with_a_count(tmp_path: Path):
    model = _add_w(_tensor("W", 1, [2], SIX_FLOATS))
    model.graph.output[0].type.tensor_type.elem_type = 0
    loaded = load_model(save(model, tmp_path / "m.onnx"))
    line = first_defect(loaded.model)
    assert line == (
        "malformed model: initializer 'W' holds 6 float32 values but its dims [2] need 2"
        " (and 1 more defect; `graphdoctor lint` lists them)"
    )
    assert first_defect(load_model(save(_relu(), tmp_path / "ok.onnx")).model) is None


def test_valid_tensors_of_every_packing(tmp_path: Path):
    """Tensors onnx itself writes, in typed fields and in raw_data, for every field and packing."""
    cases = {
        TensorProto.INT4: [1, 2, 3],
        TensorProto.UINT4: [1, 2, 3],
        TensorProto.FLOAT16: [1.0, 2.0, 3.0],
        TensorProto.BOOL: [True, False, True],
        TensorProto.COMPLEX64: [1 + 2j, 3j, 1],
        TensorProto.UINT32: [1, 2, 3],
        TensorProto.DOUBLE: [1.0, 2.0, 3.0],
        TensorProto.STRING: [b"a", b"b", b"c"],
    }
    initializers = [h.make_tensor(f"t{dt}", dt, [3], vals) for dt, vals in cases.items()]
    initializers += [
        h.make_tensor(f"r{dt}", dt, [3], np.asarray(v, dtype=h.tensor_dtype_to_np_dtype(dt)).tobytes(), raw=True)
        for dt, v in cases.items()
        if dt not in (TensorProto.INT4, TensorProto.UINT4, TensorProto.STRING)
    ]
    model = _relu(initializers=initializers)
    assert find_defects(load_model(save(model, tmp_path / "m.onnx")).model) == []


def _real_models() -> list[Path]:
    from fixtures import torch_exports

    return [torch_exports.path(name) for name in torch_exports.NAMES]


@pytest.mark.torch
def test_valid_real_models():
    """False positives would make every export fail the gate: the torch exports and the demo have no defect."""
    for path in [*_real_models(), ROOT / "examples" / "yolo_demo.onnx"]:
        assert api.lint(path, select=["GD016"]).findings == [], path


def test_other_rules_say_they_could_not_check(lint_proto):
    """A rule tripping over a defect (GD002 reads Cast's `to` as an int) reports that, and the run goes on."""
    findings = lint_proto(_cast(h.make_attribute("to", [1, 2])), ["GD002", "GD016"])
    by_code = {f.code: f for f in findings}
    assert by_code["GD016"].severity == Severity.ERROR
    unchecked = by_code["GD002"]
    assert (unchecked.message_id, unchecked.severity) == ("unchecked", Severity.WARNING)
    assert "could not check" in unchecked.message and "'to' of type INTS" in unchecked.message


def test_rule_errors_on_well_formed_models_stay_loud(tmp_path: Path):
    """Only a malformed model turns a rule's exception into a finding: elsewhere it is a bug, and raises."""
    from graphdoctor.rule import Message, Rule, RuleKind, RuleMeta

    def check(model, ctx):
        raise RuntimeError("bug")
        yield

    meta = RuleMeta("ZZZ001", "broken", RuleKind.PROBLEM, Severity.ERROR, "raises", {"m": Message("m")})
    rule = Rule(meta, check, "What it finds / Why it matters / How to fix")
    path = save(_relu(), tmp_path / "ok.onnx")
    with pytest.raises(RuntimeError, match="bug"):
        api.lint(path, rules=[rule])
    bad = save(_cast(h.make_attribute("to", [1, 2])), tmp_path / "bad.onnx")
    [finding] = api.lint(bad, rules=[rule]).findings
    assert finding.message_id == "unchecked"


@pytest.mark.parametrize("name", ["raw_data_longer_than_dims", "cast_to_ints", "epsilon_string", "opset_2_62"])
def test_cli_lint_reports_instead_of_crashing(gd, tmp_path: Path, name: str):
    path = save(INVALID[name][0], tmp_path / f"{name}.onnx")
    code, out, err = gd("lint", path)
    assert code == 1
    assert "GD016" in out and "internal error" not in out + err and "Traceback" not in out + err


def _slice_axes_claiming_2_40(path: Path) -> Path:
    """A Slice whose `axes` initializer says dims [2^40] over one int64: shape inference's data propagation
    through it grew past 20 GB before it was bounded."""
    sliced = h.make_node("Slice", ["x2", "starts", "ends", "axes"], ["y"], name="slice")
    initializers = [
        h.make_tensor("starts", TensorProto.INT64, [1], [0]),
        h.make_tensor("ends", TensorProto.INT64, [1], [2]),
        _tensor("axes", TensorProto.INT64, [2**40], np.zeros(1, np.int64).tobytes()),
    ]
    x2 = h.make_tensor_value_info("x2", TensorProto.FLOAT, [4, 4])
    y = h.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return save(_model([sliced], inputs=[x2], outputs=[y], initializers=initializers), path)


def _declared_vector(path: Path) -> Path:
    """A well-formed model whose Slice starts are a graph input declared [2^40]: same propagation."""
    sliced = h.make_node("Slice", ["x2", "starts", "ends"], ["y"], name="slice")
    inputs = [h.make_tensor_value_info("x2", 1, [4, 4]), h.make_tensor_value_info("starts", 7, [2**40])]
    ends = h.make_tensor("ends", TensorProto.INT64, [1], [2])
    return save(_model([sliced], inputs, [h.make_tensor_value_info("y", 1, None)], [ends]), path)


def _run_bounded(*args: str | Path) -> subprocess.CompletedProcess:
    """The CLI in a child process limited to 2 GiB of address space and 60 s: exceeding either fails."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    command = [sys.executable, "-m", "graphdoctor", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, preexec_fn=limit, check=False)


@pytest.mark.parametrize("build", [_slice_axes_claiming_2_40, _declared_vector])
def test_declared_sizes_allocate_nothing(tmp_path: Path, build):
    path = build(tmp_path / "m.onnx")
    result = _run_bounded("lint", path)
    assert result.returncode in (0, 1), result.stderr
    assert "MemoryError" not in result.stderr + result.stdout and "internal error" not in result.stderr


def test_huge_dropout_mask_is_not_materialised(tmp_path: Path):
    """A training-mode Dropout whose mask is read, declared [10^6, 10^6]: the fix keeps the node (in inference
    mode) instead of storing a 931 GiB all-true constant."""
    big = [10**6, 10**6]
    nodes = [
        h.make_node("Dropout", ["x", "r", "t"], ["d", "m"], name="dropout"),
        h.make_node("Cast", ["m"], ["mf"], name="cast", to=TensorProto.FLOAT),
        h.make_node("Add", ["d", "mf"], ["y"], name="add"),
    ]
    initializers = [h.make_tensor("r", 1, [], [0.5]), h.make_tensor("t", TensorProto.BOOL, [], [True])]
    io = [h.make_tensor_value_info(n, TensorProto.FLOAT, big) for n in ("x", "y")]
    path = save(_model(nodes, io[:1], io[1:], initializers), tmp_path / "m.onnx")
    result = _run_bounded(
        "fix", path, "-o", tmp_path / "out.onnx", "--no-verify", "--unsafe-fixes", "--select", "GD006"
    )
    assert result.returncode == 0, result.stderr
    written = onnx.load(tmp_path / "out.onnx")
    assert [n.op_type for n in written.graph.node] == ["Dropout", "Cast", "Add"]
    assert len(written.graph.node[0].input) == 2  # training_mode dropped


def test_sparse_string_values_short_of_their_indices(lint_proto):
    """Sparse tensors are checked from their protos (onnx-ir drops them); strings have no bit width."""
    values = _tensor("S", TensorProto.STRING, [3], string_data=[b"a", b"b"])
    indices = onnx.numpy_helper.from_array(np.array([0, 1, 2], np.int64), "S_idx")
    model = _model([h.make_node("Identity", ["x"], ["y"], name="id")])
    model.graph.sparse_initializer.append(h.make_sparse_tensor(values, indices, [4]))
    findings = lint_proto(model, "GD016")
    assert [f.message_id for f in findings] == ["sparse"]
    assert "'S'" in findings[0].message and "2 strings" in findings[0].message
