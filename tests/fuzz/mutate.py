"""Mutators: each takes a seeded `random.Random` and changes a model (or its bytes) the way a truncated
download, a buggy exporter or an attacker would. Every mutator returns a short description of what it did,
which the failure report carries so a developer can read a case without replaying it.

Byte-level mutators work on the serialized file; protobuf-level ones on an `onnx.ModelProto` (every tensor,
attribute and graph reachable, subgraphs and function bodies included); `to_bytes_patch` lets a protobuf
mutator finish its work on the bytes (protobuf refuses to hold non-UTF-8 strings).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from graphdoctor.protowire import encode_varint, read_varint

__all__ = ["BYTE_MUTATORS", "PROTO_MUTATORS", "Mutated", "NotApplicable", "all_graphs", "all_tensors"]

HUGE = 10**12
INT64_MAX = 2**63 - 1


class NotApplicable(ValueError):
    """The seed has nothing this mutator changes (no INT64 tensor, no node attribute...): pick another."""


@dataclass
class Mutated:
    """What a protobuf mutator leaves for the case builder: byte patches applied after serializing."""

    patches: list[tuple[bytes, bytes]] = field(default_factory=list)  # (marker, replacement), same length


# --- walking a ModelProto ---------------------------------------------------------------------------------


def all_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every subgraph (If/Loop/Scan bodies), including those inside function bodies."""

    def walk(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
        yield graph
        for node in graph.node:
            yield from _subgraphs(node)

    def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from walk(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from walk(g)

    yield from walk(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _subgraphs(node)


def all_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    nodes = [node for graph in all_graphs(model) for node in graph.node]
    return nodes + [node for function in model.functions for node in function.node]


def all_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    """Initializers and tensor attributes everywhere (sparse initializers' values and indices too)."""
    tensors: list[TensorProto] = []
    for graph in all_graphs(model):
        tensors += graph.initializer
        for sparse in graph.sparse_initializer:
            tensors += [sparse.values, sparse.indices]
    for node in all_nodes(model):
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                tensors.append(attr.t)
            elif attr.type == AttributeProto.TENSORS:
                tensors += attr.tensors
    return tensors


def _pick(rng: random.Random, items):
    items = list(items)
    return rng.choice(items) if items else None


def _value_names(model: onnx.ModelProto) -> list[str]:
    names = {name for node in model.graph.node for name in (*node.input, *node.output) if name}
    names |= {value.name for value in (*model.graph.input, *model.graph.output)}
    return sorted(names)


def _rename(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename value `old` to `new` everywhere in the main graph (nodes, I/O, initializers, value_info)."""
    graph = model.graph
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if value.name == old:
            value.name = new


# --- byte level -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    start: int  # the tag's first byte
    end: int  # one past the payload
    length_at: tuple[int, int] | None  # the length varint's span, for length-delimited fields


def wire_fields(data: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list[_Field]:
    """Every protobuf field in `data`, descending into length-delimited payloads that parse as messages
    (four levels deep: model → graph → node/tensor → attribute), without knowing the schema."""
    end = len(data) if end is None else end
    fields: list[_Field] = []
    pos = start
    while pos < end:
        field_start = pos
        tag, pos = read_varint(data, pos)
        wire = tag & 7
        if tag >> 3 == 0:
            raise ValueError("field 0")
        length_at = None
        if wire == 0:
            _, pos = read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length_start = pos
            length, pos = read_varint(data, pos)
            length_at = (length_start, pos)
            payload = pos
            pos += length
            if pos <= end and depth < 4:
                with contextlib.suppress(ValueError):  # bytes or a string, not a message
                    fields += wire_fields(data, payload, pos, depth + 1)
        else:
            raise ValueError("wire type")
        if pos > end:
            raise ValueError("overrun")
        fields.append(_Field(field_start, pos, length_at))
    return fields


def truncate_random(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    cut = rng.randrange(len(data))
    return data[:cut], f"truncated at byte {cut} of {len(data)}"


def truncate_boundary(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Cut at the start or end of a field: the result often still parses, with a message missing."""
    field_ = rng.choice(wire_fields(data))
    cut = rng.choice([field_.start, field_.end, field_.end - 1])
    return data[:cut], f"truncated at field boundary {cut} of {len(data)}"


def bit_flips(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    flips = [(rng.randrange(len(out)), rng.randrange(8)) for _ in range(rng.choice([1, 1, 2, 4, 16]))]
    for index, bit in flips:
        out[index] ^= 1 << bit
    return bytes(out), f"flipped bits {flips[:4]}{'...' if len(flips) > 4 else ''}"


def varint_length(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Rewrite one length prefix: shorter, longer, zero, or a huge ten-byte varint."""
    candidates = [f for f in wire_fields(data) if f.length_at is not None]
    field_ = rng.choice(candidates)
    begin, end = field_.length_at
    old, _ = read_varint(data, begin)
    new = rng.choice([0, max(old - 1, 0), old + 1, old * 2 + 7, 2**31, 2**63, 2**64 - 1])
    return data[:begin] + encode_varint(new) + data[end:], f"length at byte {begin}: {old} -> {new}"


def append_garbage(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    kind = rng.choice(["random", "zeros", "tag", "model"])
    if kind == "random":
        tail = rng.randbytes(rng.choice([1, 7, 100, 4096]))
    elif kind == "zeros":
        tail = bytes(rng.choice([1, 64]))
    elif kind == "tag":  # a graph field (7, length-delimited) whose length runs past the end
        tail = b"\x3a" + encode_varint(rng.choice([10, 2**20, 2**40]))
    else:  # a second model concatenated: protobuf merges the two
        tail = data
    return data + tail, f"appended {len(tail)} bytes ({kind})"


BYTE_MUTATORS: dict[str, Callable[[random.Random, bytes], tuple[bytes, str]]] = {
    "truncate": truncate_random,
    "truncate-boundary": truncate_boundary,
    "bit-flip": bit_flips,
    "varint-length": varint_length,
    "append": append_garbage,
}


# --- protobuf level: tensors ------------------------------------------------------------------------------


def _tensor(rng: random.Random, model: onnx.ModelProto, dtype: int | None = None) -> TensorProto | None:
    tensors = [t for t in all_tensors(model) if dtype is None or t.data_type == dtype]
    return _pick(rng, tensors)


def dims(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    tensor = _tensor(rng, model)
    if tensor is None:
        raise NotApplicable("no tensor")
    kind = rng.choice(["negative", "zero", "huge", "contradict", "many"])
    old = list(tensor.dims)
    if kind == "negative":
        new = [-1] * max(len(old), 2) if rng.random() < 0.5 else [*old[:-1], -rng.choice([1, 2, HUGE])]
    elif kind == "zero":
        new = [*old, 0] if not old else [0, *old[1:]]
    elif kind == "huge":
        new = [HUGE, *old[1:]] if old else [HUGE]
    elif kind == "contradict":  # the payload holds prod(old) elements
        new = [*old, 3] if rng.random() < 0.5 else old[:-1] or [2]
    else:
        new = [1] * 64 + [2]
    del tensor.dims[:]
    tensor.dims.extend(new)
    return f"tensor '{tensor.name}' dims {old} -> {new[:8]} ({kind})"


def dtype(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    tensor = _tensor(rng, model)
    if tensor is None:
        raise NotApplicable("no tensor")
    new = rng.choice([TensorProto.UNDEFINED, 99, 2**31 - 1, TensorProto.STRING, TensorProto.COMPLEX128, 23, 24])
    old = tensor.data_type
    tensor.data_type = new
    return f"tensor '{tensor.name}' data_type {old} -> {new}"


def raw_data_misaligned(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    tensor = _pick(rng, [t for t in all_tensors(model) if t.raw_data])
    if tensor is None:
        raise NotApplicable("no raw_data")
    cut = rng.choice([-3, -1, 1, 5])
    tensor.raw_data = tensor.raw_data[:cut] if cut < 0 else tensor.raw_data + bytes(cut)
    return f"tensor '{tensor.name}' raw_data {cut:+d} bytes"


def typed_data_mismatch(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    """int64_data in a FLOAT tensor, or float_data in an INT64 one, or both raw_data and a typed field."""
    tensor = _tensor(rng, model)
    if tensor is None:
        raise NotApplicable("no tensor")
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    count = min(max(count, 1), 4096)
    kind = rng.choice(["int64_data", "float_data", "both", "string_data"])
    if kind != "both":
        tensor.ClearField("raw_data")
    if kind in ("int64_data", "both"):
        tensor.int64_data.extend(range(count))
    elif kind == "float_data":
        tensor.float_data.extend([1.5] * count)
    else:
        tensor.string_data.extend([b"x"] * count)
    return f"tensor '{tensor.name}' ({tensor.data_type}) given {kind}"


def string_constant(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    """A float initializer or Constant replaced by strings; its readers and the float outputs stay."""
    tensor = _tensor(rng, model, TensorProto.FLOAT)
    if tensor is None:
        raise NotApplicable("no float tensor")
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_type = TensorProto.STRING
    tensor.string_data.extend([b"3.0"] * min(count, 4096))
    return f"tensor '{tensor.name}' FLOAT -> STRING"


def output_elem_type(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    value = rng.choice([*model.graph.output, *model.graph.input])
    new = rng.choice([0, 99, TensorProto.STRING])
    if value.type.HasField("tensor_type"):
        value.type.tensor_type.elem_type = new
    else:
        value.type.Clear()
    return f"graph value '{value.name}' elem_type -> {new}"


def io_dims(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    """Negative, zero or 10^12 dims on a graph input or output (inputs are generated from them)."""
    value = rng.choice([*model.graph.input, *model.graph.output])
    shape = value.type.tensor_type.shape
    if not shape.dim:
        shape.dim.add()
    dim = rng.choice(shape.dim)
    new = rng.choice([-1, -(2**40), 0, HUGE, 2**62, 100_000_000])
    dim.dim_value = new
    return f"graph value '{value.name}' dim -> {new}"


def value_info_huge(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    """value_info declaring a DOUBLE tensor of 10^12 elements for an intermediate value."""
    names = [name for node in model.graph.node for name in node.output if name]
    name = rng.choice(names) if names else "ghost"
    model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, [10**6, 10**6]))
    return f"value_info '{name}': DOUBLE[10^6, 10^6]"


def huge_shape_constant(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    """ConstantOfShape, Expand or Tile of 10^12 elements feeding an added graph output."""
    op = rng.choice(["ConstantOfShape", "Expand", "Tile", "Reshape-existing"])
    graph = model.graph
    big = helper.make_tensor("gd_fuzz_big", TensorProto.INT64, [2], [10**6, 10**6])
    if op == "Reshape-existing":  # every INT64 initializer holding a shape becomes 10^12
        shaped = [t for t in all_tensors(model) if t.data_type == TensorProto.INT64 and len(t.dims) == 1]
        for tensor in shaped:
            count = tensor.dims[0]
            tensor.ClearField("raw_data")
            tensor.ClearField("int64_data")
            tensor.int64_data.extend([10**6] * count)
        return f"{len(shaped)} INT64 vectors set to 10^6 each"
    graph.initializer.append(big)
    if op == "ConstantOfShape":
        node = helper.make_node("ConstantOfShape", ["gd_fuzz_big"], ["gd_fuzz_out"], name="gd_fuzz_cos")
    elif op == "Expand":
        graph.initializer.append(helper.make_tensor("gd_fuzz_one", TensorProto.FLOAT, [1, 1], [1.0]))
        node = helper.make_node("Expand", ["gd_fuzz_one", "gd_fuzz_big"], ["gd_fuzz_out"], name="gd_fuzz_expand")
    else:
        graph.initializer.append(helper.make_tensor("gd_fuzz_one", TensorProto.FLOAT, [1, 1], [1.0]))
        node = helper.make_node("Tile", ["gd_fuzz_one", "gd_fuzz_big"], ["gd_fuzz_out"], name="gd_fuzz_tile")
    graph.node.append(node)
    graph.output.append(helper.make_tensor_value_info("gd_fuzz_out", TensorProto.FLOAT, None))
    return f"{op} of 10^12 elements as an added output"


def slice_axes_dims(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    """An INT64 initializer (Slice axes in the `shapes` seed) whose dims say 2^40 over a one-element payload."""
    int64 = [t for t in all_tensors(model) if t.data_type == TensorProto.INT64]
    axes = [t for t in int64 if t.name == "axes"]
    tensor = _pick(rng, axes if axes and rng.random() < 0.6 else int64)
    if tensor is None:
        raise NotApplicable("no INT64 tensor")
    del tensor.dims[:]
    tensor.dims.append(2**40)
    return f"tensor '{tensor.name}' dims -> [2^40]"


def sparse_initializer(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    """A sparse initializer, well formed or not (indices out of range, values longer than indices, huge dims)."""
    kind = rng.choice(["valid", "index-out-of-range", "count-mismatch", "huge-dims", "replaces-dense"])
    dense_dims = [HUGE, 4] if kind == "huge-dims" else [8, 4]
    values = helper.make_tensor("sp", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    indices = [0, 5, 31] if kind != "index-out-of-range" else [0, 5, 10**9]
    if kind == "count-mismatch":
        indices = [1]
    index_tensor = helper.make_tensor("sp_indices", TensorProto.INT64, [len(indices)], indices)
    sparse = helper.make_sparse_tensor(values, index_tensor, dense_dims)
    graph = model.graph
    if kind == "replaces-dense" and graph.initializer:
        dense = graph.initializer[0]
        values.name = dense.name
        del sparse.dims[:]
        sparse.dims.extend(dense.dims)
        del graph.initializer[0]
    else:
        graph.node.append(helper.make_node("Identity", ["sp"], ["gd_fuzz_sparse_out"], name="gd_fuzz_sparse"))
        graph.output.append(helper.make_tensor_value_info("gd_fuzz_sparse_out", TensorProto.FLOAT, dense_dims))
    graph.sparse_initializer.append(sparse)
    return f"sparse initializer ({kind})"


# --- protobuf level: attributes, names, structure ---------------------------------------------------------


def _retype(attr: AttributeProto, kind: str) -> None:
    """Give `attr` another type, with or without the matching payload."""
    old_name, old_type = attr.name, attr.type
    attr.Clear()
    attr.name = old_name
    if kind == "INTS":
        attr.type = AttributeProto.INTS
        attr.ints.extend([1, 2])
    elif kind == "STRING":
        attr.type = AttributeProto.STRING
        attr.s = b"1e-5"
    elif kind == "FLOATS":
        attr.type = AttributeProto.FLOATS
        attr.floats.extend([0.5])
    elif kind == "TENSOR":
        attr.type = AttributeProto.TENSOR
        attr.t.CopyFrom(helper.make_tensor("t", TensorProto.FLOAT, [1], [1.0]))
    elif kind == "GRAPH":
        attr.type = AttributeProto.GRAPH
        attr.g.CopyFrom(helper.make_graph([], "empty", [], []))
    elif kind == "UNDEFINED":
        attr.type = AttributeProto.UNDEFINED
    elif kind == "type-only":  # the type says INT, the payload is a float
        attr.type = AttributeProto.INT
        attr.f = 1e-5
    else:  # out of enum
        attr.type = 77
        del old_type


def attribute_type(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    """Cast `to` and normalization `epsilon` first (what rules read), else any attribute."""
    wanted = {"Cast": "to", "LayerNormalization": "epsilon", "BatchNormalization": "epsilon", "Conv": "pads"}
    nodes = all_nodes(model)
    targets = [(n, a) for n in nodes for a in n.attribute if wanted.get(n.op_type) == a.name]
    if not targets or rng.random() < 0.3:
        targets = [(n, a) for n in nodes for a in n.attribute] or targets
    if not targets:
        node = _pick(rng, nodes)
        if node is None:
            raise NotApplicable("no node")
        attr = node.attribute.add()
        attr.name = "to" if node.op_type == "Cast" else "epsilon"
        targets = [(node, attr)]
    node, attr = rng.choice(targets)
    kind = rng.choice(["INTS", "STRING", "FLOATS", "TENSOR", "GRAPH", "UNDEFINED", "type-only", "out-of-enum"])
    if node.op_type == "Cast" and attr.name == "to" and rng.random() < 0.3:
        attr.i = rng.choice([0, 99, -1, TensorProto.STRING])
        return f"Cast '{node.name}' to={attr.i}"
    _retype(attr, kind)
    return f"{node.op_type} '{node.name}' attribute '{attr.name}' as {kind}"


def names(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    kind = rng.choice(["empty", "duplicate-output", "duplicate-initializer", "long", "non-utf8", "odd"])
    graph = model.graph
    values = _value_names(model)
    if kind == "empty":
        node = rng.choice(graph.node)
        if node.output and rng.random() < 0.5:
            node.output[0] = ""
        else:
            node.name = ""
            if node.input:
                node.input[0] = ""
        return f"empty name in node '{node.name}'"
    if kind == "duplicate-output" and len(graph.node) > 1:
        first, second = rng.sample(list(graph.node), 2)
        second.output[0] = first.output[0]
        return f"nodes '{first.name}' and '{second.name}' both produce '{first.output[0]}'"
    if kind == "duplicate-initializer" and graph.initializer:
        copy = graph.initializer.add()
        copy.CopyFrom(rng.choice(graph.initializer))
        copy.dims.append(1)  # same name, other dims
        return f"initializer '{copy.name}' twice"
    old = rng.choice(values)
    if kind == "long":
        _rename(model, old, "n" * 5000)
        return f"value '{old}' renamed to 5,000 characters"
    if kind == "non-utf8":
        marker = "gdfuzz" + "".join(rng.choice("abcdef") for _ in range(10))
        _rename(model, old, marker)
        mutated.patches.append((marker.encode(), b"\xff\xfe" + bytes([0x80 + i for i in range(14)])))
        return f"value '{old}' renamed to invalid UTF-8"
    new = rng.choice(["../../etc/passwd", "a\x00b", "\u202ertl", "名前", "/abs", " ", "x" * 300 + "/y"])
    _rename(model, old, new)
    return f"value '{old}' renamed to {new!r}"


def cycle(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    """The first node reads the last node's output (or its own): the graph is no longer a DAG."""
    graph = model.graph
    first = graph.node[0]
    last = rng.choice([graph.node[-1], first])
    if not first.input:
        first.input.append(last.output[0])
    else:
        first.input[0] = last.output[0]
    return f"node '{first.name}' reads '{last.output[0]}' (cycle)"


def opset(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    kind = rng.choice(["zero", "huge", "negative", "unknown-domain", "node-domain", "none-default", "ir"])
    default = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if kind in ("zero", "huge", "negative") and default is not None:
        default.version = {"zero": 0, "huge": 2**62, "negative": -5}[kind]
    elif kind == "unknown-domain":
        model.opset_import.append(helper.make_opsetid("com.example.unknown", 3))
    elif kind == "node-domain":
        node = rng.choice(model.graph.node)
        node.domain = rng.choice(["com.example.unknown", "com.microsoft", "ai.onnx.ml"])
    elif kind == "none-default" and default is not None:
        model.opset_import.remove(default)
        model.opset_import.append(helper.make_opsetid("com.other", 1))
    else:
        model.ir_version = rng.choice([1, 3, 99, 2**62])
    return f"opset/ir mutation ({kind})"


def subgraph(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    """Break an If or Loop: a branch missing, outputs mismatched, a body reading an undefined value, or an
    If added whose branches differ in arity."""
    nodes = [n for n in all_nodes(model) if n.op_type in ("If", "Loop", "Scan")]
    kind = rng.choice(["drop-branch", "extra-output", "undefined-read", "drop-inputs", "added-if"])
    if not nodes or kind == "added-if":
        graph = model.graph
        then_graph = helper.make_graph([], "then", [], [helper.make_tensor_value_info(graph.input[0].name, 1, None)])
        else_graph = helper.make_graph([], "else", [], [])
        graph.initializer.append(helper.make_tensor("gd_fuzz_cond", TensorProto.BOOL, [], [True]))
        graph.node.append(
            helper.make_node(
                "If", ["gd_fuzz_cond"], ["gd_fuzz_if"], then_branch=then_graph, else_branch=else_graph, name="gd_if"
            )
        )
        graph.output.append(helper.make_tensor_value_info("gd_fuzz_if", TensorProto.FLOAT, None))
        return "added If with branches of different arity"
    node = rng.choice(nodes)
    graphs = [a for a in node.attribute if a.type == AttributeProto.GRAPH]
    attr = rng.choice(graphs)
    if kind == "drop-branch":
        node.attribute.remove(attr)
    elif kind == "extra-output":
        attr.g.output.append(helper.make_tensor_value_info("gd_fuzz_missing", TensorProto.FLOAT, [1]))
    elif kind == "undefined-read":
        body_node = attr.g.node[0] if attr.g.node else attr.g.node.add(op_type="Identity", output=["o"])
        body_node.input.append("gd_fuzz_undefined")
    else:
        del attr.g.input[:]
    return f"{node.op_type} '{node.name}' {attr.name}: {kind}"


def functions(rng: random.Random, model: onnx.ModelProto, mutated: Mutated) -> str:
    """Model-local functions: recursive, missing, wrong arity, no opset, duplicated."""
    kind = rng.choice(["recursive", "missing", "arity", "no-opset", "duplicate", "added-recursive"])
    if not model.functions or kind == "added-recursive":
        fn = helper.make_function("local", "Rec", ["a"], ["b"], [], [helper.make_opsetid("", 17)])
        fn.node.append(helper.make_node("Rec", ["a"], ["b"], domain="local", name="self_call"))
        model.functions.append(fn)
        if not any(o.domain == "local" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("local", 1))
        graph = model.graph
        graph.node.append(helper.make_node("Rec", [graph.input[0].name], ["gd_fuzz_rec"], domain="local", name="rec"))
        graph.output.append(helper.make_tensor_value_info("gd_fuzz_rec", TensorProto.FLOAT, None))
        return "added a function that calls itself"
    fn = rng.choice(model.functions)
    if kind == "recursive":
        fn.node.append(helper.make_node(fn.name, [fn.input[0]], [fn.output[0]], domain=fn.domain, name="recurse"))
    elif kind == "missing":
        model.functions.remove(fn)
    elif kind == "arity":
        fn.input.append("gd_fuzz_extra")
    elif kind == "no-opset":
        del fn.opset_import[:]
    else:
        model.functions.append(fn)
    return f"function '{fn.name}': {kind}"


PROTO_MUTATORS: dict[str, Callable[[random.Random, onnx.ModelProto, Mutated], str]] = {
    "dims": dims,
    "dtype": dtype,
    "raw-data-misaligned": raw_data_misaligned,
    "typed-data-mismatch": typed_data_mismatch,
    "string-constant": string_constant,
    "output-elem-type": output_elem_type,
    "io-dims": io_dims,
    "value-info-huge": value_info_huge,
    "huge-shape-constant": huge_shape_constant,
    "slice-axes-dims": slice_axes_dims,
    "sparse-initializer": sparse_initializer,
    "attribute-type": attribute_type,
    "names": names,
    "cycle": cycle,
    "opset": opset,
    "subgraph": subgraph,
    "functions": functions,
}
