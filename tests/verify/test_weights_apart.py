"""The graph cut apart from its weights at the protobuf wire level and joined again: the same model, byte for
byte in meaning, with the weights never parsed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fixtures import divergence
from graphdoctor.verify.weights_apart import load_apart


def _sparse_model() -> onnx.ModelProto:
    dense = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    values = numpy_helper.from_array(np.array([5.0], dtype=np.float32), "s")
    indices = numpy_helper.from_array(np.array([4], dtype=np.int64), "s_indices")
    sparse = helper.make_sparse_tensor(values, indices, [2, 3])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "s"], ["y"])],
        "sparse",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        initializer=[dense],
        sparse_initializer=[sparse],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_inline_weights_are_cut_out_and_joined_back(tmp_path: Path):
    reference, _ = divergence.chain_pair(tmp_path)
    apart = load_apart(reference)
    assert not apart.graph.graph.initializer and len(apart.weights) == len(onnx.load(reference).graph.initializer)
    assert onnx.ModelProto.FromString(apart.serialized()) == onnx.load(reference)


def test_sparse_and_external_weights_keep_their_place(tmp_path: Path):
    path = tmp_path / "m.onnx"
    onnx.save(_sparse_model(), path, save_as_external_data=True, size_threshold=0)
    apart = load_apart(path)
    joined = onnx.ModelProto.FromString(apart.serialized())
    assert joined == onnx.load(path, load_external_data=False)
    assert joined.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    assert len(joined.graph.sparse_initializer) == 1


def test_a_changed_graph_keeps_the_weights(tmp_path: Path):
    reference, _ = divergence.chain_pair(tmp_path)
    apart = load_apart(reference)
    del apart.graph.graph.output[:]
    apart.graph.graph.output.append(onnx.ValueInfoProto(name="h1"))
    joined = onnx.ModelProto.FromString(apart.serialized())
    assert [o.name for o in joined.graph.output] == ["h1"]
    assert list(joined.graph.initializer) == list(onnx.load(reference).graph.initializer)


def test_a_file_that_is_not_protobuf_is_refused(tmp_path: Path):
    path = tmp_path / "not.onnx"
    path.write_bytes(b"\x0f\xff\xff")
    with pytest.raises(ValueError, match="not an ONNX model"):
        load_apart(path)
