"""What makes a loadable model malformed: contradictions a reader would trip over, found before anyone reads.

The protobuf parser and onnx-ir accept models that no runtime can run and that crash readers: a tensor whose
payload holds 6 values where its dims need 2, `int64_data` in a FLOAT tensor, dims of -1, a Cast whose `to`
is a list, a graph output of element type 0, a Constant of strings read by an Add, an opset of 0. Each is
found here as a `Defect` naming the tensor, node or attribute, where it is, and the contradiction with its
numbers, so `lint` reports it (GD016) and `fix`/`verify` refuse the model with one line (`first_defect`).

Only lengths are read, never data: a payload is compared with its dims through the length of its protobuf
field, so a tensor whose dims claim 2^40 elements costs nothing here, and readers of tensor values skip the
tensors found defective (`Analysis.is_readable`). Operators are checked from their ONNX schemas (for the
model's opset), not op by op: attribute types, required attributes, input and output counts, and the
element types the schema's type constraints allow. Sparse initializers are checked as graphdoctor keeps them
(onnx-ir drops them; model.py keeps their protos), by the lengths of their values and indices.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx
import onnx.defs
import onnx_ir as ir

from graphdoctor.analysis.constants import const_tensor
from graphdoctor.analysis.format import format_dtype
from graphdoctor.analysis.graph import iter_graph_sites, node_label
from graphdoctor.analysis.tensor_data import payload_problem, tensor_defect

__all__ = ["Defect", "find_defects", "first_defect"]

_INT64_MAX = 2**63 - 1
_SPARSE = "graphdoctor.sparse_initializers"  # model.meta key set by graphdoctor.model: (base_dir, protos)
# Attributes that name a data type, and so must name one the schema allows for output 0.
_DTYPE_ATTRS = {
    "Cast": "to",
    "EyeLike": "dtype",
    "RandomNormal": "dtype",
    "RandomUniform": "dtype",
    "RandomNormalLike": "dtype",
    "RandomUniformLike": "dtype",
    "Bernoulli": "dtype",
    "Multinomial": "dtype",
    "HannWindow": "output_datatype",
    "HammingWindow": "output_datatype",
    "BlackmanWindow": "output_datatype",
    "MelWeightMatrix": "output_datatype",
    "QuantizeLinear": "output_dtype",
}
_SCHEMA_DOMAINS = ("", "ai.onnx.ml", "ai.onnx.preview.training")


@dataclass(frozen=True)
class Defect:
    """One contradiction: `subject` (what, by name) `problem` (why it cannot be, with numbers)."""

    kind: str  # 'tensor' | 'attribute' | 'signature' | 'type' | 'opset' | 'domain' | 'sparse'
    subject: str  # "initializer 'W'", "Cast 'cast'"
    problem: str  # "holds 6 float32 values but its dims [2] need 2"
    graph: str = ""  # path of the (sub)graph or function, '' for the main graph
    node: ir.Node | None = field(default=None, compare=False)
    values: tuple[ir.Value | str, ...] = field(default=(), compare=False)
    tensor: object = field(default=None, compare=False, repr=False)  # the defective tensor, if one is

    @property
    def description(self) -> str:
        return f"{self.subject} {self.problem}"

    @property
    def text(self) -> str:
        """The description with the (sub)graph it is in, for a line of its own."""
        return f"{self.graph}: {self.description}" if self.graph else self.description


def first_defect(model: ir.Model) -> str | None:
    """One line for refusing a malformed model (`fix`, `verify`): its first defect, and how many more; None
    when the model has none."""
    defects = find_defects(model)
    if not defects:
        return None
    more = len(defects) - 1
    tail = f" (and {more} more defect{'s' if more > 1 else ''}; `graphdoctor lint` lists them)" if more else ""
    return f"malformed model: {defects[0].text}{tail}"


def find_defects(model: ir.Model) -> list[Defect]:
    """Every defect of the model: opsets, then each graph's values, tensors and nodes, then sparse tensors."""
    defects = list(_opset_defects(model))
    local_functions = set(model.functions)
    for graph, path in iter_graph_sites(model):
        opsets = graph.opset_imports if isinstance(graph, ir.Function) else model.opset_imports
        for defect in _graph_defects(graph, opsets, local_functions):
            defects.append(defect if not path else _at(defect, path))
    defects.extend(_sparse_defects(model))
    return defects


