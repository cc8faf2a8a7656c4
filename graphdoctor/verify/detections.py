"""Detector outputs compared as detections: what users judge a detector by ("one box is missing", "the score
moved"), beside the tensor metrics, which cannot say whether a single detection changed.

Both models' raw outputs are decoded the same way, thresholded and put through the same NMS, then their
detections are matched per image: greedily by the reference's score, each to the unmatched candidate detection
of the same class with the highest IoU (Hungarian matching would only differ where two candidates overlap one
reference box about equally, which the IoU threshold below already calls a change). The report per image:
detections in each model, matched, missing (the reference's, unmatched), extra (the candidate's, unmatched),
class changes (an unmatched pair of different classes at IoU >= 0.5), the largest box shift in pixels, the
largest score change, and the IoUs of the matches.

Layouts decoded:
- `ultralytics`: YOLOv8/v11 `[B, 4+nc, N]`: cx, cy, w, h, then one score per class (no objectness).
- `yolov5`: YOLOv5/v7 `[B, N, 5+nc]`: cx, cy, w, h, objectness, class scores; a class's score is obj × cls.
- `end-to-end`: NMS inside the model: `[B, K, 6]` rows of x1, y1, x2, y2, score, class (ultralytics `nms=True`),
  or four outputs (counts `[B, 1]`, boxes `[B, K, 4]`, scores `[B, K]`, classes `[B, K]`, as TensorRT's
  EfficientNMS plugin writes them), or named by `boxes=`, `scores=`, `classes=`, `counts=`.

The `detect` preset (DETECT_PRESET) passes when every detection above the score threshold in either model is
matched at IoU >= 0.9 with |score change| <= 0.02. A detection whose score lies within that 0.02 of the
threshold may appear in one model only without failing: it is counted as borderline, since a 0.02 change is
allowed and can carry it across the threshold either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from graphdoctor.analysis.format import format_count
from graphdoctor.errors import GraphDoctorError

__all__ = [
    "DETECT_PRESET",
    "DetectOptions",
    "DetectionPreset",
    "Detections",
    "ImageComparison",
    "compare_detections",
    "decode",
    "guess_layout",
    "iou_matrix",
    "nms",
    "recognise_detector",
]

LAYOUTS = ("ultralytics", "yolov5", "end-to-end")
CLASS_CHANGE_IOU = 0.5


@dataclass(frozen=True)
class DetectionPreset:
    min_iou: float = 0.9
    max_score_delta: float = 0.02

    def describe(self) -> str:
        return (
            f"detect preset (every detection matched at IoU >= {self.min_iou:g}, "
            f"|score change| <= {self.max_score_delta:g})"
        )


DETECT_PRESET = DetectionPreset()


@dataclass(frozen=True)
class DetectOptions:
    """How to turn outputs into detections. `layout` None: guessed from the outputs (guess_layout says why)."""

    layout: str | None = None
    score_threshold: float = 0.25
    nms_iou: float = 0.45
    max_detections: int = 300
    boxes: str | None = None  # output names, for anything the layouts do not cover
    scores: str | None = None
    classes: str | None = None
    counts: str | None = None
    preset: DetectionPreset = DETECT_PRESET
    layout_why: str = ""  # why `layout` was chosen, when graphdoctor recognised it (the exporter's metadata, ...)


@dataclass(frozen=True)
class Detections:
    """One image's detections, best score first: boxes [K, 4] as x1, y1, x2, y2 in input pixels."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def rows(self) -> list[list[float]]:
        return [
            [*map(float, box), float(score), int(cls)]
            for box, score, cls in zip(self.boxes, self.scores, self.classes, strict=True)
        ]


@dataclass
class ImageComparison:
    index: int
    reference: int
    candidate: int
    matched: int = 0
    missing: int = 0
    extra: int = 0
    class_changes: int = 0
    borderline: int = 0
    max_box_shift_px: float = 0.0
    max_score_delta: float = 0.0
    ious: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # why the preset fails on this image, in words

    @property
    def passed(self) -> bool:
        return not self.failures


# --- layouts ------------------------------------------------------------------------------------------------


