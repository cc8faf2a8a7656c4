"""Dtypes and shapes of every value, by ONNX shape inference that also works on models over 2 GB.

onnx-ir's shape-inference pass serializes the graph with large initializers taken out (their types stay as
inputs), so the protobuf stays small whatever the model's size. Inference runs non-strict: a node it cannot
type (contrib ops, data-dependent shapes) leaves its outputs unknown instead of failing the whole model, and
rules treat an unknown dtype as "don't know", never as a match.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

__all__ = ["infer_types"]

logger = logging.getLogger(__name__)


def infer_types(model: ir.Model) -> bool:
    """Fill in value dtypes and shapes in place; False when inference failed (the model is unchanged)."""
    try:
        result = ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    except Exception as error:  # inference is a help, never a reason to stop linting
        logger.warning("shape inference failed: %s", error)
        return False
    return result.modified or True
