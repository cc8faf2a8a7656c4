"""The facts rules share, computed once per model and cached: graphs, nodes, types, readable constants."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis import constants
from graphdoctor.analysis.external import (
    ExternalDataProblem,
    find_external_data_problems,
    unreadable_tensor_names,
)
from graphdoctor.analysis.graph import GraphSite, iter_graph_sites
from graphdoctor.analysis.types import infer_types
from graphdoctor.analysis.validity import Defect, find_defects
from graphdoctor.targets import DEFAULT_TARGET, Target

__all__ = ["Analysis"]


class Analysis:
    """Lazily computed facts about one model. Rules ask; nothing is computed that no rule asks for."""

    def __init__(
        self,
        model: ir.Model,
        path: Path | None = None,
        file_size: int | None = None,
        sample_inputs: Mapping[str, np.ndarray] | None = None,
        target: Target = DEFAULT_TARGET,
        deep: bool = False,
        well_formed: bool = False,
    ) -> None:
        self.model = model
        self.path = path
        self.file_size = file_size
        self.sample_inputs = sample_inputs  # given with `lint --inputs/--shape`: rules may run the model
        self.target = target  # the runtime the model is checked for (`--target`)
        self.deep = deep  # `lint --deep`: rules may also run slow tools (GD013 runs TensorRT's parser)
        self.well_formed = well_formed  # the caller found no defect (`fix` refuses malformed models): none sought
        self._cache: dict[str, object] = {}

    @cached_property
    def graph_sites(self) -> list[GraphSite]:
        return list(iter_graph_sites(self.model))

    @cached_property
    def _graph_paths(self) -> dict[int, str]:
        """Nodes of a function point at the function's inner graph, so both are keys."""
        paths = {id(graph): path for graph, path in self.graph_sites}
        paths.update({id(g.graph): path for g, path in self.graph_sites if isinstance(g, ir.Function)})
        return paths

    def graph_path(self, owner: ir.Node | ir.Value) -> str:
        """'' for the main graph, else the path of the subgraph or function holding a node or value."""
        graph = owner.graph
        if graph is None and isinstance(owner, ir.Value) and owner.producer() is not None:
            graph = owner.producer().graph
        return self._graph_paths.get(id(graph), "")

    def nodes(self, op_type: str | tuple[str, ...] | None = None, domain: str = "") -> Iterator[ir.Node]:
        """Nodes of every graph, in graph order; filtered by op type(s) in `domain` ('' = ai.onnx)."""
        op_types = (op_type,) if isinstance(op_type, str) else op_type
        for graph, _ in self.graph_sites:
            for node in graph:
                if op_types is None or (node.op_type in op_types and _same_domain(node.domain, domain)):
                    yield node

    @cached_property
    def types_inferred(self) -> bool:
        """Run shape inference once (in memory; the file is never touched). False if it failed."""
        return infer_types(self.model)

    @cached_property
    def external_data_problems(self) -> list[ExternalDataProblem]:
        return find_external_data_problems(self.model)

    @cached_property
    def _unreadable(self) -> frozenset[str]:
        return unreadable_tensor_names(self.external_data_problems)

    @cached_property
    def defects(self) -> list[Defect]:
        """What makes the model malformed (GD016 reports them). The engine asks before any rule runs, so they
        describe the model as read, before shape inference adds types. Empty for a model the caller found well
        formed: `fix` searched the model as read, and each search after a repair costs as much again (a third of
        a second on BERT-base)."""
        return [] if self.well_formed else find_defects(self.model)

    @cached_property
    def _defective(self) -> frozenset[int]:
        return frozenset(id(defect.tensor) for defect in self.defects if defect.tensor is not None)

    def is_readable(self, tensor: ir.TensorProtocol) -> bool:
        """False for external data that is missing, truncated or refused (GD014 reports those), and for
        tensors whose payload contradicts their dims or dtype (GD016)."""
        if id(tensor) in self._defective:
            return False
        return not (isinstance(tensor, ir.ExternalTensor) and tensor.name in self._unreadable)

    def const_array(self, value: ir.Value | None) -> np.ndarray | None:
        """A constant's value; None if it is not constant or its external data is broken (GD014).

        This maps the whole tensor: for large weights prefer `tensor_data.iter_chunks`, whose memory stays flat.
        """
        tensor = constants.const_tensor(value)
        if tensor is None or not self.is_readable(tensor):
            return None
        return constants.const_array(value)

    def scalar(self, value: ir.Value | None) -> float | int | None:
        array = self.const_array(value)
        if array is None or array.size != 1:
            return None
        return array.reshape(()).item()

    def shared(self, key: str, compute):
        """A fact several rules need (normalizations, tensor digests): computed by the first to ask."""
        if key not in self._cache:
            self._cache[key] = compute(self)
        return self._cache[key]


def _same_domain(node_domain: str, domain: str) -> bool:
    return node_domain in ("", "ai.onnx") if domain in ("", "ai.onnx") else node_domain == domain
