"""graphdoctor: diagnose, repair and verify ONNX models before deployment."""

from __future__ import annotations

from graphdoctor._deferred import defer_sympy

defer_sympy()

__version__ = "0.1.0"
__all__ = ["__version__"]
