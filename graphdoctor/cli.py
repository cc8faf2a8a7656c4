"""The command line: parse, call graphdoctor.api, render, exit. No logic of its own.

Exit codes (ruff/ESLint convention): 0 clean; 1 findings at or above --fail-on; 2 usage, configuration or
input error, printed as one line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import os
import signal
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from graphdoctor import __version__
from graphdoctor.errors import GraphDoctorError, Interrupted
from graphdoctor.targets import DEFAULT_TARGET

__all__ = ["cli", "main", "run"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
SEVERITIES = ("error", "warning", "info")
FORMATS = ("text", "json")
LINT_FORMATS = (*FORMATS, "sarif", "github", "junit")
VERIFY_FORMATS = (*FORMATS, "junit")


class _FilePath(click.Path):
    """The type of every path option: checked with stat before anything opens it, because opening a FIFO
    blocks forever and a device never ends. Only regular files pass (and folders, where `dir_okay`); an
    output's folder must exist. A missing input is left to its reader, which says what it wanted."""

    def __init__(self, *, dir_okay: bool = False, output: bool = False) -> None:
        super().__init__(dir_okay=dir_okay, path_type=Path)
        self.output = output

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":  # Path("") is the current folder
            self.fail("an empty path", param, ctx)
        path = super().convert(value, param, ctx)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            if self.output and not path.parent.is_dir():
                self.fail(f"'{path.parent}' is not an existing folder", param, ctx)
            return path
        except OSError as error:
            self.fail(f"'{path}': {error.strerror}", param, ctx)
        if stat.S_ISDIR(mode) and not self.dir_okay:
            self.fail(f"'{path}' is a directory", param, ctx)
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            self.fail(f"'{path}' is not a regular file (a pipe, socket or device); refused", param, ctx)
        return path


class _FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses NaN (it passes every range comparison) and infinities."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


class _Scale(_FiniteFloat):
    """A number or a fraction as users write pixel scales: 1/255, 0.00392."""

    name = "scale"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and "/" in value:
            numerator, _, denominator = value.partition("/")
            try:
                value = float(numerator) / float(denominator)
            except (ValueError, ZeroDivisionError):
                self.fail(f"{value!r} is not a number or a fraction such as 1/255", param, ctx)
        return super().convert(value, param, ctx)


def _log_verbosely(_ctx: click.Context, _param: click.Parameter, verbose: bool) -> None:
    if verbose:
        logging.getLogger().setLevel(logging.INFO)


# `-v` after the subcommand too (`graphdoctor lint -v model.onnx`), as ruff and pytest take it
verbose_option = click.option(
    "-v", "--verbose", is_flag=True, expose_value=False, callback=_log_verbosely, help="Log what graphdoctor does."
)
SEED = click.IntRange(0, 2**32 - 1)  # what numpy's default_rng takes, stated in --help
TOLERANCE = _FiniteFloat(min=0)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="graphdoctor")
@click.option("-v", "--verbose", is_flag=True, help="Log what graphdoctor does to stderr.")
def cli(verbose: bool) -> None:
    """Diagnose, repair and verify ONNX models before deploying them with ONNX Runtime or TensorRT.

    \b
    graphdoctor lint model.onnx                 # findings with codes, numbers and fixes
    graphdoctor fix model.onnx                  # repair, verify, write model.fixed.onnx
    graphdoctor verify model.onnx fixed.onnx    # same inputs, compare every output, per backend
    graphdoctor rules                           # the rule catalogue
    graphdoctor explain GD001                   # one rule's documentation
    graphdoctor lint --target tensorrt-10 model.onnx && trtexec --onnx=model.onnx   # a pre-deployment gate
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="graphdoctor: %(message)s")


def _split(values: Iterable[str]) -> list[str]:
    """`--select GD001,GD003 --select dead-code` → ['GD001', 'GD003', 'dead-code']."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _set_tensorrt_workspace(_ctx: click.Context, _param: click.Parameter, mib: int | None) -> None:
    """The native TensorRT backend reads its workspace limit from the environment, wherever it is built."""
    if mib is not None:
        os.environ["GRAPHDOCTOR_TENSORRT_WORKSPACE_MIB"] = str(mib)


