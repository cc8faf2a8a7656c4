"""The HTML report, rendered from real results and opened in a real headless Chromium (Debian's package; `make
test` installs it): the page renders without console messages, its DOM holds the plot's elements, and the
screenshot is not blank and shows the plot in its colours where the plot is.

Real results: `api.verify(..., layerwise=True)` on the YOLO divergence pair and on a small pair whose node
names hold `<&>"'`; `api.lint` on the YOLO export and on a model with such a node name; `api.fix` with FP16
on the YOLO export (a rule's fix, the gate) and on residual norms (nodes kept FP32, regions). The detection
comparison is another engineer's work in progress: its `details["detections"]` is a fixture dict here, of the
shape agreed, with a synthetic image.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pytest

from fixtures import divergence, fp16_cases
from fixtures.handmade import save
from graphdoctor import api
from graphdoctor.fp16 import Fp16Options
from graphdoctor.report import html as html_report

ODD = "<u>&\"odd'</u>"  # a node name a model may hold: HTML must show it, never parse it
PLOT_RED, PLOT_GREEN, PLOT_ORANGE = (0xC6, 0x28, 0x28), (0x2E, 0x7D, 0x32), (0xE6, 0x51, 0x00)
BOX_BLUE, BOX_ORANGE = (0x15, 0x65, 0xC0), (0xEF, 0x6C, 0x00)
IMAGE_TEAL = (40, 140, 150)  # the synthetic detection image's background


# --- the browser ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Browsed:
    dom: str  # the DOM after rendering, serialized
    console: list[str]  # the console messages Chromium logged (the page has no script: none expected)
    pixels: np.ndarray  # the screenshot, H x W x RGB


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on PATH (make test installs Debian's chromium package)")


def browse(page: Path, folder: Path, size: str = "1280,2000") -> Browsed:
    """Chromium headless, twice: the DOM with the console log on stderr, then a screenshot."""
    from PIL import Image

    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={size}"]
    url = page.resolve().as_uri()
    dumped = subprocess.run(
        [*flags, f"--user-data-dir={folder / 'dom-profile'}", "--enable-logging=stderr", "--v=0", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    console = [line for line in dumped.stderr.splitlines() if re.search(r":CONSOLE[:(]|Uncaught", line)]
    shot = folder / f"{page.stem}.png"
    subprocess.run(
        [*flags, f"--user-data-dir={folder / 'shot-profile'}", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return Browsed(dumped.stdout, console, np.asarray(Image.open(shot).convert("RGB")))


def near(pixels: np.ndarray, colour: tuple[int, int, int], within: int = 4) -> np.ndarray:
    """Pixels of about that colour (the badges' red is 9 off the plot's: tighter than that)."""
    return (np.abs(pixels.astype(int) - np.array(colour)).max(axis=-1) <= within).astype(bool)


def assert_not_blank(pixels: np.ndarray) -> None:
    inked = int((pixels < 200).any(axis=-1).sum())
    assert inked > 20_000, f"only {inked} pixels of the screenshot are not white"
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 50  # text, tables and plot, not a flat page


def plot_rows(pixels: np.ndarray, colour: tuple[int, int, int], length: int) -> slice:
    """The rows of the longest vertical line of `colour` (the first divergence's marker spans the plot)."""
    mask = near(pixels, colour, within=8)
    column = int(mask.sum(axis=0).argmax())
    rows = np.flatnonzero(mask[:, column])
    assert rows.size >= length, f"no vertical {colour} line of {length} px (longest: {rows.size} px)"
    return slice(int(rows[0]), int(rows[-1]) + 1)


def write(render, result, path: Path) -> str:
    with path.open("w", encoding="utf-8") as stream:
        render(result, stream)
    return path.read_text(encoding="utf-8")


def assert_self_contained(page: str) -> None:
    """One file: no script, no stylesheet or font to fetch, no URL but the SVG namespace and data: images."""
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    urls = set(re.findall(r"(?:https?|file|ftp)://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls


# --- real results ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yolo_verify():
    reference, candidate = divergence.yolo_pair()
    return api.verify(reference, candidate, layerwise=True)


def odd_pair(folder: Path) -> tuple[Path, Path]:
    """x → MatMul W1 → Relu → MatMul W2 (named ODD) → y; the candidate's W2 rounded through FP16: the first
    divergence is the node whose name holds every character HTML escapes."""
    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal((32, 32)).astype(np.float32) / 6 for _ in range(2))
    paths = []
    for name, second in (("reference", w2), ("candidate", w2.astype(np.float16).astype(np.float32))):
        nodes = [
            onnx.helper.make_node("MatMul", ["x", "W1"], ["h1"], name="mm1"),
            onnx.helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
            onnx.helper.make_node("MatMul", ["a1", "W2"], [f"y{ODD}"], name=ODD),
        ]
        graph = onnx.helper.make_graph(
            nodes,
            "odd",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 32])],
            [onnx.helper.make_tensor_value_info(f"y{ODD}", onnx.TensorProto.FLOAT, [4, 32])],
            [onnx.numpy_helper.from_array(w1, "W1"), onnx.numpy_helper.from_array(second, "W2")],
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
        paths.append(save(model, folder / f"odd_{name}.onnx"))
    return paths[0], paths[1]


