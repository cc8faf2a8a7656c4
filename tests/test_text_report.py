"""The text report of `lint`: errors and warnings in full, info findings grouped per rule and message (all with
show_info, none with quiet), a statistics table, models that could not be linted, and the overall summary of
several models; on real exports, a report short enough to read and a gate that passes."""

from __future__ import annotations

import io
from pathlib import Path

import onnx
import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor import api
from graphdoctor.api import LintFailure, LintResult
from graphdoctor.report.text import render_lint
from graphdoctor.rule import Severity

# 5 no-op int64 Casts (info, one message), a float32 → float16 → float32 round trip (warning)
NOISY = """<ir_version: 8, opset_import: ["" : 17]>
g (int64[2] i, float[2] x) => (int64[2] j, float[2] y)
{
[c1] i1 = Cast <to = 7> (i)
[c2] i2 = Cast <to = 7> (i1)
[c3] i3 = Cast <to = 7> (i2)
[c4] i4 = Cast <to = 7> (i3)
[c5] j = Cast <to = 7> (i4)
[narrow] h = Cast <to = 10> (x)
[widen] y = Cast <to = 1> (h)
}"""
# two Casts of constants (info, one message) whose advice differs: one folds, the other is out of int32's range
CONSTANT_CASTS = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y, int32[2] z)
<int64[2] w = {1, 2}, float[2] big = {1e30, 2.0}>
{
[fold] wf = Cast <to = 1> (w)
[add] y = Add(x, wf)
[keep] z = Cast <to = 6> (big)
}"""


def lint_text(model: onnx.ModelProto, path: Path, select: str = "GD002") -> LintResult:
    return api.lint(save(model, path), select=[select])


def report(results: list, **options) -> list[str]:
    stream = io.StringIO()
    render_lint(results, stream, color=options.pop("color", False), **options)
    return stream.getvalue().splitlines()


@pytest.fixture
def noisy(tmp_path: Path) -> LintResult:
    return lint_text(model_from_text(NOISY), tmp_path / "noisy.onnx")


def test_info_findings_of_one_message_are_one_entry_naming_the_first_three(noisy):
    lines = report([noisy])
    assert lines[:2] == [str(noisy.path), f"target: {noisy.target.label}"]
    assert "GD002 redundant-cast (6)" in lines
    [group] = [line for line in lines if "alike" in line]
    assert group == "  info    5 alike: node 'c1'; node 'c2'; node 'c3'; and 2 more (--show-info lists each)"
    follows = lines[lines.index(group) + 1 :]
    assert follows[0].startswith("          e.g. Cast 'c1' casts int64 to int64 (no-op)")
    assert follows[1] == "          fix: remove it: `graphdoctor fix` (safe)"
    assert not any("'c4'" in line or "'c5'" in line for line in lines)


def test_warnings_come_in_full_before_the_grouped_info(noisy):
    lines = report([noisy])
    warning = lines.index("  warning node 'widen'")
    assert lines[warning + 1].startswith("          Casts 'narrow' and 'widen' round float32 to float16 precision")
    assert lines[warning + 2].startswith("          fix: keep it if the rounding is intended")
    assert warning < next(i for i, line in enumerate(lines) if "alike" in line)
    assert lines[-1].startswith("6 findings (1 warning, 5 info); 1 rule in ")


def test_show_info_lists_every_info_finding_in_full(noisy):
    lines = report([noisy], show_info=True)
    assert [line for line in lines if line.startswith("  info")] == [f"  info    node 'c{i}'" for i in range(1, 6)]
    assert not any("alike" in line for line in lines)


def test_quiet_shows_only_errors_warnings_and_the_summary(noisy):
    lines = report([noisy], quiet=True, show_info=True)
    assert "GD002 redundant-cast (1)" in lines
    assert "  warning node 'widen'" in lines
    assert not any(line.startswith("  info") or "int64 to int64" in line for line in lines)
    assert lines[-1].startswith("6 findings (1 warning, 5 info)")


def test_a_rule_with_only_info_findings_has_no_section_when_quiet(tmp_path):
    info_only = NOISY.replace("float[2] y", "float16[2] y").replace("[widen] y = Cast <to = 1> (h)", "y = Neg(h)")
    result = lint_text(model_from_text(info_only), tmp_path / "info.onnx")
    assert report([result], quiet=True) == [
        str(result.path),
        f"target: {result.target.label}",
        "",
        *report([result])[-1:],
    ]


def test_advice_that_differs_within_a_group_is_shown_as_an_example(tmp_path):
    lines = report([lint_text(model_from_text(CONSTANT_CASTS), tmp_path / "constants.onnx")])
    [group] = [line for line in lines if "alike" in line]
    assert group == "  info    2 alike: node 'fold'; node 'keep'"
    assert lines[lines.index(group) + 2].startswith("          fix, e.g.: fold it:")


def test_statistics_count_per_rule_and_severity_with_the_fixable(noisy):
    lines = report([noisy], statistics=True)
    table = lines[lines.index("  count  code   rule            severity  fixable") :]
    assert table[1].split() == ["1", "GD002", "redundant-cast", "warning", "0"]
    assert table[2].split() == ["5", "GD002", "redundant-cast", "info", "5"]
    assert not any("no-op" in line for line in lines)
    assert lines[-1].startswith("6 findings (1 warning, 5 info)")


def test_statistics_of_a_clean_model(tmp_path):
    clean = model_from_text('<ir_version: 8, opset_import: ["" : 17]>\ng (float[2] x) => (float[2] y) { y = Neg(x) }')
    result = lint_text(clean, tmp_path / "clean.onnx")
    assert report([result], statistics=True)[2:4] == ["", "  no findings"]


def test_a_model_that_could_not_be_linted_is_its_path_and_the_error():
    failure = LintFailure(Path("models/missing.onnx"), "models/missing.onnx: no such file")
    assert report([failure]) == ["models/missing.onnx", "error: no such file"]


def test_several_models_end_with_an_overall_summary(noisy, tmp_path):
    clean = lint_text(model_from_text(NOISY), tmp_path / "other.onnx", select="GD015")
    failure = LintFailure(tmp_path / "bad.onnx", f"{tmp_path / 'bad.onnx'}: not a valid ONNX model")
    lines = report([noisy, failure, clean])
    assert lines.index(str(clean.path)) > lines.index("error: not a valid ONNX model") > lines.index(str(noisy.path))
    assert lines[-2:] == [
        "overall",
        "3 models: 2 linted, 1 could not be linted; 6 findings (1 warning, 5 info);"
        " 1 of 2 linted fails --fail-on warning",
    ]
    assert report([noisy, clean], fail_on=Severity.ERROR)[-1] == (
        "2 models: 2 linted; 6 findings (1 warning, 5 info); 0 of 2 linted fail --fail-on error"
    )


def test_one_model_has_no_overall_summary(noisy):
    assert "overall" not in report([noisy])


def test_statistics_of_several_models_add_a_table_over_all(noisy, tmp_path):
    other = lint_text(model_from_text(NOISY), tmp_path / "other.onnx")
    lines = report([noisy, other], statistics=True)
    overall = lines[lines.index("overall") :]
    assert overall[3].split() == ["2", "GD002", "redundant-cast", "warning", "0"]
    assert overall[4].split() == ["10", "GD002", "redundant-cast", "info", "10"]


def test_colour_renders_the_same_text(tmp_path):
    """rich markup is escaped: brackets in node names reach the terminal as written."""
    result = lint_text(model_from_text(NOISY.replace("[c1]", '["a[0]/c1"]')), tmp_path / "brackets.onnx")
    plain = report([result])
    assert "  info    5 alike: node 'a[0]/c1'; node 'c2'; node 'c3'; and 2 more (--show-info lists each)" in plain
    assert report([result], color=True) == plain


# --- real exports ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def swin_t(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's Swin-T (random weights) as the tutorials export it: TorchScript, opset 17, 224x224
    (about 10 s): 322 folded shape computations and 212 index Casts, all info."""
    import torch
    import torchvision

    from fixtures.torch_exports import _export_torchscript

    out = tmp_path_factory.mktemp("swin") / "swin_t.onnx"
    model = torchvision.models.swin_t(weights=None).eval()
    _export_torchscript(model, (torch.zeros(1, 3, 224, 224),), out, opset_version=17, input_names=["input"])
    return out


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT2Model through the TorchScript exporter, position ids given (the exporter fails on the
    aten::diff transformers computes them with): its embeddings sum is Gather → float32 Cast → Add."""
    import torch
    from transformers import GPT2Config, GPT2Model

    from fixtures.torch_exports import VOCAB, _export_torchscript

    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=0)
    config.eos_token_id = 0

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = GPT2Model(config)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(ids.shape[1]).unsqueeze(0)
            return self.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state

    out = tmp_path_factory.mktemp("gpt2") / "gpt2.onnx"
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    axes = {0: "batch", 1: "sequence"}
    names = ["input_ids", "attention_mask", "last_hidden_state"]
    _export_torchscript(
        Decoder().eval(),
        (ids, torch.ones_like(ids)),
        out,
        opset_version=17,
        input_names=names[:2],
        output_names=names[2:],
        dynamic_axes=dict.fromkeys(names, axes),
    )
    return out


@pytest.mark.torch
def test_swin_t_report_is_short_and_hides_nothing_at_warning(gd, swin_t):
    code, out, _ = gd("lint", swin_t)
    lines = out.splitlines()
    assert code == 0
    assert len(lines) < 150
    assert any(" alike: " in line for line in lines)
    result = api.lint(swin_t)
    assert len(result.findings) > 500  # what the grouping folds
    for finding in result.findings:
        if finding.severity >= Severity.WARNING:
            assert f"          {finding.message}" in lines


@pytest.mark.torch
@pytest.mark.parametrize("name", ["yolo", "bert_opset17", "t5_encoder", "dynamo_vit"])
def test_real_exports_show_every_warning_in_full_and_each_info_message_once(name):
    from fixtures import torch_exports

    result = api.lint(torch_exports.path(name))
    lines = report([result])
    serious = [f for f in result.findings if f.severity >= Severity.WARNING]
    info_messages = {(f.code, f.message_id) for f in result.findings if f.severity == Severity.INFO}
    rules = {f.code for f in result.findings}
    # path, target, a blank line and a header per rule, 3 lines an entry, a blank line and the summary
    assert len(lines) <= 2 + 2 * len(rules) + 3 * (len(serious) + len(info_messages)) + 2
    for finding in serious:
        assert f"          {finding.message}" in lines


@pytest.mark.torch
def test_t5_encoder_passes_the_gate(gd):
    """Its only float32 no-op Casts are T5LayerNorm's `.to(torch.float32)`, after a residual Add: info."""
    from fixtures import torch_exports

    code, out, _ = gd("lint", torch_exports.path("t5_encoder"))
    assert code == 0, out
    assert "float32 to float32 (no-op): clutter that ONNX Runtime and TensorRT drop at load time" in out


@pytest.mark.torch
def test_gpt2_passes_the_gate(gd, gpt2):
    code, out, _ = gd("lint", gpt2)
    assert code == 0, out
    casts = [f for f in api.lint(gpt2, select=["GD002"]).findings if f.data.get("dtype") == "float32"]
    assert [(f.severity, f.message_id) for f in casts] == [(Severity.INFO, "same_dtype")]
