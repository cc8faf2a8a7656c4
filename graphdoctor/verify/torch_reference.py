"""The PyTorch reference: the torch.export program an ONNX model was exported from, run as the oracle.

The first question after an export is whether the ONNX model computes what the PyTorch model computes.
`graphdoctor verify model.onnx --torch model.pt2` answers it: `torch.export.load(path).module()` runs on the
same inputs as the ONNX model, and its outputs, flattened in order (tensors in tuples, lists and dict values,
as the exporters flatten them), are matched to the ONNX outputs by position and take their names.

Inputs go to the program by position, in the ONNX model's input order, which is the order of the forward's
arguments that both exporters keep. Float inputs are cast to the dtype the program's placeholders expect, so
an FP16 ONNX model can be checked against the FP32 program it was converted from.

torch is imported here only, and only when --torch is used (the `torch` extra): it costs seconds to import.
A .pt2 file is a program; load only files you trust, as with any model file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphdoctor.errors import GraphDoctorError, first_line

__all__ = ["RUNNER", "run_exported_program"]

RUNNER = "torch-cpu"  # names the oracle in reports: PyTorch's CPU kernels in the program's own dtypes


def run_exported_program(
    path: str | os.PathLike[str], args: Sequence[np.ndarray], output_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Run the program saved at `path` on `args` (in the ONNX input order) and name its outputs
    `output_names` (the ONNX outputs, in order). Any failure is a GraphDoctorError with one clear line."""
    torch = _import_torch()
    source = Path(path)
    program = _load(torch, source)
    tensors = _torch_inputs(torch, program, args)
    with torch.no_grad():
        try:
            result = program.module()(*tensors)
        except Exception as error:  # the program raises whatever its ops raise
            raise GraphDoctorError(f"{source}: the torch program fails on these inputs: {first_line(error)}") from None
    outputs = _flatten(torch, result)
    if len(outputs) != len(output_names):
        raise GraphDoctorError(
            f"{source}: the torch program returns {len(outputs)} tensors, the ONNX model has "
            f"{len(output_names)} outputs {list(output_names)}; they are matched by position"
        )
    return {name: _to_numpy(torch, tensor) for name, tensor in zip(output_names, outputs, strict=True)}


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise GraphDoctorError("--torch needs PyTorch: pip install graphdoctor[torch]") from None
    return torch


def _load(torch: Any, source: Path) -> Any:
    """The ExportedProgram, or one line saying why the file is not one."""
    if not source.is_file():
        raise GraphDoctorError(f"{source}: no such file")
    quiet = logging.getLogger("torch.export")  # it logs each failed attempt with a traceback: one line is ours
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return torch.export.load(source)
    except Exception as error:  # a zip that is not a .pt2, an unknown schema version, a truncated file
        raise GraphDoctorError(f"{source}: not a torch.export program (.pt2): {first_line(error)}") from None
    finally:
        quiet.setLevel(level)


def _torch_inputs(torch: Any, program: Any, args: Sequence[np.ndarray]) -> list[Any]:
    """numpy → torch on the CPU, float inputs cast to the float dtype the program expects."""
    expected = _placeholder_dtypes(program)
    tensors = []
    for index, array in enumerate(args):
        tensor = torch.from_numpy(np.array(array, copy=True, order="C"))  # writable, as torch requires
        want = expected[index] if len(expected) == len(args) else None
        if want is not None and want.is_floating_point and tensor.is_floating_point() and tensor.dtype != want:
            tensor = tensor.to(want)
        tensors.append(tensor)
    return tensors


def _placeholder_dtypes(program: Any) -> list[Any]:
    """The dtype of each user input of the program (None where its metadata does not say)."""
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    dtypes = []
    for name in program.graph_signature.user_inputs:
        node = placeholders.get(name) if isinstance(name, str) else None
        dtypes.append(getattr(node.meta.get("val"), "dtype", None) if node is not None else None)
    return dtypes


def _flatten(torch: Any, value: Any) -> list[Any]:
    """Tensors in output order; None and Python scalars are dropped, as the exporters drop them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _flatten(torch, item)]
    return []


def _to_numpy(torch: Any, tensor: Any) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()
