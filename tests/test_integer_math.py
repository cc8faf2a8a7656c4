"""Integer-valued float regions (graphdoctor.analysis.integer_math): found by structure from an integer source
to an integer sink, on hand-made graphs of each pattern, real T5 exports, and real CNN/BERT/YOLO exports where
nothing may be flagged (a false positive keeps real activations out of FP16)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from fixtures import torch_exports
from fixtures.handmade import model_from_text
from graphdoctor.analysis.graph import node_label
from graphdoctor.analysis.integer_math import SMALL_CONSTANT_ELEMENTS, integer_valued_regions
from graphdoctor.analysis.types import infer_types
from graphdoctor.fp16 import Fp16Options, convert_to_fp16

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def regions_of(proto: onnx.ModelProto) -> dict[str, str]:
    """Node name -> reason, after the type inference the FP16 converter runs first."""
    model = ir.from_proto(proto)
    infer_types(model)
    return {node.name: reason for node, reason in integer_valued_regions(model).items()}


# T5's relative-position buckets: positions from Range, their distance, a log-spaced bucket in float, back to
# int64 and into the bias table. Only the six nodes from Cast_10 to Cast_18 compute in float.
T5_BUCKETS = model_from_text(f"""{HEADER}
t5 (int64[1, 128] ids, float[32, 4] bias) => (float[128, 128, 4] out) {{
    n = Constant <value = int64 {{128}}> ()
    zero = Constant <value = int64 {{0}}> ()
    one = Constant <value = int64 {{1}}> ()
    positions = Range (zero, n, one)
    axis0 = Constant <value = int64[1] {{0}}> ()
    axis1 = Constant <value = int64[1] {{1}}> ()
    rows = Unsqueeze (positions, axis1)
    cols = Unsqueeze (positions, axis0)
    relative = Sub (cols, rows)
    distance = Abs (relative)
    as_float = Cast <to = 1> (distance)
    max_exact = Constant <value = float {{8.0}}> ()
    ratio = Div (as_float, max_exact)
    logged = Log (ratio)
    log_range = Constant <value = float {{2.7725887}}> ()
    scaled = Div (logged, log_range)
    buckets_large = Constant <value = float {{8.0}}> ()
    spread = Mul (scaled, buckets_large)
    as_int = Cast <to = 7> (spread)
    offset = Constant <value = int64 {{8}}> ()
    large = Add (as_int, offset)
    last = Constant <value = int64 {{15}}> ()
    capped = Min (large, last)
    exact = Constant <value = int64 {{8}}> ()
    small = Less (distance, exact)
    bucket = Where (small, distance, capped)
    out = Gather (bias, bucket)
}}""")
T5_FLOAT_NODES = {"Cast_10", "Div_12", "Log_13", "Div_15", "Mul_17", "Cast_18"}


def test_t5_bucket_region_is_every_float_node():
    found = regions_of(T5_BUCKETS)
    assert set(found) == T5_FLOAT_NODES
    reason = found["Log_13"]
    assert set(found.values()) == {reason}  # one region, one reason
    assert reason == (
        "integer-valued math (Range 'Range_3' → … → Cast from int64 'Cast_10' → Div → Log → Div → Mul → "
        "Cast to int64 'Cast_18' → Gather 'Gather_26' indices)"
    )


def test_untyped_graph_finds_nothing_rather_than_guessing():
    """Without inference an intermediate's dtype is unknown: the source cannot be told from a float Cast."""
    model = ir.from_proto(T5_BUCKETS)
    assert integer_valued_regions(model) == {}


def test_floor_of_an_image_is_not_integer_math():
    """Quantizing a real float input: Floor → Cast int64 → Gather, but no integer ever entered the float math."""
    found = regions_of(
        model_from_text(f"""{HEADER}
        quantize (float[1, 3, 8, 8] image, float[256, 4] table) => (float[1, 3, 8, 8, 4] out) {{
            levels = Constant <value = float {{255.0}}> ()
            scaled = Mul (image, levels)
            floored = Floor (scaled)
            index = Cast <to = 7> (floored)
            out = Gather (table, index)
        }}""")
    )
    assert found == {}


SIZES_FROM_SHAPE = model_from_text(f"""{HEADER}
half_size (float[1, 3, 64, 48] image) => (float[1, 3, 32, 24] out) {{
    shape = Shape (image)
    as_float = Cast <to = 1> (shape)
    half = Constant <value = float {{0.5}}> ()
    scaled = Mul (as_float, half)
    floored = Floor (scaled)
    as_int = Cast <to = 7> (floored)
    start = Constant <value = int64[1] {{2}}> ()
    end = Constant <value = int64[1] {{4}}> ()
    spatial = Slice (as_int, start, end)
    batch_channels = Constant <value = int64[2] {{1, 3}}> ()
    sizes = Concat <axis = 0> (batch_channels, spatial)
    out = Resize <mode = "nearest"> (image, , , sizes)
}}""")


