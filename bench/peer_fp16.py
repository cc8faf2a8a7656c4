"""One peer FP16 conversion, in a fresh process that imports the peer and nothing else of the bench: its wall
time is the peer's (bench/fp16.py runs it under /usr/bin/time -v).

    .venv/bin/python bench/peer_fp16.py occ|ort|onnxslim|onnxsim SOURCE TARGET
"""

from __future__ import annotations

import sys
from pathlib import Path


def convert(key: str, source: str, target: str) -> int:
    """One peer conversion, as its documentation shows it; the >2 GB model through each one's path API."""
    import onnx
    from models import is_large  # the bench's size rule; models imports the standard library alone

    large = is_large(Path(source))
    if key == "onnxslim":
        import onnxslim

        onnxslim.slim(source, output_model=target, dtype="fp16")
        return 0
    if key == "onnxsim":
        import onnxsim

        model = onnxsim.quantize_fp16(source, keep_io_types=True)
    elif key == "occ":
        from onnxconverter_common import float16

        if large:
            model = float16.convert_float_to_float16_model_path(source, keep_io_types=True)
        else:
            model = float16.convert_float_to_float16(onnx.load(source), keep_io_types=True)
    elif key == "ort":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(source if large else onnx.load(source), keep_io_types=True)
    else:
        raise SystemExit(f"unknown converter {key}")
    onnx.save(model, target, save_as_external_data=large, location=Path(target).name + ".data")
    return 0


if __name__ == "__main__":
    sys.exit(convert(*sys.argv[1:]))