def _at(defect: Defect, path: str) -> Defect:
    return Defect(defect.kind, defect.subject, defect.problem, path, defect.node, defect.values, defect.tensor)


# --- opsets ------------------------------------------------------------------------------------------------


def _opset_defects(model: ir.Model) -> Iterator[Defect]:
    """The ai.onnx opset must be one onnx defines: 1 up to the newest the installed onnx knows (beyond it,
    no operator has a schema, and nothing about the nodes can be checked)."""
    newest = onnx.defs.onnx_opset_version()
    for domain in ("", "ai.onnx"):
        version = model.opset_imports.get(domain)
        if version is None or 1 <= version <= newest:
            continue
        problem = (
            f"is {version}; opsets start at 1"
            if version < 1
            else f"is {version}, beyond {newest}, the newest the installed onnx {onnx.__version__} defines"
        )
        yield Defect("opset", "the model's ai.onnx opset import", problem)


# --- values and their declared types -----------------------------------------------------------------------


def _graph_defects(
    graph: ir.Graph | ir.Function, opsets: dict[str, int], local_functions: set[ir.OperatorIdentifier]
) -> Iterator[Defect]:
    if isinstance(graph, ir.Graph):  # tensors first: what a file holds, then what it declares
        for value in graph.initializers.values():
            yield from _initializer_defects(value)
        yield from _declared_type_defects(graph)
    imported = {_domain(domain) for domain in opsets}
    dtypes: dict[int, ir.DataType | None] = {}  # `_known_dtype` per value: a Constant's output is read twice or more
    for node in graph:
        yield from _attribute_tensor_defects(node)
        if _domain(node.domain) not in imported:  # no version: nothing can say what the op means
            domain = node.domain or "ai.onnx"
            problem = f"is of domain '{domain}', of which the model imports no opset"
            yield Defect("domain", f"{node.op_type} '{node.name}'", problem, node=node)
            continue
        if (node.domain, node.op_type, node.overload) in local_functions:
            continue  # a call of the model's own function: its body is checked as a graph of its own
        schema = _schema(node.op_type, _domain(node.domain), opsets.get(_domain(node.domain)) or 0)
        if schema is not None:
            yield from _schema_defects(node, schema, dtypes)


def _declared_type_defects(graph: ir.Graph) -> Iterator[Defect]:
    """Declared element types and dims of inputs, outputs and value_info: element type 0 or negative dims
    describe no tensor, and an element count beyond int64 none that a runtime can index."""
    seen: set[int] = set()
    outputs = {id(value) for value in graph.outputs}
    declared = [*graph.inputs, *graph.outputs, *(v for node in graph for v in node.outputs)]
    for value in declared:
        if id(value) in seen or value.type is None:
            continue
        seen.add(id(value))
        what = "graph input" if value.is_graph_input() else "graph output" if id(value) in outputs else "value"
        problem = _declared_type_problem(value)
        if problem:
            yield Defect("type", f"{what} '{value.name}'", problem, node=value.producer(), values=(value,))


def _declared_type_problem(value: ir.Value) -> str:
    element = value.type
    while element is not None and not isinstance(element, ir.TensorType):
        element = getattr(element, "elem_type", None)  # sequences and optionals of tensors
    if element is not None and element.dtype == ir.DataType.UNDEFINED:
        return "is declared with element type 0 (UNDEFINED), which no tensor has"
    if value.shape is None:
        return ""
    dims = [d for d in value.shape if isinstance(d, int)]
    if any(d < 0 for d in dims):
        return f"is declared with negative dims {_dims(value.shape)}"
    if math.prod(dims) > _INT64_MAX:
        return f"is declared {_dims(value.shape)}: {math.prod(dims):.3g} elements, more than int64 can count"
    return ""


