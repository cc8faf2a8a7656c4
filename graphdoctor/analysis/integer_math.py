"""Regions of float nodes that compute integers: from an integer source to an integer sink, decided by structure.

Exporters compute indices, positions and sizes in float: T5's relative-position buckets are
`Cast(int64→float) → Div → Log → Div → Mul → Cast(→int64) → Gather`, image sizes are
`Shape → Cast(float) → Mul 0.5 → Floor → Cast(int64) → Resize sizes`. FP16 holds integers exactly only up to
2048 and rounds `log` and quotients enough to move a floor by one: converted, 3.3 % of T5's bucket ids come
out off by one. PyTorch's own autocast keeps this math in FP32, and so must the converter.

A region is found without running anything:
- *sources* are Casts (or CastLikes) from an integer or bool tensor to a float type: every integer that enters
  float math (Shape, Size, Range, ArgMax, NonZero, integer graph inputs) does so through one;
- the region grows forward from them over float edges, through nodes all of whose float inputs come from the
  region or are small constants (scales, offsets: at most `SMALL_CONSTANT_ELEMENTS` elements, counted from
  the shape, never read). A node that also reads an activation or a weight (an attention score, a learned
  embedding) mixes real values in: it is not integer math, and the region stops before it;
- *sinks* are where float values become integers again: a region node with a value-dependent integer or bool
  output (Cast to an integer type, a comparison, ArgMax), and a region value read as an index, shape or size
  (Resize scales, Upsample scales, float Range bounds, OneHot indices);
- the region is what lies on a path from a source to a sink. A source that reaches no sink (BERT's attention
  mask, sinusoidal position embeddings, YOLO's grid added to the boxes) is real float math, and stays
  convertible.

Regions cross into subgraphs where a body captures an outer value (an If branch reading the outer graph's
positions), and start inside them from a body's own integer inputs (a Loop's iteration counter); what a body
returns is not followed out through its If or Loop. After one pass over all nodes to find the sources, the
walk touches only the region and the nodes next to it: linear in the graph's size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import onnx_ir as ir

from graphdoctor.analysis.constants import const_tensor
from graphdoctor.analysis.graph import is_constant_node, iter_graph_sites, node_label

__all__ = ["INDEX_INPUTS", "SMALL_CONSTANT_ELEMENTS", "integer_valued_regions"]

# A float constant this small is a scale, an offset or a bound; a larger one is a weight or a table.
SMALL_CONSTANT_ELEMENTS = 64

# Inputs read as indices, shapes or sizes: a float value reaching one (Resize scales) is an integer sink, and
# an integer sink's result is described by the first of these it feeds.
INDEX_INPUTS: dict[str, dict[int, str]] = {
    "Gather": {1: "indices"},
    "GatherElements": {1: "indices"},
    "GatherND": {1: "indices"},
    "Scatter": {1: "indices"},
    "ScatterElements": {1: "indices"},
    "ScatterND": {1: "indices"},
    "OneHot": {0: "indices", 1: "depth"},
    "Reshape": {1: "shape"},
    "Expand": {1: "shape"},
    "Tile": {1: "repeats"},
    "ConstantOfShape": {0: "shape"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"},
    "Resize": {1: "roi", 2: "scales", 3: "sizes"},
    "Upsample": {1: "scales"},
    "Range": {0: "start", 1: "limit", 2: "delta"},
    "TopK": {1: "k"},
    "Pad": {1: "pads"},
    "Split": {1: "split"},
    "Squeeze": {1: "axes"},
    "Unsqueeze": {1: "axes"},
}

_FLOATS = frozenset(dtype for dtype in ir.DataType if dtype.is_floating_point())
_INTEGERS = frozenset(dtype for dtype in ir.DataType if dtype.is_integer()) | {ir.DataType.BOOL}
_CASTS = frozenset({"Cast", "CastLike"})
# Not arithmetic on the values: Shape and Size read only the shape (their integers are no sink); If, Loop and
# Scan are followed into their bodies through captured values instead.
_SHAPE_ONLY = frozenset({"Shape", "Size"})
_NOT_ARITHMETIC = _SHAPE_ONLY | {"If", "Loop", "Scan"}
# Producers of integers worth naming in a reason: what the integers are.
_INTEGER_ORIGINS = frozenset({"Shape", "Size", "Range", "ArgMax", "ArgMin", "NonZero", "TopK"})
_ORIGIN_SEARCH = 4  # integer ops followed back from a source to name where its integers come from
_CHAIN_OPS = 6  # op types listed between a region's source and sink before the middle is elided
_FEEDS_SEARCH = 64  # nodes searched after a sink for the index or shape input its integers feed


def integer_valued_regions(model: ir.Model) -> dict[ir.Node, str]:
    """Each float-computing node on a path from an integer source to an integer sink, with the reason to keep
    it FP32 (the same for every node of one region, naming its first source, the ops, the sink and what the
    sink feeds), in graph order. Nodes hash by identity. Dtypes are read as they are: run `infer_types` first
    (an untyped intermediate is never taken for an integer)."""
    order: dict[ir.Node, int] = {}
    walk = _Walk()
    for graph, _ in iter_graph_sites(model):
        for node in graph:
            order[node] = len(order)
            if _is_source(node):
                walk.grow(node)
    walk.keep_paths_to_sinks()
    reasons: dict[ir.Node, str] = {}
    for region in walk.regions():
        region.sort(key=order.__getitem__)
        reason = walk.reason(region)
        reasons.update((node, reason) for node in region)
    return dict(sorted(reasons.items(), key=lambda item: order[item[0]]))


class _Walk:
    """Forward from the sources through eligible nodes, recording the sinks met; then back from the sinks."""

    def __init__(self) -> None:
        self.eligible: dict[ir.Node, list[ir.Value]] = {}  # node -> the region values it reads
        self.values: set[ir.Value] = set()  # float values carrying integer math
        self.sink_nodes: set[ir.Node] = set()  # eligible nodes turning the region's floats into integers
        self.index_reads: dict[ir.Node, tuple[ir.Node, int]] = {}  # producer -> a (reader, input) indexing with it
        self.members: set[ir.Node] = set()
        self.small: dict[ir.Value, bool] = {}

    # -- forward --

    def grow(self, source: ir.Node) -> None:
        pending = deque([source])
        while pending:
            node = pending.popleft()
            if node in self.eligible:
                continue
            region_inputs = self._region_inputs(node)
            if region_inputs is not None:
                self.eligible[node] = region_inputs
                pending.extend(self._take_outputs(node))

    def _region_inputs(self, node: ir.Node) -> list[ir.Value] | None:
        """The region values an eligible node reads; None when the node is not eligible: not standard
        arithmetic, or reading a float that is neither a region value nor a small constant."""
        if node.domain not in ("", "ai.onnx") or node.op_type in _NOT_ARITHMETIC or is_constant_node(node):
            return None
        region_inputs = []
        for value in _float_inputs(node):
            if value in self.values:
                region_inputs.append(value)
            elif not self._is_small_constant(value):
                return None
        return region_inputs

    def _is_small_constant(self, value: ir.Value) -> bool:
        known = self.small.get(value)
        if known is None:
            known = self.small[value] = _is_small_constant(value)
        return known

    def _take_outputs(self, node: ir.Node) -> Iterator[ir.Node]:
        """Record the node's float outputs as region values and yield their readers; an integer output makes
        the node a sink."""
        for value in node.outputs:
            dtype = _dtype(value)
            if dtype in _INTEGERS:
                self.sink_nodes.add(node)
                continue
            if dtype is not None and dtype not in _FLOATS:
                continue
            self.values.add(value)
            for use in value.uses():
                if use.idx in INDEX_INPUTS.get(use.node.op_type, {}):
                    self.index_reads.setdefault(node, (use.node, use.idx))
                yield use.node

    # -- backward --

    def keep_paths_to_sinks(self) -> None:
        """Members: the eligible nodes from which a sink is reachable over region values."""
        stack = [*self.sink_nodes, *self.index_reads]
        self.members.update(stack)
        while stack:
            for value in self.eligible[stack.pop()]:
                producer = value.producer()
                if producer is not None and producer not in self.members:
                    self.members.add(producer)
                    stack.append(producer)

    def _readers_in_region(self, node: ir.Node) -> Iterator[ir.Node]:
        for value in node.outputs:
            if value in self.values:
                yield from (use.node for use in value.uses() if use.node in self.members)

    def regions(self) -> Iterator[list[ir.Node]]:
        """Members joined by the region values one produces and another reads."""
        assigned: set[ir.Node] = set()
        for start in self.members:
            if start in assigned:
                continue
            region, stack = [], [start]
            assigned.add(start)
            while stack:
                node = stack.pop()
                region.append(node)
                before = (value.producer() for value in self.eligible[node])
                for neighbour in (*before, *self._readers_in_region(node)):
                    if neighbour is not None and neighbour not in assigned:
                        assigned.add(neighbour)
                        stack.append(neighbour)
            yield region

    # -- the reason --

    def reason(self, region: list[ir.Node]) -> str:
        """'integer-valued math (<origin> → <source> → <ops> → <sink> → <what it feeds>)' along the shortest
        chain from the region's first source to a sink, its middle elided when long."""
        source = next(node for node in region if _is_source(node))
        path = self._path_to_sink(source)
        sink = path[-1]
        middle = [node.op_type for node in path[1:-1]]
        if len(middle) > _CHAIN_OPS:
            keep = _CHAIN_OPS // 2
            middle = [*middle[:keep], f"… {len(middle) - 2 * keep} more …", *middle[-keep:]]
        steps = [*_describe_origin(source), _describe_source(source), *middle]
        if len(path) > 1:
            steps.append(_describe_sink(sink))
        if sink not in self.sink_nodes:
            reader, index = self.index_reads[sink]
            steps.append(f"{reader.op_type} '{node_label(reader)}' {INDEX_INPUTS[reader.op_type][index]}")
        elif (feeds := _what_integers_feed(sink)) is not None:
            steps.append(feeds)
        others = len(region) - len(path)
        more = f"; {others} more node{'s' if others > 1 else ''} in the region" if others > 0 else ""
        return f"integer-valued math ({' → '.join(steps)}{more})"

    def _path_to_sink(self, source: ir.Node) -> list[ir.Node]:
        """The shortest chain of members from `source` to a sink node or to a member read as an index."""
        previous: dict[ir.Node, ir.Node | None] = {source: None}
        queue = deque([source])
        while queue:
            node = queue.popleft()
            if node in self.sink_nodes or node in self.index_reads:
                path = [node]
                while (before := previous[path[-1]]) is not None:
                    path.append(before)
                return path[::-1]
            for reader in self._readers_in_region(node):
                if reader not in previous:
                    previous[reader] = node
                    queue.append(reader)
        raise AssertionError("every member lies on a path to a sink")


