"""The one error type users see: a clear line and exit code 2, never a traceback."""

from __future__ import annotations

__all__ = ["GraphDoctorError", "Interrupted", "ModelLoadError", "first_line"]


class GraphDoctorError(Exception):
    """A usage, configuration or input error; the CLI prints it on one line and exits 2."""

    exit_code = 2


class ModelLoadError(GraphDoctorError):
    """The model file cannot be read safely (missing, truncated, not ONNX, hostile external data)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM: one line and exit 2, nothing written. A BaseException, as KeyboardInterrupt is, so
    that no `except Exception` or `except GraphDoctorError` on its way (a backend recording its error as a
    verdict) mistakes the interrupt for a verdict on the model."""

    exit_code = 2


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of a library's error (protobuf, onnxruntime, TensorRT messages run to pages), for
    the one-line messages users get; the exception type when the message is empty."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:limit]
