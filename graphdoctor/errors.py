"""The one error type users see: a clear line and exit code 2, never a traceback."""

from __future__ import annotations

__all__ = ["GraphDoctorError", "ModelLoadError"]


class GraphDoctorError(Exception):
    """A usage, configuration or input error; the CLI prints it on one line and exits 2."""

    exit_code = 2


class ModelLoadError(GraphDoctorError):
    """The model file cannot be read safely (missing, truncated, not ONNX, hostile external data)."""