def _initializer_defects(value: ir.Value) -> Iterator[Defect]:
    tensor = value.const_value
    if tensor is None:
        return
    subject = f"initializer '{value.name}'"
    problem = tensor_defect(tensor)
    if problem:
        yield Defect("tensor", subject, problem, values=(value,), tensor=tensor)
        return
    declared = [value.dtype, value.shape]
    if value.dtype is not None and value.dtype != tensor.dtype:
        yield Defect(
            "type", subject, f"is declared {format_dtype(value.dtype)} but holds {_of(tensor)}", values=(value,)
        )
    elif (
        declared[1] is not None
        and declared[1].is_static()
        and tuple(declared[1].numpy()) != tuple(tensor.shape.numpy())
    ):
        yield Defect("type", subject, f"is declared {_dims(value.shape)} but holds {_of(tensor)}", values=(value,))


def _attribute_tensor_defects(node: ir.Node) -> Iterator[Defect]:
    for attr in node.attributes.values():
        if attr.is_ref() or attr.type not in (ir.AttributeType.TENSOR, ir.AttributeType.TENSORS):
            continue
        tensors = [attr.value] if attr.type == ir.AttributeType.TENSOR else list(attr.value)
        for tensor in tensors:
            problem = tensor_defect(tensor)
            if problem:
                subject = f"attribute '{attr.name}' of {node.op_type} '{node_label(node)}'"
                yield Defect("tensor", subject, problem, node=node, values=tuple(node.outputs), tensor=tensor)


# --- operators, from their schemas -------------------------------------------------------------------------


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


@functools.cache
def _schema(op_type: str, domain: str, version: int) -> onnx.defs.OpSchema | None:
    """The schema in force at `version` of `domain`; None for custom domains, unknown ops or opsets."""
    newest = onnx.defs.onnx_opset_version() if domain == "" else 2**31 - 1  # beyond: an opset defect, no schema
    if domain not in _SCHEMA_DOMAINS or not 1 <= version <= newest:
        return None
    try:
        return onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None


def _schema_defects(
    node: ir.Node, schema: onnx.defs.OpSchema, dtypes: dict[int, ir.DataType | None]
) -> Iterator[Defect]:
    subject = f"{node.op_type} '{node_label(node)}'"
    for defect in (*_attribute_defects(node, schema), *_signature_defects(node, schema, dtypes)):
        kind, problem = defect
        yield Defect(kind, subject, problem, node=node, values=tuple(node.outputs))


def _attribute_defects(node: ir.Node, schema: onnx.defs.OpSchema) -> Iterator[tuple[str, str]]:
    """Attributes of another type than the schema's, required ones missing, data types that are none."""
    wrong: set[str] = set()
    for name, declared in schema.attributes.items():
        attr = node.attributes.get(name)
        if attr is None:
            if declared.required:
                yield "attribute", f"lacks its required attribute '{name}' ({_attr_type(declared.type)})"
            continue
        if int(attr.type) != int(declared.type):
            wrong.add(name)
            yield (
                "attribute",
                f"has attribute '{name}' of type {attr.type.name}; {schema.name} takes {_attr_type(declared.type)}",
            )
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attributes) != 1:
        yield "attribute", f"has {len(node.attributes)} attributes; a Constant takes exactly one value attribute"
    name = _DTYPE_ATTRS.get(node.op_type)
    attr = node.attributes.get(name) if name else None
    if attr is not None and name not in wrong and not attr.is_ref():
        problem = _dtype_attr_problem(name, attr.value, schema)
        if problem:
            yield "attribute", problem


def _attr_type(attr_type: onnx.defs.OpSchema.AttrType) -> str:
    return ir.AttributeType(int(attr_type)).name


