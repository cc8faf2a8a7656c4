"""The extra models bench/fp16.py needs, beside those of bench/models.py (which it asks for the rest).

- convnext_tiny, vit_b_16: torchvision, weights=None, perturbed (no two tensors equal), TorchScript exporter
  at opset 17, batch 1 at 224×224: two classifiers whose ops (LayerNorm, GELU, Softmax) ResNet-50 lacks.
- bert_opset14: bench/models.py's BERT-base at opset 14, where LayerNormalization does not exist yet and the
  exporter decomposes it (ReduceMean, Pow, Sqrt, Div, its 1e-12 epsilon a tensor that FP16 flushes to 0).
- chain776, chain3100, chain12400: synthetic chains of MatMul(64×64) + Add + Tanh + Mul on a [1, 64] tensor
  (194, 775 and 3,100 repeats): graphs dominated by their node count, not their weights, to show how each
  converter scales. Tanh and a Mul near 1 keep activations bounded, so FP16 itself never overflows here.

Built models are cached under .cache/bench/ (bench/models.py's CACHE) and built in a child process
(`python bench/fp16_models.py path NAME`), so torch never enters the process that runs the benchmark.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import models
from models import CACHE, ModelUnavailable

CHAIN_REPEATS = {"chain776": 194, "chain3100": 775, "chain12400": 3100}
CHAIN_WIDTH = 64
OWN_MODELS = ("convnext_tiny", "vit_b_16", "bert_opset14", *CHAIN_REPEATS)

__all__ = ["OWN_MODELS", "model_path"]


def model_path(name: str) -> Path:
    """bench/models.py's models through its own model_path; ours from the cache, built by a child if missing."""
    if name not in OWN_MODELS:
        return models.model_path(name)
    path = CACHE / f"{name}.onnx"
    if path.exists():
        return path
    print(f"bench/fp16_models: {name}: building it in a child process ...", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, __file__, name], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0 or not path.is_file():
        tail = result.stdout.strip().splitlines()
        raise ModelUnavailable(f"could not build '{name}': {tail[-1] if tail else f'exit {result.returncode}'}")
    return path


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


def build_chain(repeats: int, path: Path) -> None:
    """x[1,64] → repeats × (MatMul W_i, Add b_i, Tanh, Mul s_i) → y, every tensor distinct."""
    import numpy as np
    import onnx_ir as ir

    rng = np.random.default_rng(0)
    float_type = ir.TensorType(ir.DataType.FLOAT)
    x = ir.Value(name="x", shape=ir.Shape([1, CHAIN_WIDTH]), type=float_type)
    nodes, initializers, hidden = [], [], x
    for layer in range(repeats):
        weight = rng.standard_normal((CHAIN_WIDTH, CHAIN_WIDTH), dtype=np.float32) * np.float32(CHAIN_WIDTH**-0.5)
        bias = rng.standard_normal(CHAIN_WIDTH, dtype=np.float32) * np.float32(0.1)
        scale = np.float32(1.0) + rng.standard_normal(CHAIN_WIDTH, dtype=np.float32) * np.float32(0.05)
        constants = []
        for suffix, array in (("weight", weight), ("bias", bias), ("scale", scale)):
            tensor = ir.tensor(array, name=f"layer{layer}.{suffix}")
            value = ir.Value(name=tensor.name, shape=tensor.shape, type=float_type, const_value=tensor)
            initializers.append(value)
            constants.append(value)
        weight_value, bias_value, scale_value = constants
        steps = (("MatMul", [weight_value]), ("Add", [bias_value]), ("Tanh", []), ("Mul", [scale_value]))
        for op_type, operands in steps:
            node = ir.node(op_type, [hidden, *operands], name=f"layer{layer}/{op_type}")
            node.outputs[0].name = node.name + "_out"
            nodes.append(node)
            hidden = node.outputs[0]
    hidden.name, hidden.type, hidden.shape = "y", float_type, ir.Shape([1, CHAIN_WIDTH])
    graph = ir.Graph([x], [hidden], nodes=nodes, initializers=initializers, opset_imports={"": 17}, name="chain")
    temporary = path.with_suffix(".tmp.onnx")
    ir.save(ir.Model(graph, ir_version=8, producer_name="graphdoctor-bench"), temporary)
    os.replace(temporary, path)


def main(argv: list[str]) -> int:
    """`python bench/fp16_models.py NAME` (re)builds one of these models into the cache."""
    if len(argv) != 1 or argv[0] not in OWN_MODELS:
        print(f"usage: python bench/fp16_models.py {{{','.join(OWN_MODELS)}}}", file=sys.stderr)
        return 2
    name = argv[0]
    path = CACHE / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    if name in CHAIN_REPEATS:
        build_chain(CHAIN_REPEATS[name], path)
    elif name == "bert_opset14":
        build_bert_opset14(path)
    else:
        build_torchvision(name, path)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
