"""A low-precision graph as ONNX Runtime's CPU provider runs it: with the Casts it inserts, in graph order.

Why: the CPU provider has no FP16 or BF16 kernel for most ops. When it loads such a graph, it inserts Casts
so that those ops run in FP32, and chains of them become FP32 regions whose tensors are renamed
('InsertedPrecisionFreeCast_<name>'). The inserted nodes come last in its node order, and a session that
follows the graph's order (verify.lockstep's merged session) runs them only when nothing else is ready: the
reference model then runs far ahead of a converted candidate, and every reference tensor waits for its pair's
statistics (Whisper-tiny's FP32 encoder against its FP16 conversion peaked at 1.2 GB for a 31 MB model). Done
before merging instead, in a session that saves the graph it would run (topologically ordered, nothing
computed), the Casts stand where they belong. Each tensor of the written graph that now lives under its FP32
name gets a Cast back to its own type right after its producer: what fetching that tensor makes ONNX Runtime
compute, so the statistics see the values a fetch would.

When anything differs from that pattern (another naming, a weight written out of the graph), the graph is
left as written.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper
from onnx.external_data_helper import load_external_data_for_tensor

__all__ = ["as_placed", "holds_low_precision"]

logger = logging.getLogger("graphdoctor")

_RENAMED = "InsertedPrecisionFreeCast_"  # ONNX Runtime's name for a tensor it moved to FP32
_LOW = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})


def holds_low_precision(model: onnx.ModelProto) -> bool:
    """Whether the main graph has FP16 or BF16 weights or inputs (a converted model)."""
    graph = model.graph
    if any(t.data_type in _LOW for t in graph.initializer):
        return True
    return any(v.type.tensor_type.elem_type in _LOW for v in (*graph.input, *graph.value_info))


def as_placed(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """`model` (its external data in `folder`) with the nodes ONNX Runtime's CPU provider runs for it, or
    `model` itself when they cannot be had (see the module docstring)."""
    known = {t.name for t in model.graph.initializer}
    placed = _saved_by_onnxruntime(model, folder, known)
    if placed is None:
        return model
    initializers = {t.name for t in placed.graph.initializer}
    produced = {name for node in placed.graph.node for name in node.output} | initializers
    types = _output_types(model)
    nodes: list[onnx.NodeProto] = []
    for node in placed.graph.node:
        nodes.append(node)
        for output in node.output:
            name = output.removeprefix(_RENAMED)
            if output.startswith(_RENAMED) and name in types and name not in produced:
                nodes.append(helper.make_node("Cast", [output], [name], name=f"{output}/back", to=types[name]))
    added = [t for t in placed.graph.initializer if t.name not in known]  # Constant nodes become initializers
    nodes += _dropped(model, nodes, initializers)
    written = {name for node in model.graph.node for name in node.output if name}
    if not written <= {name for node in nodes for name in node.output} | {t.name for t in added}:
        logger.info("layer-wise: ONNX Runtime's Casts leave tensors unnamed; the graph is merged as written")
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)  # weights referenced (external or in place) or small: a cheap copy
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    result.graph.initializer.extend(added)
    del result.opset_import[:]
    result.opset_import.extend(placed.opset_import)
    return result


def _dropped(model: onnx.ModelProto, nodes: list[onnx.NodeProto], initializers: set[str]) -> list[onnx.NodeProto]:
    """The written nodes whose every output ONNX Runtime dropped (an input's Cast to FP16 that the FP32 region
    after it does not read), readable from what the placed graph has: what fetching them computes."""
    available = {v.name for v in model.graph.input} | initializers | {o for n in nodes for o in n.output}
    dropped = []
    for node in model.graph.node:
        if not any(o in available for o in node.output) and all(not i or i in available for i in node.input):
            dropped.append(node)
            available.update(node.output)
    return dropped


def _saved_by_onnxruntime(model: onnx.ModelProto, folder: Path, known: set[str]) -> onnx.ModelProto | None:
    """The graph a CPU session with no optimization runs, as ONNX Runtime saves it: the weights it writes out
    are not read back, but for those not `known` (Constant nodes it made initializers), read inline."""
    import onnxruntime as ort

    from graphdoctor.verify.backends.onnxruntime import EXTERNAL_FOLDER, quiet_session_options

    with tempfile.TemporaryDirectory(prefix="graphdoctor-casts-") as scratch:
        target = os.path.join(scratch, "placed.onnx")
        options = quiet_session_options()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.optimized_model_filepath = target
        options.add_session_config_entry(EXTERNAL_FOLDER, os.fspath(folder))
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            placed = onnx.load_model(target, load_external_data=False)
            for tensor in placed.graph.initializer:
                if tensor.name not in known and tensor.data_location == TensorProto.EXTERNAL:
                    load_external_data_for_tensor(tensor, scratch)
                    tensor.data_location = TensorProto.DEFAULT
                    del tensor.external_data[:]
            return placed
        except Exception:  # onnxruntime raises its own types; the merged session says what fails, if anything
            return None


def _output_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of each node output the graph declares (shape inference fills in the rest)."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # onnx raises its own types; then only the declared types are known
        inferred = model
    graph = inferred.graph
    return {
        v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output) if v.type.tensor_type.elem_type
    }
