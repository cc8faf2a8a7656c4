"""What a GPU backend checks before its verdict can be trusted: that the stack installed can work at all, that a
session really got the provider it asked for, and where the nodes of a run really ran.

ONNX Runtime's GPU providers fail quietly: `get_available_providers()` lists CUDA and TensorRT on any machine
with onnxruntime-gpu installed, a session whose provider cannot start (no GPU, a CUDA library missing) is
created without an exception on the CPU, and the TensorRT provider prints its "EP Error ... Falling back"
banner on stdout. So availability is decided by a probe session whose providers are read back; every real
session is read back too; what the native libraries print goes to our log (`-v`), never to stdout, where it
would break `--format json`; and a profiled run says which provider ran each kernel.

The stack itself can be broken before any session: `onnxruntime` and `onnxruntime-gpu` install into one
package folder (the one installed last wins, often the CPU one), and onnxruntime-gpu's TensorRT provider is
linked against TensorRT 10 (`libnvinfer.so.10`), which TensorRT 11 does not provide.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "INSTALL_GPU",
    "ORT_DISTRIBUTIONS",
    "NativeOutput",
    "broken_stack_reason",
    "failure_line",
    "installed_versions",
    "kernel_placement",
    "native_output_to_log",
    "placement_text",
]

logger = logging.getLogger(__name__)

# the distributions that install the `onnxruntime` module; two of them at once overwrite each other's files
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu12-libs", "tensorrt-cu13-libs")
TENSORRT_OF_ORT_PROVIDER = 10  # the TensorRT major onnxruntime-gpu 1.19 and later link (libnvinfer.so.10)
INSTALL_GPU = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'graphdoctor[gpu]'"
SHORT_NAMES = {
    "CPUExecutionProvider": "CPU",
    "CUDAExecutionProvider": "CUDA",
    "TensorrtExecutionProvider": "TensorRT",
}


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The version of each distribution of `names` that is installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@functools.cache
def broken_stack_reason(provider: str) -> str | None:
    """Why `provider` cannot work with what is installed, whatever the machine; None when nothing is known wrong."""
    for folder, runtimes in _runtimes_by_folder().items():
        if len(runtimes) > 1:
            listed = " and ".join(f"{name} {version}" for name, version in sorted(runtimes))
            return (
                f"{listed} are installed together in {folder}: they share its onnxruntime package folder and "
                f"the one installed last wins, so which providers load is an accident ({INSTALL_GPU})"
            )
    gpu_runtime = installed_versions(("onnxruntime-gpu",))
    if provider == "TensorrtExecutionProvider" and gpu_runtime:
        return _tensorrt_mismatch(gpu_runtime["onnxruntime-gpu"])
    return None


def _runtimes_by_folder() -> dict[str, list[tuple[str, str]]]:
    """The ONNX Runtime distributions per site folder: two in one folder overwrite each other's files (two in
    different folders do not: the first on sys.path is the one imported, and its providers are what it lists)."""
    folders: dict[str, list[tuple[str, str]]] = {}
    for distribution in importlib.metadata.distributions():
        name = (distribution.metadata["Name"] or "").lower()
        if name in ORT_DISTRIBUTIONS:
            entry = (name, distribution.version)
            runtimes = folders.setdefault(os.fspath(distribution.locate_file("")), [])
            if entry not in runtimes:
                runtimes.append(entry)
    return folders


def _tensorrt_mismatch(ort_version: str) -> str | None:
    """onnxruntime-gpu's TensorRT provider loads the TensorRT 10 libraries; another major cannot serve it."""
    tensorrt = {name: version for name, version in _tensorrt_versions().items() if not version.startswith("10.")}
    if not tensorrt:
        return None
    name, version = next(iter(tensorrt.items()))
    return (
        f"onnxruntime-gpu {ort_version}'s TensorRT provider is linked against TensorRT "
        f"{TENSORRT_OF_ORT_PROVIDER} (libnvinfer.so.{TENSORRT_OF_ORT_PROVIDER}), and {name} {version} is installed: "
        f"it cannot load (native TensorRT 11 runs as --backend tensorrt; for this provider install "
        f"'graphdoctor[tensorrt]', TensorRT 10)"
    )


def _tensorrt_versions() -> dict[str, str]:
    return installed_versions(TENSORRT_DISTRIBUTIONS)


class NativeOutput:
    """What native code wrote on the process's stdout and stderr while captured; `text` once the block ended."""

    text: str = ""


@contextlib.contextmanager
def native_output_to_log(what: str) -> Iterator[NativeOutput]:
    """File descriptors 1 and 2 go to a temporary file for the block (native libraries write there directly,
    past sys.stdout); what they wrote is logged at info (`-v`) and kept in the NativeOutput yielded."""
    captured = NativeOutput()
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = (os.dup(1), os.dup(2))
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace").strip()
    if captured.text:
        logger.info("%s wrote: %s", what, captured.text)


# "EP Error /onnxruntime_src/...cc:729 void onnxruntime::...(...) Please install TensorRT libraries ..."
_SOURCE_PREFIX = re.compile(r"^.*?(?:EP Error|\[[A-Z]+:[^\]]*\])\s+(?:\S+:\d+\s+[^(]*\([^)]*\)\s+)?")


_ORT_STATUS = re.compile(r"^.*?\[ONNXRuntimeError\] : \d+ : \w+ : ")


def failure_line(text: str) -> str:
    """What the first line of a native log that says something failed says, without ONNX Runtime's source
    location and banners; '' when no line does."""
    for line in text.splitlines():
        if line.strip("* ") not in ("", "EP Error") and any(
            word in line for word in ("Error", "error", "Failed", "failed", "cannot")
        ):
            return _ORT_STATUS.sub("", _SOURCE_PREFIX.sub("", line.strip(), count=1), count=1)[:300]
    return ""


def kernel_placement(profile: Path) -> Counter[str]:
    """Kernels per provider in ONNX Runtime's profile of a run (its JSON trace): each node event
    `<node>_kernel_time` names the provider that ran it. A node that ran twice counts once; a provider's fused
    subgraph (a TensorRT engine) counts as one kernel."""
    events = json.loads(profile.read_text())
    seen: dict[str, str] = {}
    for event in events:
        name = event.get("name", "")
        provider = (event.get("args") or {}).get("provider")
        if event.get("cat") == "Node" and name.endswith("_kernel_time") and provider:
            seen.setdefault(name.removesuffix("_kernel_time"), provider)
    return Counter(seen.values())


def placement_text(counts: Counter[str]) -> str:
    """'52 kernels: 50 on CUDA, 2 on CPU' (largest first)."""
    total = sum(counts.values())
    parts = ", ".join(f"{count} on {SHORT_NAMES.get(name, name)}" for name, count in counts.most_common())
    from graphdoctor.analysis.format import format_count

    return f"{format_count(total, 'kernel')}: {parts}"
