"""Graph edits the rules' fixes share: rewiring a value's readers, removing nodes and tensors.

Every fix must keep the graph's interface: a graph output keeps its name and its place in the output list,
whatever now computes it. These helpers carry that rule, so each fix only says what it replaces.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = [
    "fresh_name",
    "insert_after_producer",
    "is_attached",
    "owning_graph",
    "remove_initializer",
    "remove_node",
    "replace_value",
    "store_constant",
]


def is_attached(node: ir.Node) -> bool:
    """False once a node was removed (by an earlier repair in the same round): its finding is stale."""
    return node.graph is not None


def owning_graph(value: ir.Value) -> ir.Graph | None:
    """The graph that holds `value`: its producer's, or the graph it is an input or initializer of."""
    producer = value.producer()
    if producer is not None:
        return producer.graph
    return value.graph


def replace_value(old: ir.Value, new: ir.Value) -> None:
    """Make every reader of `old` (subgraph nodes capturing it included) read `new`.

    When `old` is an output of its graph, the output keeps its name: `new` takes the name when nothing else
    names it (a plain node output), else an Identity named like `old` computes it."""
    graph = owning_graph(old)
    if graph is not None and old.is_graph_output():
        _swap_output(graph, old, _named_like(old, new, graph))
    ir.convenience.replace_all_uses_with(old, new)


def _named_like(old: ir.Value, new: ir.Value, graph: ir.Graph) -> ir.Value:
    """`new` under `old`'s name, or an Identity of `new` under it when `new` must keep its own name: an input,
    initializer or output, or a value of an outer graph (a subgraph's output must be computed inside it)."""
    name = old.name
    if old.is_initializer():  # an initializer cannot lose its name; it is being replaced, so it goes
        graph.initializers.pop(name)
    old.name = None
    producer = new.producer()
    if producer is not None and producer.graph is graph and not new.is_graph_output():
        new.name = name
        new.type, new.shape = new.type or old.type, new.shape or old.shape  # graph outputs must be typed
        return new
    identity = ir.Node("", "Identity", [new], num_outputs=1)
    output = identity.outputs[0]
    output.name, output.type, output.shape = name, new.type or old.type, new.shape or old.shape
    insert_after_producer(graph, new, identity)
    return output


def fresh_name(base: str, taken: set[str]) -> str:
    """`base`, else `base_1`, `base_2`, ...: the first name not in `taken`, which then holds it too (value
    names must be unique across a graph and its subgraphs)."""
    name, index = base, 1
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    taken.add(name)
    return name


def insert_after_producer(graph: ir.Graph, value: ir.Value, node: ir.Node) -> None:
    """Put `node`, which reads `value`, into `graph` right after the node computing `value`; first when
    `value` comes from elsewhere (a graph input, an initializer, an outer scope): order stays topological."""
    producer = value.producer()
    if producer is not None and producer.graph is graph:
        graph.insert_after(producer, node)
    elif len(graph):
        graph.insert_before(graph[0], node)
    else:
        graph.append(node)


def _swap_output(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    for index, output in enumerate(graph.outputs):
        if output is old:
            graph.outputs[index] = new


def remove_node(node: ir.Node) -> None:
    """Remove a node whose outputs nothing reads any more (checked: a reader left behind is a bug)."""
    node.graph.remove(node, safe=True)


def remove_initializer(value: ir.Value) -> None:
    """Drop an initializer nothing reads (and its graph-input listing, from IR<4 exports)."""
    graph = value.graph
    if graph is None or value.name not in graph.initializers:
        return
    if value in graph.inputs:
        graph.inputs.remove(value)
    graph.initializers.pop(value.name)


def store_constant(node: ir.Node, output: ir.Value, array: np.ndarray, *, as_initializer: bool) -> ir.Value:
    """A constant holding `array` that will replace `output`, placed in `node`'s graph: an initializer when
    the source was one, else a Constant node before `node`. It takes `output`'s name, unless `output` is a
    graph output: then `replace_value` names it (an initializer would need an Identity for that)."""
    graph = node.graph
    assert graph is not None
    dtype = ir.DataType.from_numpy(array.dtype)
    name = None
    if not output.is_graph_output():
        name, output.name = output.name, None
    tensor = ir.tensor(array, dtype=dtype, name=name)
    if as_initializer and name is not None and isinstance(graph, ir.Graph):
        value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(array.shape), const_value=tensor)
        graph.register_initializer(value)
        return value
    constant = ir.Node("", "Constant", [], [ir.AttrTensor("value", tensor)], num_outputs=1, name=node.name)
    value = constant.outputs[0]
    value.name, value.type, value.shape = name, ir.TensorType(dtype), ir.Shape(array.shape)
    graph.insert_before(node, constant)
    return value
