"""Native TensorRT: build an engine from the ONNX file with the `tensorrt` package, run it, return numpy.

This is the backend closest to deployment: TensorRT's own ONNX parser and kernels, as `trtexec --onnx` uses
them. What each mode builds:

- `tensorrt`, for a model that holds FP16 or BF16 tensors (initializers, typed values, Casts to them): a
  strongly typed network (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`), so each tensor runs in the dtype
  the file gives it and a node a converter kept FP32 stays FP32. No precision flag is set on it.
- `tensorrt`, for an FP32 model: an FP32 engine.
- `tensorrt-fp16`: the weakly typed "let TensorRT choose" mode, the FP16 builder flag as `trtexec --fp16`
  sets it: FP16 kernels where TensorRT finds them faster, FP32 elsewhere, whatever dtypes the file gives.
- TensorRT 11 removed the FP16 flag and builds every network strongly typed (its STRONGLY_TYPED flag is
  deprecated and ignored, so none is passed): there `tensorrt` is always the strongly typed build and
  `tensorrt-fp16` is unavailable, saying so.

TF32 is cleared in every mode (TensorRT enables it by default; it rounds matmul and convolution inputs to
10 mantissa bits, so an FP32 check would check something else). Engines are built with detailed profiling
verbosity, and after each run `placement()` gives the precision of the engine's layers as TensorRT's engine
inspector reports it (the datatype of each layer's first output): what the engine really ran, not what was
asked for.

Dynamic input dims get one optimization profile fixed to the shapes of the inputs given (min = opt = max):
the engine is built for exactly what it runs. Outputs whose shape depends on the data (NonZero,
NonMaxSuppression) get their memory from an output allocator once TensorRT knows their shape; the others
get fixed buffers. Intermediate tensors (`outputs=[names]`) are marked as network outputs by name. Marking
keeps TensorRT from fusing them away, so such an engine can differ from the deployed one; tensors that the
parser never created (folded constants, ops it rewrote into other tensors) cannot be marked, are left out of
the results, and are listed in `unmarked` after the run.

Builds are slow, and fix's repair rounds and gate run the same models again: every build in the process
shares one timing cache, and the last 4 engines are kept in memory, keyed by the sha256 of the model file
and of its external data files (hashed on every run, which reads a 2 GB model in about a second: a size and
mtime key would go stale when a file is rewritten within the same clock tick), the input shapes and dtypes,
the marked outputs, the mode, the workspace limit and the TensorRT version.

The builder's workspace limit is TensorRT's default unless `TensorrtBackend(workspace_mib=...)` or the
environment variable GRAPHDOCTOR_TENSORRT_WORKSPACE_MIB (a positive whole number of MiB; `--tensorrt-workspace`
sets it) says otherwise.

Device memory comes from cuda-python's runtime bindings (`cuda.bindings.runtime`; `cuda.cudart` before
cuda-python 12.6, removed in 13) where installed, else from torch.cuda; both are looked for at run time,
never on the CPU path, and probing them never raises. A parser or builder failure is a GraphDoctorError
carrying TensorRT's own messages, and any other exception from TensorRT or CUDA becomes a one-line
GraphDoctorError naming the TensorRT version: the verdict is then 'error' with that reason, which is a
deployment finding.

Tested without a GPU: the dtype detection, the inspector JSON parsing, the cache key and the LRU, the
workspace setting and the unavailable reasons. The build, the run, the output allocator and the inspector
call itself run only where `tensorrt` and a CUDA device are present (tests/verify/test_backends.py).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphdoctor.analysis.graph import holds_type, iter_graph_sites
from graphdoctor.errors import GraphDoctorError, first_line
from graphdoctor.verify.backends import Backend, BackendUnavailable

__all__ = [
    "WORKSPACE_ENV",
    "EngineCache",
    "TensorrtBackend",
    "build_mode",
    "describe_layer_precisions",
    "engine_cache_key",
    "external_files",
    "import_tensorrt",
    "layer_precisions",
    "low_precision_types",
    "model_digest",
    "one_line_error",
    "precision_text",
    "tensorrt_logger",
    "workspace_bytes",
]

logger = logging.getLogger(__name__)

WORKSPACE_ENV = "GRAPHDOCTOR_TENSORRT_WORKSPACE_MIB"
_INSTALL = "pip install 'graphdoctor[tensorrt]' (TensorRT 10) or 'graphdoctor[tensorrt11]'"
_FP32 = "TensorRT FP32 engine (TF32 off)"
_FP16 = "TensorRT FP16 engine (layers may still run in FP32 where TensorRT chooses)"
_STRONGLY_TYPED = "TensorRT strongly typed engine: the model's own dtypes (TF32 off)"
_ENGINES_KEPT = 4
_LOW_PRECISION = {ir.DataType.FLOAT16: "FP16", ir.DataType.BFLOAT16: "BF16"}


class TensorrtBackend(Backend):
    """An engine built by the `tensorrt` package from the ONNX file: strongly typed for a model holding FP16
    or BF16 tensors, FP32 otherwise, or (`fp16=True`, TensorRT 10) with the FP16 builder flag."""

    def __init__(self, fp16: bool = False, workspace_mib: int | None = None) -> None:
        if workspace_mib is not None and workspace_mib < 1:
            raise GraphDoctorError(f"the TensorRT workspace must be at least 1 MiB, not {workspace_mib}")
        self.fp16 = fp16
        self.workspace_mib = workspace_mib
        self.name = "tensorrt-fp16" if fp16 else "tensorrt"
        self.precision = _FP16 if fp16 else _FP32
        self.computes_fp16 = fp16
        self.on_gpu = True
        self.unmarked: tuple[str, ...] = ()  # requested tensors the last run could not expose
        self._layers = ""  # the last run's engine layers, in words

    def unavailable_reason(self) -> str | None:
        """Why this cannot run here: no tensorrt, no CUDA device, or no FP16 flag in this TensorRT.
        Also settles the precision text where the TensorRT version decides it."""
        trt, reason = import_tensorrt()
        if trt is None:
            return reason
        reason = _cuda_device_reason()
        if reason:
            return reason
        if not _has_fp16_flag(trt):
            if self.fp16:
                return _no_fp16_flag(trt)
            self.precision = _STRONGLY_TYPED
        return None

    def run(
        self, model: Path, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        trt, reason = import_tensorrt()
        if trt is None:
            raise GraphDoctorError(str(reason))
        try:
            results = self._run(trt, Path(model), inputs, outputs)
        except GraphDoctorError:
            raise
        except Exception as error:  # TensorRT's and cuda-python's own: one line, never a traceback
            raise GraphDoctorError(one_line_error(trt.__version__, error)) from None
        if outputs is None:
            return results
        passed_through = {name: np.asarray(inputs[name]) for name in outputs if name in inputs}
        return {name: results[name] for name in outputs if name in results} | passed_through

    def placement(self) -> str | None:
        return self._layers or None

    def _run(
        self, trt: Any, model: Path, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        self.unmarked, self._layers = (), ""
        graph = ir.load(model)  # the graph only: external data stays on disk
        low = low_precision_types(graph)
        mode = build_mode(self.fp16, _has_fp16_flag(trt), low)
        if mode == "fp16" and not _has_fp16_flag(trt):
            raise BackendUnavailable(_no_fp16_flag(trt))
        workspace = workspace_bytes(self.workspace_mib)
        key = engine_cache_key(
            model_digest(model, external_files(graph)), inputs, outputs, mode, workspace, trt.__version__
        )
        self.precision = precision_text(mode, low)  # what is built, also when the build fails
        buffers = _device_buffers()  # first: without a device, its reason is clearer than the builder's
        try:
            built = _ENGINES.get(key)
            if built is None:
                built = _build_engine(trt, model, inputs, outputs, mode, workspace)
                _ENGINES.put(key, built)
            self.unmarked, self._layers = built.unmarked, built.layers
            return _execute(trt, built, inputs, buffers)
        finally:
            buffers.close()


def one_line_error(version: str, error: BaseException) -> str:
    """An exception from TensorRT or CUDA, as the one line a verdict's reason is."""
    return f"TensorRT {version}: {type(error).__name__}: {first_line(error)}"