def test_resize_sizes_from_shape_are_integer_math():
    found = regions_of(SIZES_FROM_SHAPE)
    assert set(found) == {"Cast_1", "Mul_3", "Floor_4", "Cast_5"}
    assert found["Floor_4"] == (
        "integer-valued math (Shape 'Shape_0' → Cast from int64 'Cast_1' → Mul → Floor → Cast to int64 'Cast_5' "
        "→ Resize 'Resize_11' sizes)"
    )


def test_resize_scales_from_shape_are_integer_math():
    """A float value read as Resize's scales is a sink itself: no Cast back to integers is needed."""
    found = regions_of(
        model_from_text(f"""{HEADER}
        to_size (float[1, 3, 64, 48] image) => (float[1, 3, 32, 32] out) {{
            shape = Shape (image)
            as_float = Cast <to = 1> (shape)
            target = Constant <value = float[4] {{1, 3, 32, 32}}> ()
            scales = Div (target, as_float)
            out = Resize <mode = "nearest"> (image, , scales)
        }}""")
    )
    assert set(found) == {"Cast_1", "Div_3"}
    assert found["Div_3"].endswith("→ Div 'Div_3' → Resize 'Resize_4' scales)")


def test_a_source_without_a_sink_is_real_float_math():
    """BERT's attention mask: an integer input cast to float, scaled and added to the scores; no sink."""
    found = regions_of(
        model_from_text(f"""{HEADER}
        mask (int64[1, 16] attention_mask, float[1, 4, 16, 16] scores) => (float[1, 4, 16, 16] out) {{
            as_float = Cast <to = 1> (attention_mask)
            one = Constant <value = float {{1.0}}> ()
            inverted = Sub (one, as_float)
            lowest = Constant <value = float {{-10000.0}}> ()
            fill = Mul (inverted, lowest)
            out = Add (scores, fill)
        }}""")
    )
    assert found == {}


def test_castlike_source_and_comparison_sink():
    """CastLike takes its float type from a second input that lends only the type (here an activation); a
    comparison turns the region's floats into bools. A Shape of a region value reads no value: no sink."""
    found = regions_of(
        model_from_text(f"""{HEADER}
        compare (int64[8] lengths, float[8] activation) => (bool[8] short, int64[1] count) {{
            as_float = CastLike (lengths, activation)
            scale = Constant <value = float {{1.5}}> ()
            scaled = Mul (as_float, scale)
            bound = Constant <value = float {{6.0}}> ()
            short = Less (scaled, bound)
            count = Shape (scaled)
        }}""")
    )
    assert set(found) == {"CastLike_0", "Mul_2", "Less_4"}
    assert (
        found["Mul_2"]
        == "integer-valued math (input 'lengths' → CastLike from int64 'CastLike_0' → Mul → Less 'Less_4')"
    )


def _position_times(constant: str) -> onnx.ModelProto:
    return model_from_text(f"""{HEADER}
    mixed (int64[16] positions, float[16] activation, float[99, 4] table) => (float[16, 4] out) {{
        as_float = Cast <to = 1> (positions)
        weight = Constant <value = {constant}> ()
        product = Mul (as_float, weight)
        shifted = Add (product, activation)
        index = Cast <to = 7> (shifted)
        out = Gather (table, index)
    }}""")


def test_reading_an_activation_stops_the_region():
    """Positions times a small constant, then plus an activation: the Add mixes in real values, so the path
    from the source to the Cast carries no integers and nothing is flagged."""
    assert regions_of(_position_times("float {2.0}")) == {}


def test_reading_a_large_constant_stops_the_region():
    """A constant larger than a scale is a learned weight (an embedding row): real float math."""
    size = SMALL_CONSTANT_ELEMENTS + 1
    weights = ", ".join(["0.5"] * size)
    proto = model_from_text(f"""{HEADER}
    weighted (int64[{size}] positions, float[99, 4] table) => (float[{size}, 4] out) {{
        as_float = Cast <to = 1> (positions)
        weight = Constant <value = float[{size}] {{{weights}}}> ()
        product = Mul (as_float, weight)
        index = Cast <to = 7> (product)
        out = Gather (table, index)
    }}""")
    assert regions_of(proto) == {}
    small = proto.graph.node[1].attribute[0].t
    del small.float_data[SMALL_CONSTANT_ELEMENTS:]
    small.dims[0] = SMALL_CONSTANT_ELEMENTS  # the same graph with a constant just small enough: flagged
    assert set(regions_of(proto)) == {"Cast_0", "Mul_2", "Cast_3"}


