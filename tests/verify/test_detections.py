"""Detections compared as users judge detectors: our NMS against torchvision's, the layouts read alike, matching
and the detect preset, images preprocessed as said, and `verify` on real YOLOv8 exports (fixtures/detectors.py:
the ultralytics export with scores that detect, one with a perturbed head Conv, its YOLOv5 layout and an
end-to-end form with NonMaxSuppression inside)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graphdoctor import api
from graphdoctor.errors import GraphDoctorError
from graphdoctor.model import load_model
from graphdoctor.verify.detections import (
    Detections,
    DetectOptions,
    compare_detections,
    decode,
    guess_layout,
    iou_matrix,
    nms,
    recognise_detector,
)
from graphdoctor.verify.images import Preprocessing, image_batch

OPTIONS = DetectOptions()
HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'
IMAGE_MODEL = HEADER + "g (float[1, 3, H, W] images) => (float[1, 3, H, W] y) { y = Relu(images) }"
FIXED_MODEL = HEADER + "g (float[1, 3, 32, 32] x) => (float[1, 3, 32, 32] y) { y = Relu(x) }"


def _ir(text: str):
    import onnx_ir as ir

    from fixtures.handmade import model_from_text

    return ir.serde.deserialize_model(model_from_text(text))


@pytest.fixture(scope="module")
def detectors(tmp_path_factory) -> dict[str, Path]:
    from fixtures import detectors as builders
    from fixtures import torch_exports

    return builders.build(torch_exports.path("yolo"), tmp_path_factory.mktemp("detectors"))


def _run(path: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": image}), strict=True))


def _boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    corner = rng.uniform(0, 300, (count, 2))
    return np.concatenate([corner, corner + rng.uniform(5, 80, (count, 2))], axis=1).astype(np.float32)


# --- NMS and IoU --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_nms_keeps_what_torchvision_batched_nms_keeps(seed):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(seed)
    boxes, scores, classes = _boxes(rng, 400), rng.random(400).astype(np.float32), rng.integers(0, 5, 400)
    expected = torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), 0.45
    ).numpy()
    assert nms(boxes, scores, classes, 0.45).tolist() == expected.tolist()


def test_iou_of_known_boxes():
    first = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    second = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    assert np.allclose(iou_matrix(first, second), [[1 / 3, 0, 1], [1 / 3, 0, 1]])


# --- matching and the preset ----------------------------------------------------------------------------------


def _detections(rows: list[tuple[float, float, float, float, float, int]]) -> Detections:
    array = np.array(rows, np.float32).reshape(-1, 6)
    order = np.argsort(-array[:, 4], kind="stable")
    return Detections(array[order, :4], array[order, 4], array[order, 5].astype(np.int64))


def test_identical_detections_all_match():
    ref = _detections([(0, 0, 50, 50, 0.9, 1), (100, 100, 160, 150, 0.6, 2)])
    [image] = compare_detections([ref], [ref], OPTIONS)
    assert (image.matched, image.missing, image.extra, image.passed) == (2, 0, 0, True)


def test_a_moved_box_a_changed_score_a_missing_and_an_extra_detection_fail_the_preset():
    ref = _detections([(0, 0, 50, 50, 0.9, 1), (100, 100, 160, 150, 0.6, 2), (200, 0, 260, 40, 0.8, 3)])
    cand = _detections([(0, 0, 50, 56, 0.9, 1), (100, 100, 160, 150, 0.5, 2), (10, 200, 60, 260, 0.7, 4)])
    [image] = compare_detections([ref], [cand], OPTIONS)
    assert (image.matched, image.missing, image.extra) == (2, 1, 1)
    assert image.max_box_shift_px == pytest.approx(6) and image.max_score_delta == pytest.approx(0.1)
    assert not image.passed and len(image.failures) == 4  # IoU 0.893, score 0.6 -> 0.5, missing, extra


def test_a_class_change_is_named_and_a_borderline_score_is_not_a_failure():
    ref = _detections([(0, 0, 50, 50, 0.9, 1), (100, 100, 150, 150, 0.26, 2)])
    cand = _detections([(0, 0, 50, 50, 0.9, 7)])
    [image] = compare_detections([ref], [cand], OPTIONS)
    assert (image.class_changes, image.borderline, image.missing) == (1, 1, 0)
    assert image.failures == ["class 1 -> 7 at [0, 0, 50, 50]"]


def test_layout_guessed_from_shapes_and_refused_when_ambiguous():
    assert guess_layout({"output0": np.zeros((1, 84, 8400), np.float32)})[0] == "ultralytics"
    assert guess_layout({"output0": np.zeros((1, 25200, 85), np.float32)})[0] == "yolov5"
    assert guess_layout({"output0": np.zeros((1, 300, 6), np.float32)})[0] == "end-to-end"
    four = {
        "num_dets": np.zeros((1, 1), np.int32),
        "det_boxes": np.zeros((1, 100, 4), np.float32),
        "det_scores": np.zeros((1, 100), np.float32),
        "det_classes": np.zeros((1, 100), np.int32),
    }
    assert guess_layout(four)[0] == "end-to-end"
    assert guess_layout({"logits": np.zeros((1, 1000), np.float32)})[0] is None


def test_efficient_nms_outputs_decode_up_to_their_counts():
    outputs = {
        "num_dets": np.array([[2]], np.int32),
        "det_boxes": np.array([[[0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 1, 1]]], np.float32),
        "det_scores": np.array([[0.9, 0.3, 0.99]], np.float32),
        "det_classes": np.array([[1, 2, 3]], np.int32),
    }
    [found] = decode(outputs, OPTIONS, "end-to-end")
    assert found.classes.tolist() == [1, 2]  # the third row is past the count


# --- real exports ---------------------------------------------------------------------------------------------


@pytest.mark.torch
def test_layouts_of_one_detector_decode_to_the_same_detections(detectors):
    from fixtures.detectors import image

    decoded = {
        name: decode(_run(detectors[name], image()), OPTIONS, layout)[0]
        for name, layout in (("detecting", "ultralytics"), ("yolov5_layout", "yolov5"), ("end_to_end", "end-to-end"))
    }
    reference = decoded.pop("detecting")
    assert len(reference) >= 10
    for other in decoded.values():
        [image_report] = compare_detections([reference], [other], OPTIONS)
        assert (image_report.matched, image_report.passed) == (len(reference), True)


@pytest.mark.torch
def test_detectors_are_recognised_and_others_are_not(detectors):
    from fixtures import torch_exports

    recognised = {name: recognise_detector(load_model(path).model) for name, path in detectors.items()}
    assert {name: found[0] for name, found in recognised.items()} == {
        "detecting": "ultralytics",
        "head_perturbed": "ultralytics",
        "yolov5_layout": "yolov5",
        "end_to_end": "end-to-end",
    }
    for other in ("resnet50", "dynamo_vit", "bert_opset17", "t5_encoder"):
        assert recognise_detector(load_model(torch_exports.path(other)).model) is None


@pytest.mark.torch
def test_verify_reports_every_detection_matched_for_the_model_against_itself(detectors, gd):
    code, out, _ = gd("verify", detectors["detecting"], "--shape", "images:1x3x320x320")
    assert code == 0
    assert "detections:" in out and "recognised as ultralytics" in out
    assert " 0 missing, 0 extra" in out


@pytest.mark.torch
@pytest.mark.parametrize("layout", ["ultralytics", "yolov5", "end-to-end"])
def test_a_perturbed_head_conv_fails_the_detect_preset(detectors, tmp_path, layout):
    """The perturbed head against the original (for the other layouts, both moved there by the same surgery)."""
    reference, candidate = detectors["detecting"], detectors["head_perturbed"]
    if layout != "ultralytics":
        from fixtures import detectors as builders

        reference = detectors["yolov5_layout" if layout == "yolov5" else "end_to_end"]
        candidate = builders.in_layout(candidate, layout, tmp_path / "perturbed.onnx")
    result = api.verify(reference, candidate, shapes={"images": (1, 3, 320, 320)}, task="detect")
    [verdict] = result.verdicts
    report = verdict.details["detections"]
    assert (verdict.status, report["passed"], report["decides"]) == ("failed", False, True)
    assert report["layout"] == layout and not report["auto"]
    assert verdict.reason.startswith("detections changed beyond the detect preset (every detection matched at IoU")
    assert report["images"][0]["changes"] and report["images"][0]["max_score_delta"] > 0.02


@pytest.mark.torch
def test_end_to_end_export_is_compared_on_its_own_detections(detectors, gd):
    code, out, _ = gd("verify", detectors["end_to_end"], "--shape", "images:1x3x320x320", "--format", "json")
    [verdict] = json.loads(out)["verify"]["verdicts"]
    report = verdict["details"]["detections"]
    assert (code, report["layout"], report["passed"]) == (0, "end-to-end", True)
    assert report["images"][0]["boxes"]["reference"] == report["images"][0]["boxes"]["candidate"]


@pytest.mark.torch
def test_task_tensor_compares_tensors_only(detectors):
    result = api.verify(detectors["detecting"], shapes={"images": (1, 3, 320, 320)}, task="tensor")
    assert "detections" not in result.verdicts[0].details


@pytest.mark.torch
def test_nothing_detected_leaves_the_verdict_to_the_tensor_tolerance(tmp_path):
    from fixtures import torch_exports

    result = api.verify(torch_exports.path("yolo"), shapes={"images": (1, 3, 320, 320)})  # random weights
    [verdict] = result.verdicts
    assert verdict.details["detections"]["decides"] is False
    assert "the tensor tolerance decides" in verdict.reason and verdict.status == "passed"


# --- images ---------------------------------------------------------------------------------------------------


def _write_image(path: Path, size: tuple[int, int]) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_images_are_letterboxed_padded_and_ordered_as_said(tmp_path):
    pytest.importorskip("PIL")
    model = _ir(IMAGE_MODEL)

    wide = _write_image(tmp_path / "wide.png", (640, 320))  # letterboxed to 320: 160 rows, padded above and below
    rgb = Preprocessing(size=320, pad_value=114)
    feeds, source, pictures, sources = image_batch(model, [wide], rgb)
    tensor = feeds["images"]
    assert tensor.shape == (1, 3, 320, 320) and tensor.dtype == np.float32
    pad = np.float32(114) * np.float32(1 / 255)  # as the pixels are scaled: value × scale in float32
    assert np.all(tensor[0, :, :80] == pad) and np.all(tensor[0, :, 240:] == pad)
    letterbox = "letterbox 320×320 (aspect kept, centred, padded with 114), RGB, × 0.00392157, NCHW float32"
    assert source == f"1 image (wide.png): {letterbox}"
    half = Preprocessing(size=320, pad_value=127.5, channels="bgr")
    bgr = image_batch(model, [wide], half)[0]["images"]
    assert bgr[0, 0, 0, 0] == np.float32(127.5) * np.float32(1 / 255)  # 0.5 × 255 stays 127.5, not 128
    assert np.array_equal(bgr[0, 0, 100:200], tensor[0, 2, 100:200])  # channels reversed
    assert pictures[0].shape == (320, 320, 3) and sources == [str(wide)]


@pytest.mark.torch
def test_verify_on_images_draws_both_models_boxes(detectors, tmp_path):
    pytest.importorskip("PIL")
    images = [_write_image(tmp_path / f"photo{i}.jpg", (480, 360)) for i in range(2)]
    result = api.verify(
        detectors["detecting"], detectors["head_perturbed"], images=images, preprocessing=Preprocessing(size=320)
    )
    report = result.verdicts[0].details["detections"]
    assert "2 images (photo0.jpg, photo1.jpg): letterbox 320×320" in result.input_source
    assert [image["source"] for image in report["images"]] == [str(p) for p in images]
    assert all(image["size"] == [320, 320] and image["image_png"] for image in report["images"])


def test_an_image_that_is_not_one_is_one_line(tmp_path):
    pytest.importorskip("PIL")
    from graphdoctor.verify.images import find_images

    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(GraphDoctorError, match="cannot be read as an image"):
        image_batch(_ir(FIXED_MODEL), find_images([bad]), Preprocessing())


@pytest.mark.torch
@pytest.mark.parametrize("name", ["detecting", "yolov5_layout", "end_to_end"])
def test_fix_fp16_of_a_detector_is_judged_by_its_detections(detectors, tmp_path, name):
    from graphdoctor.fp16 import Fp16Options

    out = tmp_path / f"{name}.fp16.onnx"
    result = api.fix(detectors[name], out, fp16=Fp16Options(), shapes={"images": (1, 3, 320, 320)})
    assert result.written and out.exists()
    judged = {v.backend: v.details["detections"] for v in result.verification.verdicts if "detections" in v.details}
    assert set(judged) == {"fp16-emulation", "onnxruntime-cpu"}
    for report in judged.values():
        [image] = report["images"]
        assert report["auto"] and report["decides"] and report["passed"]
        assert report["message"] == f"{image['reference']} of {image['reference']} detections matched on 1 image"
        assert image["reference"] == 24 and image["iou"]["min"] > 0.99
