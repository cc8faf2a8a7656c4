"""Verification inputs: generated per dtype and role, shaped by --shape and shared symbolic dims, loaded from
.npz/.npy/input_N.pb, bound to the model's inputs, and saved so that a run can be replayed exactly."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor import api
from graphdoctor.errors import GraphDoctorError
from graphdoctor.model import load_model
from graphdoctor.verify import inputs
from graphdoctor.verify.inputs import (
    bind_inputs,
    generate_inputs,
    load_input_batches,
    load_inputs,
    parse_shape,
    save_inputs,
)
from tests.verify.builders import linear

ROLES = model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,H,W] images, float[N,16] features, int64[batch,sequence] input_ids,
   int64[batch,sequence] attention_mask, int64[batch,sequence] token_type_ids, bool[batch] flags)
  => (float[N,3,H,W] o1, float[N,16] o2, int64[batch,sequence] o3, int64[batch,sequence] o4,
      int64[batch,sequence] o5, bool[batch] o6) {
    o1 = Identity(images)
    o2 = Identity(features)
    o3 = Identity(input_ids)
    o4 = Identity(attention_mask)
    o5 = Identity(token_type_ids)
    o6 = Identity(flags)
}""")

# the mask is declared before the ids: a --shape on the ids must still size it
MASK_FIRST = model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
g (int64[batch,sequence] attention_mask, int64[batch,sequence] input_ids) => (int64[batch,sequence] y) {
    y = Mul(input_ids, attention_mask)
}""")


def ir_model(proto: onnx.ModelProto, tmp_path: Path, name: str = "model.onnx"):
    return load_model(save(proto, tmp_path / name)).model


def test_generated_values_follow_dtype_and_role(tmp_path: Path):
    feeds = generate_inputs(ir_model(ROLES, tmp_path))
    assert {name: (a.dtype.name, a.shape) for name, a in feeds.items()} == {
        "images": ("float32", (1, 3, 224, 224)),  # batch 1, spatial 224
        "features": ("float32", (1, 16)),  # shares N with images
        "input_ids": ("int64", (1, 128)),  # sequence 128
        "attention_mask": ("int64", (1, 128)),
        "token_type_ids": ("int64", (1, 128)),
        "flags": ("bool", (1,)),
    }
    images, features, ids = feeds["images"], feeds["features"], feeds["input_ids"]
    assert images.min() >= 0.0 and images.max() < 1.0  # image-like: uniform [0, 1)
    assert features.min() < 0.0 < features.max()  # otherwise standard normal
    assert ids.min() >= 0 and ids.max() < 100 and len(np.unique(ids)) > 10  # token ids below int_high
    assert (feeds["attention_mask"] == 1).all()  # attend everywhere
    assert (feeds["token_type_ids"] == 0).all()
    assert feeds["flags"].all()


def test_a_seed_reproduces_its_inputs(tmp_path: Path):
    model = ir_model(ROLES, tmp_path)
    first, again, other = generate_inputs(model, seed=3), generate_inputs(model, seed=3), generate_inputs(model, seed=4)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert not np.array_equal(first["features"], other["features"])


def test_shape_sets_the_symbols_other_inputs_share(tmp_path: Path):
    feeds = generate_inputs(ir_model(MASK_FIRST, tmp_path), shapes={"input_ids": (2, 16)})
    assert feeds["attention_mask"].shape == (2, 16) == feeds["input_ids"].shape


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (
            {"input_ids": (2, 16), "attention_mask": (2, 8)},
            "input_ids: dim 'sequence' is 16, but another --shape set it to 8",
        ),
        ({"input_ids": (2, 16, 1)}, "rank 3, but the input has rank 2"),
        ({"pixels": (1, 3)}, "--shape names unknown input(s) ['pixels']"),
    ],
)
def test_shape_errors(tmp_path: Path, shapes, message):
    with pytest.raises(GraphDoctorError) as error:
        generate_inputs(ir_model(MASK_FIRST, tmp_path), shapes=shapes)
    assert message in str(error.value)


def test_shape_cannot_change_a_static_dim(tmp_path: Path):
    with pytest.raises(GraphDoctorError, match="dim 3 is static, got 4"):
        generate_inputs(ir_model(ROLES, tmp_path), shapes={"images": (1, 4, 32, 32)})


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("images:1x3x640x640", ("images", (1, 3, 640, 640))),
        ("input_ids:2X16", ("input_ids", (2, 16))),
        ("encoder:hidden:1x8", ("encoder:hidden", (1, 8))),  # the name may hold ':'
    ],
)
def test_parse_shape(text, parsed):
    assert parse_shape(text) == parsed


@pytest.mark.parametrize("text", ["images", "images:", ":1x3", "images:1xq", "images:1,3"])
def test_parse_shape_rejects(text):
    with pytest.raises(GraphDoctorError, match="expected NAME:DIMS"):
        parse_shape(text)


@pytest.mark.parametrize("text", ["images:1x-3", "images:0x3"])
def test_parse_shape_rejects_empty_and_negative_dims(text):
    with pytest.raises(GraphDoctorError, match="every dim must be at least 1"):
        parse_shape(text)


def test_generated_values_are_those_of_one_draw(tmp_path: Path):
    """Inputs are drawn a chunk at a time (no float64 copy of a whole input), with the values a single
    draw gives: a seed keeps its inputs across versions."""
    feeds = generate_inputs(ir_model(ROLES, tmp_path), seed=9, shapes={"images": (2, 3, 512, 600)})
    rng = np.random.default_rng(9)
    assert np.array_equal(feeds["images"], rng.random((2, 3, 512, 600)).astype(np.float32))  # 1.8M: two chunks
    assert np.array_equal(feeds["features"], rng.standard_normal((2, 16)).astype(np.float32))
    assert np.array_equal(feeds["input_ids"], rng.integers(0, 100, size=(1, 128)))


def test_the_budget_is_checked_before_allocating(tmp_path: Path, monkeypatch):
    model = ir_model(MASK_FIRST, tmp_path)  # two int64[batch,sequence] inputs
    monkeypatch.setattr(inputs, "INPUTS_BUDGET", 2 * 8 * 2 * 16)
    assert len(generate_inputs(model, shapes={"input_ids": (2, 16)})) == 2  # exactly the budget
    with pytest.raises(GraphDoctorError) as error:
        generate_inputs(model, shapes={"input_ids": (2, 17)})
    assert str(error.value) == (
        "input 'input_ids' int64[2,17] needs 272 bytes (0.0 MiB) after 0.0 MiB for the inputs before it; the inputs"
        " of a run are limited to 0.0 MiB together: give smaller dims with --shape NAME:DIMS, or pass --inputs FILE"
    )
    np.savez(tmp_path / "feeds.npz", input_ids=np.ones((2, 17), np.int64), attention_mask=np.ones((2, 17), np.int64))
    with pytest.raises(GraphDoctorError, match="refused before loading it"):
        load_inputs(tmp_path / "feeds.npz")


def test_saved_inputs_keep_names_numpy_takes_as_options(tmp_path: Path):
    feeds = {"file": np.ones(2, np.float32), "allow_pickle": np.zeros(3, np.int64)}
    loaded = load_inputs(save_inputs(feeds, tmp_path / "named.npz"))
    assert sorted(loaded) == ["allow_pickle", "file"] and np.array_equal(loaded["allow_pickle"], feeds["allow_pickle"])


def test_a_failed_save_leaves_nothing(tmp_path: Path):
    previous = save_inputs({"x": np.ones(2)}, tmp_path / "used.npz").read_bytes()
    with pytest.raises(ValueError, match="allow_pickle=False"):  # the second array fails halfway through
        save_inputs({"x": np.zeros(2), "y": np.array([{}], dtype=object)}, tmp_path / "used.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["used.npz"]  # no temporary file left
    assert (tmp_path / "used.npz").read_bytes() == previous  # the old file untouched


def test_load_npz_npy_and_pb_folder(tmp_path: Path):
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    mask = np.ones((2, 3), dtype=np.int64)
    np.savez(tmp_path / "feeds.npz", input_ids=ids, attention_mask=mask)
    np.save(tmp_path / "one.npy", ids)
    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    for index, (name, array) in enumerate([("attention_mask", mask), ("input_ids", ids)]):
        (folder / f"input_{index}.pb").write_bytes(onnx.numpy_helper.from_array(array, name).SerializeToString())

    npz, npy, pbs = load_inputs(tmp_path / "feeds.npz"), load_inputs(tmp_path / "one.npy"), load_inputs(folder)
    assert sorted(npz) == ["attention_mask", "input_ids"] and np.array_equal(npz["input_ids"], ids)
    assert list(npy) == [""] and np.array_equal(npy[""], ids)
    assert list(pbs) == ["attention_mask", "input_ids"] and np.array_equal(pbs["input_ids"], ids)


def test_bind_by_name_or_by_position_when_unnamed(tmp_path: Path):
    model = ir_model(MASK_FIRST, tmp_path)
    ids, mask = np.full((1, 4), 7), np.ones((1, 4), dtype=np.int64)
    by_name = bind_inputs(model, {"input_ids": ids, "attention_mask": mask})
    assert by_name["input_ids"] is ids
    by_position = bind_inputs(model, {"input_0": mask, "input_1": ids})  # unnamed input_N.pb files
    assert by_position["attention_mask"] is mask and by_position["input_ids"] is ids


def test_bind_never_swaps_named_arrays_silently(tmp_path: Path):
    """Arrays named for other inputs used to be bound by position: 'input_ids' fed to 'attention_mask'."""
    model = ir_model(MASK_FIRST, tmp_path)
    with pytest.raises(GraphDoctorError, match=r"inputs hold \['input_ids', 'mask'\]; the model needs"):
        bind_inputs(model, {"input_ids": np.ones((1, 4)), "mask": np.ones((1, 4))})


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.npz", b"PK\x03\x04 not a zip archive", "cannot read inputs"),
        ("bad.npy", b"\x93NUMPY garbage", "cannot read inputs"),
        ("feeds.txt", b"1 2 3", "inputs must be an .npz, an .npy, or a folder"),
        ("missing.npz", None, "cannot read inputs"),
    ],
)
def test_unreadable_input_files_are_one_clear_error(tmp_path: Path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(GraphDoctorError, match=message):
        load_inputs(tmp_path / name)


def test_unreadable_pb_folder(tmp_path: Path):
    with pytest.raises(GraphDoctorError, match=r"holds no inputs: expected \.npz files"):
        load_inputs(tmp_path)
    (tmp_path / "input_0.pb").write_bytes(b"\xff\xff\xff not a protobuf")
    with pytest.raises(GraphDoctorError, match="not a serialized ONNX TensorProto"):
        load_inputs(tmp_path)


def test_saved_inputs_round_trip_every_dtype(tmp_path: Path):
    feeds = generate_inputs(ir_model(ROLES, tmp_path), seed=5)
    saved = save_inputs(feeds, tmp_path / "replay")  # the suffix is added
    assert saved == tmp_path / "replay.npz"
    loaded = load_inputs(saved)
    assert list(loaded) == list(feeds)
    for name, array in feeds.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array)


def test_replaying_saved_inputs_gives_identical_results(tmp_path: Path):
    reference, candidate = save(linear(), tmp_path / "ref.onnx"), save(linear(1e-3), tmp_path / "cand.onnx")
    first = api.verify(reference, candidate, seed=11, shapes={"x": (5, 4)}, save_inputs=tmp_path / "used.npz")
    replay = api.verify(reference, candidate, inputs=tmp_path / "used.npz")
    assert replay.input_source == str(tmp_path / "used.npz")
    assert [c.as_dict() for c in first.verdicts[0].outputs] == [c.as_dict() for c in replay.verdicts[0].outputs]
    assert first.verdicts[0].outputs[0].max_abs > 0  # the replay compared something that differs


# --- several batches ----------------------------------------------------------------------------------------


def write_pb_folder(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for index, (name, array) in enumerate(arrays.items()):
        (folder / f"input_{index}.pb").write_bytes(onnx.numpy_helper.from_array(array, name).SerializeToString())
    (folder / "output_0.pb").write_bytes(b"expected outputs: not an input")
    return folder


def test_a_folder_of_npz_is_one_batch_per_file_in_natural_order(tmp_path: Path):
    for index in (10, 2, 1):
        save_inputs({"x": np.full(3, index, np.float32)}, tmp_path / f"batch_{index}.npz")
    (tmp_path / "notes.txt").write_text("ignored")
    batches = load_input_batches(tmp_path)
    assert [p.name for p in batches.sources] == ["batch_1.npz", "batch_2.npz", "batch_10.npz"]
    assert [float(batch["x"][0]) for batch in batches] == [1.0, 2.0, 10.0]
    assert [p.name for p in batches[1:].sources] == ["batch_2.npz", "batch_10.npz"]


def test_test_data_sets_are_one_batch_each_and_a_pb_folder_is_one(tmp_path: Path):
    """The ONNX model zoo layout: model.onnx beside test_data_set_N folders of input_N.pb and output_N.pb."""
    for index in (0, 1):
        write_pb_folder(tmp_path / f"test_data_set_{index}", {"x": np.full(2, index, np.float32)})
    (tmp_path / "model.onnx").write_bytes(b"a model, not an input")
    batches = load_input_batches(tmp_path)
    assert [float(batch["x"][0]) for batch in batches] == [0.0, 1.0]
    single = load_input_batches(tmp_path / "test_data_set_1")
    assert len(single) == 1 and list(single[0]) == ["x"]


def test_a_single_file_is_one_batch(tmp_path: Path):
    saved = save_inputs({"x": np.ones(2, np.float32)}, tmp_path / "one.npz")
    batches = load_input_batches(saved)
    assert batches.sources == (saved,) and np.array_equal(batches[0]["x"], np.ones(2, np.float32))
    assert np.array_equal(load_inputs(tmp_path)["x"], batches[0]["x"])  # a folder of one batch is that batch


def test_load_inputs_refuses_several_batches_and_names_the_command_that_takes_them(tmp_path: Path):
    for index in range(3):
        save_inputs({"x": np.ones(2, np.float32)}, tmp_path / f"b{index}.npz")
    with pytest.raises(GraphDoctorError) as error:
        load_inputs(tmp_path)
    assert str(error.value) == (
        f"{tmp_path}: holds 3 batches of inputs (b0.npz, ...); this command runs one: pass one of them"
        f" (e.g. {tmp_path / 'b0.npz'}); `graphdoctor fix --fp16` calibrates over all"
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: write_pb_folder(d / "test_data_set_0", {"x": np.ones(1)}), "mixes .npz files (a.npz) and test-data"),
        (lambda d: (d / "input_0.pb").write_bytes(b""), "mixes .npz files (a.npz) and input_N.pb files (input_0.pb)"),
    ],
)
def test_a_folder_of_mixed_kinds_is_refused(tmp_path: Path, make, message):
    save_inputs({"x": np.ones(2, np.float32)}, tmp_path / "a.npz")
    make(tmp_path)
    with pytest.raises(GraphDoctorError, match=re.escape(message)):
        load_input_batches(tmp_path)


def test_a_folder_of_npy_files_is_refused(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.ones(2))
    with pytest.raises(GraphDoctorError, match=r"holds \.npy files \(x\.npy\), which name no input"):
        load_input_batches(tmp_path)


def test_every_batch_is_checked_before_any_is_read(tmp_path: Path):
    """A bad last batch fails when the folder is opened, not after the runs on the others."""
    save_inputs({"x": np.ones(2, np.float32)}, tmp_path / "b0.npz")
    (tmp_path / "b1.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    with pytest.raises(GraphDoctorError, match=r"b1\.npz: cannot read inputs"):
        load_input_batches(tmp_path)
    save_inputs({"y": np.ones(2, np.float32)}, tmp_path / "b1.npz")
    with pytest.raises(GraphDoctorError, match=r"b1\.npz: holds inputs \['y'\], but b0\.npz holds \['x'\]"):
        load_input_batches(tmp_path)


def test_the_budget_bounds_each_batch_not_their_sum(tmp_path: Path, monkeypatch):
    """Batches are read one at a time: three batches of 80 bytes fit a 100-byte budget, one of 120 does not."""
    monkeypatch.setattr(inputs, "INPUTS_BUDGET", 100)
    for index in range(3):
        save_inputs({"x": np.ones(10, np.float64)}, tmp_path / f"b{index}.npz")
    batches = load_input_batches(tmp_path)
    assert sum(batch["x"].nbytes for batch in batches) == 240
    save_inputs({"x": np.ones(15, np.float64)}, tmp_path / "b3.npz")
    with pytest.raises(GraphDoctorError, match=r"b3\.npz: input 'x' float64\[15\] needs 120 bytes"):
        load_input_batches(tmp_path)


def test_bound_batches_name_the_file_that_does_not_fit(tmp_path: Path):
    model = ir_model(MASK_FIRST, tmp_path)
    good = {"input_ids": np.ones((1, 4), np.int64), "attention_mask": np.ones((1, 4), np.int64)}
    folder = tmp_path / "batches"
    folder.mkdir()
    save_inputs(good, folder / "b0.npz")
    save_inputs({**good, "input_ids": np.ones((1, 4), np.int32)}, folder / "b1.npz")
    batches = load_input_batches(folder).bound_to(model)
    assert batches[0]["input_ids"].dtype == np.int64
    with pytest.raises(GraphDoctorError, match=r"b1\.npz: input 'input_ids': the inputs hold int32\[1,4\]"):
        batches[1]
