"""ONNX Runtime's execution providers as backends, and the session helpers the rest of graphdoctor shares.

ONNX Runtime's CPU provider runs most FP16 nodes in FP32 (it inserts Casts around them), so it proves that an
FP16 model loads and what its rounded weights do, never FP16 overflow.

Any tensor of the graph can be fetched, not only the outputs: `run(..., outputs=[names])` exposes them for
that run only (layer-wise comparison fetches a few at a time to bound memory).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphdoctor.errors import GraphDoctorError, first_line
from graphdoctor.verify.backends import Backend, BackendUnavailable, CpuGraph, gpu

__all__ = [
    "EXTERNAL_FOLDER",
    "DeployedSessionCheck",
    "OnnxruntimeBackend",
    "as_declared",
    "as_written",
    "check_loads",
    "graph_of",
    "provider_problem",
    "quiet_session_options",
    "release_freed_memory",
    "session_model",
]

EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"


@dataclass(frozen=True)
class _Provider:
    name: str  # ONNX Runtime's provider name
    label: str
    precision: str
    options: dict[str, str] = field(default_factory=dict)  # its provider options
    fallbacks: tuple[str, ...] = ()  # listed after it, as deployments list them (CPU always comes last)

    @property
    def on_gpu(self) -> bool:
        return self.name != CPU


CPU = "CPUExecutionProvider"
TF32_OVERRIDE = "NVIDIA_TF32_OVERRIDE"
_PROVIDERS = {
    "onnxruntime-cpu": _Provider(
        CPU,
        "ONNX Runtime CPU",
        "the model's dtypes; FP16 nodes mostly run in FP32 on this provider, so FP16 overflow is invisible",
    ),
    "onnxruntime-cuda": _Provider(
        "CUDAExecutionProvider",
        "ONNX Runtime CUDA",
        "the model's dtypes on the GPU: FP32 in FP32 (TF32 off, use_tf32=0), FP16 in FP16",
        {"use_tf32": "0"},
    ),
    "onnxruntime-tensorrt": _Provider(
        "TensorrtExecutionProvider",
        "ONNX Runtime TensorRT EP",
        "TensorRT engines built by ONNX Runtime in the model's dtypes (trt_fp16_enable off; {tf32}), the nodes "
        "TensorRT rejects on CUDA",
        {"trt_fp16_enable": "False"},
        ("CUDAExecutionProvider",),
    ),
}
# A tiny model the probe session runs: a provider that cannot run a Relu cannot run anything.
_PROBE_TEXT = """<ir_version: 8, opset_import: ["" : 13]>
probe (float[1, 8] x) => (float[1, 8] y) { y = Relu(x) }"""


class OnnxruntimeBackend(Backend):
    """One ONNX Runtime execution provider, with graph optimizations at their default as deployed, or off
    (`optimize=False`): its optimizer folds constants and fuses Conv+BatchNorm as simplifiers do, so a check
    of a simplifier's rewrite must run both models with every node as written.

    A GPU provider is available only when a probe session really got it; each session is read back, and one
    that ONNX Runtime placed on the CPU raises BackendUnavailable; each run is profiled, and `placement()`
    says how many kernels ran on which provider."""

    def __init__(self, key: str, optimize: bool = True) -> None:
        self.provider = _PROVIDERS[key]
        self.optimize = optimize
        self.name = key if optimize else f"{key}-unoptimized"
        unoptimized = f"{self.provider.precision}; graph optimizations and weight prepacking off"
        precision = self.provider.precision if optimize else unoptimized
        self.precision = precision.format(tf32=_tf32_override()) if "{tf32}" in precision else precision
        self.on_gpu = self.provider.on_gpu
        self._placement: str | None = None

    def unavailable_reason(self) -> str | None:
        return provider_problem(self.provider.name)

    def placement(self) -> str | None:
        return self._placement

    def run(
        self, model: Path, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        options = quiet_session_options()
        if not self.optimize:
            as_written(options)
        source = session_model(model, outputs, options)
        if not self.on_gpu:
            session = self._session(ort, model, source, options)
            return self._run(session, model, inputs)
        with tempfile.TemporaryDirectory(prefix="graphdoctor-profile-") as folder:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(folder, "run")
            with gpu.native_output_to_log(self.provider.label):
                session = self._session(ort, model, source, options)
                self._check_placed(session)
                results = self._run(session, model, inputs)
                self._record_placement(Path(session.end_profiling()))
        return results

    def cpu_graph(self, model: Path) -> CpuGraph | None:
        """The model at the graph optimization level this backend runs it with (CPU only): as written, or, for a
        low-precision model, with the Casts the CPU provider inserts where it runs them (verify.cpu_casts)."""
        if self.on_gpu:
            return None
        from graphdoctor.verify.cpu_casts import as_placed, holds_low_precision

        proto, folder = graph_of(model), model.resolve().parent
        if holds_low_precision(proto):  # the Casts this provider inserts, where it runs them (verify.cpu_casts)
            proto = as_placed(proto, folder)
        if self.optimize:
            return CpuGraph(proto, folder, _ALL_OPTIMIZATIONS)
        return CpuGraph(proto, folder, 0, ((_NO_PREPACKING, "1"),))

    def _session(self, ort, model: Path, source, options):
        try:
            return ort.InferenceSession(source, options, providers=_provider_list(self.provider))
        except Exception as error:  # onnxruntime raises its own exception types for bad models
            raise GraphDoctorError(f"{self.provider.label} cannot run {model.name}: {first_line(error)}") from None

    def _run(self, session, model: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in session.get_outputs()]
        try:
            results = session.run(names, as_declared(session, inputs))
        except Exception as error:  # onnxruntime raises its own exception types for bad inputs
            raise GraphDoctorError(f"{self.provider.label} cannot run {model.name}: {first_line(error)}") from None
        return dict(zip(names, results, strict=True))

    def _check_placed(self, session) -> None:
        """The session must hold the provider asked for: ONNX Runtime silently falls back to CPU."""
        if self.provider.name not in session.get_providers():
            raise BackendUnavailable(
                f"ONNX Runtime created the session without {self.provider.name} (providers: "
                f"{', '.join(session.get_providers())}): nothing ran on the GPU"
            )

    def _record_placement(self, profile: Path) -> None:
        counts = gpu.kernel_placement(profile)
        self._placement = f"{gpu.placement_text(counts)} (ONNX Runtime's profile of the run)" if counts else None
        on_gpu = sum(count for name, count in counts.items() if name != CPU)
        if counts and not on_gpu:
            raise BackendUnavailable(f"ONNX Runtime ran every kernel on the CPU ({self._placement}), none on the GPU")


def _tf32_override() -> str:
    """The TensorRT provider has no TF32 option: CUDA reads NVIDIA_TF32_OVERRIDE when it starts, so it is set to 0
    (FP32 verdicts on FP32 arithmetic) unless the user set it; the precision text says which it is."""
    value = os.environ.setdefault(TF32_OVERRIDE, "0")
    return "TF32 off through NVIDIA_TF32_OVERRIDE=0" if value == "0" else f"TF32 as NVIDIA_TF32_OVERRIDE={value} allows"


def _provider_list(provider: _Provider) -> list:
    """The provider with its options, then its fallbacks (ONNX Runtime adds the CPU provider last itself).
    The TensorRT provider shares one timing cache per process, so the gate's repeated builds reuse the
    tactic timings; not its engine cache, which ONNX Runtime does not key on the weights (a converted model
    with the graph of the last one would get the last one's engine)."""
    options = dict(provider.options)
    if provider.name == "TensorrtExecutionProvider":
        options |= {"trt_timing_cache_enable": "True", "trt_timing_cache_path": _timing_cache_folder()}
    return [(provider.name, options), *provider.fallbacks]


@functools.cache
def _timing_cache_folder() -> str:
    folder = tempfile.mkdtemp(prefix="graphdoctor-trt-timing-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def provider_problem(name: str) -> str | None:
    """Why the provider `name` cannot run here, or None: asked once per process (a probe session)."""
    try:
        import onnxruntime as ort
    except ImportError as error:
        return f"ONNX Runtime cannot be imported ({first_line(error)}): pip install 'graphdoctor[cpu]' (or [gpu])"
    if name == CPU:
        return None
    broken = gpu.broken_stack_reason(name)
    if broken:
        return broken
    if name not in ort.get_available_providers():
        return f"{name} is not in this onnxruntime build (install onnxruntime-gpu on a machine with a GPU)"
    return _probe(ort, name)


def _probe(ort, name: str) -> str | None:
    """Create and run the probe model on the provider; None when the session holds it, else what went wrong
    (ONNX Runtime's own error line where it logged one)."""
    import onnx
    import onnx.parser

    provider = next(p for p in _PROVIDERS.values() if p.name == name)
    probe = onnx.parser.parse_model(_PROBE_TEXT).SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 2  # warnings: ONNX Runtime says why a provider did not load
    error = None
    ort.set_default_logger_severity(2)  # the provider's library loader logs through the default logger
    with gpu.native_output_to_log(f"the {name} probe") as native:
        try:
            session = ort.InferenceSession(probe, options, providers=_provider_list(provider))
            held = session.get_providers()
            if name in held:
                session.run(None, {"x": np.ones((1, 8), np.float32)})
        except Exception as exception:  # onnxruntime's own exception types
            error, held = first_line(exception), []
        finally:
            ort.set_default_logger_severity(4)
    if name in held and error is None:
        return None
    why = error or gpu.failure_line(native.text) or "ONNX Runtime logged no reason"
    return f"ONNX Runtime could not start {name} here (its session fell back to CPU): {why}"


def quiet_session_options():
    """Session options whose logger, and ONNX Runtime's default one, keep to fatal errors: a failed run is
    raised to us and becomes one line; ORT's own coloured log line would be a second one on stderr. Without
    the CPU memory arena: our sessions run once, and an arena stays as large as the run's peak for as long as
    any output it holds lives (verifying whisper-tiny against itself peaked at 326 MB with it, 228 without)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.enable_cpu_mem_arena = False
    return options


def release_freed_memory() -> None:
    """Give the memory Python and ONNX Runtime freed back to the system (glibc's malloc_trim) before a run that
    allocates much: glibc keeps freed heap resident, and a run's tensors, mapped afresh, would count on top
    of it in the process's peak (whisper-tiny's layer-wise run peaked 12 MiB higher). Nothing elsewhere."""
    import ctypes
    import gc

    gc.collect()  # graphs are reference cycles: their protos are freed only by the collector
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim this way
        return


def check_loads(model: Path) -> None:
    """Raise unless ONNX Runtime CPU builds a session from `model`: the graph checks and every weight is
    found and read; nothing is run."""
    import onnxruntime as ort

    options = quiet_session_options()
    as_written(options)
    try:
        ort.InferenceSession(os.fspath(model), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for bad models
        raise GraphDoctorError(
            f"the model as written does not load: {first_line(error)}; nothing was written"
        ) from None


_DEFAULT_SESSION = (
    "import os, sys, onnxruntime as ort\n"
    "line = sys.stdin.readline()\n"
    "if not line:\n"
    "    sys.exit(0)\n"
    "options = ort.SessionOptions(); options.log_severity_level = 4\n"
    "try:\n"
    "    ort.InferenceSession(os.fsdecode(bytes.fromhex(line)), options, providers=['CPUExecutionProvider'])\n"
    "except Exception as error:\n"
    "    print(str(error).splitlines()[0] if str(error) else type(error).__name__); sys.exit(1)\n"
)


class DeployedSessionCheck:
    """ONNX Runtime CPU building a default session (every graph optimization on, as users load it) from one
    model, in a child process: ONNX Runtime's optimizers crash on some valid FP16 graphs (a segmentation fault
    in 1.24 and 1.32), which in this process would end graphdoctor without a word.

    The child starts at once and imports ONNX Runtime (most of its cost) while the caller goes on working;
    `submit` hands it the model (its path as hex on stdin: any file name passes), `verdict` waits for it.
    `tolerate_missing_kernels`: a NOT_IMPLEMENTED (no BF16 kernel on this provider) is not a failure."""

    def __init__(self) -> None:
        import subprocess
        import sys

        self._child = subprocess.Popen(
            [sys.executable, "-c", _DEFAULT_SESSION],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._tolerate = False

    def submit(self, model: Path, tolerate_missing_kernels: bool = False) -> None:
        self._tolerate = tolerate_missing_kernels
        try:
            self._child.stdin.write(os.fsencode(model).hex().encode() + b"\n")
            self._child.stdin.flush()
        except BrokenPipeError:  # the child is gone already: `verdict` says why
            pass

    def verdict(self) -> None:
        """Raise unless the child built the session."""
        stdout, stderr = (stream.decode(errors="replace") for stream in self._child.communicate())
        code = self._child.returncode
        if code == 0:
            return
        why = stdout.strip() or first_line(stderr) or f"exit status {code}"
        if code < 0:
            why = f"ONNX Runtime crashed (signal {-code}) building the session, a bug of ONNX Runtime"
        elif self._tolerate and "NOT_IMPLEMENTED" in why:
            return
        raise GraphDoctorError(f"the model as written does not load in a default ONNX Runtime session: {why}")

    def close(self) -> None:
        """End a child never given a model, or given one whose verdict is no longer wanted."""
        if self._child.returncode is None:
            self._child.kill()
            self._child.communicate()


def as_written(options) -> None:
    """Every node as written, on the same kernel whatever its neighbours: no graph optimizations, and no
    prepacking, which gives MatMul a packed-weight kernel (rounding differently, ~1e-6) only when its weight
    is an initializer read directly, not through an Identity. Deployed sessions (optimizations on) remove
    such Identities first, so a fix removing them changes nothing there; this makes the check see that."""
    import onnxruntime as ort

    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry(_NO_PREPACKING, "1")


_NO_PREPACKING = "session.disable_prepacking"
_ALL_OPTIMIZATIONS = 99  # onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL, the default


_ORT_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def as_declared(session, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float inputs in the dtype each input declares: a candidate converted with FP16 inputs gets the
    reference's float32 values rounded, as its users would feed it. Inputs it does not declare (a fix dropped
    an unused input) are not fed."""
    declared_names = {declared.name for declared in session.get_inputs()}
    feeds = {name: value for name, value in inputs.items() if name in declared_names}
    for declared in session.get_inputs():
        target = _ORT_FLOATS.get(declared.type)
        value = feeds.get(declared.name)
        if target is not None and value is not None and value.dtype != target and value.dtype.kind == "f":
            feeds[declared.name] = value.astype(target)
    return feeds


def session_model(model: Path, outputs: Sequence[str] | None, options) -> str | bytes:
    """The model path itself, or, when other tensors are to be fetched, the serialized graph with those
    tensors as its outputs (weights stay in their external files: ONNX Runtime is told where they are)."""
    if outputs is None:
        return os.fspath(model)
    import onnx

    proto = graph_of(model)
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    options.add_session_config_entry(EXTERNAL_FOLDER, os.fspath(model.resolve().parent))
    return proto.SerializeToString()


def graph_of(model: Path):
    """The model's proto with no weight parsed that need not be: external data stays external, and the
    weights inside a large file stay in it, as external data of the file itself (graphdoctor.weights_in_place),
    which ONNX Runtime reads from its folder; smaller files are parsed whole (`left_in_place_for_sessions`)."""
    import onnx

    from graphdoctor.weights_in_place import left_in_place_for_sessions, parse_leaving_weights

    in_place = parse_leaving_weights(model) if left_in_place_for_sessions(model) else None
    return onnx.load_model(os.fspath(model), load_external_data=False) if in_place is None else in_place