tensorrt_workspace_option = click.option(
    "--tensorrt-workspace",
    type=click.IntRange(min=1),
    metavar="MIB",
    expose_value=False,
    callback=_set_tensorrt_workspace,
    help="Native TensorRT's builder workspace limit (default: TensorRT's; env GRAPHDOCTOR_TENSORRT_WORKSPACE_MIB).",
)


def detection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--task and how to read and judge detections; --image and how to preprocess the images."""

    @click.option(
        "--task",
        type=click.Choice(["auto", "detect", "tensor"]),
        default="auto",
        show_default=True,
        help="detect: also compare what both models detect (the detect preset decides); auto: when the model "
        "is a detector beyond doubt (ultralytics' head or metadata, NMS inside), saying so.",
    )
    @click.option(
        "--layout", type=click.Choice(["ultralytics", "yolov5", "end-to-end"]), help="How outputs hold detections."
    )
    @click.option("--boxes", metavar="OUTPUT", help="The output holding boxes (x1, y1, x2, y2), for other layouts.")
    @click.option("--scores", metavar="OUTPUT", help="With --boxes: the scores output ([B, K] or [B, K, classes]).")
    @click.option("--classes", metavar="OUTPUT", help="With --boxes: the class-index output.")
    @click.option("--score-threshold", type=_FiniteFloat(0, 1), default=0.25, show_default=True)
    @click.option("--nms-iou", type=_FiniteFloat(0, 1), default=0.45, show_default=True)
    @click.option(
        "--image",
        "images",
        multiple=True,
        type=click.Path(path_type=Path),
        help="Images (or folders of them) as the inputs, preprocessed as below. Needs graphdoctor[images].",
    )
    @click.option("--letterbox", type=click.IntRange(min=1), metavar="SIZE", help="Letterbox images to SIZE×SIZE.")
    @click.option("--pad-value", type=_FiniteFloat(0, 255), default=114.0, show_default=True, help="Letterbox padding.")
    @click.option("--rgb/--bgr", "rgb", default=True, show_default=True, help="Channel order the model takes.")
    @click.option("--scale", type=_Scale(0, 1), default="1/255", show_default=True, help="Pixel scale (1/255, 1).")
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return command(*args, **kwargs)

    return wrapper


def _detection_arguments(options: dict[str, Any]) -> dict[str, Any]:
    """api.verify's task, detect, images and preprocessing from the command line."""
    from graphdoctor.verify.detections import DetectOptions
    from graphdoctor.verify.images import Preprocessing

    named = {key: options[key] for key in ("boxes", "scores", "classes")}
    given = options["layout"] is not None or any(named.values())
    if (options["scores"] or options["classes"]) and not options["boxes"]:
        raise GraphDoctorError("--scores and --classes name outputs with --boxes")
    defaults = DetectOptions()
    tuned = (options["score_threshold"], options["nms_iou"]) != (defaults.score_threshold, defaults.nms_iou)
    detect = (
        DetectOptions(
            layout=options["layout"], score_threshold=options["score_threshold"], nms_iou=options["nms_iou"], **named
        )
        if given or tuned
        else None
    )
    preprocessing = Preprocessing(
        size=options["letterbox"],
        pad_value=options["pad_value"],
        channels="rgb" if options["rgb"] else "bgr",
        scale=options["scale"],
    )
    return {"task": options["task"], "detect": detect, "images": options["images"], "preprocessing": preprocessing}


html_report_option = click.option(
    "--report",
    "html_report",
    type=_FilePath(output=True),
    help="Also write a self-contained HTML report to this file (verdicts, plots, detections; no network).",
)


def _write_html(kind: str, result: Any, path: Path | None) -> None:
    """The HTML report of `kind` ('lint', 'fix', 'verify'), atomically, when --report asked for one."""
    if path is None:
        return
    from graphdoctor.report import html

    with _destination(path) as stream:
        getattr(html, f"render_{kind}")(result, stream)


