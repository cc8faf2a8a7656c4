"""Real images as a detector's inputs, preprocessed as the user's pipeline does, and said how: a preprocessing
mismatch (padding with 0.5 where training padded with 114, BGR where the model wants RGB) changes what a model
detects, and the report must show it as such.

Letterbox as ultralytics' LetterBox (auto=False, centred): scale by min(S / h, S / w) keeping the aspect, resize
bilinear, pad both sides to S × S with `pad_value` (114 in ultralytics; 0.5 × 255 = 127.5 in others), then the
channel order, × `scale` (1/255), NCHW float32. Resizing is Pillow's bilinear filter, which differs from
OpenCV's INTER_LINEAR by a level or two per pixel. Pillow is optional (`pip install 'graphdoctor[images]'`)
and imported only here, never on the lint path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphdoctor.analysis.format import format_count
from graphdoctor.errors import GraphDoctorError

__all__ = ["IMAGE_SUFFIXES", "Preprocessing", "find_images", "image_batch"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_IMAGES = 64


@dataclass(frozen=True)
class Preprocessing:
    size: int | None = None  # letterbox to size × size; None: the model input's own static H × W
    pad_value: float = 114.0
    channels: str = "rgb"  # or "bgr"
    scale: float = 1 / 255

    def describe(self, height: int, width: int) -> str:
        order = self.channels.upper()
        return (
            f"letterbox {width}×{height} (aspect kept, centred, padded with {self.pad_value:g}), {order}, "
            f"× {self.scale:.6g}, NCHW float32"
        )


def find_images(paths: Iterable[Path]) -> list[Path]:
    """Image files among `paths`, folders searched (not recursively), in name order; at most MAX_IMAGES."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise GraphDoctorError(f"--image {path}: no such file or folder")
    if not found:
        raise GraphDoctorError("--image: no image files found (" + ", ".join(IMAGE_SUFFIXES) + ")")
    if len(found) > MAX_IMAGES:
        raise GraphDoctorError(f"--image: {len(found)} images; at most {MAX_IMAGES} at a time")
    return found


def image_batch(
    model, paths: Sequence[Path], preprocessing: Preprocessing | None = None
) -> tuple[dict[str, np.ndarray], str, list[np.ndarray], list[str]]:
    """The model's image input fed with the preprocessed images (default: ultralytics') as one batch: (feeds,
    what was done, the letterboxed pictures as HWC uint8 RGB for the report, the file names)."""
    preprocessing = preprocessing or Preprocessing()
    name, height, width = _image_input(model, preprocessing, len(paths))
    planes = np.stack([_letterbox(_load(path), height, width, preprocessing.pad_value) for path in paths])
    pictures = list(np.clip(np.rint(planes), 0, 255).astype(np.uint8))
    if preprocessing.channels == "bgr":
        planes = planes[..., ::-1]
    tensor = np.ascontiguousarray(planes.transpose(0, 3, 1, 2) * np.float32(preprocessing.scale))
    shown = ", ".join(path.name for path in paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
    source = f"{format_count(len(paths), 'image')} ({shown}): {preprocessing.describe(height, width)}"
    return {name: tensor}, source, pictures, [str(path) for path in paths]


def _image_input(model, preprocessing: Preprocessing, count: int) -> tuple[str, int, int]:
    """The model's one NCHW input with 3 channels: its name and the H, W to letterbox to (its batch, when
    static, must be the number of images)."""
    candidates = [
        value
        for value in model.graph.inputs
        if value.shape is not None and len(value.shape) == 4 and value.shape[1] == 3
    ]
    if len(candidates) != 1:
        raise GraphDoctorError(f"--image needs one NCHW input with 3 channels; the model has {len(candidates)}")
    value = candidates[0]
    batch, _, height, width = (dim if isinstance(dim, int) else None for dim in value.shape)
    if batch is not None and batch != count:
        raise GraphDoctorError(f"input '{value.name}' takes a batch of {batch}: give {batch} image(s), not {count}")
    if preprocessing.size is not None:
        if None not in (height, width) and (height, width) != (preprocessing.size, preprocessing.size):
            raise GraphDoctorError(f"--letterbox {preprocessing.size}: input '{value.name}' is {height}×{width}")
        return value.name, preprocessing.size, preprocessing.size
    if height is None or width is None:
        raise GraphDoctorError(f"input '{value.name}' has dynamic height and width: give --letterbox SIZE")
    return value.name, height, width


def _load(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise GraphDoctorError("--image needs Pillow: pip install 'graphdoctor[images]'") from None
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as error:
        raise GraphDoctorError(f"--image {path}: cannot be read as an image ({error})") from None


def _letterbox(picture: np.ndarray, height: int, width: int, pad_value: float) -> np.ndarray:
    """RGB float32 height × width × 3, values 0–255: the padding exactly `pad_value` (127.5 stays 127.5)."""
    from PIL import Image

    h, w = picture.shape[:2]
    ratio = min(height / h, width / w)
    new_w, new_h = round(w * ratio), round(h * ratio)
    resized = np.asarray(Image.fromarray(picture).resize((new_w, new_h), Image.Resampling.BILINEAR))
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    canvas = np.full((height, width, 3), pad_value, dtype=np.float32)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas
