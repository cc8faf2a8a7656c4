"""Deployment targets: parsing `--target`, where the target comes from (command line, config file, default),
what each report says about it, and what the target-aware rules (GD001, GD010, GD011, GD013) hold against it,
on hand-made models and on real torch exports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fixtures.handmade import save
from graphdoctor import api
from graphdoctor.errors import GraphDoctorError
from graphdoctor.rule import Finding, Severity
from graphdoctor.targets import DEFAULT_TARGET, TARGET_CHOICES, parse_target
from tests.rules.test_dynamic_shapes import YOLO as DYNAMIC_BATCH
from tests.rules.test_float64 import CAST_TO_DOUBLE
from tests.rules.test_int64_weights import GATHER_INDEX, I32_MAX, SLICE_END

TRT8 = "tensorrt-8.6"
TRT10 = "tensorrt-10"
TRT11 = "tensorrt-11"
ORT = "onnxruntime"


def error_line(stderr: str) -> str:
    """The one line a usage error prints: no traceback, nothing else."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def refusals(findings: list[Finding]) -> set[tuple[str, str, str | None]]:
    """(severity, message id, op) of each finding at warning or above: what stops or endangers the build."""
    return {(str(f.severity), f.message_id, f.data.get("op")) for f in findings if f.severity >= Severity.WARNING}


# --- parse_target ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TARGET_CHOICES)
def test_each_choice_parses_to_itself(name):
    target = parse_target(name)
    assert (target.name, str(target)) == (name, name)
    assert target.is_tensorrt == name.startswith("tensorrt-")


def test_default_target_is_the_tensorrt_10_family(tmp_path):
    assert parse_target(TRT10) == DEFAULT_TARGET
    assert DEFAULT_TARGET.family and DEFAULT_TARGET.is_tensorrt
    assert api.lint(save(SLICE_END, tmp_path / "model.onnx"), select=["GD001"]).target == DEFAULT_TARGET


def test_an_exact_tensorrt_10_minor_is_no_family():
    target = parse_target("tensorrt-10.3")
    assert (target.family, target.version) == (False, (10, 3))
    assert target.earliest() is None
    assert target.label == "TensorRT 10.3"


def test_the_tensorrt_10_family_names_its_first_minor():
    """Findings about what arrived during 10.x say which minor they need: the family starts at 10.0."""
    target = parse_target(TRT10)
    assert target.family
    earliest = target.earliest()
    assert earliest is not None
    assert (earliest.name, earliest.version, earliest.family) == ("tensorrt-10.0", (10, 0), False)


def test_int32_cast_exists_on_tensorrt_8_only():
    assert [parse_target(name).int64_native for name in TARGET_CHOICES] == [False, True, True, True]


@pytest.mark.parametrize("text", ["tensorrt-9", "tensorrt-10.99", "trt10", ""])
def test_unknown_targets_are_refused_naming_the_choices(text):
    with pytest.raises(GraphDoctorError) as refused:
        parse_target(text)
    assert refused.value.exit_code == 2
    message = str(refused.value)
    assert f"unknown target '{text}'" in message
    assert all(choice in message for choice in TARGET_CHOICES)


def test_lint_with_an_unknown_target_is_one_line_exit_2(gd, tmp_path):
    code, out, err = gd("lint", "--target", "nonsense", save(SLICE_END, tmp_path / "model.onnx"))
    assert (code, out) == (2, "")
    assert error_line(err).startswith("graphdoctor: error: unknown target 'nonsense' (choose from tensorrt-8.6,")


# --- what the reports say -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "label"),
    [(["--target", TRT8], "TensorRT 8.6"), ([], "TensorRT 10 (10.x; what 10.15 accepts)")],
    ids=["tensorrt-8.6", "default"],
)
def test_lint_prints_the_target_under_the_model_path(gd, tmp_path, args, label):
    model = save(SLICE_END, tmp_path / "model.onnx")
    code, out, _ = gd("lint", *args, "--select", "GD013", model)
    assert code == 0
    assert out.splitlines()[:2] == [str(model), f"target: {label}"]


@pytest.mark.parametrize(("args", "name"), [(["--target", TRT8], TRT8), ([], TRT10)], ids=["tensorrt-8.6", "default"])
def test_json_report_holds_the_target_per_model(gd, tmp_path, args, name):
    models = [save(SLICE_END, tmp_path / "a.onnx"), save(GATHER_INDEX, tmp_path / "b.onnx")]
    _, out, _ = gd("lint", *args, "--format", "json", "--select", "GD013", *models)
    assert [model["target"] for model in json.loads(out)["models"]] == [name, name]


# --- the target from a config file ----------------------------------------------------------------------------

CONFIG_FILES = {
    ".graphdoctor.toml": "target = {value}\n",
    "pyproject.toml": "[project]\nname = 'deploy'\n\n[tool.graphdoctor]\ntarget = {value}\n",
}


@pytest.fixture(params=sorted(CONFIG_FILES))
def configure(request, tmp_path):
    """Write `target = VALUE` into one of the two config files graphdoctor finds beside a model."""

    def write(value: str) -> Path:
        path = tmp_path / request.param
        path.write_text(CONFIG_FILES[request.param].format(value=value))
        return path

    return write


def lint_json(gd, *args: str | Path) -> tuple[int, dict]:
    code, out, _ = gd("lint", "--format", "json", *args)
    [model] = json.loads(out)["models"]
    return code, model


def test_config_target_turns_on_the_int32_cast_check(gd, tmp_path, configure):
    """With target 8.6 in the file, GD001 reports what the cast to INT32 does to a Gather index of 2^32."""
    configure('"tensorrt-8.6"')
    code, model = lint_json(gd, "--select", "GD001", save(GATHER_INDEX, tmp_path / "model.onnx"))
    assert (code, model["target"]) == (1, TRT8)
    assert [(f["message_id"], f["node"], f["severity"]) for f in model["findings"]] == [
        ("out_of_range", "lookup", "error")
    ]


def test_command_line_target_overrides_the_config_file(gd, tmp_path, configure):
    configure('"tensorrt-8.6"')
    code, model = lint_json(gd, "--select", "GD001", "--target", TRT10, save(GATHER_INDEX, tmp_path / "model.onnx"))
    assert (code, model["target"], model["findings"]) == (0, TRT10, [])


@pytest.mark.parametrize("command", ["lint", "fix"])
@pytest.mark.parametrize(
    ("value", "says"),
    [("3", "target in [tool.graphdoctor] must be a string, got 3"), ('"nonsense"', "unknown target 'nonsense'")],
    ids=["number", "unknown"],
)
def test_bad_config_target_is_one_line_exit_2(gd, tmp_path, configure, command, value, says):
    configure(value)
    model = save(SLICE_END, tmp_path / "model.onnx")
    code, out, err = gd(command, model)
    assert (code, out) == (2, "")
    assert says in error_line(err)
    assert not (tmp_path / "model.fixed.onnx").exists()


def test_fix_for_tensorrt_8_clamps_the_slice_end_sentinel(gd, tmp_path, configure):
    """GD001's fix exists only where the INT32 cast does: the config's 8.6 target turns it on."""
    configure('"tensorrt-8.6"')
    code, out, _ = gd("fix", save(SLICE_END, tmp_path / "model.onnx"))
    assert code == 0
    assert out.splitlines()[1] == "target: TensorRT 8.6"
    assert any("GD001 int64-weights" in line and "1 × sentinel" in line for line in out.splitlines())
    fixed = onnx.load(tmp_path / "model.fixed.onnx")
    [ends] = [t for t in fixed.graph.initializer if t.name == "ends"]
    assert (ends.data_type, numpy_helper.to_array(ends).tolist()) == (onnx.TensorProto.INT64, [I32_MAX])


def test_fix_for_tensorrt_10_has_nothing_to_fix_and_writes_nothing(gd, tmp_path, configure):
    config = configure('"tensorrt-8.6"')
    model = save(SLICE_END, tmp_path / "model.onnx")
    code, out, _ = gd("fix", "--target", TRT10, model)
    assert code == 0
    assert out.splitlines()[1] == "target: TensorRT 10 (10.x; what 10.15 accepts)"
    assert "nothing to fix" in out and "nothing written: the model needs no fix" in out
    assert sorted(tmp_path.iterdir()) == sorted([config, model])


def test_api_fix_reports_its_target(tmp_path):
    model = save(SLICE_END, tmp_path / "model.onnx")
    result = api.fix(model, select=["GD001"], dry_run=True, target=TRT8)
    assert result.target == parse_target(TRT8)
    assert [dict(f.repairs) for f in result.fixes] == [{"sentinel": 1}]
    assert api.fix(model, select=["GD001"], dry_run=True).target == DEFAULT_TARGET


def test_fix_for_tensorrt_10_with_an_output_writes_an_unchanged_copy(gd, tmp_path):
    model = save(SLICE_END, tmp_path / "model.onnx")
    code, out, _ = gd("fix", "--target", TRT10, model, "-o", tmp_path / "copy.onnx")
    assert code == 0
    assert "nothing to fix" in out and "wrote " in out
    [ends] = [t for t in onnx.load(tmp_path / "copy.onnx").graph.initializer if t.name == "ends"]
    assert numpy_helper.to_array(ends).tolist() == [np.iinfo(np.int64).max]


# --- rules and explain ----------------------------------------------------------------------------------------