def guess_layout(outputs: Mapping[str, np.ndarray]) -> tuple[str | None, str]:
    """The layout the outputs are in, and why; None (and why not) when the shapes do not say it unambiguously."""
    float_outputs = {name: value for name, value in outputs.items() if np.asarray(value).dtype.kind == "f"}
    four = _four_outputs(outputs)
    if four is not None:
        return "end-to-end", f"outputs {', '.join(four)}: counts, boxes, scores, classes (NMS inside the model)"
    if len(float_outputs) != 1:
        return None, f"{len(float_outputs)} float outputs, none of the known detector layouts"
    name, value = next(iter(float_outputs.items()))
    shape = tuple(np.shape(value))
    if len(shape) != 3:
        return None, f"output '{name}' {list(shape)} is not [batch, rows, columns]"
    _, rows, columns = shape
    if columns in (6, 7) and rows <= 1000 and rows > columns:
        return "end-to-end", f"output '{name}' {list(shape)}: x1, y1, x2, y2, score, class per detection (NMS inside)"
    if 5 <= rows < columns:
        return "ultralytics", f"output '{name}' {list(shape)}: 4 box values and {rows - 4} class scores per anchor"
    if 6 <= columns < rows:
        return "yolov5", f"output '{name}' {list(shape)}: 4 box values, objectness and {columns - 5} class scores"
    return None, f"output '{name}' {list(shape)} matches no detector layout"


def _four_outputs(outputs: Mapping[str, np.ndarray]) -> tuple[str, str, str, str] | None:
    """(counts, boxes, scores, classes) of an EfficientNMS-style end-to-end model, found by shape."""
    counts = boxes = scores = classes = None
    for name, value in outputs.items():
        shape = np.shape(value)
        if len(shape) == 3 and shape[2] == 4:
            boxes = name
        elif len(shape) == 2 and shape[1] == 1 and np.asarray(value).dtype.kind in "iu":
            counts = name
    if boxes is None or counts is None:
        return None
    rest = [n for n in outputs if n not in (boxes, counts) and np.shape(outputs[n]) == np.shape(outputs[boxes])[:2]]
    floats = [n for n in rest if np.asarray(outputs[n]).dtype.kind == "f"]
    others = [n for n in rest if n not in floats]
    if len(rest) != 2:
        return None
    scores, classes = (floats[0], others[0]) if len(floats) == 1 else (rest[0], rest[1])  # named order otherwise
    return counts, boxes, scores, classes


def recognise_detector(model) -> tuple[str, str] | None:
    """(layout, why) when the ONNX model (an onnx_ir Model) is a detector beyond doubt, from what exporters
    write: ultralytics' metadata (task=detect), YOLOv5's (stride and names), or the graph itself (one output
    made by a Concat of decoded boxes and a Sigmoid's class scores, as ultralytics' Detect head; a
    NonMaxSuppression before an output of rows of 6). None when it cannot be sure: --task detect then."""
    outputs = list(model.graph.outputs)
    if len(outputs) != 1 or outputs[0].shape is None or len(outputs[0].shape) != 3:
        return None
    output = outputs[0]
    metadata = dict(model.metadata_props)
    producer = output.producer()
    ops = {node.op_type for node in model.graph.all_nodes()}
    last = output.shape[2]
    if "NonMaxSuppression" in ops and last in (6, 7):
        return "end-to-end", f"output '{output.name}' holds rows of {last} after a NonMaxSuppression (NMS inside)"
    if metadata.get("task") == "detect":
        return "ultralytics", f"ultralytics metadata task=detect, output '{output.name}' [batch, 4+classes, anchors]"
    if {"stride", "names"} <= set(metadata):
        return "yolov5", f"YOLOv5 metadata (stride, names), output '{output.name}' [batch, anchors, 5+classes]"
    if _is_detect_head(producer):
        return "ultralytics", f"output '{output.name}' = Concat(boxes, Sigmoid(class logits)), ultralytics' Detect head"
    return None


def _is_detect_head(node) -> bool:
    """A Concat on axis 1 with a Sigmoid among its inputs: the last node of ultralytics' Detect head."""
    if node is None or node.op_type != "Concat" or node.attributes.get_int("axis", 0) != 1:
        return False
    return any(v is not None and v.producer() is not None and v.producer().op_type == "Sigmoid" for v in node.inputs)