def _dtype_attr_problem(name: str, value: int, schema: onnx.defs.OpSchema) -> str:
    try:
        dtype = ir.DataType(value)
    except ValueError:
        return f"has '{name}'={value}, which is no ONNX data type"
    if dtype == ir.DataType.UNDEFINED:
        return f"has '{name}'=0 (UNDEFINED), which is no data type to produce"
    allowed = _allowed(schema, schema.outputs[0].type_str) if schema.outputs else None
    if allowed is not None and _type_string(dtype) not in allowed:
        return (
            f"has '{name}'={value} ({format_dtype(dtype)}), which {schema.name}-{schema.since_version} cannot produce"
        )
    return ""


def _signature_defects(
    node: ir.Node, schema: onnx.defs.OpSchema, dtypes: dict[int, ir.DataType | None]
) -> Iterator[tuple[str, str]]:
    """Input and output counts, required inputs, and the element types the type constraints allow (one
    type per constraint across the node's inputs and outputs, unless its parameter is heterogeneous)."""
    inputs, outputs = list(node.inputs), list(node.outputs)
    for what, actual, low, high in (
        ("inputs", len(inputs), schema.min_input, schema.max_input),
        ("outputs", len(outputs), schema.min_output, schema.max_output),
    ):
        if not low <= actual <= high:
            bound = f"{low}" if low == high else f"{low} to {high}" if high < 2**31 - 1 else f"at least {low}"
            yield "signature", f"has {actual} {what}; {schema.name}-{schema.since_version} takes {bound}"
            return
    bound: dict[str, tuple[ir.DataType, str]] = {}
    for what, actuals, formals in (("input", inputs, schema.inputs), ("output", outputs, schema.outputs)):
        for index, value in enumerate(actuals):
            formal = formals[min(index, len(formals) - 1)] if formals else None
            if formal is None or (index >= len(formals) and formal.option != _VARIADIC):
                continue
            if value is None or not value.name:
                if formal.option == _SINGLE and what == "input":
                    yield "signature", f"lacks its required input {index} ('{formal.name}')"
                continue
            problem = _element_type_problem(schema, what, index, value, formal, bound, dtypes)
            if problem:
                yield "type", problem
    if node.op_type == "Loop" and not any(v is not None and v.name for v in inputs[:2]):
        # the spec's `for (;;)`: without M and cond the body's condition is ignored, and every run hangs
        yield "signature", "has neither a trip count (M) nor a condition (cond): it loops forever on every input"


_SINGLE = onnx.defs.OpSchema.FormalParameterOption.Single
_VARIADIC = onnx.defs.OpSchema.FormalParameterOption.Variadic


def _element_type_problem(
    schema: onnx.defs.OpSchema,
    what: str,
    index: int,
    value: ir.Value,
    formal: onnx.defs.OpSchema.FormalParameter,
    bound: dict[str, tuple[ir.DataType, str]],
    dtypes: dict[int, ir.DataType | None],
) -> str:
    if id(value) not in dtypes:
        dtypes[id(value)] = _known_dtype(value)
    dtype = dtypes[id(value)]
    allowed = _allowed(schema, formal.type_str)
    if dtype is None or allowed is None:
        return ""
    given = _type_string(dtype)
    if given not in allowed:
        return (
            f"{what} {index} '{value.name}' is {format_dtype(dtype)}, which {schema.name}-{schema.since_version}"
            f" does not take there ({formal.type_str}: {', '.join(sorted(_short(t) for t in allowed))})"
        )
    heterogeneous = formal.option == _VARIADIC and not formal.is_homogeneous
    if formal.type_str not in _constraints(schema) or heterogeneous:
        return ""
    first = bound.setdefault(formal.type_str, (dtype, f"{what} {index} '{value.name}'"))
    if first[0] != dtype:
        return (
            f"{what} {index} '{value.name}' is {format_dtype(dtype)} but {first[1]} is {format_dtype(first[0])};"
            f" both are {formal.type_str}, one type"
        )
    return ""


