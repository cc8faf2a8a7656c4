"""The extras install a coherent stack: pip resolves [cpu] and [gpu] from PyPI alone (a dry run: nothing is
downloaded but metadata), each with exactly one ONNX Runtime distribution, since `onnxruntime` and
`onnxruntime-gpu` overwrite each other's package folder; the TensorRT extras pin the major each is for."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from graphdoctor.verify.backends import gpu

ROOT = Path(__file__).resolve().parent.parent


def extras() -> dict[str, list[str]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    section = parser["options.extras_require"]
    return {name: [line.strip() for line in section[name].strip().splitlines()] for name in section}


def install_requires() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options"]["install_requires"].strip().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def resolved(extra: str, tmp_path: Path) -> dict[str, str]:
    """What `pip install --dry-run '.[extra]'` would install into an empty environment: name -> version."""
    report = tmp_path / f"{extra}.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    run = subprocess.run(
        [*command, "--report", str(report), f".[{extra}]"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }


def test_no_onnxruntime_distribution_is_a_plain_dependency():
    assert not any(re.match(r"onnxruntime\b", requirement) for requirement in install_requires())


@pytest.mark.parametrize(("extra", "distribution"), [("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu")])
def test_extra_resolves_from_pypi_with_one_onnxruntime(extra, distribution, tmp_path):
    plan = resolved(extra, tmp_path)
    assert [name for name in plan if name in gpu.ORT_DISTRIBUTIONS] == [distribution]
    if extra == "gpu":  # CUDA, cuDNN and cuBLAS come from PyPI: the CUDA provider finds what it links
        assert {"nvidia-cuda-runtime", "nvidia-cudnn-cu13", "nvidia-cublas"} <= set(plan)


def test_tensorrt_extras_pin_the_major_they_are_for():
    """[tensorrt] is TensorRT 10, what onnxruntime-gpu's TensorRT provider links; [tensorrt11] is 11 alone."""
    declared = extras()
    assert f"<{gpu.TENSORRT_OF_ORT_PROVIDER + 1}" in declared["tensorrt"][0]
    assert ">=11,<12" in declared["tensorrt11"][0]
    assert all(not line.startswith("onnxruntime") for line in declared["tensorrt"] + declared["tensorrt11"])
