"""`--report FILE.html` on verify, lint and fix: the command writes the HTML page beside its usual report, on
real models, and a page a browser renders (tests/test_html_report.py checks the pages themselves in Chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import divergence
from tests.test_html_report import assert_not_blank, assert_self_contained, browse


@pytest.mark.torch
def test_verify_layerwise_report_marks_the_first_divergence(gd, tmp_path: Path):
    reference, candidate = divergence.yolo_pair()
    page = tmp_path / "r.html"
    code, out, _ = gd("verify", reference, candidate, "--layerwise", "--report", page)
    assert code == 1 and "first divergence" in out  # the text report still goes to stdout
    html = page.read_text()
    assert_self_contained(html)
    assert f"first divergence: {divergence.YOLO_FIRST_PERTURBED}" in html
    browsed = browse(page, tmp_path)
    assert not browsed.console
    assert_not_blank(browsed.pixels)


@pytest.mark.torch
def test_lint_and_fix_write_their_reports(gd, tmp_path: Path):
    from fixtures import torch_exports

    model = torch_exports.path("yolo")
    lint_page, fix_page = tmp_path / "lint.html", tmp_path / "fix.html"
    assert gd("lint", model, "--exit-zero", "--report", lint_page)[0] == 0
    assert "GD" in lint_page.read_text()
    command = ["fix", model, "-o", tmp_path / "yolo.fixed.onnx", "--report", fix_page]
    assert gd(*command)[0] == 0
    assert_self_contained(fix_page.read_text())


def test_report_into_a_missing_folder_is_one_line(gd, tmp_path: Path):
    model = Path(__file__).resolve().parents[1] / "examples" / "yolo_demo.onnx"
    code, _, err = gd("lint", model, "--report", tmp_path / "no" / "r.html")
    assert code == 2 and len(err.strip().splitlines()) == 1
