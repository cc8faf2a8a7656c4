"""Native TensorRT: build an engine from the ONNX file with the `tensorrt` package, run it, return numpy.

This is the backend closest to deployment: TensorRT's own ONNX parser and kernels, as `trtexec --onnx` uses
them. `tensorrt` builds an FP32 engine with TF32 disabled (TensorRT enables TF32 by default, which rounds
matmul and convolution inputs to 10 mantissa bits: an FP32 check would then check something else).
`tensorrt-fp16` sets the FP16 builder flag as `trtexec --fp16` does: TensorRT picks FP16 kernels where they
are faster and FP32 elsewhere. TensorRT 11 removed that flag (networks are strongly typed: the ONNX dtypes
decide), so there `tensorrt-fp16` is unavailable and `tensorrt` computes in the model's own dtypes; an FP16
model is then verified with `--backend tensorrt`.

Dynamic input dims get one optimization profile fixed to the shapes of the inputs given (min = opt = max):
the engine is built for exactly what it runs. Intermediate tensors (`outputs=[names]`) are marked as network
outputs by name. Marking keeps TensorRT from fusing them away, so such an engine can differ from the deployed
one; tensors that the parser never created (folded constants, ops it rewrote into other tensors) cannot be
marked, are left out of the results, and are listed in `unmarked` after the run.

Device memory comes from cuda-python's runtime bindings where installed, else from torch.cuda; both are
looked for at run time, never on the CPU path. A parser or builder failure is a GraphDoctorError carrying
TensorRT's own messages: the verdict is then 'error' with that reason, which is a deployment finding.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graphdoctor.errors import GraphDoctorError, first_line
from graphdoctor.verify.backends import Backend

__all__ = ["TensorrtBackend", "import_tensorrt", "tensorrt_logger"]

logger = logging.getLogger(__name__)

_INSTALL = "pip install graphdoctor[gpu]"
_FP32 = "TensorRT FP32 engine (TF32 disabled)"
_FP16 = "TensorRT FP16 engine (layers may still run in FP32 where TensorRT chooses)"
_STRONGLY_TYPED = "TensorRT strongly typed engine: the model's own dtypes (TF32 disabled)"


class TensorrtBackend(Backend):
    """An engine built by the `tensorrt` package from the ONNX file, in FP32 or with FP16 enabled."""

    def __init__(self, fp16: bool = False) -> None:
        self.fp16 = fp16
        self.name = "tensorrt-fp16" if fp16 else "tensorrt"
        self.precision = _FP16 if fp16 else _FP32
        self.computes_fp16 = fp16
        self.unmarked: tuple[str, ...] = ()  # requested tensors the last run could not expose

    def unavailable_reason(self) -> str | None:
        """Why this cannot run here: no tensorrt, no CUDA device, or no FP16 flag in this TensorRT.
        Also settles the precision text, which depends on the TensorRT version found."""
        trt, reason = import_tensorrt()
        if trt is None:
            return reason
        reason = _cuda_device_reason()
        if reason:
            return reason
        if not hasattr(trt.BuilderFlag, "FP16"):
            if self.fp16:
                return (
                    f"TensorRT {trt.__version__} builds strongly typed engines only (no FP16 builder flag): "
                    "convert the model to FP16 and verify it with --backend tensorrt"
                )
            self.precision = _STRONGLY_TYPED
        return None

    def run(
        self, model: Path, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        trt, reason = import_tensorrt()
        if trt is None:
            raise GraphDoctorError(str(reason))
        buffers = _device_buffers()
        try:
            built = _build_engine(trt, model, inputs, outputs, self.fp16)
            self.unmarked = built.unmarked
            results = _execute(trt, built, inputs, buffers)
        finally:
            buffers.close()
        if outputs is None:
            return results
        passed_through = {name: np.asarray(inputs[name]) for name in outputs if name in inputs}
        return {name: results[name] for name in outputs if name in results} | passed_through


# --- finding TensorRT and a GPU --------------------------------------------------------------------------


def import_tensorrt() -> tuple[Any, str | None]:
    """The tensorrt module, or None and why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return None, f"tensorrt is not installed ({_INSTALL})"
    try:
        import tensorrt
    except Exception as error:  # ImportError, or OSError when its CUDA libraries are missing
        return None, f"tensorrt cannot be imported: {first_line(error)}"
    return tensorrt, None