def test_two_regions_get_their_own_reasons():
    """Bucket math on two sequence lengths: two sources, two sinks, two reasons."""
    found = regions_of(
        model_from_text(f"""{HEADER}
        two (int64[8] a, int64[8] b, float[16, 2] table) => (float[8, 2] ya, float[8, 2] yb) {{
            fa = Cast <to = 1> (a)
            ha = Constant <value = float {{0.5}}> ()
            ma = Mul (fa, ha)
            ia = Cast <to = 7> (ma)
            ya = Gather (table, ia)
            fb = Cast <to = 1> (b)
            sb = Sqrt (fb)
            ib = Cast <to = 7> (sb)
            yb = Gather (table, ib)
        }}""")
    )
    assert set(found) == {"Cast_0", "Mul_2", "Cast_3", "Cast_5", "Sqrt_6", "Cast_7"}
    assert "input 'a' → Cast from int64 'Cast_0' → Mul → Cast to int64 'Cast_3'" in found["Mul_2"]
    assert "input 'b' → Cast from int64 'Cast_5' → Sqrt → Cast to int64 'Cast_7'" in found["Sqrt_6"]


def test_the_reason_follows_the_shortest_chain_and_counts_the_rest():
    """Ten Negs to one sink, an Abs to another: the reason follows the shorter chain and counts the others."""
    chain = "\n".join(f"n{i + 1} = Neg (n{i})" for i in range(10))
    found = regions_of(
        model_from_text(f"""{HEADER}
        long (int64[4] positions) => (int64[4] out, int64[4] side) {{
            n0 = Cast <to = 1> (positions)
            {chain}
            out = Cast <to = 7> (n10)
            m = Abs (n0)
            side = Cast <to = 7> (m)
        }}""")
    )
    assert len(found) == 14
    assert found["Cast_11"] == (
        "integer-valued math (input 'positions' → Cast from int64 'Cast_0' → Abs → Cast to int64 'Cast_13'; "
        "11 more nodes in the region)"
    )
    assert len(set(found.values())) == 1


def test_a_long_chain_is_elided_in_the_middle():
    chain = "\n".join(f"n{i + 1} = Neg (n{i})" for i in range(10))
    found = regions_of(
        model_from_text(f"""{HEADER}
        long (int64[4] positions) => (int64[4] out) {{
            n0 = Cast <to = 1> (positions)
            {chain}
            out = Cast <to = 7> (n10)
        }}""")
    )
    assert found["Cast_0"] == (
        "integer-valued math (input 'positions' → Cast from int64 'Cast_0' → Neg → Neg → Neg → … 4 more … → "
        "Neg → Neg → Neg → Cast to int64 'Cast_11')"
    )


def test_subgraphs_reading_outer_region_values():
    """An If branch captures the outer float positions and casts them back to integers: the region spans both
    graphs. The If itself is not arithmetic and is not reported."""
    model = ir.from_proto(
        model_from_text(f"""{HEADER}
        outer (int64[4] positions, bool flag) => (int64[4] out) {{
            as_float = Cast <to = 1> (positions)
            half = Constant <value = float {{0.5}}> ()
            scaled = Mul (as_float, half)
            out = If (flag) <
                then_branch = g1 () => (int64[4] t) {{
                    floored = Floor (scaled)
                    t = Cast <to = 7> (floored)
                }},
                else_branch = g2 () => (int64[4] e) {{
                    e = Identity (positions)
                }}
            >
        }}""")
    )
    infer_types(model)
    found = {node_label(node): reason for node, reason in integer_valued_regions(model).items()}
    assert sorted(found) == ["Cast->t", "Cast_0", "Floor->floored", "Mul_2"]
    assert "Cast from int64 'Cast_0' → Mul → Floor → Cast to int64 'Cast->t')" in found["Floor->floored"]


