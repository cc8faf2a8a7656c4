"""Small hand-made models shared by the verify tests (real exports come from fixtures.torch_exports)."""

from __future__ import annotations

import onnx

from fixtures.handmade import model_from_text

__all__ = ["UNKNOWN_OP", "linear"]

LINEAR = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,3] y)
  <float[4,3] w = {0.5, -1.0, 0.25, 2.0, 0.75, -0.5, 1.5, -0.25, 1.0, -2.0, 0.125, 0.5}, float[3] b = {B}> {
    m = MatMul(x, w)
    y = Add(m, b)
}"""

# loads in onnx-ir, but neither ONNX Runtime nor TensorRT knows the op
UNKNOWN_OP = model_from_text(
    """<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
g (float[N,4] x) => (float[N,3] y) {
    y = com.example.Mystery(x)
}""",
    check=False,
)


def linear(delta: float = 0.0) -> onnx.ModelProto:
    """y = x·w + b (intermediate m = x·w), with every bias moved by `delta`: every output moves by `delta`,
    whatever the inputs."""
    biases = [0.1 + delta, -0.2 + delta, 0.3 + delta]
    return model_from_text(LINEAR.replace("{B}", "{" + ", ".join(map(repr, biases)) + "}"))
