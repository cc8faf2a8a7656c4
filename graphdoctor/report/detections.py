"""The terminal rendering of a detection comparison (a verdict's `details["detections"]`, plain data): how
detections were read and judged, then one line per image and its first changes. The JSON report carries
every box of both models; `graphdoctor.report.text` imports this module only when it renders a verify report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from rich.markup import escape

__all__ = ["render_detections"]

MAX_CHANGES = 5  # per image


class Writer(Protocol):
    def line(self, markup: str, plain: str | None = None) -> None: ...


def render_detections(details: Mapping[str, Any], out: Writer) -> None:
    how = "recognised" if details.get("auto") else "read"
    preset = details["preset"]
    if not details.get("decides", True) and not any(image["candidate"] for image in details["images"]):
        line = f"  detections: none above {details['score_threshold']:g} in either model ({how} as {details['layout']})"
        _plain(out, line)
        return
    _plain(out, f"  detections: {details['message']}")
    _plain(out, f"    {how} as {details['layout']} ({details['why']})")
    _plain(
        out,
        f"    score >= {details['score_threshold']:g}, NMS IoU {details['nms_iou']:g}, matched {details['match']}; "
        f"detect preset: IoU >= {preset['min_iou']:g}, |score change| <= {preset['max_score_delta']:g}"
        + ("" if details.get("decides", True) else " (not deciding: the reference detected nothing)"),
    )
    for image in details["images"]:
        _plain(out, "    " + _image_line(image))
        for change in image["changes"][:MAX_CHANGES]:
            _plain(out, f"      {change}")
        if len(image["changes"]) > MAX_CHANGES:
            _plain(out, f"      ... {len(image['changes']) - MAX_CHANGES} more (--format json lists every box)")


def _image_line(image: Mapping[str, Any]) -> str:
    iou = image["iou"]
    ious = f", IoU min {iou['min']:.3f} median {iou['median']:.3f}" if iou else ""
    extras = "".join(
        f", {image[key]} {label}"
        for key, label in (("class_changes", "class changes"), ("borderline", "borderline"))
        if image[key]
    )
    return (
        f"{image['source']}: {image['reference']} vs {image['candidate']} detections, {image['matched']} matched, "
        f"{image['missing']} missing, {image['extra']} extra{extras}; largest box shift "
        f"{image['max_box_shift_px']:.1f} px, largest score change {image['max_score_delta']:.3f}{ious}"
    )


def _plain(out: Writer, text: str) -> None:
    out.line(escape(text), plain=text)
