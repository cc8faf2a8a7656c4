"""The models bench/fp16.py runs on, beyond bench/models.py's (which it asks for resnet50, yolo, bert, large).

- convnext_tiny, vit_b_16: torchvision, weights=None, perturbed (no two tensors equal), TorchScript exporter
  at opset 17, batch 1 at 224×224: two classifiers whose ops (LayerNorm, GELU, Softmax) ResNet-50 lacks.
- bert_base_opset14: bench/models.py's BERT-base at opset 14, where LayerNormalization does not exist yet and
  the exporter decomposes it (ReduceMean, Pow, Sqrt, Div, its 1e-12 epsilon a tensor that FP16 flushes to 0).
- chain775, chain3100, chain12400: synthetic chains on a [1, 64] tensor, the research's scaling models
  (research/fp16.md §3.7): blocks of ten MatMul(64×64) + Add + Tanh layers closed by a Max (25, 100 and 400
  blocks): graphs dominated by their node count, not their weights, to show how each converter scales.
  onnxconverter-common keeps Max in FP32 by default, so it must place Casts around 400 regions; Tanh keeps
  activations bounded, so FP16 itself never overflows here.
- any other name of `fixtures.torch_exports.NAMES` (bert_opset14, bert_opset17, mobilenet_v3_large,
  efficientnet_b0, the dynamo exports, ...): the cached fixture the tests use, built when missing or stale.

Built models are cached under .cache/bench/ (bench/models.py's CACHE) and built in a child process
(`python bench/fp16_models.py NAME`); fixtures are asked of one too (`fixture NAME`, `names`), so torch never
enters the process that runs the benchmark.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import models
from models import CACHE, ModelUnavailable

CHAIN_BLOCKS = {"chain775": 25, "chain3100": 100, "chain12400": 400}  # 31 nodes a block
CHAIN_BLOCK_LAYERS = 10
CHAIN_WIDTH = 64
OWN_MODELS = ("convnext_tiny", "vit_b_16", "bert_base_opset14", *CHAIN_BLOCKS)
ROOT = Path(__file__).resolve().parents[1]

__all__ = ["OWN_MODELS", "fixture_names", "model_path"]


def model_path(name: str) -> Path:
    """Ours from the cache, built by a child if missing; bench/models.py's through its own model_path; any
    other name is a fixture, asked of a child (which builds it when missing or stale)."""
    if name in models.KNOWN_MODELS:
        return models.model_path(name)
    if name not in OWN_MODELS:
        return Path(_ask_child("fixture", name)[-1])
    path = CACHE / f"{name}.onnx"
    if path.exists():
        return path
    print(f"bench/fp16_models: {name}: building it in a child process ...", file=sys.stderr, flush=True)
    _ask_child("build", name)
    if not path.is_file():
        raise ModelUnavailable(f"could not build '{name}': the builder wrote no {path}")
    return path


def fixture_names() -> list[str]:
    """`fixtures.torch_exports.NAMES` as it is now (other engineers add fixtures while benchmarks exist)."""
    return _ask_child("names")


def _ask_child(*command: str) -> list[str]:
    """Run `python bench/fp16_models.py COMMAND...` and return its stdout lines (the answer is the last)."""
    result = subprocess.run([sys.executable, __file__, *command], stdout=subprocess.PIPE, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        reason = lines[-1] if lines else f"exit {result.returncode}"
        raise ModelUnavailable(f"{' '.join(command)}: {reason}")
    return lines


# --- builders (run in the child process) ---------------------------------------------------------------


def build_torchvision(name: str, path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.backends.mha.set_fastpath_enabled(False)  # else ViT traces a fused attention op no opset has
    model = getattr(torchvision.models, name)(weights=None).eval()
    models._perturb(model, torch)
    _export(torch, model, (torch.randn(1, 3, 224, 224),), path, ["input"], ["logits"], opset=17)


def build_bert_opset14(path: Path) -> None:
    """The same BERT-base as bench/models.py (seed, config, perturbation, keyword wrapper), at opset 14."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=True).eval()
    models._perturb(model, torch)
    ids = torch.randint(0, config.vocab_size, (2, 16))
    dynamic = {0: "batch", 1: "sequence"}
    _export(
        torch,
        models._keyword_call(model, torch),
        (ids, torch.ones_like(ids)),
        path,
        ["input_ids", "attention_mask"],
        ["last_hidden_state", "pooler_output"],
        opset=14,
        dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "last_hidden_state": dynamic},
    )


