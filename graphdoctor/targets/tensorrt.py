"""What TensorRT's ONNX parser accepts, per version: its importers, the opsets it reads, the dtypes it holds,
and the plugins that ship with it.

Read from onnx/onnx-tensorrt: the importer lists of `builtin_op_importers.cpp` (8.6-GA) and
`onnxOpImporters.cpp` (10.0-GA, 10.1-GA), `onnxOpCheckers.cpp` (10.1), `docs/operators.md` of 8.6, 10.1 and
10.15 and `docs/Changelog.md`; NVIDIA/TensorRT `plugin/README.md` for the bundled plugins. The per-node
restrictions the importers check are in targets/tensorrt_importer.py. Where the sources disagree, the
importer's code wins over the documentation (Resize cubic is imported by 8.6 and 10.1 although their tables
list only nearest and linear).
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

from graphdoctor.targets import Target, version_text

__all__ = [
    "BUNDLED_PLUGINS",
    "REFUSE_UINT8_INPUT",
    "UNSUPPORTED_ADVICE",
    "describe_versions",
    "dtype_limit",
    "imported_ops",
    "importer_since",
    "opset_range",
]


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Ops with an importer in TensorRT 8.6 (builtin_op_importers.cpp, 8.6-GA). Earlier versions are not
# targets, so 8.6 is where these begin.
_IMPORTERS_8_6 = _names(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
        Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
        Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gemm
        GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization
        HardSigmoid HardSwish Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization
        LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean
        MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad
        ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike
        Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
        ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter
        ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
        SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze
        Upsample Where Xor"""
)
# Importers added since, with the first version known to have them: Hardmax (9.2, Changelog); CastLike, Gelu
# and Mish are in 10.0-GA (9.x was not read); DeformConv 10.1 (Changelog); the window ops, STFT and the
# opset-23/24 ops from the 10.x tables (research/tensorrt.md: 10.4, 10.5; the 10.15 table is the first read
# that lists Attention, RMSNormalization, RotaryEmbedding and TensorScatter).
_ADDED = {
    "Hardmax": (9, 2),
    "CastLike": (10, 0),
    "Gelu": (10, 0),
    "Mish": (10, 0),
    "DeformConv": (10, 1),
    "BlackmanWindow": (10, 4),
    "HammingWindow": (10, 4),
    "HannWindow": (10, 4),
    "STFT": (10, 5),
    "Attention": (10, 15),
    "RMSNormalization": (10, 15),
    "RotaryEmbedding": (10, 15),
    "TensorScatter": (10, 15),
}