# --- decoding -----------------------------------------------------------------------------------------------


def decode(outputs: Mapping[str, np.ndarray], options: DetectOptions, layout: str) -> list[Detections]:
    """Per image of the batch: the detections above the threshold after class-aware NMS (raw layouts), or the
    model's own (end-to-end) above the same threshold."""
    if options.boxes is not None:
        return _decode_named(outputs, options)
    if layout == "end-to-end":
        four = _four_outputs(outputs)
        if four is not None:
            counts, boxes, scores, classes = four
            named = dataclasses.replace(options, boxes=boxes, scores=scores, classes=classes, counts=counts)
            return _decode_named(outputs, named)
        return [_threshold(_rows(image), options) for image in _single(outputs)]
    raw = _single(outputs)
    if layout == "ultralytics":
        return [_nms_image(image[:4].T, image[4:].T, options) for image in raw]
    if layout == "yolov5":
        return [_nms_image(image[:, :4], image[:, 5:] * image[:, 4:5], options) for image in raw]
    raise GraphDoctorError(f"unknown detection layout '{layout}' (choose from {', '.join(LAYOUTS)})")


def _single(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    floats = [np.asarray(v, dtype=np.float32) for v in outputs.values() if np.asarray(v).dtype.kind == "f"]
    if len(floats) != 1:
        raise GraphDoctorError(f"a raw detector layout has one float output; this model has {len(floats)}")
    return floats[0]


def _rows(image: np.ndarray) -> Detections:
    """End-to-end rows [K, 6|7]: x1, y1, x2, y2, score, class (a 7th column, a batch index, is ignored)."""
    return Detections(image[:, :4], image[:, 4], image[:, 5].astype(np.int64))


def _decode_named(outputs: Mapping[str, np.ndarray], options: DetectOptions) -> list[Detections]:
    def output(name: str | None) -> np.ndarray | None:
        if name is None:
            return None
        if name not in outputs:
            raise GraphDoctorError(f"the model has no output '{name}' (outputs: {', '.join(outputs)})")
        return np.asarray(outputs[name])

    boxes, scores, classes, counts = (
        output(n) for n in (options.boxes, options.scores, options.classes, options.counts)
    )
    if scores is None:
        raise GraphDoctorError("--boxes needs --scores too (and --classes where the model has one class per box)")
    images = []
    for b in range(boxes.shape[0]):
        count = int(np.asarray(counts[b]).reshape(-1)[0]) if counts is not None else boxes.shape[1]
        image_scores = scores[b].astype(np.float32)
        if image_scores.ndim == 2:  # per-class scores: the best class
            image_classes, image_scores = image_scores.argmax(1), image_scores.max(1)
        else:
            image_classes = (
                classes[b].astype(np.int64) if classes is not None else np.zeros(len(image_scores), np.int64)
            )
        found = Detections(boxes[b, :count].astype(np.float32), image_scores[:count], image_classes[:count])
        images.append(_threshold(found, options))
    return images


def _threshold(found: Detections, options: DetectOptions) -> Detections:
    keep = found.scores >= options.score_threshold
    order = np.argsort(-found.scores[keep], kind="stable")[: options.max_detections]
    return Detections(found.boxes[keep][order], found.scores[keep][order], found.classes[keep][order])


def _nms_image(cxcywh: np.ndarray, class_scores: np.ndarray, options: DetectOptions) -> Detections:
    """Best class per anchor, threshold, class-aware NMS (as ultralytics' non_max_suppression, single label)."""
    classes = class_scores.argmax(1)
    scores = class_scores[np.arange(len(classes)), classes].astype(np.float32)
    keep = scores >= options.score_threshold
    boxes = _xyxy(cxcywh[keep].astype(np.float32))
    kept = nms(boxes, scores[keep], classes[keep], options.nms_iou)[: options.max_detections]
    return Detections(boxes[kept], scores[keep][kept], classes[keep][kept].astype(np.int64))


def _xyxy(cxcywh: np.ndarray) -> np.ndarray:
    half = cxcywh[:, 2:4] / 2
    return np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], axis=1)


# --- NMS and IoU --------------------------------------------------------------------------------------------