def odd_cast_model(folder: Path) -> Path:
    """A float-to-float Cast named ODD: GD002 reports it by name."""
    nodes = [
        onnx.helper.make_node("Cast", ["x"], ["c"], name=ODD, to=onnx.TensorProto.FLOAT),
        onnx.helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "cast",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    return save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), folder / "odd.onnx")


def synthetic_png(width: int, height: int) -> str:
    """A teal picture with two lighter 'objects', as base64 PNG (what details["detections"] carries)."""
    from PIL import Image

    image = np.empty((height, width, 3), np.uint8)
    image[:] = IMAGE_TEAL
    image[:, :, 1] = (IMAGE_TEAL[1] + np.linspace(0, 40, width)).astype(np.uint8)
    image[100:300, 120:360] = (230, 220, 180)
    image[320:560, 480:720] = (200, 200, 230)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def detections_fixture() -> dict:
    """details["detections"] of the agreed shape: one image with its picture (a box lost, one shifted), one
    batch item without a picture and size (all matched)."""
    reference = [[120, 100, 360, 300, 0.91, 0], [480, 320, 720, 560, 0.88, 2], [40, 420, 110, 500, 0.27, 1]]
    candidate = [[124, 103, 362, 305, 0.90, 0], [478, 322, 721, 561, 0.86, 2], [600, 40, 700, 120, 0.26, 5]]
    image = {
        "index": 0,
        "source": f"street{ODD}.jpg",
        "size": [800, 600],
        "image_png": synthetic_png(800, 600),
        "reference": 3,
        "candidate": 3,
        "matched": 2,
        "missing": 1,
        "extra": 1,
        "class_changes": 0,
        "borderline": 0,
        "max_box_shift_px": 5.0,
        "max_score_delta": 0.02,
        "iou": {"min": 0.93, "median": 0.95},
        "changes": ["reference detection class 1 at (40, 420, 110, 500) score 0.27 is missing"],
        "boxes": {"reference": reference, "candidate": candidate},
    }
    plain = {
        **image,
        "index": 1,
        "source": "input batch item 1",
        "image_png": None,
        "changes": [],
        "missing": 0,
        "extra": 0,
        "matched": 2,
        "reference": 2,
        "candidate": 2,
        "boxes": {"reference": reference[:2], "candidate": candidate[:2]},
    }
    del plain["size"]
    return {
        "layout": "ultralytics",
        "auto": True,
        "why": "one output [1, 84, 8400]: 4 box values and 80 class scores per anchor",
        "score_threshold": 0.25,
        "nms_iou": 0.7,
        "match": "greedy by reference score, same class, IoU >= 0.5",
        "preset": {"min_iou": 0.9, "max_score_delta": 0.02},
        "passed": False,
        "message": "4 of 5 detections matched on 2 images; 2 changes: a detection is missing",
        "images": [image, plain],
    }


# --- verify ---------------------------------------------------------------------------------------------------


@pytest.mark.torch
def test_verify_report_plots_the_error_growth_and_marks_the_first_divergence(yolo_verify, tmp_path: Path):
    """The done criterion: `verify --layerwise` on the divergence fixture, in Chromium."""
    page = write(html_report.render_verify, yolo_verify, tmp_path / "verify.html")
    assert_self_contained(page)
    browsed = browse(tmp_path / "verify.html", tmp_path)
    assert browsed.console == []
    dom = browsed.dom
    assert '<svg id="error-growth"' in dom
    assert dom.count('class="pt ') == yolo_verify.verdicts[0].details["layerwise"]["tensors_compared"] == 370
    assert dom.count('class="pt fail"') == 233
    mark = re.search(r'<g class="first-divergence">.*?</g>', dom, re.S).group(0)
    assert f"first divergence: {divergence.YOLO_FIRST_PERTURBED} (Conv)" in mark
    labels = re.findall(r'<text class="stage-label"[^>]*><title>(/model\.\d+)</title>', dom)
    assert labels[0] == "/model.0" and "/model.2" in labels and "/model.22" in labels
    assert 12 <= len(labels) < 23  # the crowded stages (3 tensors of 370 each) keep their names in tooltips
    assert dom.count('class="stage-boundary"') == 22 and 'class="tolerance"' in dom
    assert_not_blank(browsed.pixels)
    rows = plot_rows(browsed.pixels, PLOT_ORANGE, length=200)  # the divergence marker spans the plot's height
    plot = browsed.pixels[rows]
    assert near(plot, PLOT_RED).sum() > 500 and near(plot, PLOT_GREEN).sum() > 200  # failing and passing points
    above = browsed.pixels[: rows.start]
    assert near(above, PLOT_RED).sum() < near(plot, PLOT_RED).sum() / 4  # the points are in the plot, not above


