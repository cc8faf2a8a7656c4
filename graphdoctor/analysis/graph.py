"""Walking graphs: nodes in every (sub)graph and function, their labels, and who consumes what."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx_ir as ir

__all__ = [
    "GraphSite",
    "consumers",
    "holds_tensor",
    "holds_type",
    "is_constant_node",
    "iter_graph_sites",
    "iter_values",
    "node_label",
    "opset_version",
    "subgraph_owners",
]

GraphSite = tuple[ir.Graph | ir.Function, str]


def iter_graph_sites(model: ir.Model) -> Iterator[GraphSite]:
    """Every graph with its path: '' for the main graph, 'Loop_3.body' for subgraphs, functions by name."""
    yield from _with_subgraphs(model.graph, "")
    for function in model.functions.values():
        yield from _with_subgraphs(function, f"function {function.domain}::{function.name}")


def _with_subgraphs(graph: ir.Graph | ir.Function, path: str) -> Iterator[GraphSite]:
    yield graph, path
    for node in graph:
        for attr in _attribute_values(node):
            if attr.type == ir.AttributeType.GRAPH:
                yield from _with_subgraphs(attr.value, _join(path, f"{node_label(node)}.{attr.name}"))
            elif attr.type == ir.AttributeType.GRAPHS:
                for i, subgraph in enumerate(attr.value):
                    yield from _with_subgraphs(subgraph, _join(path, f"{node_label(node)}.{attr.name}[{i}]"))


def _attribute_values(node: ir.Node):
    """The node's attributes, read from the dict inside onnx-ir's `Attributes` (a UserDict) where it has one:
    three times faster to walk, and every rule walks every node's attributes looking for subgraphs."""
    attributes = node.attributes
    return getattr(attributes, "data", attributes).values()


def _join(path: str, part: str) -> str:
    return f"{path}/{part}" if path else part


def subgraph_owners(nodes: Iterable[ir.Node]) -> dict[int, ir.Node]:
    """id(subgraph) -> the node (If, Loop, Scan) holding it as an attribute."""
    owners: dict[int, ir.Node] = {}
    for node in nodes:
        for attr in _attribute_values(node):
            if attr.type == ir.AttributeType.GRAPH:
                owners[id(attr.value)] = node
            elif attr.type == ir.AttributeType.GRAPHS:
                owners.update((id(subgraph), node) for subgraph in attr.value)
    return owners


def node_label(node: ir.Node) -> str:
    """The node's name; for unnamed nodes (common in hand-made graphs) its op type and first output."""
    if node.name:
        return node.name
    output = node.outputs[0].name if node.outputs else "?"
    return f"{node.op_type}->{output}"


def consumers(value: ir.Value) -> list[ir.Node]:
    """Nodes reading `value`, each once, subgraph nodes that capture it from an outer scope included."""
    seen: dict[int, ir.Node] = {}
    for use in value.uses():
        seen.setdefault(id(use.node), use.node)
    return list(seen.values())


def opset_version(model: ir.Model, domain: str = "") -> int | None:
    """The imported opset of `domain` ('' is ai.onnx), or None when the model does not import it."""
    if domain in ("", "ai.onnx"):
        return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    return model.opset_imports.get(domain)


def iter_values(model: ir.Model) -> Iterator[ir.Value]:
    """Every value of every graph and function: inputs, initializers and node outputs."""
    for graph, _ in iter_graph_sites(model):
        if isinstance(graph, ir.Graph):
            yield from graph.inputs
            yield from graph.initializers.values()
        for node in graph:
            yield from node.outputs


def is_constant_node(node: ir.Node) -> bool:
    """An ONNX Constant node (its value is known without running anything)."""
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx")


def holds_tensor(value: ir.Value) -> bool:
    """A tensor, or a value of unknown type; not a sequence, optional or map, whose `dtype` onnx-ir reports as
    their elements' although no Cast can convert them."""
    return value.type is None or isinstance(value.type, ir.TensorType)


def holds_type(model: ir.Model, *dtypes: ir.DataType) -> bool:
    """Whether any tensor is of one of `dtypes`: a typed value, or the output of a Cast to one (whose type
    is known from the attribute even before shape inference)."""
    return any(value.dtype in dtypes for value in iter_values(model)) or any(
        node.op_type == "Cast" and node.attributes.get_int("to") in dtypes
        for graph, _ in iter_graph_sites(model)
        for node in graph
    )