def selection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--select/--ignore: rule codes, code prefixes (GD00), names (dead-code) or plugin/name."""

    @click.option("--select", multiple=True, metavar="RULES", help="Only these rules (codes, prefixes or names).")
    @click.option("--ignore", multiple=True, metavar="RULES", help="Skip these rules (codes, prefixes or names).")
    @click.option(
        "--target",
        default=DEFAULT_TARGET.name,
        show_default=True,
        metavar="TARGET",
        help="The runtime the rules check for: tensorrt-8.6, tensorrt-10 (any 10.x; tensorrt-10.N for one),"
        " tensorrt-11 or onnxruntime.",
    )
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return command(*args, **kwargs)

    return wrapper


def output_options(command: Callable[..., Any], formats: tuple[str, ...] = FORMATS) -> Callable[..., Any]:
    """--format and --config, shared by the commands that report."""

    @click.option("--format", "output_format", type=click.Choice(formats), default="text", show_default=True)
    @click.option(
        "--config",
        "config_path",
        type=_FilePath(),
        help="A pyproject.toml or .graphdoctor.toml (default: the nearest one above the model).",
    )
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return command(*args, **kwargs)

    return wrapper


@cli.command(context_settings=CONTEXT_SETTINGS)
@verbose_option
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@selection_options
@functools.partial(output_options, formats=LINT_FORMATS)
@click.option(
    "--output",
    "report_path",
    type=_FilePath(output=True),
    help="Write the report to this file (atomically) instead of stdout.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    help="Models linted at once, each in a process of its own (default: one per core).",
)
@click.option("--show-info", is_flag=True, help="Every info finding in full (default: grouped per rule and message).")
@click.option("-q", "--quiet", is_flag=True, help="Errors, warnings and the summary only.")
@click.option("--statistics", is_flag=True, help="Counts per rule instead of the findings.")
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES),
    default="warning",
    show_default=True,
    help="Exit 1 when a finding is at least this severe.",
)
@click.option("--exit-zero", is_flag=True, help="Report only: exit 0 even when findings remain.")
@click.option("--deep", is_flag=True, help="Also run the slow rules (GD005 runs simplifiers and verifies them).")
@click.option(
    "--inputs",
    "inputs_path",
    type=_FilePath(dir_okay=True),
    help="Sample inputs (.npz, .npy, input_N.pb folder): rules also check activations (GD007).",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME:DIMS",
    help="Generate sample inputs of this shape (one per input, dims ≥ 1; not with --inputs).",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of generated sample inputs.")
@html_report_option
@click.pass_context
def lint(ctx: click.Context, models: tuple[Path, ...], **options: Any) -> None:
    """Check MODELS (files, or folders searched for *.onnx) for what breaks between a PyTorch export and a
    TensorRT engine.

    Never modifies the model. Several models are linted in parallel, each in its own process; one that
    cannot be linted is reported in its place, the others still are, and the exit code is the worst (2 for
    a model that could not be read, 1 for findings at --fail-on). Settings come from the command line, then
    [tool.graphdoctor] in the nearest pyproject.toml (or .graphdoctor.toml), then the defaults.
    """
    from graphdoctor import api
    from graphdoctor.batch import lint_paths
    from graphdoctor.config import find_config, load_config
    from graphdoctor.rule import Severity

    config_path = options.pop("config_path") or find_config(models[0])
    config = load_config(config_path, "lint")
    settings = _merge(ctx, options, config, LINT_FORMATS)
    results = lint_paths(
        models,
        api.lint,
        jobs=options["jobs"],
        select=_split(settings["select"]),
        ignore=_split(settings["ignore"]),
        rule_options=config.rule_options,
        deep=options["deep"],
        inputs=options["inputs_path"],
        shapes=_parse_shapes(options["shapes"], options["inputs_path"]),
        seed=options["seed"],
        target=settings["target"],
    )
    fail_on = Severity.parse(settings["fail_on"])
    failures = [result for result in results if isinstance(result, api.LintFailure)]
    for failure in failures:
        click.echo(f"graphdoctor: error: {failure.error}", err=True)
    _render(results, settings["output_format"], options, fail_on)
    _write_html("lint", results, options["html_report"])
    failed = any(isinstance(r, api.LintResult) and r.fails(fail_on) for r in results) and not settings["exit_zero"]
    ctx.exit(max([1 if failed else 0, *(failure.exit_code for failure in failures)]))


def _merge(ctx: click.Context, options: dict[str, Any], config, formats: tuple[str, ...] = FORMATS) -> dict[str, Any]:
    """Command line over configuration file over defaults; a value the file sets wrong is named with it."""
    merged = dict(options)
    for key, value in config.settings.items():
        target = "output_format" if key == "format" else key
        if ctx.get_parameter_source(target) is click.core.ParameterSource.DEFAULT:
            merged[target] = [value] if target in ("select", "ignore") and isinstance(value, str) else value
    for key, allowed in (("output_format", formats), ("fail_on", SEVERITIES)):
        if merged[key] not in allowed:
            shown = "format" if key == "output_format" else "fail-on"
            raise GraphDoctorError(f"{config.path}: {shown} must be one of {', '.join(allowed)}, got {merged[key]!r}")
    return merged


def _destination(path: Path | None):
    """Where a report goes: stdout, or `path` written atomically (--output)."""
    from graphdoctor.report import output

    return contextlib.nullcontext(sys.stdout) if path is None else output.report_file(path)


def _render(results: list[Any], output_format: str, options: dict[str, Any], fail_on) -> None:
    """The report in its format, to stdout or atomically to --output."""
    path = options["report_path"]
    with _destination(path) as stream:
        _write_report(results, output_format, stream, options, fail_on, color=path is None and _use_color())


def _write_report(results, output_format: str, stream, options: dict[str, Any], fail_on, color: bool) -> None:
    if output_format == "text":
        from graphdoctor.report import text

        shown = {key: options[key] for key in ("show_info", "quiet", "statistics")}
        text.render_lint(results, stream, color=color, fail_on=fail_on, **shown)
    elif output_format == "junit":
        from graphdoctor.report import junit

        junit.render_lint(results, stream, fail_on=fail_on)
    else:
        module = importlib.import_module(f"graphdoctor.report.{output_format}")
        module.render_lint(results, stream)


def _use_color() -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("CI"):
        return False
    return sys.stdout.isatty() or bool(os.environ.get("FORCE_COLOR"))


def _parse_shapes(values: Iterable[str], inputs_path: Path | None) -> dict[str, tuple[int, ...]]:
    """--shape values by input name; two different shapes for one input, or shapes for loaded inputs, are errors
    rather than one of them silently winning."""
    from graphdoctor.verify.inputs import parse_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in map(parse_shape, _split_shapes(values)):
        if shapes.setdefault(name, shape) != shape:
            given = " and ".join("x".join(map(str, dims)) for dims in (shapes[name], shape))
            raise GraphDoctorError(f"--shape {name} is given twice, as {given}")
    if shapes and inputs_path is not None:
        raise GraphDoctorError("--shape sizes generated inputs: it does nothing with --inputs FILE")
    return shapes


def _split_shapes(values: Iterable[str]) -> list[str]:
    """`--shape a:1x3,b:1x8` or repeated --shape; commas only split between NAME:DIMS items."""
    return [part for value in values for part in value.split(",") if part]


@cli.command(context_settings=CONTEXT_SETTINGS)
@verbose_option
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=_FilePath(output=True), help="Where to write (default: NAME.fixed.onnx).")
@click.option("--in-place", is_flag=True, help="Overwrite MODEL (atomically, after verification).")
@selection_options
@output_options
@click.option("--unsafe-fixes", is_flag=True, help="Also apply fixes that change values or the I/O signature.")
@click.option(
    "--dedup-transposed", is_flag=True, help="Store tied W/Wᵀ pairs once, computing Wᵀ with one added Transpose."
)
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@click.option(
    "--external-data/--no-external-data",
    default=None,
    help="Weights in a NAME.data file beside the model (default: as the input, and always above 2 GB).",
)
@click.option("--no-verify", is_flag=True, help="Write without running both models and comparing their outputs.")
@click.option(
    "--strip-metadata",
    is_flag=True,
    help="Drop doc strings, node/value metadata (exporter provenance) and intermediate value_info.",
)
@click.option(
    "--fp16", is_flag=True, help="Also convert to FP16 (written as NAME.fp16.onnx), verified under FP16 emulation."
)
@click.option(
    "--bf16",
    is_flag=True,
    help="Convert to BF16 instead (BFLOAT16: FP32's range, 8 significant bits; Ampere and later), written as"
    " NAME.bf16.onnx, verified under BF16 emulation; the --fp16 options below apply to it.",
)
@click.option("--fp16-io", is_flag=True, help="With --fp16: graph inputs and outputs become FP16 too (default: FP32).")
@click.option(
    "--keep-fp32",
    multiple=True,
    metavar="PATTERN",
    help="With --fp16: keep these nodes in FP32 (op types such as Softmax, or node-name globs; comma-separated).",
)
@click.option(
    "--force-fp16",
    multiple=True,
    metavar="PATTERN",
    help="With --fp16: convert these nodes whatever range, fence or integer-math checks say (op types or"
    " node-name globs; comma-separated).",
)
@click.option(
    "--fp16-clamp",
    is_flag=True,
    help="With --fp16: clamp constants FP16 cannot hold (reported) instead of keeping their readers in FP32.",
)
@click.option(
    "--fp16-max",
    type=_FiniteFloat(min=1.0, max=65504.0),
    default=None,
    metavar="VALUE",
    help="With --fp16: activations measured at or beyond this magnitude on the inputs stay FP32 [default: 32752,"
    " half of FP16's largest value: the margin other inputs need, bench/results/fp16_margin.md].",
)
@click.option(
    "--inputs",
    "inputs_path",
    type=_FilePath(dir_okay=True),
    help="Verification inputs (.npz, .npy, a folder of input_N.pb); with --fp16, also a folder of .npz files or"
    " test_data_set_N folders: activation ranges over every batch, the gate on the first.",
)
@click.option("--shape", "shapes", multiple=True, metavar="NAME:DIMS", help="Dynamic dims of the verification inputs.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of generated verification inputs.")
@tensorrt_workspace_option
@html_report_option
@click.pass_context
def fix(ctx: click.Context, model: Path, **options: Any) -> None:
    """Repair MODEL (and with --fp16 convert it) and write the result beside it, verified against the original.

    Safe fixes (bit-exact outputs: duplicate tensors, no-op Casts, dead code, INT64 sentinels) run by default;
    --unsafe-fixes adds those that change values (float64 to float32, inference mode) or the signature.
    Before writing, both models run on ONNX Runtime CPU with graph optimizations and weight prepacking
    off: outputs must be bit-exact after safe fixes (fp32 tolerance after unsafe ones). If they differ,
    nothing is written, the offending rule is named and the exit code is 1. Writes are atomic; the input is never
    modified without --in-place.

    --fp16 keeps in FP32 what FP16 cannot hold (reporting why, node by node): integer-valued math (index
    and bucket computations), what the exporter fenced with float32 Casts, LayerNorm variances, and regions
    whose values reach --fp16-max on the inputs, up to where they are back in range. It reports every value
    it flushes, clamps or saturates, checks the result loads in a default ONNX Runtime session, and verifies
    under FP16 emulation: ONNX Runtime's CPU provider computes most FP16 ops in FP32, so it alone cannot
    show FP16 overflow. When the emulation diverges, the diverging node is kept FP32 and the conversion is
    tried again (4 times at most); if it still fails, the report gives the --keep-fp32 list to try. --bf16
    does the same with BFLOAT16 (raising the opset to 22), verified under BF16 emulation.
    """
    from graphdoctor import api
    from graphdoctor.config import find_config, load_config

    config = load_config(options.pop("config_path") or find_config(model), "fix")
    for option, key in (("target", "target"), ("output_format", "format")):  # the file, unless the command line
        if ctx.get_parameter_source(option) is click.core.ParameterSource.DEFAULT and key in config.settings:
            options[option] = config.settings[key]
    if options["output_format"] not in FORMATS:
        raise GraphDoctorError(f"configuration: format must be one of {FORMATS}")
    select = _split(options["select"]) or _split(_as_list(config.settings.get("select", [])))
    ignore = _split(options["ignore"]) or _split(_as_list(config.settings.get("ignore", [])))
    result = api.fix(
        model,
        options["output"],
        select=select,
        ignore=ignore,
        rule_options=config.rule_options,
        unsafe_fixes=options["unsafe_fixes"] or bool(config.settings.get("unsafe_fixes")),
        opt_ins=["dedup-transposed"] if options["dedup_transposed"] else [],
        dry_run=options["dry_run"],
        in_place=options["in_place"],
        external_data=options["external_data"],
        verify=not options["no_verify"],
        inputs=options["inputs_path"],
        shapes=_parse_shapes(options["shapes"], options["inputs_path"]),
        seed=options["seed"],
        fp16=_fp16_options(options),
        strip_metadata=options["strip_metadata"],
        target=options["target"],
    )
    if options["output_format"] == "json":
        from graphdoctor.report import json as json_report

        json_report.render_fix(result, sys.stdout)
    else:
        from graphdoctor.report import text

        text.render_fix(result, sys.stdout, color=_use_color())
    _write_html("fix", result, options["html_report"])
    ctx.exit(0 if result.passed else 1)


def _fp16_options(options: dict[str, Any]):
    if options["fp16"] and options["bf16"]:
        raise GraphDoctorError("--fp16 and --bf16: choose one")
    if not (options["fp16"] or options["bf16"]):
        given = [_FP16_ONLY[key] for key in _FP16_ONLY if options[key] not in (None, False, ())]
        if given:
            raise GraphDoctorError(f"{', '.join(given)} {'go' if len(given) > 1 else 'goes'} with --fp16 (or --bf16)")
        return None
    if options["bf16"] and options["fp16_max"] is not None:
        raise GraphDoctorError("--fp16-max goes with --fp16: BF16 has FP32's range (activations never reach it)")
    from graphdoctor.analysis.fp16_ops import BF16, FP16
    from graphdoctor.fp16 import Fp16Options

    limit = {} if options["fp16_max"] is None else {"max_value": options["fp16_max"]}
    return Fp16Options(
        keep_io_types=not options["fp16_io"],
        keep_fp32=_patterns("--keep-fp32", options["keep_fp32"]),
        force_fp16=_patterns("--force-fp16", options["force_fp16"]),
        clamp=options["fp16_clamp"],
        precision=BF16 if options["bf16"] else FP16,
        **limit,
    )


_FP16_ONLY = {
    "fp16_io": "--fp16-io",
    "keep_fp32": "--keep-fp32",
    "force_fp16": "--force-fp16",
    "fp16_clamp": "--fp16-clamp",
    "fp16_max": "--fp16-max",
}


def _patterns(option: str, values: Iterable[str]) -> tuple[str, ...]:
    """Node patterns; an empty one (`--keep-fp32 ''`, a stray comma) would match nothing, silently."""
    for value in values:
        if any(not part.strip() for part in value.split(",")):
            raise GraphDoctorError(
                f"{option} {value!r}: empty pattern; give op types (Softmax) or node-name globs, comma-separated"
            )
    return tuple(_split(values))


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@cli.command(context_settings=CONTEXT_SETTINGS)
@verbose_option
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", required=False, type=click.Path(path_type=Path))
@click.option(
    "--backend",
    "backends",
    multiple=True,
    metavar="NAME",
    help="Run the candidate on these (repeatable): onnxruntime-cpu (default), onnxruntime-cuda, "
    "onnxruntime-tensorrt, tensorrt, fp16-emulation, bf16-emulation. Unavailable ones are skipped with the reason.",
)
@click.option(
    "--preset",
    type=click.Choice(["auto", "exact", "fp32", "fp16", "bf16"]),
    default="auto",
    show_default=True,
    help="Tolerances; auto is bf16 or fp16 when a model holds BF16 or FP16 or a backend computes in it, else fp32.",
)
@click.option("--atol", type=TOLERANCE, help="Override the preset's absolute tolerance.")
@click.option("--rtol", type=TOLERANCE, help="Override the preset's relative tolerance.")
@click.option("--min-cosine", type=_FiniteFloat(-1, 1), help="Override the preset's minimum cosine similarity.")
@click.option("--inputs", "inputs_path", type=_FilePath(dir_okay=True), help=".npz, .npy or a folder of input_N.pb.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:DIMS", help="Dynamic dims, e.g. images:1x3x640x640.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option("--save-inputs", type=_FilePath(output=True), help="Write the inputs used (.npz) for replay.")
@click.option(
    "--torch",
    "torch_program",
    type=_FilePath(),
    help="A torch.export program (.pt2) that REFERENCE was exported from: it becomes the reference, and "
    "REFERENCE runs on each backend (no CANDIDATE). Needs graphdoctor[torch].",
)
@click.option(
    "--layerwise",
    is_flag=True,
    help="Also compare every tensor both models compute under the same name, and name the first node beyond "
    "tolerance, with the error per stage. On ONNX Runtime CPU both models run in one session that reduces each "
    "tensor pair to statistics; elsewhere the tensors are fetched, a slice per run.",
)
@click.option(
    "--layers-per-run",
    type=click.IntRange(min=1),
    metavar="N",
    help="With --layerwise: fetch every tensor, N per run, instead of statistics in one session (where "
    "tensors are fetched, the default is as many as fit 256 MiB for both models).",
)
@detection_options
@click.option("--format", "output_format", type=click.Choice(VERIFY_FORMATS), default="text", show_default=True)
@click.option(
    "--output",
    "report_path",
    type=_FilePath(output=True),
    help="Write the report to this file (atomically) instead of stdout.",
)
@tensorrt_workspace_option
@html_report_option
@click.pass_context
def verify(ctx: click.Context, reference: Path, candidate: Path | None, **options: Any) -> None:
    """Run REFERENCE and CANDIDATE on the same inputs and compare every output, per backend.

    The reference runs on ONNX Runtime CPU; the candidate (default: the reference itself, to compare
    backends) runs on each --backend. Every verdict names the backend and the precision it computed in.
    Exit 0 when every backend that ran agrees within tolerance, 1 when one differs, 2 on errors.

    Inputs are generated from each input's declared dims (--shape sets dynamic ones, once per input, each
    dim at least 1) with --seed, or loaded with --inputs; together they may take 2 GiB, checked before
    any array is allocated. Object arrays in .npy/.npz files are refused, never unpickled.
    """
    from graphdoctor import api

    result = api.verify(
        reference,
        candidate,
        backends=options["backends"] or ("onnxruntime-cpu",),
        preset=options["preset"],
        atol=options["atol"],
        rtol=options["rtol"],
        min_cosine=options["min_cosine"],
        inputs=options["inputs_path"],
        shapes=_parse_shapes(options["shapes"], options["inputs_path"]),
        seed=options["seed"],
        save_inputs=options["save_inputs"],
        torch_program=options["torch_program"],
        layerwise=options["layerwise"],
        layers_per_run=options["layers_per_run"],
        **_detection_arguments(options),
    )
    _render_verify(result, options["output_format"], options["report_path"])
    _write_html("verify", result, options["html_report"])
    if not any(v.ran for v in result.verdicts):
        raise GraphDoctorError("no backend could run: " + "; ".join(_why_not_run(v) for v in result.verdicts))
    ctx.exit(0 if result.passed else 1)


def _render_verify(result, output_format: str, path: Path | None) -> None:
    """The verify report in its format, to stdout or atomically to --output."""
    with _destination(path) as stream:
        if output_format == "text":
            from graphdoctor.report import text

            text.render_verify(result, stream, color=path is None and _use_color())
        else:
            module = importlib.import_module(f"graphdoctor.report.{output_format}")
            module.render_verify(result, stream)


def _why_not_run(verdict) -> str:
    """A verdict's reason names its backend when it could not run a model; a skipped one's does not."""
    return verdict.reason if verdict.cannot_run else f"{verdict.backend}: {verdict.reason}"


@cli.command(context_settings=CONTEXT_SETTINGS)
@verbose_option
@click.option(
    "--target", metavar="TARGET", help="Also list what each rule holds against this runtime (tensorrt-8.6, ...)."
)
def rules(target: str | None) -> None:
    """List every rule: code, name, default severity, fix safety, summary."""
    from graphdoctor.report import text
    from graphdoctor.rule import load_rules
    from graphdoctor.targets import parse_target

    text.render_rules(load_rules(), sys.stdout, parse_target(target) if target is not None else None)


@cli.command(context_settings=CONTEXT_SETTINGS)
@verbose_option
@click.argument("rule")
def explain(rule: str) -> None:
    """Print the documentation of RULE (a code such as GD001, or a name such as int64-weights)."""
    from graphdoctor.report import text
    from graphdoctor.rule import load_rules

    matches = [r for r in load_rules() if rule.upper() == r.code or rule in (r.name, r.qualified_name)]
    if not matches:
        raise GraphDoctorError(f"unknown rule '{rule}' (see `graphdoctor rules`)")
    text.render_explain(matches[0], sys.stdout)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, turning every error into one line on stderr and exit code 2, SIGINT and SIGTERM too."""
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = cli.main(args=argv, prog_name="graphdoctor", standalone_mode=False)
    except GraphDoctorError as error:
        _fail(str(error), error.exit_code)
    except click.ClickException as error:
        _fail(error.format_message(), 2)
    except click.Abort:
        _fail("aborted", 2)
    except Interrupted as error:
        _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 2)
    except Exception as error:  # an internal error still gets one line, the traceback only on request
        if os.environ.get("GRAPHDOCTOR_DEBUG"):
            raise
        _fail(f"internal error: {type(error).__name__}: {error} (set GRAPHDOCTOR_DEBUG=1 for a traceback)", 2)
    finally:  # callers in the same process (tests, scripts) get their handlers back
        _restore_handlers(previous)
    sys.exit(code or 0)


