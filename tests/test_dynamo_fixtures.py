"""The dynamo-exporter and T5 fixtures hold what the FP16 converter's tests rely on.

Each builder's docstring states what its model reproduces; these checks fail first, and name the fact that moved,
when an exporter or transformers upgrade changes it: value_info on initializers (what broke `fix --fp16` on every
dynamo export), T5's bucket ids computed in float, the LayerNorm squares that overflow FP16.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fixtures import torch_exports

pytestmark = pytest.mark.torch

DYNAMO = [
    "dynamo_cnn",
    "dynamo_cnn_unoptimized",
    "dynamo_vit",
    "dynamo_bert",
    "dynamo_whisper_encoder",
    "lraspp_dynamo",
    "t5_encoder_dynamo",
]
T5_BUCKETS = ["t5_encoder", "t5_encoder_dynamo"]
ALL = [*DYNAMO, "t5_encoder", "t5_large_activations"]
FP16_MAX = 65504.0
MAX_MIB = 15


@functools.cache
def load(name: str) -> onnx.ModelProto:
    return onnx.load(str(torch_exports.path(name)))


def op_types(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


def cast_to(node: onnx.NodeProto) -> int:
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "to")


def upstream(model: onnx.ModelProto, tensor: str) -> Iterator[onnx.NodeProto]:
    """The nodes `tensor` is computed from, nearest first."""
    producers = {output: node for node in model.graph.node for output in node.output}
    queue, seen = [tensor], {tensor}
    while queue:
        node = producers.get(queue.pop(0))
        if node is None:
            continue
        yield node
        for name in node.input:
            if name and name not in seen:
                seen.add(name)
                queue.append(name)


def block_of(node: onnx.NodeProto) -> str | None:
    """The T5 block a TorchScript-exported node belongs to ('/model/encoder/block.2/layer.0/...' -> '2')."""
    match = re.search(r"/block\.(\d+)/", node.name)
    return match.group(1) if match else None


def run(path: Path | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("name", ALL)
def test_runs_on_sample_inputs_with_finite_outputs(name: str):
    path = torch_exports.path(name)
    assert path.stat().st_size < MAX_MIB * 2**20
    outputs = run(path, torch_exports.sample_inputs(path))
    assert outputs
    assert all(output.size and np.isfinite(output).all() for output in outputs)


@pytest.mark.parametrize("name", DYNAMO)
def test_dynamo_exports_state_value_info_for_every_initializer(name: str):
    """The TorchScript exporter writes none; a converter that retypes initializers must retype these too."""
    model = load(name)
    initializers = {init.name for init in model.graph.initializer}
    assert initializers
    assert initializers <= {value.name for value in model.graph.value_info}


def test_dynamo_optimize_setting_shows_in_the_cnn():
    """optimize=True (the default) folds BatchNorm into Conv; optimize=False keeps it, with CastLike and Expand."""
    assert "BatchNormalization" not in op_types(load("dynamo_cnn"))
    assert {"BatchNormalization", "CastLike", "Expand"} <= op_types(load("dynamo_cnn_unoptimized"))


@pytest.mark.parametrize("name", ["dynamo_vit", "dynamo_bert", "dynamo_whisper_encoder"])
def test_transformer_exports_use_layernormalization(name: str):
    assert "LayerNormalization" in op_types(load(name))


def test_dynamo_bert_has_dynamic_batch_and_sequence():
    model = load("dynamo_bert")
    dims = {value.name: [d.dim_param for d in value.type.tensor_type.shape.dim] for value in model.graph.input}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}


@pytest.mark.parametrize("name", T5_BUCKETS)
def test_t5_computes_position_buckets_as_integers_in_float(name: str):
    """Cast(int64->float) -> ... Log ... -> Cast(->int64) -> ... -> Gather of the bias table, on 128 tokens.

    The sequence is symbolic (a static one would be folded into a constant bucket table); sample_inputs gives
    it 128 tokens, so relative distances 16, 32 and 64 land in the log-spaced buckets.
    """
    model = onnx.shape_inference.infer_shapes(load(name))
    graph = model.graph
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    bias_tables = {init.name for init in graph.initializer if list(init.dims) == [32, 2]}
    [bias_gather] = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in bias_tables]

    to_int = [
        n for n in upstream(model, bias_gather.input[1]) if n.op_type == "Cast" and cast_to(n) == onnx.TensorProto.INT64
    ]
    logs = [n for cast in to_int for n in upstream(model, cast.input[0]) if n.op_type == "Log"]
    assert logs, "no Log between the position ids and the bias Gather"
    from_int = [
        n
        for n in upstream(model, logs[0].input[0])
        if n.op_type == "Cast" and cast_to(n) == onnx.TensorProto.FLOAT and dtypes[n.input[0]] == onnx.TensorProto.INT64
    ]
    assert from_int, "the Log does not start from an int64 tensor cast to float"
    feeds = torch_exports.sample_inputs(torch_exports.path(name))
    assert feeds["input_ids"].shape[1] > 64


def test_t5_large_activations_overflow_fp16_in_the_layernorm_squares():
    """The squares exceed 65504 in at least 3 of the 4 blocks, while the FP32 outputs stay finite."""
    path = torch_exports.path("t5_large_activations")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    typed = {value.name: value for value in model.graph.value_info}
    squares = [node for node in model.graph.node if node.op_type == "Pow"]
    model.graph.output.extend(typed[node.output[0]] for node in squares)  # a temporary copy, not the fixture

    final, *square_values = run(model.SerializeToString(), torch_exports.sample_inputs(path))
    overflowing_blocks = {
        block_of(node) for node, value in zip(squares, square_values, strict=True) if np.abs(value).max() > FP16_MAX
    } - {None}
    assert len(overflowing_blocks) >= 3
    assert np.isfinite(final).all()
    assert np.abs(final).max() < FP16_MAX