def _has_fp16_flag(trt: Any) -> bool:
    """TensorRT 10 has the FP16 builder flag (weak typing); 11 removed it: every network is strongly typed."""
    return hasattr(trt.BuilderFlag, "FP16")


def _no_fp16_flag(trt: Any) -> str:
    return (
        f"TensorRT {trt.__version__} builds strongly typed engines only (no FP16 builder flag): "
        "convert the model to FP16 and verify it with --backend tensorrt"
    )


# --- what to build ----------------------------------------------------------------------------------------


def low_precision_types(model: ir.Model) -> tuple[str, ...]:
    """'FP16' and/or 'BF16' where the model holds such tensors: initializers, graph inputs and outputs, typed
    values (value_info), or Cast outputs, in every graph and function. A Constant node's tensor counts only
    where value_info types its output."""
    return tuple(label for dtype, label in _LOW_PRECISION.items() if holds_type(model, dtype))


def build_mode(fp16: bool, has_fp16_flag: bool, low_precision: Sequence[str]) -> str:
    """'fp16' (the FP16 flag: TensorRT chooses), 'strongly-typed' (the file's dtypes) or 'fp32'."""
    if fp16:
        return "fp16"
    return "strongly-typed" if low_precision or not has_fp16_flag else "fp32"


def precision_text(mode: str, low_precision: Sequence[str]) -> str:
    """What an engine built in `mode` computes in, for the verdict."""
    if mode == "fp16":
        return _FP16
    if mode == "fp32":
        return _FP32
    if not low_precision:
        return _STRONGLY_TYPED  # TensorRT 11 on an FP32 model: FP32 throughout
    held = "/".join(low_precision)
    return f"TensorRT strongly typed engine: the model's own dtypes ({held} where the file says {held}; TF32 off)"