def _export(torch, model, example, path: Path, inputs, outputs, opset: int, dynamic_axes=None) -> None:
    temporary = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            temporary,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    os.replace(temporary, path)


def build_chain(blocks: int, path: Path) -> None:
    """x[1,64] → blocks × (10 × (MatMul W, Add b, Tanh), Max floor) → y: 31 nodes a block, every tensor
    distinct (research/fp16.md §3.7's chain, with Tanh for Relu so that 4,000 layers neither vanish nor grow)."""
    import numpy as np
    import onnx_ir as ir

    rng = np.random.default_rng(0)
    float_type = ir.TensorType(ir.DataType.FLOAT)
    x = ir.Value(name="x", shape=ir.Shape([1, CHAIN_WIDTH]), type=float_type)
    nodes, initializers, hidden = [], [], x

    def constant(name: str, array: np.ndarray) -> ir.Value:
        tensor = ir.tensor(array, name=name)
        value = ir.Value(name=name, shape=tensor.shape, type=float_type, const_value=tensor)
        initializers.append(value)
        return value

    def step(op_type: str, name: str, *operands: ir.Value) -> ir.Value:
        node = ir.node(op_type, [hidden, *operands], name=name)
        node.outputs[0].name = f"{name}_out"
        nodes.append(node)
        return node.outputs[0]

    for block in range(blocks):
        for index in range(CHAIN_BLOCK_LAYERS):
            layer = f"block{block}.layer{index}"
            weight = rng.standard_normal((CHAIN_WIDTH, CHAIN_WIDTH), dtype=np.float32) * np.float32(CHAIN_WIDTH**-0.5)
            bias = rng.standard_normal(CHAIN_WIDTH, dtype=np.float32) * np.float32(0.1)
            hidden = step("MatMul", f"{layer}/MatMul", constant(f"{layer}.weight", weight))
            hidden = step("Add", f"{layer}/Add", constant(f"{layer}.bias", bias))
            hidden = step("Tanh", f"{layer}/Tanh")
        floor = np.float32(-0.9) + rng.standard_normal(CHAIN_WIDTH, dtype=np.float32) * np.float32(0.05)
        hidden = step("Max", f"block{block}/Max", constant(f"block{block}.floor", floor))
    hidden.name, hidden.type, hidden.shape = "y", float_type, ir.Shape([1, CHAIN_WIDTH])
    graph = ir.Graph([x], [hidden], nodes=nodes, initializers=initializers, opset_imports={"": 17}, name="chain")
    temporary = path.with_suffix(".tmp.onnx")
    ir.save(ir.Model(graph, ir_version=8, producer_name="graphdoctor-bench"), temporary)
    os.replace(temporary, path)


def _torch_exports():
    """The fixtures module; importing it puts the repository root on sys.path."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from fixtures import torch_exports

    return torch_exports


def fixture_path(name: str) -> Path:
    """The fixture's cached file, built now if missing or stale; the reason on one line if it cannot be."""
    torch_exports = _torch_exports()
    if name not in torch_exports.NAMES:
        known = ", ".join(dict.fromkeys((*models.KNOWN_MODELS, *OWN_MODELS, *torch_exports.NAMES)))
        raise ModelUnavailable(f"unknown model '{name}' (known: {known})")
    try:
        return Path(torch_exports.path(name))
    except Exception as error:  # a fixture that fails to build is a skipped row, not a crashed bench
        raise ModelUnavailable(f"fixture '{name}' failed: {type(error).__name__}: {error}") from None


def build(name: str) -> Path:
    path = CACHE / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    if name in CHAIN_BLOCKS:
        build_chain(CHAIN_BLOCKS[name], path)
    elif name == "bert_base_opset14":
        build_bert_opset14(path)
    else:
        build_torchvision(name, path)
    return path


def main(argv: list[str]) -> int:
    """`build NAME` (re)builds one of our models into the cache; `fixture NAME` prints a fixture's path
    (building it if needed); `names` prints the fixtures' names. Exit 3: unavailable, the reason printed."""
    usage = f"usage: python bench/fp16_models.py build {{{','.join(OWN_MODELS)}}} | fixture NAME | names"
    if argv == ["names"]:
        print("\n".join(_torch_exports().NAMES))
        return 0
    if len(argv) != 2 or argv[0] not in ("build", "fixture") or (argv[0] == "build" and argv[1] not in OWN_MODELS):
        print(usage, file=sys.stderr)
        return 2
    try:
        print(build(argv[1]) if argv[0] == "build" else fixture_path(argv[1]))
    except ModelUnavailable as error:
        print(error)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
