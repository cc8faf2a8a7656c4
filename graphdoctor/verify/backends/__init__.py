"""Backends that run a model on inputs, registered by name; the registry imports no backend until one is asked for.

A backend states its name and the precision its arithmetic really has, because a verdict is only as good as
the backend behind it. One that needs a GPU or an optional package says why it is unavailable instead of
failing, and one that finds out only while running that it cannot keep its word (ONNX Runtime placed the
model on the CPU instead of the GPU asked for) raises `BackendUnavailable`: the verdict is then 'skipped'
with that reason, never a pass of a backend that did not run.

Any tensor of the graph can be fetched, not only the outputs: `run(..., outputs=[names])` exposes them for
that run only (layer-wise comparison fetches a few at a time to bound memory).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphdoctor.errors import GraphDoctorError

if TYPE_CHECKING:
    import numpy as np
    import onnx

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "CpuGraph", "get_backend", "require_onnxruntime"]

# graphdoctor depends on neither ONNX Runtime distribution (a GPU user must get onnxruntime-gpu without the CPU
# wheel, which would overwrite it): the extras choose
INSTALL_ONNXRUNTIME = "pip install 'graphdoctor[cpu]', or 'graphdoctor[gpu]' on a machine with an NVIDIA GPU"


class Backend:
    """A way to run an ONNX file. Subclasses set `name` and `precision` and implement `run`."""

    name: str = ""
    precision: str = ""  # what the arithmetic really is, in words, for the verdict
    computes_fp16: bool = False  # its arithmetic is FP16 (then the fp16 tolerance preset applies)
    on_gpu: bool = False  # runs on a GPU: what it cannot run may be a limit of the GPU stack, not of the model

    def unavailable_reason(self) -> str | None:
        """None when this backend can run here; else why not (missing package, no GPU)."""
        return None

    def run(
        self, model: Path, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def placement(self) -> str | None:
        """Where the last run's nodes ran, in words ("41 of 43 nodes on CUDA, 2 on CPU"), where it is known."""
        return None

    def cpu_graph(self, model: Path) -> CpuGraph | None:
        """The graph this backend runs for `model` on ONNX Runtime's CPU provider, and the session settings it
        runs it with; None for a backend that runs otherwise (a GPU, TensorRT). Layer-wise comparison merges
        two such graphs into one session (verify.lockstep)."""
        return None


@dataclass(frozen=True)
class CpuGraph:
    """What a CPU backend runs: the graph (weights referenced, not copied; never modified by the caller), the
    folder its external data locations are relative to, and its session settings."""

    proto: onnx.ModelProto
    folder: Path
    level: int  # onnxruntime.GraphOptimizationLevel's value: 0 off, 1 basic, 2 extended, 99 all
    config: tuple[tuple[str, str], ...] = ()  # session config entries
    disabled_optimizers: tuple[str, ...] = ()


class BackendUnavailable(GraphDoctorError):
    """The backend turned out, while running, not to be what it says (a GPU provider that fell back to CPU)."""


# name -> (module, factory, keyword arguments); the module is imported when the backend is asked for
BACKENDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "onnxruntime-cpu": ("onnxruntime", "OnnxruntimeBackend", {"key": "onnxruntime-cpu"}),
    "onnxruntime-cuda": ("onnxruntime", "OnnxruntimeBackend", {"key": "onnxruntime-cuda"}),
    "onnxruntime-tensorrt": ("onnxruntime", "OnnxruntimeBackend", {"key": "onnxruntime-tensorrt"}),
    "tensorrt": ("tensorrt", "TensorrtBackend", {"fp16": False}),
    "tensorrt-fp16": ("tensorrt", "TensorrtBackend", {"fp16": True}),
    "fp16-emulation": ("graphdoctor.verify.fp16_emulation", "Fp16EmulationBackend", {}),
    "bf16-emulation": ("graphdoctor.verify.fp16_emulation", "Bf16EmulationBackend", {}),
}


def require_onnxruntime(purpose: str) -> None:
    """One line instead of an ImportError deep inside: `purpose` runs models, and no ONNX Runtime is installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise GraphDoctorError(f"{purpose} needs ONNX Runtime, which is not installed: {INSTALL_ONNXRUNTIME}")


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise GraphDoctorError(f"unknown backend '{name}' (choose from {', '.join(sorted(BACKENDS))})")
    module, factory, arguments = BACKENDS[name]
    qualified = module if "." in module else f"{__name__}.{module}"
    return getattr(importlib.import_module(qualified), factory)(**arguments)
