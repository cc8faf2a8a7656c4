"""Hostile and broken input: every unreadable or unsafe model is one line on stderr and exit code 2.

A missing path, a directory, an empty or truncated file, a file that is not ONNX, and external data that
points outside the model's folder must each give exactly one `graphdoctor: error:` line, no traceback, and
leave every file untouched. Valid models, external data included, lint without modifying a byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx_ir as ir
import pytest

from fixtures.handmade import function_with_external_constant
from graphdoctor import api
from graphdoctor.cli import main
from graphdoctor.errors import ModelLoadError

GRAPHDOCTOR = Path(sys.executable).with_name("graphdoctor")


# --- models -------------------------------------------------------------------------------------


def conv_model() -> onnx.ModelProto:
    """A small real-looking network: Conv (weights inline) → Relu → GlobalAveragePool → Flatten → Gemm."""
    rng = np.random.default_rng(0)
    weights = {
        "conv.weight": rng.random((16, 3, 3, 3), dtype=np.float32),
        "conv.bias": rng.random(16, dtype=np.float32),
        "fc.weight": rng.random((10, 16), dtype=np.float32),
        "fc.bias": rng.random(10, dtype=np.float32),
    }
    make = onnx.helper.make_node
    nodes = [
        make("Conv", ["x", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        make("Relu", ["c"], ["r"], name="relu"),
        make("GlobalAveragePool", ["r"], ["p"], name="pool"),
        make("Flatten", ["p"], ["f"], name="flatten"),
        make("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], transB=1, name="fc"),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "net",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 10])],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], producer_name="test")
    onnx.checker.check_model(model)
    return model


def save_inline(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(conv_model(), path)
    return path


def save_external(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        conv_model(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path


def point_external_data(path: Path, location: str) -> None:
    """Make every external tensor of the saved model read from `location` instead."""
    model = onnx.load_model(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, path)


def field_prefix(model: onnx.ModelProto, keep: Callable[[onnx.ModelProto], None]) -> bytes:
    """The bytes of `model` cut at a top-level field boundary: protobuf writes fields in number order
    (ir_version 1, producer 2-6, graph 7, opset_import 8), so the model with later fields cleared is a prefix."""
    full = model.SerializeToString()
    partial = onnx.ModelProto()
    partial.CopyFrom(model)
    keep(partial)
    prefix = partial.SerializeToString()
    assert full.startswith(prefix) and len(prefix) < len(full)
    return prefix


def without_opsets(model: onnx.ModelProto) -> None:
    model.ClearField("opset_import")


def without_graph(model: onnx.ModelProto) -> None:
    model.ClearField("opset_import")
    model.ClearField("graph")


def save_in_folder(tmp: Path, graph: onnx.GraphProto, **kwargs) -> Path:
    """Save a model of `graph` as tmp/model/model.onnx, leaving tmp itself as the 'outside' of its folder."""
    (tmp / "model").mkdir()
    opsets = kwargs.pop("opset_imports", [onnx.helper.make_opsetid("", 17)])
    onnx.save_model(onnx.helper.make_model(graph, opset_imports=opsets, **kwargs), tmp / "model" / "model.onnx")
    return tmp / "model" / "model.onnx"


def external_tensor(name: str, location: str, dtype: int = onnx.TensorProto.FLOAT, dims=(4,)) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=name, data_type=dtype, dims=list(dims), data_location=onnx.TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value=location)
    return tensor


# --- hostile inputs: each builder writes into tmp_path and returns the path to lint --------------


def missing(tmp: Path) -> Path:
    return tmp / "nowhere.onnx"


def directory(tmp: Path) -> Path:
    (tmp / "model.onnx").mkdir()
    return tmp / "model.onnx"


def empty(tmp: Path) -> Path:
    (tmp / "model.onnx").write_bytes(b"")
    return tmp / "model.onnx"


def write(tmp: Path, data: bytes, name: str = "model.onnx") -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


def cut_in_the_middle(tmp: Path) -> Path:
    data = conv_model().SerializeToString()
    return write(tmp, data[: len(data) // 2])


def cut_in_the_first_node(tmp: Path) -> Path:
    model = conv_model()
    data = model.SerializeToString()
    node = model.graph.node[0].SerializeToString()
    return write(tmp, data[: data.index(node) + len(node) // 2])


def cut_before_opset_import(tmp: Path) -> Path:
    """A boundary cut: the prefix parses as a model with a graph and no opset."""
    return write(tmp, field_prefix(conv_model(), without_opsets))


def cut_before_graph(tmp: Path) -> Path:
    """A boundary cut: only ir_version and producer_name remain, which parse cleanly."""
    return write(tmp, field_prefix(conv_model(), without_graph))


def text_file(tmp: Path) -> Path:
    return write(tmp, b"this is not a model\n")


def onnx_text_syntax(tmp: Path) -> Path:
    text = '<ir_version: 8, opset_import: ["" : 17]>\ng (float[1] x) => (float[1] y) { y = Relu(x) }\n'
    return write(tmp, text.encode())


def json_file(tmp: Path) -> Path:
    return write(tmp, json.dumps({"graph": {"node": []}, "ir_version": 8}).encode())


def random_bytes(tmp: Path) -> Path:
    return write(tmp, np.random.default_rng(1).bytes(4096))


def png_file(tmp: Path) -> Path:
    return write(tmp, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))


def zip_file(tmp: Path) -> Path:
    """What torch.save writes: a zip archive (a .pt passed by mistake)."""
    with zipfile.ZipFile(tmp / "model.onnx", "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return tmp / "model.onnx"


def tensor_protobuf(tmp: Path) -> Path:
    """An input .pb (TensorProto) passed by mistake: its fields clash with ModelProto's wire types."""
    tensor = onnx.numpy_helper.from_array(np.ones((1, 3, 4, 4), np.float32), "x")
    return write(tmp, tensor.SerializeToString())