def iou_matrix(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of every box of `first` [N, 4] with every box of `second` [M, 4] (x1, y1, x2, y2)."""
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_first = np.clip(first[:, 2:] - first[:, :2], 0, None).prod(axis=1)
    area_second = np.clip(second[:, 2:] - second[:, :2], 0, None).prod(axis=1)
    union = area_first[:, None] + area_second[None, :] - overlap
    return np.where(union > 0, overlap / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by class-aware NMS, best score first: a box is dropped when a better-scored box of its class
    overlaps it by more than `iou_threshold` (torchvision.ops.batched_nms's rule). Classes are kept apart by
    offsetting each class's boxes beyond every other's, as batched_nms does."""
    if not len(scores):
        return np.zeros(0, dtype=np.int64)
    boxes = boxes.astype(np.float64)
    span = float(boxes.max() - min(boxes.min(), 0.0)) + 1.0
    order = np.argsort(-scores, kind="stable")
    shifted = (boxes + (classes.astype(np.float64) * span)[:, None])[order]
    suppressed = np.zeros(len(order), dtype=bool)
    for rank in range(len(order)):  # one row of IoUs at a time: memory stays linear in the boxes above threshold
        if not suppressed[rank]:
            suppressed[rank + 1 :] |= iou_matrix(shifted[rank : rank + 1], shifted[rank + 1 :])[0] > iou_threshold
    return order[~suppressed]


# --- matching -----------------------------------------------------------------------------------------------


def compare_detections(
    reference: Sequence[Detections], candidate: Sequence[Detections], options: DetectOptions
) -> list[ImageComparison]:
    if len(reference) != len(candidate):
        raise GraphDoctorError(f"the models detect on {len(reference)} and {len(candidate)} images")
    return [
        _compare_image(i, ref, cand, options) for i, (ref, cand) in enumerate(zip(reference, candidate, strict=True))
    ]


def _compare_image(index: int, ref: Detections, cand: Detections, options: DetectOptions) -> ImageComparison:
    report = ImageComparison(index, len(ref), len(cand))
    ious = iou_matrix(ref.boxes, cand.boxes) if len(ref) and len(cand) else np.zeros((len(ref), len(cand)))
    same_class = ref.classes[:, None] == cand.classes[None, :]
    taken = np.zeros(len(cand), dtype=bool)
    unmatched_ref = []
    for i in range(len(ref)):  # best reference score first (Detections are sorted)
        scores = np.where(same_class[i] & ~taken, ious[i], -1.0)
        j = int(scores.argmax()) if len(cand) else -1
        if j < 0 or scores[j] < CLASS_CHANGE_IOU:
            unmatched_ref.append(i)
            continue
        taken[j] = True
        _record_match(report, ref, cand, i, j, float(ious[i, j]), options.preset)
    unmatched_cand = [j for j in range(len(cand)) if not taken[j]]
    _record_unmatched(report, ref, cand, unmatched_ref, unmatched_cand, ious, options)
    return report


def _record_match(
    report: ImageComparison, ref: Detections, cand: Detections, i: int, j: int, iou: float, preset: DetectionPreset
) -> None:
    report.matched += 1
    report.ious.append(iou)
    shift = float(np.abs(ref.boxes[i] - cand.boxes[j]).max())
    delta = abs(float(ref.scores[i]) - float(cand.scores[j]))
    report.max_box_shift_px = max(report.max_box_shift_px, shift)
    report.max_score_delta = max(report.max_score_delta, delta)
    what = f"class {int(ref.classes[i])} at {_box_text(ref.boxes[i])}"
    if iou < preset.min_iou:
        report.failures.append(f"{what}: IoU {iou:.3f} < {preset.min_iou:g}")
    if delta > preset.max_score_delta:
        report.failures.append(f"{what}: score {ref.scores[i]:.3f} -> {cand.scores[j]:.3f}")


def _record_unmatched(
    report: ImageComparison,
    ref: Detections,
    cand: Detections,
    unmatched_ref: list[int],
    unmatched_cand: list[int],
    ious: np.ndarray,
    options: DetectOptions,
) -> None:
    """Unmatched detections: class changes (a pair of other classes at IoU >= 0.5), borderline ones (a score
    within the allowed change of the threshold), the rest missing or extra."""
    paired = set()
    for i in unmatched_ref:
        others = [j for j in unmatched_cand if j not in paired and ious[i, j] >= CLASS_CHANGE_IOU]
        if others:
            j = max(others, key=lambda k: ious[i, k])
            paired.add(j)
            report.class_changes += 1
            report.failures.append(
                f"class {int(ref.classes[i])} -> {int(cand.classes[j])} at {_box_text(ref.boxes[i])}"
            )
        else:
            _record_lone(report, "missing", ref, i, options)
    for j in unmatched_cand:
        if j not in paired:
            _record_lone(report, "extra", cand, j, options)


def _record_lone(report: ImageComparison, kind: str, found: Detections, index: int, options: DetectOptions) -> None:
    """A detection in one model only: borderline when its score is within the allowed change of the threshold,
    else `kind` ('missing' from the candidate, 'extra' in it)."""
    score = float(found.scores[index])
    if _borderline(score, options):
        report.borderline += 1
        return
    setattr(report, kind, getattr(report, kind) + 1)
    report.failures.append(
        f"{kind}: class {int(found.classes[index])} score {score:.3f} at {_box_text(found.boxes[index])}"
    )


def _borderline(score: float, options: DetectOptions) -> bool:
    return score < options.score_threshold + options.preset.max_score_delta


def _box_text(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in box) + "]"


# --- the verdict --------------------------------------------------------------------------------------------


def detection_report(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    options: DetectOptions,
    sources: Sequence[str] = (),
    images: Sequence[np.ndarray] = (),
) -> dict:
    """The comparison of what both models detect, as plain data (details["detections"]): the layout and why,
    the settings, per image the counts, shifts, IoUs and both models' boxes (in the model's input pixels),
    whether the preset passed, and with `images` (the preprocessed inputs, HWC uint8) each one as a PNG."""
    layout, why = (options.layout, options.layout_why or "given") if options.layout else guess_layout(expected)
    if layout is None and options.boxes is None:
        raise GraphDoctorError(f"cannot tell how to read detections: {why} (give --layout or --boxes/--scores)")
    reference, candidate = decode(expected, options, layout), decode(actual, options, layout)
    compared = compare_detections(reference, candidate, options)
    failing = [image for image in compared if not image.passed]
    matched, total = sum(i.matched for i in compared), sum(i.reference for i in compared)
    message = f"{matched} of {total} detections matched on {format_count(len(compared), 'image')}" + (
        "" if not failing else f"; {sum(len(i.failures) for i in failing)} changes, first: {failing[0].failures[0]}"
    )
    return {
        "layout": layout or "named outputs",
        "why": why,
        "score_threshold": options.score_threshold,
        "nms_iou": options.nms_iou,
        "match": f"greedy by reference score, same class, IoU >= {CLASS_CHANGE_IOU:g}",
        "preset": dataclasses.asdict(options.preset),
        "passed": not failing,
        "message": message,
        "images": [
            _image_dict(image, ref, cand, sources, images)
            for image, ref, cand in zip(compared, reference, candidate, strict=True)
        ],
    }


def _image_dict(
    image: ImageComparison, ref: Detections, cand: Detections, sources: Sequence[str], pictures: Sequence[np.ndarray]
) -> dict:
    ious = sorted(image.ious)
    picture = pictures[image.index] if image.index < len(pictures) else None
    drawn = {} if picture is None else {"size": [picture.shape[1], picture.shape[0]], "image_png": _png(picture)}
    return drawn | {
        "index": image.index,
        "source": sources[image.index] if image.index < len(sources) else f"input batch item {image.index}",
        "reference": image.reference,
        "candidate": image.candidate,
        "matched": image.matched,
        "missing": image.missing,
        "extra": image.extra,
        "class_changes": image.class_changes,
        "borderline": image.borderline,
        "max_box_shift_px": image.max_box_shift_px,
        "max_score_delta": image.max_score_delta,
        "iou": {"min": ious[0], "median": float(np.median(ious))} if ious else {},
        "changes": image.failures,
        "boxes": {"reference": ref.rows(), "candidate": cand.rows()},
    }


def _png(picture: np.ndarray) -> str:
    """The HWC uint8 picture as base64 PNG, for the HTML report (Pillow loaded it, so Pillow is here)."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