def workspace_bytes(mib: int | None, environ: Mapping[str, str] = os.environ) -> int | None:
    """The builder's workspace limit in bytes: `mib`, else GRAPHDOCTOR_TENSORRT_WORKSPACE_MIB, else None
    (TensorRT's default)."""
    if mib is None:
        text = environ.get(WORKSPACE_ENV, "").strip()
        if not text:
            return None
        if not text.isdigit() or int(text) < 1:
            raise GraphDoctorError(f"{WORKSPACE_ENV} must be a whole number of MiB, at least 1, not '{text}'")
        mib = int(text)
    return mib << 20


# --- the engine cache -------------------------------------------------------------------------------------


def engine_cache_key(
    digest: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None,
    mode: str,
    workspace: int | None,
    version: str,
) -> tuple[Hashable, ...]:
    """What an engine depends on: the model's bytes (`digest`), the shapes and dtypes it is built for, the
    tensors marked as outputs, the mode, the workspace limit and the TensorRT version."""
    shapes = tuple(sorted((name, np.shape(value), np.asarray(value).dtype.str) for name, value in inputs.items()))
    marked = None if outputs is None else tuple(dict.fromkeys(outputs))
    return digest, shapes, marked, mode, workspace, version


def external_files(model: ir.Model) -> list[Path]:
    """The external data files the model's initializers point at, each once."""
    files = {
        Path(value.const_value.path)
        for graph, _ in iter_graph_sites(model)
        if isinstance(graph, ir.Graph)
        for value in graph.initializers.values()
        if isinstance(value.const_value, ir.ExternalTensor)
    }
    return sorted(files)


