"""Running a model too large to hold in memory: one segment of its graph at a time, on ONNX Runtime CPU.

A session maps every weight of its model, and a run touches them all: verifying a 2.3 GB model costs 2.6 GB
of resident memory, twice when the reference and the fixed model are compared. Here the main graph's nodes,
in their (topological) order, are cut into consecutive segments holding at most `budget` bytes of weights
each. Each segment becomes a small model of its own, whose initializers still point at the original external
data file, and runs alone: its inputs are the graph inputs and activations that earlier segments computed,
and its outputs those that later segments or the graph outputs read. An activation is dropped as soon as no
later segment reads it. Peak memory is one segment's weights plus the live activations.

With graph optimizations and weight prepacking off, every node runs the same kernel on the same inputs as in
the whole model, so the outputs are bit-identical to a whole-model run with both off: a faithful oracle
for `fix`'s gate, not an approximation.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from graphdoctor.errors import GraphDoctorError, first_line
from graphdoctor.verify.backends import Backend
from graphdoctor.verify.backends.onnxruntime import EXTERNAL_FOLDER, as_written, quiet_session_options

__all__ = ["SEGMENT_BYTES", "SegmentedOnnxruntimeBackend"]

SEGMENT_BYTES = 256 * 1024 * 1024


@dataclass
class _Segment:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    weights: dict[str, onnx.TensorProto] = field(default_factory=dict)
    weight_bytes: int = 0
    reads: set[str] = field(default_factory=set)
    produces: set[str] = field(default_factory=set)


class SegmentedOnnxruntimeBackend(Backend):
    """ONNX Runtime CPU, graph optimizations and weight prepacking off, a segment of at most `budget` weight
    bytes at a time."""

    def __init__(self, budget: int | None = None) -> None:
        budget = budget or SEGMENT_BYTES
        self.budget = budget
        self.name = "onnxruntime-cpu-unoptimized"
        self.precision = (
            f"the model's dtypes; graph optimizations and weight prepacking off; run in segments of at most"
            f" {budget // 1024**2} MiB of weights each (bit-identical to a whole run)"
        )

    def run(
        self, model: Path, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        proto = onnx.load_model(os.fspath(model), load_external_data=False)
        wanted = list(outputs) if outputs is not None else [o.name for o in proto.graph.output]
        segments = list(_segments(proto.graph, self.budget))
        last_reader = _last_readers(segments, wanted)
        env = {name: value for name, value in inputs.items() if name in {i.name for i in proto.graph.input}}
        for index, segment in enumerate(segments):
            env.update(_run_segment(proto, segment, env, index, last_reader, model))
            for name in [n for n in env if last_reader.get(n, -1) <= index and n not in wanted]:
                del env[name]  # no later segment reads it
        missing = [name for name in wanted if name not in env]
        if missing:
            raise GraphDoctorError(f"ONNX Runtime CPU cannot run {model.name}: outputs {missing} were not computed")
        return {name: env[name] for name in wanted}


def _segments(graph: onnx.GraphProto, budget: int) -> Iterator[_Segment]:
    """Consecutive nodes whose newly read weights stay within `budget` (a single larger weight gets its own)."""
    weights = {tensor.name: tensor for tensor in graph.initializer}
    segment = _Segment()
    for node in graph.node:
        reads = _reads(node)
        new = {name: weights[name] for name in reads if name in weights and name not in segment.weights}
        new_bytes = sum(_nbytes(tensor) for tensor in new.values())
        if segment.nodes and segment.weight_bytes + new_bytes > budget:
            yield segment
            segment = _Segment()
            new = {name: weights[name] for name in reads if name in weights}
            new_bytes = sum(_nbytes(tensor) for tensor in new.values())
        segment.nodes.append(node)
        segment.weights.update(new)
        segment.weight_bytes += new_bytes
        segment.reads |= reads
        segment.produces |= {name for name in node.output if name}
    if segment.nodes:
        yield segment


def _reads(node: onnx.NodeProto) -> set[str]:
    """Names a node reads: its inputs, and outer-scope names its subgraphs (If/Loop/Scan bodies) capture."""
    names = {name for name in node.input if name}
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            names |= _captured(graph)
    return names


def _captured(graph: onnx.GraphProto) -> set[str]:
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {name for node in graph.node for name in node.output}
    return {name for node in graph.node for name in _reads(node)} - defined


def _nbytes(tensor: onnx.TensorProto) -> int:
    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    return tensor.ByteSize()


def _last_readers(segments: list[_Segment], wanted: Sequence[str]) -> dict[str, int]:
    """For each name, the index of the last segment that reads it."""
    last: dict[str, int] = {}
    for index, segment in enumerate(segments):
        for name in segment.reads:
            last[name] = index
    for name in wanted:
        last[name] = len(segments)
    return last


def _run_segment(
    proto: onnx.ModelProto,
    segment: _Segment,
    env: Mapping[str, np.ndarray],
    index: int,
    last_reader: Mapping[str, int],
    model: Path,
) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    feeds = {name: env[name] for name in segment.reads if name in env and name not in segment.weights}
    outputs = sorted(name for name in segment.produces if last_reader.get(name, -1) > index)
    piece = _segment_model(proto, segment, feeds, outputs)
    options = quiet_session_options()
    as_written(options)
    options.add_session_config_entry(EXTERNAL_FOLDER, os.fspath(model.resolve().parent))
    try:
        session = ort.InferenceSession(piece.SerializeToString(), options, providers=["CPUExecutionProvider"])
        results = session.run(outputs, feeds) if outputs else []
    except Exception as error:  # onnxruntime raises its own exception types
        raise GraphDoctorError(
            f"ONNX Runtime CPU cannot run {model.name} (segment {index + 1}): {first_line(error)}"
        ) from None
    del session
    gc.collect()  # unmap this segment's weights before the next one maps its own
    return dict(zip(outputs, results, strict=True))


def _segment_model(
    proto: onnx.ModelProto, segment: _Segment, feeds: Mapping[str, np.ndarray], outputs: list[str]
) -> onnx.ModelProto:
    graph = onnx.GraphProto(name=f"{proto.graph.name}_segment", node=segment.nodes)
    graph.initializer.extend(segment.weights.values())
    for name, value in feeds.items():
        elem_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        graph.input.append(onnx.helper.make_tensor_value_info(name, elem_type, value.shape))
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)  # ONNX Runtime infers the types
    piece = onnx.ModelProto(ir_version=proto.ir_version, graph=graph)
    piece.opset_import.extend(proto.opset_import)
    piece.functions.extend(proto.functions)
    return piece