def nested_too_deep(tmp: Path) -> Path:
    """If subgraphs nested past the protobuf parser's depth limit, written byte by byte."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    graph = field(2, b"leaf")
    for _ in range(200):
        attr = field(1, b"then_branch") + varint(20 << 3) + varint(5) + field(6, graph)
        graph = field(1, field(1, b"c") + field(2, b"o") + field(4, b"If") + field(5, attr)) + field(2, b"g")
    model = varint(1 << 3) + varint(8) + field(7, graph) + field(8, varint(2 << 3) + varint(17))
    return write(tmp, model)


def fifo(tmp: Path) -> Path:
    """Opening a named pipe with no writer blocks forever: it must be refused before that."""
    os.mkfifo(tmp / "model.onnx")
    return tmp / "model.onnx"


def escaping_dotdot(tmp: Path) -> Path:
    (tmp / "secret.bin").write_bytes(bytes(4096))
    path = save_external(tmp / "model")
    point_external_data(path, "../secret.bin")
    return path


def escaping_dotdot_nonexistent(tmp: Path) -> Path:
    """Refused for where it points, not for whether the file is there."""
    path = save_external(tmp / "model")
    point_external_data(path, "../../../../etc/nothing-here")
    return path


def absolute_location(tmp: Path) -> Path:
    (tmp / "secret.bin").write_bytes(bytes(4096))
    path = save_external(tmp / "model")
    point_external_data(path, str(tmp / "secret.bin"))
    return path


def symlink_out_of_folder(tmp: Path) -> Path:
    (tmp / "secret.bin").write_bytes(bytes(4096))
    path = save_external(tmp / "model")
    (tmp / "model" / "weights.bin").unlink()
    (tmp / "model" / "weights.bin").symlink_to(tmp / "secret.bin")
    return path


def symlinked_subfolder_out(tmp: Path) -> Path:
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "weights.bin").write_bytes(bytes(4096))
    path = save_external(tmp / "model")
    (tmp / "model" / "data").symlink_to(tmp / "elsewhere")
    point_external_data(path, "data/weights.bin")
    return path


def nul_in_location(tmp: Path) -> Path:
    path = save_external(tmp / "model")
    point_external_data(path, "weights.bin\x00.txt")
    return path


def escaping_from_function_body(tmp: Path) -> Path:
    """A Constant inside a model-local function is a tensor too; its data must not escape either."""
    (tmp / "secret.bin").write_bytes(bytes(16))
    (tmp / "model").mkdir()
    onnx.save_model(function_with_external_constant("../secret.bin"), tmp / "model" / "model.onnx")
    return tmp / "model" / "model.onnx"


def save_with_initializer(tmp: Path, tensor: onnx.TensorProto) -> Path:
    """A model whose one initializer is `tensor` (hand-written external data), in tmp/model/."""
    output = onnx.helper.make_tensor_value_info("y", tensor.data_type, list(tensor.dims))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", [tensor.name], ["y"], name="id")], "g", [], [output], [tensor]
    )
    return save_in_folder(tmp, graph)


def string_external_data(tmp: Path) -> Path:
    """STRING elements have no fixed size: external data cannot hold them, and sizing them crashed."""
    path = save_with_initializer(tmp, external_tensor("w", "w.bin", dtype=onnx.TensorProto.STRING))
    (tmp / "model" / "w.bin").write_bytes(b"abcd" * 4)
    return path


def negative_dims(tmp: Path) -> Path:
    path = save_with_initializer(tmp, external_tensor("w", "w.bin", dims=(-4,)))
    (tmp / "model" / "w.bin").write_bytes(bytes(16))
    return path


def symlink_loop(tmp: Path) -> Path:
    path = save_with_initializer(tmp, external_tensor("w", "a"))
    (tmp / "model" / "a").symlink_to("b")
    (tmp / "model" / "b").symlink_to("a")
    return path


def escaping_from_tensors_attribute(tmp: Path) -> Path:
    """A TENSORS attribute is a list of tensors, each of which may name external data."""
    (tmp / "secret.bin").write_bytes(bytes(16))
    node = onnx.helper.make_node("Identity", ["x"], ["y"], name="id")
    node.attribute.append(onnx.helper.make_attribute("junk", [external_tensor("w", "../secret.bin")]))
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    graph = onnx.helper.make_graph([node], "g", [value], [onnx.helper.make_tensor_value_info("y", 1, [4])])
    return save_in_folder(tmp, graph)


def escaping_from_subgraph(tmp: Path, op_type: str) -> Path:
    """An initializer of an If branch or a Loop body names external data outside the folder."""
    (tmp / "secret.bin").write_bytes(bytes(16))
    out = onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [4])
    body_inputs = []
    body_outputs = [out]
    if op_type == "Loop":
        body_inputs = [
            onnx.helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
            onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
        ]
        body_outputs = [onnx.helper.make_tensor_value_info("c_out", onnx.TensorProto.BOOL, []), out]
    nodes = [onnx.helper.make_node("Identity", ["w"], ["b"], name="body_id")]
    if op_type == "Loop":
        nodes.append(onnx.helper.make_node("Identity", ["c"], ["c_out"], name="cond_id"))
    body = onnx.helper.make_graph(nodes, "body", body_inputs, body_outputs, [external_tensor("w", "../secret.bin")])
    if op_type == "If":
        node = onnx.helper.make_node("If", ["cond"], ["y"], name="if", then_branch=body, else_branch=body)
        inputs = [onnx.helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])]
    else:
        node = onnx.helper.make_node("Loop", ["n", ""], ["y"], name="loop", body=body)
        inputs = [onnx.helper.make_tensor_value_info("n", onnx.TensorProto.INT64, [])]
    output = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    return save_in_folder(tmp, onnx.helper.make_graph([node], "g", inputs, [output]))


def escaping_sparse_initializer(tmp: Path) -> Path:
    """Sparse initializers hold two tensors (values, indices); either may name external data."""
    (tmp / "secret.bin").write_bytes(bytes(16))
    indices = onnx.numpy_helper.from_array(np.array([0, 3], np.int64), "s_idx")
    sparse = onnx.helper.make_sparse_tensor(external_tensor("s", "../secret.bin", dims=(2,)), indices, [4])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "s"], ["y"], name="add")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
        sparse_initializer=[sparse],
    )
    return save_in_folder(tmp, graph)


def very_long_location(tmp: Path) -> Path:
    path = save_external(tmp / "model")
    point_external_data(path, "w" * 5000)
    return path


def non_utf8_name(tmp: Path) -> Path:
    """Protobuf does not check that strings are UTF-8; such a name comes back as bytes."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["QQQQ"], name="r"), onnx.helper.make_node("Relu", ["QQQQ"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
    )
    data = onnx.helper.make_model(graph).SerializeToString().replace(b"QQQQ", b"\xff\xfe\xfd\xfc")
    return write(tmp, data)