def model_digest(model: Path, external: Iterable[Path]) -> str:
    """sha256 over the bytes of the model file and of its external data files (each preceded by its size,
    so that no two sets of files run together into the same stream), read in 1 MiB blocks. The file names
    count only as the model's bytes name its external files: a copy elsewhere is the same engine."""
    digest = hashlib.sha256()
    for path in (model, *external):
        digest.update(f"{path.stat().st_size}\0".encode())
        with open(path, "rb") as file:
            for block in iter(lambda file=file: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class EngineCache:
    """The last `size` engines used, by key (an engine holds GPU memory, so only a few are kept)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return self.entries[key]

    def put(self, key: Hashable, value: Any) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


_ENGINES = EngineCache(_ENGINES_KEPT)


# --- the engine inspector ---------------------------------------------------------------------------------

# the datatype words in the inspector's tensor descriptions ("Half", "Row major linear FP16 format", ...)
_DATATYPE_WORDS = {
    "FLOAT": "FP32",
    "FLOAT32": "FP32",
    "FP32": "FP32",
    "HALF": "FP16",
    "FLOAT16": "FP16",
    "FP16": "FP16",
    "BFLOAT16": "BF16",
    "BF16": "BF16",
    "FP8": "FP8",
    "FP4": "FP4",
    "INT4": "INT4",
    "INT8": "INT8",
    "UINT8": "UINT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
    "E8M0": "E8M0",
}


def layer_precisions(engine_information: str) -> dict[str, int]:
    """Layers per precision (the datatype of each layer's first output that names one), most first, from
    `IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`: {"Layers": [...], ...}, each layer
    a dict with "Outputs" when the engine was built with DETAILED profiling verbosity, a bare name otherwise
    (then nothing is recorded and this is empty)."""
    try:
        information = json.loads(engine_information)
    except ValueError:
        return {}
    layers = information.get("Layers", []) if isinstance(information, dict) else []
    counts: Counter[str] = Counter()
    for layer in layers if isinstance(layers, list) else []:
        tensors = layer.get("Outputs") if isinstance(layer, dict) else None
        found = (_tensor_precision(tensor) for tensor in tensors or [] if isinstance(tensor, dict))
        precision = next((label for label in found if label), None)
        if precision:
            counts[precision] += 1
    return dict(counts.most_common())


def _tensor_precision(tensor: Mapping[str, Any]) -> str | None:
    """The datatype of one tensor entry: its "Datatype" where TensorRT gives one, else the one its
    "Format/Datatype" (or "Format") text names."""
    for key in ("Datatype", "DataType", "Format/Datatype", "Format"):
        text = tensor.get(key)
        if isinstance(text, str):
            words = (_DATATYPE_WORDS.get(word) for word in re.findall(r"[A-Z0-9]+", text.upper()))
            label = next((word for word in words if word), None)
            if label:
                return label
    return None


def describe_layer_precisions(counts: Mapping[str, int]) -> str:
    """The placement line of a verdict: how many engine layers ran in each precision, or that none is known."""
    if not counts:
        return "engine layers: precision not recorded (TensorRT's engine inspector named no layer datatypes)"
    listed = ", ".join(f"{count} {precision}" for precision, count in counts.items())
    return f"engine layers: {listed} (read from TensorRT's engine inspector)"


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
    """cuda-python's runtime bindings (`cuda.bindings.runtime` since 12.6, `cuda.cudart` before; 13 removed
    the latter), or None."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
        except Exception as error:  # a broken install (its CUDA library missing): try the next, then torch
            logger.info("cannot import %s: %s", name, first_line(error))
    return None


def _torch() -> Any:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch


def _cuda_device_reason() -> str | None:
    """None when a CUDA device can be used for buffers; else why not. Never raises: it is a probe."""
    try:
        return _probe_cuda_device()
    except Exception as error:
        return f"no usable CUDA device ({type(error).__name__}: {first_line(error)})"


def _probe_cuda_device() -> str | None:
    cudart = _cuda_runtime()
    if cudart is not None:
        error, count = cudart.cudaGetDeviceCount()
        if error != cudart.cudaError_t.cudaSuccess:
            return f"no CUDA device (cudaGetDeviceCount: {getattr(error, 'name', error)})"
        return None if count else "no CUDA device (cudaGetDeviceCount found none)"
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
    layers: str  # the precision of its layers, in words


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


@functools.cache
def _builder(trt: Any) -> tuple[Any, Any]:
    """One builder and one timing cache for the process: every build reuses the tactic timings of the ones
    before (the cache must outlive the builds that use it). `trt.Builder` raises TypeError ("factory function
    returned nullptr") when CUDA cannot start; functools.cache keeps no failure, so a later call tries again."""
    builder = trt.Builder(tensorrt_logger(trt))
    cache = builder.create_builder_config().create_timing_cache(b"")
    return builder, cache


def _network_flags(trt: Any, mode: str) -> int:
    """STRONGLY_TYPED on TensorRT 10 where asked for; TensorRT 11 types every network strongly and ignores
    the flag (deprecated), so nothing is passed there."""
    if mode == "strongly-typed" and _has_fp16_flag(trt):
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _build_engine(
    trt: Any,
    model: Path,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None,
    mode: str,
    workspace: int | None,
) -> _Engine:
    log = tensorrt_logger(trt)
    log.errors.clear()
    builder, timing_cache = _builder(trt)
    network = builder.create_network(_network_flags(trt, mode))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(os.fspath(model)):  # from the path, so external data resolves beside it
        raise GraphDoctorError(f"TensorRT's ONNX parser rejects {model.name}: {_parser_errors(parser)}")
    unmarked = _mark_outputs(network, outputs, inputs) if outputs is not None else ()
    config = _builder_config(trt, builder, timing_cache, mode, workspace)
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
    information = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return _Engine(runtime, engine, unmarked, describe_layer_precisions(layer_precisions(information)))


def _builder_config(trt: Any, builder: Any, timing_cache: Any, mode: str, workspace: int | None) -> Any:
    """The FP16 flag only in 'fp16' mode (a strongly typed network takes no precision flag), TF32 cleared,
    detailed layer information, the shared timing cache, and the workspace limit where one is given."""
    config = builder.create_builder_config()
    if mode == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        logger.info("TensorRT refused the shared timing cache; this build times its tactics afresh")
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    return config


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
    """Copy the inputs in, run once, copy every output back: fixed buffers for outputs whose shape the input
    shapes settle, the output allocator for those whose shape only the run tells (a -1 dim)."""
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
    allocator = _output_allocator_class(trt)(buffers)
    fixed: dict[str, tuple[tuple[int, ...], int]] = {}
    for name in output_names:
        shape = tuple(context.get_tensor_shape(name))
        if any(dim < 0 for dim in shape):
            if not context.set_output_allocator(name, allocator):
                raise GraphDoctorError(f"TensorRT takes no output allocator for '{name}': {log.take()}")
            continue
        fixed[name] = (shape, buffers.allocate(_nbytes(shape, _numpy_dtype(trt, engine, name))))
        context.set_tensor_address(name, fixed[name][1])
    if not context.execute_async_v3(buffers.stream_handle):
        raise GraphDoctorError(f"TensorRT failed to run the engine: {log.take()}")
    buffers.synchronize()
    placed = fixed | {name: (allocator.shapes[name], allocator.memory[name][0]) for name in allocator.memory}
    results = {}
    for name, (shape, pointer) in placed.items():
        dtype = _numpy_dtype(trt, engine, name)
        results[name] = buffers.download(pointer, _nbytes(shape, dtype)).view(dtype).reshape(shape)
    return results


def _nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


@functools.cache
def _output_allocator_class(trt: Any) -> type:
    """An IOutputAllocator handing TensorRT device memory from `buffers` once it knows an output's size,
    and recording the shape it reports (the data-dependent outputs: NonZero, NonMaxSuppression)."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self, buffers: Any) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers = buffers
            self.memory: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            held = self.memory.get(tensor_name)
            if held is None or held[1] < size:  # buffers frees every allocation at close()
                held = (self.buffers.allocate(size), size)
                self.memory[tensor_name] = held
            return held[0]

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int, stream: int) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(shape)

    return OutputAllocator


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
