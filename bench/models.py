"""The models the benchmarks run on: real exports from the fixtures, plus two that only benchmarks need.

- resnet50, yolo, mobilenet_v3_large: `fixtures.torch_exports.path(name)`, the cached real exports the tests use.
- bert: a BERT-base encoder (transformers `BertConfig()` defaults: 12 layers, hidden 768, ~110M parameters),
  exported by the TorchScript exporter at opset 17 with dynamic batch and sequence. Its random weights are
  perturbed so no two tensors are equal: freshly initialised LayerNorms are all ones and all biases zero,
  and a bench of duplicate detection on such a model would measure the initialiser, not a real export.
- whisper_tiny_encoder: the Whisper-tiny encoder (transformers `WhisperConfig` at tiny's sizes: d_model 384,
  4 layers, 6 heads, FFN 1536, 80 mel bins, 1500 positions; ~8M parameters, ~31 MiB), random weights perturbed
  as BERT's, eager attention, TorchScript exporter at opset 17, static input `input_features` [1, 80, 3000]
  (30 s of audio, the only length the encoder takes) and output `last_hidden_state` [1, 1500, 384]: a speech
  model whose 1,500-token attention makes its activations, not its weights, what verification pays for.
- large: a >2 GB model with external data (37 × MatMul 4096×4096 fp32 + Add + Tanh, one weight an exact
  duplicate of another, INT64 shape constants), the case where loading every weight would cost gigabytes.
- transformer_dynamo, transformer_torchscript (bench/fix.py): one `nn.TransformerEncoder` of 6 identical
  layers (deep copies of one perturbed layer, d_model 512), exported by each exporter. The dynamo exporter
  stores the 6 copies (6 duplicate groups); the TorchScript exporter de-duplicates them by value into
  Identity(initializer) nodes, which some simplifiers fold back into copies.
- tied: `fixtures.torch_exports.path("tied_embeddings")`, a tiny LM whose TorchScript export stores its tied
  embedding W [1000, 128] and, constant-folded, Wᵀ.

Built models are cached under .cache/bench/ and rebuilt only when missing (`build NAME` forces it). Getting
and building run in a child process (`python bench/models.py path NAME`), so torch never enters the process
that runs the benchmark.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
MIB = 1024 * 1024

FIXTURE_MODELS = {  # bench name -> fixture
    "resnet50": "resnet50",
    "yolo": "yolo",
    "mobilenet_v3_large": "mobilenet_v3_large",
    "tied": "tied_embeddings",
}
BUILT_MODELS = ("bert", "whisper_tiny_encoder", "large", "transformer_dynamo", "transformer_torchscript")
ALL_MODELS = ("resnet50", "bert", "yolo", "large")  # lint's default set
FIX_MODELS = ("transformer_dynamo", "transformer_torchscript", "tied", "large")  # bench/fix.py's default set
KNOWN_MODELS = tuple(dict.fromkeys((*ALL_MODELS, *FIX_MODELS, *FIXTURE_MODELS, *BUILT_MODELS)))
WHISPER_TINY = {  # openai/whisper-tiny's encoder sizes
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
}

LARGE_DIM = 4096
LARGE_LAYERS = 36  # distinct weights; one more layer reuses the bytes of layer 0 under another name
INT64_MAX = 2**63 - 1
TRANSFORMER = {"d_model": 512, "nhead": 8, "dim_feedforward": 2048, "layers": 6, "sequence": 128}

__all__ = ["ALL_MODELS", "FIX_MODELS", "KNOWN_MODELS", "ModelUnavailable", "is_large", "model_path", "model_size"]


class ModelUnavailable(Exception):
    """The model cannot be had here (fixture module not written yet, build failed): skip it, say why."""


def model_path(name: str) -> Path:
    """The cached model file for `name`, asked of a child process that builds it first when it is missing
    or stale (the fixtures' cache key decides that for resnet50, yolo and tied)."""
    if name not in KNOWN_MODELS:
        raise ModelUnavailable(f"unknown model '{name}' (known: {', '.join(KNOWN_MODELS)})")
    if name in BUILT_MODELS and _cached_path(name).exists():
        return _cached_path(name)
    print(
        f"bench/models: {name}: asking a child process (it builds the model if missing or stale) ...",
        file=sys.stderr,
        flush=True,
    )
    result = subprocess.run([sys.executable, __file__, "path", name], stdout=subprocess.PIPE, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        reason = lines[-1] if result.returncode == 3 and lines else f"exit {result.returncode}"
        raise ModelUnavailable(f"could not get '{name}': {reason}")
    return Path(lines[-1])


def is_large(path: Path) -> bool:
    """Over 2 GB in all: the protobuf limit, past which only external data works."""
    return model_size(path) > 2 * 1000**3


@functools.cache
def model_size(path: Path) -> int:
    """Bytes on disk: the model file plus every external data file it references."""
    import onnx
    import onnx.external_data_helper

    proto = onnx.load_model(os.fspath(path), load_external_data=False)
    locations = {
        info.value
        for tensor in onnx.external_data_helper._get_all_tensors(proto)
        if onnx.external_data_helper.uses_external_data(tensor)
        for info in tensor.external_data
        if info.key == "location"
    }
    del proto
    return path.stat().st_size + sum((path.parent / location).stat().st_size for location in locations)


def _fixture_path(name: str) -> Path:
    """The shared fixtures own the real exports; importing them puts the repo root on sys.path."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from fixtures import torch_exports
    except ImportError as error:
        raise ModelUnavailable(f"fixtures.torch_exports is not available ({error})") from None
    try:
        return Path(torch_exports.path(FIXTURE_MODELS[name]))
    except Exception as error:  # a fixture that fails to build is a skipped row, not a crashed bench
        raise ModelUnavailable(f"fixture '{name}' failed: {type(error).__name__}: {error}") from None


def _cached_path(name: str) -> Path:
    return CACHE / "large" / "large.onnx" if name == "large" else CACHE / f"{name}.onnx"


# --- builders (run in the child process) ---------------------------------------------------------------


def build_bert(path: Path) -> None:
    """BERT-base from BertConfig() defaults, eager attention (what the TorchScript exporter traces cleanly)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=True).eval()
    _perturb(model, torch)
    ids = torch.randint(0, config.vocab_size, (2, 16))
    mask = torch.ones_like(ids)
    dynamic = {0: "batch", 1: "sequence"}
    temporary = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            _keyword_call(model, torch),
            (ids, mask),
            temporary,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state", "pooler_output"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "last_hidden_state": dynamic},
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
        )
    os.replace(temporary, path)


