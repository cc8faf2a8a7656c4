"""Facts about a model that rules share: small pure functions over onnx-ir objects, and the cache."""

from __future__ import annotations

from graphdoctor.analysis.context import Analysis

__all__ = ["Analysis"]
