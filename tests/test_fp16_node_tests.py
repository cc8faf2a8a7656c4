"""bench/fp16_node_tests.py on a folder of two hand-made node tests (the onnx package's 1,884 take minutes):
a sequence output converted and verified, a model ONNX Runtime cannot run refused, the outcome table and the
sanity column against the test's expected outputs; and the test-data protos it writes and reads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures.handmade import model_from_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # worker processes inherit it

import fp16_node_tests

SPLIT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[4,8] x) => (seq(float[2,8]) y) <float[1] k = {1.5}, int64[2] parts = {2, 2}> {
    scaled = Mul(x, k)
    y = SplitToSequence <axis = 0> (scaled, parts)
}"""
UNKNOWN = """<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
g (float[4] x) => (float[4] y) {
    y = com.example.Mystery(x)
}"""


def write_node_test(root: Path, name: str, model: onnx.ModelProto, inputs: list, outputs: list) -> Path:
    folder = root / name
    data = folder / "test_data_set_0"
    data.mkdir(parents=True)
    onnx.save_model(model, folder / "model.onnx")
    fp16_node_tests._write_values(data, "input", inputs, model.graph.input)
    fp16_node_tests._write_values(data, "output", outputs, model.graph.output)
    return folder


@pytest.fixture
def node_tests(tmp_path: Path) -> Path:
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    write_node_test(tmp_path, "test_split_seq", model_from_text(SPLIT), [x], [[x[:2] * 1.5, x[2:] * 1.5]])
    unknown = model_from_text(UNKNOWN, check=False)
    write_node_test(tmp_path, "test_unknown_op", unknown, [x[0]], [x[0]])
    return tmp_path


def test_sequence_values_round_trip_through_the_test_protos(node_tests: Path):
    model = onnx.load_model(node_tests / "test_split_seq" / "model.onnx")
    data = node_tests / "test_split_seq" / "test_data_set_0"
    (expected,) = fp16_node_tests.read_values(data, "output", model.graph.output)
    assert isinstance(expected, list) and [part.shape for part in expected] == [(2, 8), (2, 8)]


def test_bench_classifies_each_outcome_and_finds_no_internal_error(
    node_tests: Path, capsys: pytest.CaptureFixture[str]
):
    code = fp16_node_tests.main(["--root", str(node_tests), "--jobs", "1", "--timeout", "120"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| written+verified | 1 |" in out and "| refused | 1 |" in out
    assert "| INTERNAL ERROR | 0 |" in out
    assert "  agrees: 1" in out  # the converted sequence model still matches the test's expected output
    assert "ONNX Runtime CPU cannot run" in out  # the refusal, grouped by its first words


def test_first_words_group_refusals_whatever_the_path_and_names():
    one = "/tmp/a/model.onnx: input 'x' has no declared type or shape; pass --inputs FILE"
    two = "/tmp/b/model.onnx: input 'seq' has no declared type or shape; pass --inputs FILE"
    assert fp16_node_tests.first_words(one) == fp16_node_tests.first_words(two) == "input '…' has no declared"