def _keyword_call(model, torch):
    """BertModel.forward's positional order changes between transformers versions (5.x puts other arguments
    before attention_mask): trace a wrapper that passes the two inputs by keyword and returns a tuple."""

    class KeywordCall(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            output = self.model(input_ids=input_ids, attention_mask=attention_mask)
            return output.last_hidden_state, output.pooler_output

    return KeywordCall().eval()


def build_whisper_tiny_encoder(path: Path) -> None:
    """The Whisper-tiny encoder alone, eager attention; the TorchScript exporter, as for BERT (the encoder takes
    exactly 2 × max_source_positions frames, so nothing is dynamic)."""
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    encoder = WhisperEncoder(WhisperConfig(**WHISPER_TINY, attn_implementation="eager")).eval()
    _perturb(encoder, torch)
    frames = 2 * WHISPER_TINY["max_source_positions"]
    features = torch.randn(1, WHISPER_TINY["num_mel_bins"], frames)
    temporary = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            _last_hidden_state(encoder, torch),
            (features,),
            temporary,
            input_names=["input_features"],
            output_names=["last_hidden_state"],
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
        )
    os.replace(temporary, path)


def _last_hidden_state(encoder, torch):
    """The encoder returns a ModelOutput; trace a wrapper that returns its one tensor."""

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_features):
            return self.encoder(input_features).last_hidden_state

    return LastHiddenState().eval()