def _describe_origin(source: ir.Node) -> list[str]:
    """Where the source's integers come from, when that says what they are: a shape, positions, an input.
    Followed back a few steps through the first input of integer ops (Shape → Gather → Cast)."""
    value = source.inputs[0]
    for steps in range(_ORIGIN_SEARCH):
        if value is None or not _is_integer_value(value):
            return []
        between = " → …" if steps else ""
        if value.is_graph_input():
            return [f"input '{value.name}'{between}"]
        origin = value.producer()
        if origin is None:
            return []
        if origin.op_type in _INTEGER_ORIGINS:
            return [f"{origin.op_type} '{node_label(origin)}'{between}"]
        value = origin.inputs[0] if origin.inputs else None
    return []


def _describe_source(source: ir.Node) -> str:
    value = source.inputs[0]
    dtype = _dtype(value) if value is not None else None
    return f"{source.op_type} from {_dtype_name(dtype)} '{node_label(source)}'"


def _describe_sink(node: ir.Node) -> str:
    if node.op_type in _CASTS:
        return f"{node.op_type} to {_dtype_name(_dtype(node.outputs[0]))} '{node_label(node)}'"
    return f"{node.op_type} '{node_label(node)}'"


def _what_integers_feed(sink: ir.Node) -> str | None:
    """The first index, shape or size input that the sink's integer results reach, through integer ops."""
    queue = deque(value for value in sink.outputs if _is_integer_value(value))
    seen: set[ir.Node] = set()
    while queue and len(seen) < _FEEDS_SEARCH:
        for use in queue.popleft().uses():
            reader, index = use.node, use.idx
            slot = INDEX_INPUTS.get(reader.op_type, {}).get(index)
            if slot is not None:
                return f"{reader.op_type} '{node_label(reader)}' {slot}"
            if reader not in seen and reader.op_type not in _SHAPE_ONLY:
                seen.add(reader)
                queue.extend(value for value in reader.outputs if _is_integer_value(value))
    return None