def non_utf8_location(tmp: Path) -> Path:
    path = save_external(tmp / "model")
    point_external_data(path, "QQQQ")
    path.write_bytes(path.read_bytes().replace(b"QQQQ", b"\xff\xfe\xfd\xfc"))
    return path


def undefined_data_type(tmp: Path) -> Path:
    weight = onnx.TensorProto(name="W", data_type=99, dims=[4], raw_data=bytes(16))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "W"], ["y"], name="add")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
        [weight],
    )
    return save_in_folder(tmp, graph)


HOSTILE = {
    "missing": (missing, "no such file"),
    "directory": (directory, "is a directory"),
    "empty": (empty, "is empty"),
    "cut_in_the_middle": (cut_in_the_middle, "does not parse"),
    "cut_in_the_first_node": (cut_in_the_first_node, "does not parse"),
    "cut_before_opset_import": (cut_before_opset_import, "imports no opset"),
    "cut_before_graph": (cut_before_graph, "not an ONNX model"),
    "text_file": (text_file, "not a valid ONNX model"),
    "onnx_text_syntax": (onnx_text_syntax, "not a valid ONNX model"),
    "json_file": (json_file, "not a valid ONNX model"),
    "random_bytes": (random_bytes, "not a valid ONNX model"),
    "png_file": (png_file, "not a valid ONNX model"),
    "zip_file": (zip_file, "not a valid ONNX model"),
    "tensor_protobuf": (tensor_protobuf, "not a valid ONNX model"),
    "nested_too_deep": (nested_too_deep, "does not parse"),
    "fifo": (fifo, "not a regular file"),
    "escaping_dotdot": (escaping_dotdot, "outside the model's folder"),
    "escaping_dotdot_nonexistent": (escaping_dotdot_nonexistent, "outside the model's folder"),
    "absolute_location": (absolute_location, "by absolute path"),
    "symlink_out_of_folder": (symlink_out_of_folder, "outside the model's folder"),
    "symlinked_subfolder_out": (symlinked_subfolder_out, "outside the model's folder"),
    "nul_in_location": (nul_in_location, "invalid external data location"),
    "escaping_from_function_body": (escaping_from_function_body, "outside the model's folder"),
    "escaping_from_tensors_attribute": (escaping_from_tensors_attribute, "outside the model's folder"),
    "string_external_data": (string_external_data, "no valid byte size"),
    "negative_dims": (negative_dims, "no valid byte size"),
    "symlink_loop": (symlink_loop, "invalid external data location"),
    "escaping_from_if_branch": (lambda tmp: escaping_from_subgraph(tmp, "If"), "outside the model's folder"),
    "escaping_from_loop_body": (lambda tmp: escaping_from_subgraph(tmp, "Loop"), "outside the model's folder"),
    "escaping_sparse_initializer": (escaping_sparse_initializer, "outside the model's folder"),
    "very_long_location": (very_long_location, "invalid external data location"),
    "non_utf8_name": (non_utf8_name, "is not UTF-8 text"),
    "non_utf8_location": (non_utf8_location, "external data location that is not UTF-8 text"),
    "undefined_data_type": (undefined_data_type, "tensor 'W' has data type 99, which ONNX does not define"),
}