# What to do instead, for the ops no version imports (onnxOpCheckers.cpp rejects each by name).
_SEQUENCES = "return tensors, not lists of tensors, from the model code (sequence types do not exist in TensorRT)"
_QUANTIZED = (
    "quantize in QDQ form instead (QuantizeLinear/DequantizeLinear around float ops: onnxruntime.quantization"
    " with QuantFormat.QDQ, or NVIDIA ModelOpt)"
)
_STRINGS = "do text processing outside the engine"
_TRAINING = "export the inference graph, without the loss"
UNSUPPORTED_ADVICE: Mapping[str, str] = {
    **dict.fromkeys(
        [
            "SequenceAt",
            "SequenceConstruct",
            "SequenceEmpty",
            "SequenceErase",
            "SequenceInsert",
            "SequenceLength",
            "SequenceMap",
            "ConcatFromSequence",
            "SplitToSequence",
        ],
        _SEQUENCES,
    ),
    **dict.fromkeys(["Optional", "OptionalGetElement", "OptionalHasElement"], "export without optional values"),
    **dict.fromkeys(
        ["MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear"], _QUANTIZED
    ),
    **dict.fromkeys(["StringNormalizer", "StringConcat", "StringSplit", "RegexFullMatch", "TfIdfVectorizer"], _STRINGS),
    **dict.fromkeys(["SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"], _TRAINING),
    **dict.fromkeys(
        ["BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "BitShift"],
        "compute on BOOL with And/Or/Xor/Not, or with integer Mul/Div/Mod, instead of bit operations",
    ),
    "Unique": "compute it outside the engine, or write a plugin",
    "Compress": "select with NonZero and Gather (both imported) instead",
    "Bernoulli": "draw with RandomUniform and compare (Less), both imported",
    "Multinomial": "sample outside the engine",
    "DFT": "compute the transform with MatMul against a constant DFT matrix",
    "Det": "compute it outside the engine",
    "MaxRoiPool": "use RoiAlign (imported) with mode='max'",
    "MaxUnpool": "use ScatterElements, or write a plugin",
    "AffineGrid": "build the grid with MatMul on a constant base grid",
    "CenterCropPad": "use Slice and Pad",
    "Col2Im": "write a plugin",
    "ImageDecoder": "decode images outside the engine",
    "MelWeightMatrix": "store the matrix as an initializer (it depends only on constants)",
}

# Plugins that ship in libnvinfer_plugin (NVIDIA/TensorRT plugin/README.md): trtexec registers them, and
# Python code does with trt.init_libnvinfer_plugins. The parser imports a node whose op type names one.
BUNDLED_PLUGINS = _names(
    """BatchTilePlugin_TRT BatchedNMS_TRT BatchedNMSDynamic_TRT CustomQKVToContextPluginDynamic Clip_TRT
        CoordConvAC CropAndResize CropAndResizeDynamic DecodeBbox3DPlugin DetectionLayer_TRT
        DisentangledAttention_TRT EfficientNMS_TRT EfficientNMS_ONNX_TRT CustomEmbLayerNormPluginDynamic
        CustomFCPluginDynamic FlattenConcat_TRT CustomGeluPluginDynamic GenerateDetection_TRT GridAnchor_TRT
        GridAnchorRect_TRT GroupNormalizationPlugin InstanceNormalization_TRT LReLU_TRT ModulatedDeformConv2d
        MultilevelCropAndResize_TRT MultilevelProposeROI_TRT MultiscaleDeformableAttnPlugin_TRT NMS_TRT
        NMSDynamic_TRT Normalize_TRT RPROI_TRT PillarScatterPlugin PriorBox_TRT ProposalLayer_TRT Proposal
        ProposalDynamic PyramidROIAlign_TRT Region_TRT Reorg_TRT ROIAlign_TRT ResizeNearest_TRT
        CustomSkipLayerNormPluginDynamic SpecialSlice_TRT VoxelGeneratorPlugin"""
)

# Ops whose importers refuse a UINT8 input (notInvalidType in onnxOpImporters.cpp, 10.1); Cast reads it.
REFUSE_UINT8_INPUT = _names(
    """Clip Concat DepthToSpace Einsum Expand EyeLike Gather GatherElements GatherND Mod OneHot Pad Resize
        ReverseSequence GridSample Slice SpaceToDepth Split Tile TopK Trilu Upsample Where ArgMax ArgMin ReduceL1
        ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare
        Scatter ScatterElements ScatterND Relu Sigmoid Tanh LeakyRelu Elu Selu Softplus Softsign HardSigmoid Conv
        ConvTranspose MatMul Gemm"""
)

# ai.onnx opsets each version documents. Outside them the parser parses anyway (below 7 it warns "not
# guaranteed to work", ModelImporter.cpp), but ops whose signature changed since (Reduce axes and Split
# sizes as inputs in 18, Resize antialias in 18) are imported by rules written for older ones.
# 8.6: "up to Opset 17" (operators.md 8.6-GA); 10.0/10.1: "opset 9 to opset 20"; 10.15 imports TensorScatter,
# an opset-24 op (inference from its table); 11 reads up to 25 (NVIDIA's opset guide).
_OPSETS = {(8, 6): (7, 17), (10, 0): (9, 20), (10, 15): (9, 24), (11, 0): (9, 25)}


def importer_since(op_type: str) -> tuple[int, int] | None:
    """The first TensorRT version whose parser imports `op_type` (an ai.onnx op), None when none does."""
    if op_type in _IMPORTERS_8_6:
        return (8, 6)
    return _ADDED.get(op_type)


def imported_ops() -> frozenset[str]:
    """Every ai.onnx op some version imports."""
    return _IMPORTERS_8_6 | frozenset(_ADDED)


def is_known_op(op_type: str) -> bool:
    """Whether the tables say anything about `op_type`: imported by some version, or rejected by name."""
    return importer_since(op_type) is not None or op_type in UNSUPPORTED_ADVICE


def opset_range(target: Target) -> tuple[int, int]:
    """(documented from, documented up to) for the ai.onnx domain."""
    return _OPSETS[max(version for version in _OPSETS if version <= target.version)]


_D = ir.DataType
_QUANTIZED_TYPES = {
    _D.INT8: (8, 6),
    _D.FLOAT8E4M3FN: (9, 0),  # Changelog 9.0 GA: FP8 and BF16
    _D.INT4: (10, 0),  # Changelog 10.0 EA: INT4 quantization
}
_NEVER = (
    _D.STRING,
    _D.INT16,
    _D.UINT16,
    _D.UINT32,
    _D.UINT64,
    _D.COMPLEX64,
    _D.COMPLEX128,
    _D.FLOAT8E5M2,
    _D.FLOAT8E4M3FNUZ,
    _D.FLOAT8E5M2FNUZ,
    _D.UINT4,
)


def dtype_limit(dtype: ir.DataType, target: Target) -> tuple[str, tuple[int, int] | None] | None:
    """What TensorRT allows of a dtype: None when it holds it anywhere; else (limit, first version that
    allows that much): 'never', 'quantized' (only between QuantizeLinear and DequantizeLinear), 'io' (UINT8:
    network inputs and outputs only). DOUBLE is GD010's (the parser casts it to FLOAT)."""
    if dtype in _NEVER or dtype.name.startswith("FLOAT4"):
        return "never", None
    if dtype in _QUANTIZED_TYPES:
        return "quantized", _QUANTIZED_TYPES[dtype]
    if dtype == _D.UINT8:
        return "io", (8, 6)
    if dtype == _D.BFLOAT16 and not target.accepts_from((9, 0)):
        return "never", (9, 0)
    return None


def describe_versions(target: Target, since: tuple[int, int] | None) -> str:
    """' (TensorRT 10.4 and later accept it)' for a rejection a later version lifts; '' otherwise."""
    if since is None or target.accepts_from(since):
        return ""
    return f" (TensorRT {version_text(since)} and later accept it)"