# -- values and dtypes --------------------------------------------------------------------------------------


def _is_source(node: ir.Node) -> bool:
    """A Cast from an integer or bool tensor to a float type."""
    if node.op_type not in _CASTS or node.domain not in ("", "ai.onnx") or not node.inputs or not node.outputs:
        return False
    value = node.inputs[0]
    return value is not None and _is_integer_value(value) and _dtype(node.outputs[0]) in _FLOATS


def _float_inputs(node: ir.Node) -> Iterator[ir.Value]:
    """Inputs that are float (or of unknown type) and whose values, not only type, the node computes with:
    CastLike's second input only lends its type."""
    inputs = node.inputs[:1] if node.op_type == "CastLike" else node.inputs
    return (value for value in inputs if value is not None and _may_be_float(value))


def _dtype(value: ir.Value) -> ir.DataType | None:
    """The value's dtype, or for an untyped Cast output the type its `to` names."""
    if value.dtype is not None:
        return value.dtype
    producer = value.producer()
    to = producer.attributes.get_int("to") if producer is not None and producer.op_type == "Cast" else None
    try:
        return ir.DataType(to) if to is not None else None
    except ValueError:  # not a data type ONNX defines
        return None


def _is_integer_value(value: ir.Value) -> bool:
    return _dtype(value) in _INTEGERS


def _may_be_float(value: ir.Value) -> bool:
    """Float, or of unknown type (which must then satisfy what a float input must)."""
    dtype = _dtype(value)
    return dtype is None or dtype in _FLOATS


def _is_small_constant(value: ir.Value) -> bool:
    """A constant of at most SMALL_CONSTANT_ELEMENTS elements, or a ConstantOfShape fill; sized from the
    shape, never read. An initializer that is also a graph input can be fed anything: not a constant."""
    if value.is_graph_input():
        return False
    producer = value.producer()
    if producer is not None and producer.op_type == "ConstantOfShape":
        return True
    if not value.is_initializer() and (producer is None or not is_constant_node(producer)):
        return False
    tensor = const_tensor(value)
    shape = tensor.shape if tensor is not None else value.shape
    if shape is None or not all(isinstance(dim, int) for dim in shape):
        return False
    size = 1
    for dim in shape:
        size *= dim
    return size <= SMALL_CONSTANT_ELEMENTS


def _dtype_name(dtype: ir.DataType | None) -> str:
    return dtype.name.lower() if dtype is not None else "?"