def _known_dtype(value: ir.Value) -> ir.DataType | None:
    """The element type of a plain tensor whose type is known (declared, inferred, or a constant's)."""
    if value.type is not None and not isinstance(value.type, ir.TensorType):
        return None
    dtype = value.dtype
    if dtype is None:
        tensor = const_tensor(value)  # an initializer's or a Constant's, typed before any inference
        dtype = tensor.dtype if tensor is not None else None
    return None if dtype in (None, ir.DataType.UNDEFINED) else dtype


@functools.cache  # schemas come from `_schema`, itself cached: one entry per schema in use
def _constraints(schema: onnx.defs.OpSchema) -> dict[str, frozenset[str]]:
    return {c.type_param_str: frozenset(c.allowed_type_strs) for c in schema.type_constraints}


@functools.cache
def _allowed(schema: onnx.defs.OpSchema, type_str: str) -> frozenset[str] | None:
    """The tensor types a parameter takes (the plain tensors among them, for parameters that take sequences
    or optionals too: only plain tensors are judged); None when it takes no plain tensor."""
    allowed = _constraints(schema).get(type_str, frozenset({type_str}))
    return frozenset(t for t in allowed if t.startswith("tensor(")) or None


def _type_string(dtype: ir.DataType) -> str:
    return f"tensor({dtype.name.lower()})"  # ONNX's names are onnx-ir's, lower-cased


def _short(type_string: str) -> str:
    return type_string.removeprefix("tensor(").removesuffix(")")


# --- sparse initializers ----------------------------------------------------------------------------------


def _sparse_defects(model: ir.Model) -> Iterator[Defect]:
    """Sparse initializers, as model.py keeps them: values [NNZ], indices [NNZ] or [NNZ, rank] as INT64,
    dense dims that are dims; indices are not read (their range is the runtime's to check)."""
    _, sparse_tensors = model.meta.get(_SPARSE, (None, []))
    for sparse in sparse_tensors:
        name = sparse.values.name or "?"
        subject = f"sparse initializer '{name}'"
        problem = _sparse_problem(sparse)
        if problem:
            yield Defect("sparse", subject, problem, values=(name,))


def _sparse_problem(sparse: onnx.SparseTensorProto) -> str:
    dense = list(sparse.dims)
    if any(d < 0 for d in dense):
        return f"has negative dense dims {dense}"
    values, indices = sparse.values, sparse.indices
    for part, what in ((values, "values"), (indices, "indices")):
        if part.data_location == onnx.TensorProto.EXTERNAL:
            continue  # its bytes are in a file: checked when read
        try:
            dtype = ir.DataType(part.data_type)
        except ValueError:
            return f"has {what} of data type {part.data_type}, which is no ONNX data type"
        dims = list(part.dims)
        problem = f"has negative dims {dims}" if any(d < 0 for d in dims) else ""
        problem = problem or payload_problem(part, dtype, dims, math.prod(dims))
        if problem:
            return f"{what} {problem}"
    if len(values.dims) != 1:
        return f"has values of dims {list(values.dims)}; they must be one list [NNZ]"
    nnz = values.dims[0]
    if indices.data_type != onnx.TensorProto.INT64:
        return f"has indices of data type {indices.data_type}; they must be INT64"
    shapes = ([nnz], [nnz, len(dense)])
    if list(indices.dims) not in shapes:
        return (
            f"has indices of dims {list(indices.dims)} for {nnz} values in {len(dense)} dims;"
            f" they must be {shapes[0]} or {shapes[1]}"
        )
    if nnz > math.prod(dense):
        return f"holds {nnz} values, more than its dense dims {dense} have elements"
    return ""


def _dims(shape: ir.Shape) -> str:
    return "[" + ",".join(str(d) if isinstance(d, int) else (d.value or "?") for d in shape) + "]"


def _of(tensor: ir.TensorProtocol) -> str:
    return f"{format_dtype(tensor.dtype)}{list(tensor.shape.numpy())}"