def test_loop_body_values_never_crash():
    """A Loop whose body computes float from its own iteration counter: found inside the body."""
    model = ir.from_proto(
        model_from_text(f"""{HEADER}
        looped (int64 trips, float[2] table) => (float[2] last) {{
            cond = Constant <value = bool {{1}}> ()
            start = Constant <value = float[2] {{0, 0}}> ()
            last = Loop (trips, cond, start) <
                body = g (int64 i, bool c, float[2] carried) => (bool c_out, float[2] next) {{
                    c_out = Identity (c)
                    fi = Cast <to = 1> (i)
                    two = Constant <value = float {{2.0}}> ()
                    halved = Div (fi, two)
                    index = Cast <to = 7> (halved)
                    row = Gather (table, index)
                    next = Add (carried, row)
                }}
            >
        }}""")
    )
    infer_types(model)
    found = {node_label(node): reason for node, reason in integer_valued_regions(model).items()}
    assert sorted(found) == ["Cast->fi", "Cast->index", "Div->halved"]
    assert found["Div->halved"] == (
        "integer-valued math (input 'i' → Cast from int64 'Cast->fi' → Div → Cast to int64 'Cast->index' → "
        "Gather 'Gather->row' indices)"
    )


def test_a_large_graph_takes_a_fraction_of_a_second():
    """30,000 nodes, a lint-sized share of a 100,000-node model: a chain of activations into which 100
    bucket-like regions add their Gathers. CPU time, not wall time: the test machine is shared."""
    x = _typed("x", ir.DataType.FLOAT, [64, 4])
    half = ir.Value(name="half", const_value=ir.tensor(0.5, dtype=ir.DataType.FLOAT))
    nodes: list[ir.Node] = []
    inputs = [x]
    activation = x
    for i in range(100):
        inputs.append(_typed(f"positions{i}", ir.DataType.INT64, [64]))
        value = _add(nodes, "Cast", [inputs[-1]], ir.DataType.FLOAT, to=ir.DataType.FLOAT)
        for op in ("Abs", "Neg", "Abs", "Neg", "Abs", "Neg"):
            value = _add(nodes, op, [value], ir.DataType.FLOAT)
        value = _add(nodes, "Mul", [value, half], ir.DataType.FLOAT)
        index = _add(nodes, "Cast", [value], ir.DataType.INT64, to=ir.DataType.INT64)
        activation = _add(nodes, "Add", [activation, _add(nodes, "Gather", [x, index], ir.DataType.FLOAT)])
    while len(nodes) < 30_000:
        activation = _add(nodes, "Relu", [activation], ir.DataType.FLOAT)
    graph = ir.Graph(inputs, [activation], nodes=nodes, initializers=[half], opset_imports={"": 17})
    model = ir.Model(graph, ir_version=8)
    start = time.process_time()
    found = integer_valued_regions(model)
    elapsed = time.process_time() - start
    assert len(found) == 100 * 9
    assert elapsed < 0.3, f"{elapsed:.2f} s of CPU"


def _typed(name: str, dtype: ir.DataType, shape: list[int]) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape))


def _add(nodes: list[ir.Node], op: str, inputs: list[ir.Value], dtype=ir.DataType.FLOAT, **attributes) -> ir.Value:
    node = ir.Node("", op, inputs, attributes=[ir.Attr(k, ir.AttributeType.INT, v) for k, v in attributes.items()])
    node.name = f"{op}_{len(nodes)}"
    node.outputs[0].dtype = dtype
    nodes.append(node)
    return node.outputs[0]


# -- real exports ---------------------------------------------------------------------------------------------


def _fixture_path(name: str) -> Path:
    if name not in torch_exports.NAMES:
        pytest.skip(f"fixture {name!r} is not built by fixtures.torch_exports")
    return torch_exports.path(name)


@pytest.mark.parametrize("name", ["t5_encoder", "t5_encoder_dynamo", "t5_large_activations"])
def test_real_t5_bucket_region(name: str):
    """Both exporters' T5 encoders: exactly the bucket math (a Cast in, Div, Log, Div, Mul, a Cast out to the
    bias table's Gather); nothing in the attention or feed-forward layers."""
    model = ir.load(_fixture_path(name))
    infer_types(model)
    found = integer_valued_regions(model)
    assert sorted(node.op_type for node in found) == ["Cast", "Cast", "Div", "Div", "Log", "Mul"]
    (reason,) = set(found.values())
    assert reason.startswith("integer-valued math (Range ")  # the positions, named through the Sub and Abs
    assert "→ Div → Log → Div → Mul → Cast to int64" in reason and reason.endswith(" indices)")


NO_INTEGER_MATH = ["bert_opset14", "resnet50", "yolo", "dynamo_bert", "dynamo_vit", "dynamo_whisper_encoder"]