def rule_block(out: str, code: str) -> list[str]:
    """The catalogue line of rule `code` and the indented lines under it."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{code}  "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return lines[start:end]


def test_rules_for_tensorrt_8_list_what_it_refuses(gd):
    code, out, _ = gd("rules", "--target", TRT8)
    assert code == 0
    gd013 = rule_block(out, "GD013")
    assert gd013[1] == "       on TensorRT 8.6:"
    [later] = [line for line in gd013 if line.startswith("       - ops imported only by later versions: ")]
    assert "Hardmax (9.2)" in later and "Gelu (10.0)" in later and "CastLike (10.0)" in later
    assert "       - calls of model-local functions (imported from 9.0)" in gd013
    assert rule_block(out, "GD001")[1:] == [
        "       on TensorRT 8.6:",
        "       - every INT64 weight is cast to INT32, clamping values outside it: sentinels (info), other values"
        " (error)",
    ]


def test_rules_for_onnxruntime_say_gd013_checks_tensorrt_only(gd):
    code, out, _ = gd("rules", "--target", ORT)
    assert code == 0
    assert rule_block(out, "GD013")[1:] == [
        "       on ONNX Runtime:",
        "       - nothing: GD013 checks TensorRT targets",
    ]


def test_rules_with_an_unknown_target_is_one_line_exit_2(gd):
    code, out, err = gd("rules", "--target", "tensorrt-7")
    assert (code, out) == (2, "")
    assert "unknown target 'tensorrt-7'" in error_line(err)


def test_explain_gd013_has_a_section_per_target(gd):
    code, out, _ = gd("explain", "GD013")
    assert code == 0
    sections = [line for line in out.splitlines() if line.startswith("On ")]
    assert sections == [f"On {parse_target(name).label} (--target {name}):" for name in TARGET_CHOICES]


# --- GD013 on real exports ------------------------------------------------------------------------------------

TORCHSCRIPT_EXPORTS = ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "yolo", "bert_opset14", "bert_opset17"]
TORCHSCRIPT_EXPORTS += ["t5_encoder"]
DYNAMO_EXPORTS = ["dynamo_cnn", "dynamo_vit", "dynamo_bert", "dynamo_whisper_encoder", "lraspp_dynamo"]
DYNAMO_EXPORTS += ["t5_encoder_dynamo"]
OPSET_RANGE = ("warning", "opset-range", None)
EXPORT_CASES = [
    *((name, target, set()) for name in TORCHSCRIPT_EXPORTS for target in (TRT8, TRT10, TRT11)),
    *((name, target, set()) for name in DYNAMO_EXPORTS for target in (TRT10, TRT11)),
    # 8.6 has no Gelu or CastLike importer, and documents opsets up to 17 (these exports are 18 and 20)
    ("dynamo_vit", TRT8, {("error", "no-importer", "Gelu"), OPSET_RANGE}),
    (
        "dynamo_bert",
        TRT8,
        {
            ("error", "no-importer", "CastLike"),
            ("error", "no-importer", "Gelu"),
            ("error", "foldable", "Slice"),
            OPSET_RANGE,
        },
    ),
    # torch's optimize=False export computes ReduceMean axes with Reshape nodes; the importer folds none
    # (`graphdoctor fix` does: tests/fix/test_tensorrt_unsupported.py)
    ("dynamo_cnn_unoptimized", TRT10, {("error", "foldable", "ReduceMean")}),
]


@pytest.mark.torch
@pytest.mark.parametrize(("name", "target", "expected"), EXPORT_CASES, ids=[f"{n}-{t}" for n, t, _ in EXPORT_CASES])
def test_gd013_on_real_exports(name, target, expected):
    """Clean exports build on every target they are meant for; what is refused is refused for its reason."""
    from fixtures import torch_exports

    findings = api.lint(torch_exports.path(name), select=["GD013"], target=target).findings
    assert refusals(findings) == expected
    for finding in findings:
        if finding.message_id == "foldable":
            assert "computed from constants at run time" in finding.message and finding.fix is not None
        if finding.message_id == "no-importer":
            assert finding.message.startswith(f"{finding.data['op']} has no importer in TensorRT 8.6")
        if finding.message_id == "opset-range":
            assert (finding.data["last"], finding.data["opset"] > 17) == (17, True)


# --- --deep without TensorRT ----------------------------------------------------------------------------------

needs_no_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed: the parser runs"
)


@needs_no_tensorrt
def test_deep_without_tensorrt_says_it_checked_statically(tmp_path):
    findings = api.lint(save(SLICE_END, tmp_path / "model.onnx"), select=["GD013"], deep=True).findings
    [finding] = findings
    assert (finding.message_id, finding.severity) == ("static-only", Severity.INFO)
    assert "TensorRT's parser did not run (tensorrt is not installed" in finding.message


def test_deep_for_onnxruntime_says_nothing(tmp_path):
    model = save(SLICE_END, tmp_path / "model.onnx")
    assert api.lint(model, select=["GD013"], deep=True, target=ORT).findings == []


# --- GD010 and GD011 are TensorRT's ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "code"), [(CAST_TO_DOUBLE, "GD010"), (DYNAMIC_BATCH, "GD011")], ids=["float64", "dynamic-batch"]
)
def test_tensorrt_only_rules_are_silent_for_onnxruntime(lint_proto, model, code):
    assert lint_proto(model, code, target=ORT) == []
    findings = lint_proto(model, code, target=TRT10)
    assert findings and {f.code for f in findings} == {code}
