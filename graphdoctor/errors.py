"""The one error type users see: a clear line and exit code 2, never a traceback."""

from __future__ import annotations

__all__ = ["GraphDoctorError", "ModelLoadError", "first_line"]


class GraphDoctorError(Exception):
    """A usage, configuration or input error; the CLI prints it on one line and exits 2."""

    exit_code = 2


class ModelLoadError(GraphDoctorError):
    """The model file cannot be read safely (missing, truncated, not ONNX, hostile external data)."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of a library's error (protobuf, onnxruntime, TensorRT messages run to pages), for
    the one-line messages users get; the exception type when the message is empty."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:limit]