def test_odd_node_names_are_shown_never_parsed(tmp_path: Path):
    result = api.verify(*odd_pair(tmp_path), layerwise=True)
    layerwise = result.verdicts[0].details["layerwise"]
    assert layerwise["first_divergence"]["node"] == ODD  # the real report names it
    page = write(html_report.render_verify, result, tmp_path / "odd.html")
    assert_self_contained(page)
    assert "<u>" not in page and "&lt;u&gt;&amp;&quot;odd&#x27;&lt;/u&gt;" in page
    browsed = browse(tmp_path / "odd.html", tmp_path)
    assert browsed.console == [] and "<u>" not in browsed.dom
    mark = re.search(r'<g class="first-divergence">.*?</g>', browsed.dom, re.S).group(0)
    assert "first divergence: &lt;u&gt;&amp;\"odd'&lt;/u&gt; (MatMul)" in mark  # the DOM holds it as text
    assert browsed.dom.count('class="stage-label"') == 0  # no scopes in the names: no stages
    assert_not_blank(browsed.pixels)
    plot_rows(browsed.pixels, PLOT_ORANGE, length=200)


def test_a_tensor_turned_inf_sits_on_the_inf_band_and_is_named(tmp_path: Path):
    result = api.verify(*divergence.overflow_pair(tmp_path), layerwise=True, preset="fp16")
    layerwise = result.verdicts[0].details["layerwise"]
    assert layerwise["first_nonfinite"]["tensor"] == layerwise["first_divergence"]["tensor"] == "y"
    page = write(html_report.render_verify, result, tmp_path / "inf.html")
    svg = page[page.index('<svg id="error-growth"') :]
    assert "first divergence and first inf/NaN: norm (LayerNormalization)" in svg and "first-nonfinite" not in svg
    top = 16  # no stages: the plot starts below a small margin, the inf band 6 px into it
    assert re.search(rf'<circle class="pt fail" cx="[\d.]+" cy="{top + 6}\.0"', svg)
    assert "64 inf/NaN values (reference: 0)" in page
    browsed = browse(tmp_path / "inf.html", tmp_path)
    assert browsed.console == [] and 'class="first-divergence"' in browsed.dom


def test_a_verdict_without_layerwise_has_no_plot_and_a_skipped_one_says_why(tmp_path: Path):
    result = api.verify(odd_pair(tmp_path)[0], backends=["onnxruntime-cpu", "tensorrt"])
    page = write(html_report.render_verify, result, tmp_path / "plain.html")
    assert "error-growth" not in page and "PASSED" in page
    skipped = result.verdicts[1]
    assert skipped.status == "skipped" and f"<dd>{html_report._e(skipped.reason)}</dd>" in page


def test_detections_draw_both_models_boxes_over_the_image(tmp_path: Path):
    result = api.verify(*odd_pair(tmp_path))
    verdict = dataclasses.replace(result.verdicts[0], details={"detections": detections_fixture()})
    result = dataclasses.replace(result, verdicts=[verdict])
    page = write(html_report.render_verify, result, tmp_path / "detections.html")
    assert_self_contained(page)
    assert page.count("data:image/png;base64,") == 1  # the second image came without a picture
    browsed = browse(tmp_path / "detections.html", tmp_path)
    assert browsed.console == []
    dom = browsed.dom
    assert dom.count('class="box ref"') == 5 and dom.count('class="box cand"') == 5
    assert 'width="640" height="480" viewBox="0 0 800 600"' in dom  # scaled to 640 px, boxes in image pixels
    assert 'viewBox="0 0 721 561"' in dom  # no size given: the frame holding the boxes
    assert "street&lt;u&gt;" in dom and "a detection is missing" in dom
    pixels = browsed.pixels
    assert_not_blank(pixels)
    teal = near(pixels, IMAGE_TEAL, within=25)
    assert teal.sum() > 0.5 * 640 * 480 * 0.8  # the picture is drawn, scaled (the objects cover a fifth of it)
    rows = np.flatnonzero(teal.any(axis=1))
    picture = pixels[rows[0] : rows[-1] + 1]
    assert near(picture, BOX_BLUE, 12).sum() > 300 and near(picture, BOX_ORANGE, 12).sum() > 300