def _cuda_runtime() -> Any:
    """cuda-python's runtime bindings (`cuda.bindings.runtime` since 12.6, `cuda.cudart` before), or None."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _torch() -> Any:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch


def _cuda_device_reason() -> str | None:
    """None when a CUDA device can be used for buffers; else why not."""
    cudart = _cuda_runtime()
    if cudart is not None:
        error, count = cudart.cudaGetDeviceCount()
        if error != cudart.cudaError_t.cudaSuccess or count == 0:
            return f"no CUDA device (cudaGetDeviceCount: {getattr(error, 'name', error)}, {count} devices)"
        return None
    torch = _torch()
    if torch is not None:
        return None if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available() is False)"
    return f"neither cuda-python nor torch is installed to hold GPU buffers ({_INSTALL})"


# --- building -------------------------------------------------------------------------------------------


@dataclass
class _Engine:
    runtime: Any  # kept alive as long as the engine it deserialized
    engine: Any
    unmarked: tuple[str, ...]


@functools.cache
def tensorrt_logger(trt: Any) -> Any:
    """One logger for the process (TensorRT keeps the first one it is given), collecting errors per run."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            elif severity == trt.ILogger.Severity.WARNING:
                logger.info("TensorRT: %s", msg)

        def take(self) -> str:
            """The errors logged since the last call, on one line."""
            text, self.errors = "; ".join(self.errors), []
            return text or "TensorRT logged no error (run with -v for its warnings)"

    return CollectingLogger()


def _build_engine(
    trt: Any, model: Path, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None, fp16: bool
) -> _Engine:
    log = tensorrt_logger(trt)
    log.errors.clear()
    builder = trt.Builder(log)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(os.fspath(model)):  # from the path, so external data resolves beside it
        raise GraphDoctorError(f"TensorRT's ONNX parser rejects {model.name}: {_parser_errors(parser)}")
    unmarked = _mark_outputs(network, outputs, inputs) if outputs is not None else ()
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = _fixed_profile(builder, network, inputs)
    if profile is not None:
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise GraphDoctorError(f"TensorRT cannot build an engine for {model.name}: {log.take()}")
    runtime = trt.Runtime(log)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise GraphDoctorError(f"TensorRT cannot load the engine it built for {model.name}: {log.take()}")
    return _Engine(runtime, engine, unmarked)


def _parser_errors(parser: Any) -> str:
    """The parser's messages, each with the ONNX node it names."""
    messages = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node = error.node_name() if hasattr(error, "node_name") else ""
        operator = error.node_operator() if hasattr(error, "node_operator") else ""
        where = f" (node '{node}', {operator})" if node else ""
        messages.append(f"{error.desc()}{where}")
    return "; ".join(messages) or "no message"