def _perturb(model, torch) -> None:
    """Add small noise to every parameter so that no two tensors are byte-identical."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)


def build_large(path: Path) -> None:
    """Write the >2 GB model streaming: each weight is an `ir.LazyTensor` generated while `ir.save` writes
    it, with at most `max_in_flight_bytes` in memory, so building never holds the 2.4 GB."""
    import onnx_ir as ir

    model = _large_model(ir)
    temporary = path.with_suffix(".tmp.onnx")
    ir.save(
        model,
        temporary,
        external_data=path.name + ".data",
        size_threshold_bytes=1024,
        max_in_flight_bytes=256 * MIB,
    )
    os.replace(temporary, path)


def _large_model(ir):
    """x[batch,4096] → 37 × (MatMul W_i, Add b_i, Tanh) → Shape/Gather/Concat/Reshape → Slice(.., INT64_MAX)."""
    float_type = ir.TensorType(ir.DataType.FLOAT)
    x = ir.Value(name="x", shape=ir.Shape(["batch", LARGE_DIM]), type=float_type)
    builder = _GraphBuilder(ir)
    hidden = x
    seeds = [*range(LARGE_LAYERS), 0]  # the last layer's weight repeats layer 0's bytes: one exact duplicate
    for layer, seed in enumerate(seeds):
        name = f"layer{layer}.weight" if layer < LARGE_LAYERS else "layer0.weight_copy"
        weight = builder.initializer(name, _lazy_matrix(ir, seed, name))
        bias = builder.initializer(f"layer{layer}.bias", ir.tensor(_random(layer + 1000, (LARGE_DIM,)), name=""))
        hidden = builder.op("MatMul", [hidden, weight], f"layer{layer}/MatMul")
        hidden = builder.op("Add", [hidden, bias], f"layer{layer}/Add")
        hidden = builder.op("Tanh", [hidden], f"layer{layer}/Tanh")
    hidden = _reshape_by_own_shape(builder, hidden)
    starts = builder.int64("slice.starts", [0])
    ends = builder.int64("slice.ends", [INT64_MAX])  # the sentinel TensorRT clamps safely
    axes = builder.int64("slice.axes", [1])
    output = builder.op("Slice", [hidden, starts, ends, axes], "head/Slice")
    output.name, output.type, output.shape = "y", float_type, ir.Shape(["batch", LARGE_DIM])
    graph = ir.Graph(
        [x], [output], nodes=builder.nodes, initializers=builder.initializers, opset_imports={"": 17}, name="large"
    )
    return ir.Model(graph, ir_version=8, producer_name="graphdoctor-bench")


def _reshape_by_own_shape(builder: _GraphBuilder, hidden):
    """The static INT64 chain exporters emit: Shape → Gather → Unsqueeze → Concat → Reshape."""
    shape = builder.op("Shape", [hidden], "head/Shape")
    batch = builder.op("Gather", [shape, builder.int64("gather.index", 0)], "head/Gather", axis=0)
    batch = builder.op("Unsqueeze", [batch, builder.int64("unsqueeze.axes", [0])], "head/Unsqueeze")
    target = builder.op("Concat", [batch, builder.int64("reshape.width", [LARGE_DIM])], "head/Concat", axis=0)
    return builder.op("Reshape", [hidden, target], "head/Reshape")


class _GraphBuilder:
    """Collects named nodes and initializers; every node gets a name, since findings name nodes."""

    def __init__(self, ir) -> None:
        self.ir = ir
        self.nodes: list = []
        self.initializers: list = []

    def op(self, op_type: str, inputs: list, name: str, **attributes):
        node = self.ir.node(op_type, inputs, attributes=attributes or None, name=name)
        node.outputs[0].name = name + "_out"
        self.nodes.append(node)
        return node.outputs[0]

    def initializer(self, name: str, tensor):
        tensor.name = name
        value = self.ir.Value(name=name, shape=tensor.shape, type=self.ir.TensorType(tensor.dtype), const_value=tensor)
        self.initializers.append(value)
        return value

    def int64(self, name: str, values):
        import numpy as np

        return self.initializer(name, self.ir.tensor(np.array(values, dtype=np.int64)))


def _lazy_matrix(ir, seed: int, name: str):
    """A 64 MiB weight generated only when written (same seed, same bytes)."""
    shape = (LARGE_DIM, LARGE_DIM)
    generate: Callable = functools.partial(lambda s: ir.tensor(_random(s, shape)), seed)
    return ir.LazyTensor(generate, dtype=ir.DataType.FLOAT, shape=ir.Shape(shape), name=name)


def _random(seed: int, shape: tuple[int, ...]):
    """N(0, 1/dim) values, so Tanh stays out of saturation if a peer runs the model."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(LARGE_DIM**-0.5)


def build_transformer_dynamo(path: Path) -> None:
    """The identical-layers encoder through the dynamo exporter: every layer's parameters stored again."""
    _export_encoder(path, dynamo=True, external_data=False, verbose=False)


def build_transformer_torchscript(path: Path) -> None:
    """The same encoder through the TorchScript exporter, whose constant folding de-duplicates by value."""
    _export_encoder(path, dynamo=False, do_constant_folding=True)


def _export_encoder(path: Path, **exporter_options) -> None:
    import torch

    model, example = _identical_layers_encoder(torch)
    temporary = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            model, example, temporary, opset_version=18, input_names=["x"], output_names=["y"], **exporter_options
        )
    os.replace(temporary, path)


def _identical_layers_encoder(torch):
    """`nn.TransformerEncoder` clones its layer: N deep copies of ONE layer, perturbed first so that only the
    copies are equal (a fresh LayerNorm is all ones, every fresh bias zeros). Fast path off: the exporters
    then trace the plain attention ops."""
    torch.manual_seed(0)
    torch.backends.mha.set_fastpath_enabled(False)
    size = TRANSFORMER
    layer = torch.nn.TransformerEncoderLayer(size["d_model"], size["nhead"], size["dim_feedforward"], batch_first=True)
    _perturb(layer, torch)
    model = torch.nn.TransformerEncoder(layer, size["layers"], enable_nested_tensor=False).eval()
    return model, (torch.randn(1, size["sequence"], size["d_model"]),)


BUILDERS = {
    "bert": build_bert,
    "whisper_tiny_encoder": build_whisper_tiny_encoder,
    "large": build_large,
    "transformer_dynamo": build_transformer_dynamo,
    "transformer_torchscript": build_transformer_torchscript,
}


def main(argv: list[str]) -> int:
    """`python bench/models.py path NAME` prints the model's path, building it when missing;
    `build NAME` rebuilds one of the bench's own models. Exit 3: the model is unavailable (reason printed)."""
    if len(argv) != 2 or argv[0] not in ("build", "path") or argv[1] not in KNOWN_MODELS:
        print(f"usage: python bench/models.py build|path {{{','.join(KNOWN_MODELS)}}}", file=sys.stderr)
        return 2
    command, name = argv
    try:
        if name in FIXTURE_MODELS:
            print(_fixture_path(name))
            return 0
    except ModelUnavailable as error:
        print(error)
        return 3
    path = _cached_path(name)
    if command == "build" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        BUILDERS[name](path)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
