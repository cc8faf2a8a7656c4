"""Helpers for testing fixes: apply a rule's fixes to a model in memory, run both on ONNX Runtime, compare bits."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from graphdoctor.engine import FixPolicy, RuleFixes, apply_fixes, select_rules
from graphdoctor.rule import load_rules
from graphdoctor.targets import parse_target
from graphdoctor.verify.backends.onnxruntime import as_written


def fix_proto(
    proto: onnx.ModelProto,
    select: str | list[str],
    *,
    unsafe: bool = False,
    opt_ins: tuple[str, ...] = (),
    target: str = "tensorrt-10",
) -> tuple[onnx.ModelProto, list[RuleFixes]]:
    """The model after the selected rules' fixes (reached a fixed point), and what each rule did. The given
    proto is left as it was (onnx-ir tensors wrap the proto's, so the IR works on a copy)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    model = ir.serde.deserialize_model(copy)
    rules = select_rules(load_rules(), [select] if isinstance(select, str) else select)
    policy = FixPolicy(unsafe=unsafe, opt_ins=frozenset(opt_ins))
    fixes, converged = apply_fixes(model, rules, policy, target=parse_target(target))
    assert converged, "the fixes did not reach a fixed point"
    fixed = ir.serde.serialize_model(model)
    onnx.checker.check_model(fixed, full_check=True)
    return fixed, fixes


def run_ort(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs on ONNX Runtime CPU with graph optimizations and prepacking off: every node runs as written."""
    options = ort.SessionOptions()
    as_written(options)
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    declared = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in declared})


def assert_bit_exact(original: onnx.ModelProto, fixed: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> None:
    """Same outputs, bit for bit (NaN payloads and -0.0 included), in the same order under the same names."""
    assert [o.name for o in original.graph.output] == [o.name for o in fixed.graph.output]
    for before, after in zip(run_ort(original, feeds), run_ort(fixed, feeds), strict=True):
        assert before.dtype == after.dtype and before.shape == after.shape
        assert before.tobytes() == after.tobytes()


@pytest.fixture
def fix():
    return fix_proto