def run() -> None:
    """The console command and `python -m graphdoctor`: `main`, then out without tearing the interpreter down.
    Python's own exit frees every module and object one by one: 0.1-0.15 s after `fix --fp16` of a 12 MiB
    model, as much as its rule pass. Output is flushed and exit handlers run as at any exit; with another thread
    still running, or output that cannot be flushed (a closed pipe), the exit is Python's own, which waits for
    the thread or reports the pipe."""
    try:
        main()
    except SystemExit as exit_info:
        _leave(exit_info.code)


def _leave(code: Any) -> None:
    import atexit
    import threading

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's own, what its exit calls first
    if not isinstance(code, (int, type(None))) or threading.active_count() > 1 or run_exit_handlers is None:
        sys.exit(code)
    _flush_or_exit(code)
    run_exit_handlers()
    _flush_or_exit(code)
    os._exit(code or 0)


def _flush_or_exit(code: int | None) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe or stream: Python's exit says so as it always did
        sys.exit(code)


def _restore_handlers(previous: dict) -> None:
    """Put the caller's handlers back. An interrupt landing here comes after the outcome was decided (and
    printed): it must not become a traceback from inside signal.signal, so it is let go."""
    while True:
        try:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            return
        except Interrupted:
            continue


def _interrupt(_signum, _frame) -> None:
    """Not KeyboardInterrupt: click turns that into Abort and prints a blank line first."""
    raise Interrupted("interrupted")


def _fail(message: str, code: int) -> None:
    click.echo(f"graphdoctor: error: {message}", err=True)
    sys.exit(code)