def _mark_outputs(network: Any, names: Sequence[str], inputs: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """Mark each named tensor the network holds as an output; return the names it does not hold
    (graph inputs are not missing: run() hands them back as given)."""
    wanted = set(names)
    already = {network.get_output(i).name for i in range(network.num_outputs)}
    found = set()
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for slot in range(layer.num_outputs):
            tensor = layer.get_output(slot)
            if tensor.name in wanted and tensor.name not in found:
                found.add(tensor.name)
                if tensor.name not in already:
                    network.mark_output(tensor)
    unmarked = tuple(name for name in names if name not in found and name not in inputs)
    if unmarked:
        logger.info("TensorRT's network holds no tensor named %s (folded or rewritten by its parser)", unmarked)
    return unmarked


def _fixed_profile(builder: Any, network: Any, inputs: Mapping[str, np.ndarray]) -> Any:
    """One optimization profile fixing every dynamic input to the shape given (None when all are static)."""
    profile = None
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        if tensor.name not in inputs:
            raise GraphDoctorError(f"no value for TensorRT input '{tensor.name}'")
        if all(dim >= 0 for dim in tensor.shape):
            continue
        shape = tuple(np.shape(inputs[tensor.name]))
        profile = profile or builder.create_optimization_profile()
        profile.set_shape(tensor.name, shape, shape, shape)
    return profile


# --- running --------------------------------------------------------------------------------------------


def _execute(trt: Any, built: _Engine, inputs: Mapping[str, np.ndarray], buffers: Any) -> dict[str, np.ndarray]:
    """Copy the inputs in, run once, copy every output back."""
    engine, log = built.engine, tensorrt_logger(trt)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    output_names = [name for name in names if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT]
    for name in names:
        if name in output_names:
            continue
        array = np.ascontiguousarray(inputs[name], dtype=_numpy_dtype(trt, engine, name))
        if not context.set_input_shape(name, array.shape):
            raise GraphDoctorError(f"TensorRT rejects shape {list(array.shape)} for input '{name}': {log.take()}")
        context.set_tensor_address(name, buffers.upload(array))
    layouts = {name: _output_layout(trt, engine, context, name) for name in output_names}
    pointers = {name: buffers.allocate(nbytes) for name, (_, _, nbytes) in layouts.items()}
    for name, pointer in pointers.items():
        context.set_tensor_address(name, pointer)
    if not context.execute_async_v3(buffers.stream_handle):
        raise GraphDoctorError(f"TensorRT failed to run the engine: {log.take()}")
    buffers.synchronize()
    return {
        name: buffers.download(pointers[name], nbytes).view(dtype).reshape(shape)
        for name, (shape, dtype, nbytes) in layouts.items()
    }


def _output_layout(trt: Any, engine: Any, context: Any, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, numpy dtype and byte size of an output, now that the input shapes are set."""
    shape = tuple(context.get_tensor_shape(name))
    if any(dim < 0 for dim in shape):
        raise GraphDoctorError(f"output '{name}' has a data-dependent shape {list(shape)}; not supported here yet")
    dtype = _numpy_dtype(trt, engine, name)
    return shape, dtype, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _numpy_dtype(trt: Any, engine: Any, name: str) -> np.dtype:
    kind = engine.get_tensor_dtype(name)
    try:
        return np.dtype(trt.nptype(kind))
    except TypeError:
        raise GraphDoctorError(f"tensor '{name}' is TensorRT {kind}, which numpy cannot hold") from None


# --- device memory --------------------------------------------------------------------------------------


def _device_buffers() -> Any:
    """GPU buffers from cuda-python, else torch.cuda (whichever is installed, checked now)."""
    cudart = _cuda_runtime()
    if cudart is not None:
        return _CudaRuntimeBuffers(cudart)
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        return _TorchBuffers(torch)
    raise GraphDoctorError(_cuda_device_reason() or "no CUDA device")


def _as_bytes(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


class _CudaRuntimeBuffers:
    """Device buffers and a stream through cuda-python's runtime API; every call's status is checked."""

    def __init__(self, cudart: Any) -> None:
        self.cudart = cudart
        self.pointers: list[int] = []
        self.stream = self._check(cudart.cudaStreamCreate())

    def _check(self, result: tuple[Any, ...]) -> Any:
        error, *values = result
        if error != self.cudart.cudaError_t.cudaSuccess:
            raise GraphDoctorError(f"CUDA runtime error: {getattr(error, 'name', error)}")
        return values[0] if values else None

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def allocate(self, nbytes: int) -> int:
        pointer = int(self._check(self.cudart.cudaMalloc(max(nbytes, 1))))  # TensorRT wants no null address
        self.pointers.append(pointer)
        return pointer

    def upload(self, array: np.ndarray) -> int:
        data = _as_bytes(array)
        pointer = self.allocate(data.nbytes)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpy(pointer, data.ctypes.data, data.nbytes, kind))
        return pointer

    def download(self, pointer: int, nbytes: int) -> np.ndarray:
        host = np.empty(nbytes, dtype=np.uint8)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpy(host.ctypes.data, pointer, nbytes, kind))
        return host

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for pointer in self.pointers:
            self.cudart.cudaFree(pointer)
        self.cudart.cudaStreamDestroy(self.stream)
        self.pointers = []


class _TorchBuffers:
    """Device buffers as torch uint8 tensors on the current CUDA stream."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.tensors: dict[int, Any] = {}

    @property
    def stream_handle(self) -> int:
        return int(self.torch.cuda.current_stream().cuda_stream)

    def allocate(self, nbytes: int) -> int:
        tensor = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
        self.tensors[tensor.data_ptr()] = tensor
        return int(tensor.data_ptr())

    def upload(self, array: np.ndarray) -> int:
        data = _as_bytes(array)
        pointer = self.allocate(data.nbytes)
        self.tensors[pointer][: data.nbytes].copy_(self.torch.from_numpy(data.copy()))
        return pointer

    def download(self, pointer: int, nbytes: int) -> np.ndarray:
        return self.tensors[pointer][:nbytes].cpu().numpy()

    def synchronize(self) -> None:
        self.torch.cuda.current_stream().synchronize()

    def close(self) -> None:
        self.tensors.clear()