@pytest.mark.parametrize("name", NO_INTEGER_MATH)
def test_real_models_without_integer_math(name: str):
    """No region in models whose float math is all real activations. YOLO computes its anchor grid from
    Range in float, but the grid is added to the box predictions: the region stops there and reaches no sink."""
    model = ir.load(_fixture_path(name))
    infer_types(model)
    assert integer_valued_regions(model) == {}


@pytest.fixture(scope="module")
def interpolation_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ir.Model]:
    """`F.interpolate(scale_factor=0.5, recompute_scale_factor=True)` on dynamic height and width, by both
    exporters: the output size is computed from the input's shape in float and floored back to int64."""
    torch = pytest.importorskip("torch")
    import warnings

    from torch.nn import functional

    class Downsample(torch.nn.Module):
        def forward(self, x):
            half = functional.interpolate(x, scale_factor=0.5, mode="bilinear", recompute_scale_factor=True)
            return half, functional.interpolate(x, scale_factor=1.5, mode="nearest")

    folder = tmp_path_factory.mktemp("interpolate")
    example = (torch.zeros(1, 3, 64, 48),)
    models = {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Downsample(),
            example,
            folder / "ts.onnx",
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {2: "height", 3: "width"}},
        )
        dims = {"x": {2: torch.export.Dim("height", min=16), 3: torch.export.Dim("width", min=16)}}
        torch.onnx.export(Downsample(), example, folder / "dynamo.onnx", dynamo=True, dynamic_shapes=dims)
    for name in ("ts", "dynamo"):
        models[name] = ir.load(folder / f"{name}.onnx")
        infer_types(models[name])
    return models


def test_real_interpolation_sizes_torchscript(interpolation_exports: dict[str, ir.Model]):
    """TorchScript: per axis Shape → Gather → Cast float → Mul 0.5 → Cast → Floor, the two axes joined by a
    float Concat, then Cast to int64 → Concat → Resize sizes: one region of 12 nodes. The scale-1.5 Resize,
    with constant scales, has none."""
    found = integer_valued_regions(interpolation_exports["ts"])
    assert sorted(node.op_type for node in found) == sorted(
        ["Cast", "Mul", "Cast", "Floor"] * 2 + ["Unsqueeze", "Unsqueeze", "Concat", "Cast"]
    )
    (reason,) = set(found.values())
    assert reason.startswith("integer-valued math (Shape '/Shape' → … → Cast from int64 '/Cast' → Mul → Cast → Floor")
    assert reason.endswith("→ Resize '/Resize' sizes; 5 more nodes in the region)")


def test_real_interpolation_sizes_dynamo(interpolation_exports: dict[str, ir.Model]):
    """torch.export: per axis Cast float → Mul → Cast int64 (a truncation), two regions into one Resize."""
    found = integer_valued_regions(interpolation_exports["dynamo"])
    assert sorted(node.op_type for node in found) == ["Cast"] * 4 + ["Mul"] * 2
    reasons = set(found.values())
    assert len(reasons) == 2
    assert all(" → Mul → Cast to int64 " in reason and reason.endswith(" sizes)") for reason in reasons)


@pytest.mark.parametrize("name", ["t5_encoder", "t5_encoder_dynamo"])
def test_fp16_keeps_t5_bucket_ids_exact(name: str, tmp_path: Path):
    """Why it matters, on ONNX Runtime: converted with the region kept FP32, every one of the 128×128 bucket
    ids equals FP32's; the same conversion forcing exactly the region's nodes into FP16 moves some by one."""
    path = _fixture_path(name)
    feeds = torch_exports.sample_inputs(path)
    reference = _bucket_ids(ir.load(path), tmp_path / "fp32.onnx", feeds)
    model = ir.load(path)
    infer_types(model)
    region = tuple(node_label(node) for node in integer_valued_regions(model))
    converted = _bucket_ids(model, tmp_path / "fp16.onnx", feeds, Fp16Options())
    forced = _bucket_ids(ir.load(path), tmp_path / "forced.onnx", feeds, Fp16Options(force_fp16=region))
    assert np.array_equal(converted, reference)
    assert np.count_nonzero(forced != reference) > 100  # 544 of 16,384 when measured


def _bucket_ids(
    model: ir.Model, path: Path, feeds: dict[str, np.ndarray], options: Fp16Options | None = None
) -> np.ndarray:
    """The relative-attention bucket ids the model computes: the bias table Gather's indices, made an output."""
    gather = next(
        node for node in model.graph if node.op_type == "Gather" and "relative_attention" in node.inputs[0].name
    )
    model.graph.outputs.append(gather.inputs[1])
    if options is not None:
        convert_to_fp16(model, options)
    ir.save(model, path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run([model.graph.outputs[-1].name], feeds)[0]