# every command that reads a model refuses it the same way, before writing or running anything
COMMANDS = {
    "lint": ["lint"],
    "fix": ["fix"],
    "fix --no-verify": ["fix", "--no-verify"],
    "fix --fp16": ["fix", "--fp16"],
    "verify": ["verify"],
}


def snapshot(root: Path) -> dict[str, str]:
    """Every regular file under root by its hash, every symlink by its target: what must not change."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_symlink():
            files[str(path.relative_to(root))] = "-> " + os.readlink(path)
    return files


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(HOSTILE))
def test_cli_refuses_with_one_line_and_exit_2(case: str, command: str, tmp_path: Path, capsys):
    build, expected = HOSTILE[case]
    target = build(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_cli([*COMMANDS[command], str(target)], capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("graphdoctor: error: ")
    assert "Traceback" not in err and "internal error" not in err
    if (case, command) == ("directory", "lint"):  # lint searches a folder for models; this one holds none
        expected = "no ONNX model (*.onnx) found in"
    assert expected in lines[0]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", list(HOSTILE))
def test_api_raises_model_load_error(case: str, tmp_path: Path):
    build, expected = HOSTILE[case]
    with pytest.raises(ModelLoadError, match=expected):
        api.lint(build(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path, capsys):
    path = save_inline(tmp_path)
    path.chmod(0)
    code, _, err = run_cli(["lint", str(path)], capsys)
    assert code == 2
    assert err.startswith("graphdoctor: error: ") and "cannot be read" in err


@pytest.mark.skipif(not GRAPHDOCTOR.exists(), reason="graphdoctor is not installed beside this Python")
@pytest.mark.parametrize("case", ["missing", "escaping_dotdot", "cut_in_the_middle"])
def test_installed_command_exits_2_with_one_line(case: str, tmp_path: Path):
    """The console script itself, in a fresh process: the exit code and stderr a CI job sees."""
    target = HOSTILE[case][0](tmp_path)
    result = subprocess.run([str(GRAPHDOCTOR), "lint", str(target)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("graphdoctor: error: ")


# --- valid models: linted, never modified --------------------------------------------------------


def test_lint_leaves_a_normal_model_byte_identical(tmp_path: Path, capsys):
    path = save_inline(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_cli(["lint", "--exit-zero", str(path)], capsys)
    assert code == 0 and err == ""
    assert str(path) in out
    assert snapshot(tmp_path) == before  # same bytes, and no stray file beside it


def test_model_with_external_data_lints_and_stays_unchanged(tmp_path: Path):
    path = save_external(tmp_path)
    before = snapshot(tmp_path)
    result = api.lint(path)
    assert not any(f.code == "GD014" for f in result.findings)
    assert snapshot(tmp_path) == before


def test_model_saved_with_onnx_ir_external_data(tmp_path: Path):
    model = ir.serde.deserialize_model(conv_model())
    ir.save(model, tmp_path / "model.onnx", external_data="model.onnx.data")
    assert (tmp_path / "model.onnx.data").is_file()
    before = snapshot(tmp_path)
    assert [f for f in api.lint(tmp_path / "model.onnx").findings if f.code == "GD014"] == []
    assert snapshot(tmp_path) == before


def test_external_data_read_through_the_models_folder_not_the_cwd(tmp_path: Path, monkeypatch):
    """Locations are relative to the model's folder whatever the working directory."""
    path = save_external(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    assert [f for f in api.lint(path).findings if f.code == "GD014"] == []


def test_symlink_that_stays_inside_the_folder_is_accepted(tmp_path: Path):
    path = save_external(tmp_path)
    (tmp_path / "weights.bin").rename(tmp_path / "real.bin")
    (tmp_path / "weights.bin").symlink_to("real.bin")
    assert [f for f in api.lint(path).findings if f.code == "GD014"] == []


def test_symlinked_model_file_reads_data_beside_its_target(tmp_path: Path):
    """`lint link.onnx` where link.onnx points into the model's folder: the data lives beside the target."""
    path = save_external(tmp_path / "model")
    (tmp_path / "link.onnx").symlink_to(path)
    assert [f for f in api.lint(tmp_path / "link.onnx").findings if f.code == "GD014"] == []


@pytest.mark.torch
def test_real_export_cut_in_the_middle(tmp_path: Path, capsys):
    from fixtures import torch_exports

    data = torch_exports.path("mobilenet_v3_large").read_bytes()
    target = write(tmp_path, data[: len(data) // 2])
    code, _, err = run_cli(["lint", str(target)], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("graphdoctor: error: ")


@pytest.mark.torch
def test_real_export_with_external_data(tmp_path: Path):
    """A torchvision export re-saved with its weights in one external file lints like the original."""
    from fixtures import torch_exports

    source = torch_exports.path("mobilenet_v3_large")
    model = onnx.load_model(source)
    onnx.save_model(model, tmp_path / "model.onnx", save_as_external_data=True, location="weights.bin")
    before = snapshot(tmp_path)
    inline = api.lint(source).findings
    external = api.lint(tmp_path / "model.onnx").findings
    assert not any(f.code == "GD014" for f in external)
    assert sorted((f.code, f.location) for f in external) == sorted((f.code, f.location) for f in inline)
    assert snapshot(tmp_path) == before