# --- lint -----------------------------------------------------------------------------------------------------


@pytest.mark.torch
def test_lint_report_lists_each_models_findings(tmp_path: Path):
    from fixtures import torch_exports

    results = [
        api.lint(torch_exports.path("yolo")),
        api.lint(odd_cast_model(tmp_path)),
        api.LintFailure(tmp_path / "missing.onnx", f"{tmp_path / 'missing.onnx'}: no such file"),
    ]
    assert any(f.node == ODD and f.code == "GD002" for f in results[1].findings)
    page = write(html_report.render_lint, results, tmp_path / "lint.html")
    assert_self_contained(page)
    assert "<u>" not in page
    browsed = browse(tmp_path / "lint.html", tmp_path)
    assert browsed.console == []
    dom = browsed.dom
    assert dom.count('<section class="card">') == 3 and "not linted" in dom and "no such file" in dom
    shown = sum(len(r.findings) for r in results[:2])
    assert shown > 5 and dom.count('<td class="mono">') == shown  # one row per finding, its location
    assert "node '&lt;u&gt;&amp;\"odd'&lt;/u&gt;'" in dom
    assert_not_blank(browsed.pixels)


# --- fix ------------------------------------------------------------------------------------------------------


def test_fix_report_says_what_stayed_fp32_and_why(tmp_path: Path):
    path = save(fp16_cases.large_residual_norms(3), tmp_path / "norms.onnx")
    result = api.fix(path, tmp_path / "norms.fp16.onnx", fp16=Fp16Options(), shapes={"x": (4, 64)})
    assert result.written and len(result.fp16.kept) > 0 and len(result.fp16.regions) == 3
    page = write(html_report.render_fix, result, tmp_path / "fix.html")
    assert_self_contained(page)
    assert "<h3>Kept FP32, and why</h3>" in page and "<h3>FP32 regions</h3>" in page
    for kept in result.fp16.kept:
        assert f"<td>{html_report._e(kept.reason)}</td>" in page
    assert "Sqrt_4" in page and "<h2>Verification</h2>" in page
    browsed = browse(tmp_path / "fix.html", tmp_path)
    assert browsed.console == [] and browsed.dom.count("FP32 region") == 1
    assert_not_blank(browsed.pixels)


def test_a_failed_fix_says_why_nothing_was_written_and_what_to_keep_fp32(tmp_path: Path):
    path = save(fp16_cases.normalized_inputs(2), tmp_path / "readings.onnx")
    np.savez(tmp_path / "readings.npz", **fp16_cases.readings(2))
    result = api.fix(path, fp16=Fp16Options(), inputs=tmp_path / "readings.npz", fp16_repairs=1)
    assert (result.written, result.passed) == (False, False) and result.keep_fp32_hint
    page = write(html_report.render_fix, result, tmp_path / "failed.html")
    assert "verification failed: nothing written</span>" in page
    assert '<div class="callout">verification FAILED: nothing written' in page
    assert "<h3>Kept FP32 after verification</h3>" in page and "<td>Sub_0</td>" in page
    assert f"--keep-fp32 &#x27;{','.join(result.keep_fp32_hint)}&#x27;" in page
    browsed = browse(tmp_path / "failed.html", tmp_path)
    assert browsed.console == [] and browsed.dom.count('<span class="badge failed">FAILED</span>') >= 1
    assert_not_blank(browsed.pixels)


@pytest.mark.torch
def test_fix_report_on_yolo_shows_the_rules_and_the_gate(tmp_path: Path):
    from fixtures import torch_exports

    result = api.fix(torch_exports.path("yolo"), tmp_path / "yolo.fp16.onnx", fp16=Fp16Options())
    assert result.written and result.fixes
    page = write(html_report.render_fix, result, tmp_path / "fix.html")
    assert_self_contained(page)
    for fixes in result.fixes:
        assert f"<td>{fixes.rule.code} {fixes.rule.name}</td>" in page
    assert page.count('<section class="card">') == len(result.verification.verdicts)
    browsed = browse(tmp_path / "fix.html", tmp_path)
    assert browsed.console == [] and "FP16 conversion" in browsed.dom
    assert_not_blank(browsed.pixels)


# --- the checks themselves ------------------------------------------------------------------------------------


def test_the_browser_check_sees_console_errors_and_blank_pages(tmp_path: Path):
    """The checks above can fail: a script error reaches the console list, a white page is blank."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>missingFunction();</script></body></html>")
    browsed = browse(page, tmp_path, size="400,300")
    assert any("missingFunction is not defined" in line for line in browsed.console)
    with pytest.raises(AssertionError):
        assert_not_blank(browsed.pixels)
