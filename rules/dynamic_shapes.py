"""GD011 dynamic-shapes: graph inputs with symbolic or unknown dims, and the trtexec profile to build them.

What it finds
    Graph inputs whose shape has symbolic dims (`batch`, `sequence`, `s0`) or unknown dims (`?`): one
    finding for the model that lists them and suggests a ready-to-paste `trtexec` line with
    `--minShapes/--optShapes/--maxShapes`. Graph inputs with no shape at all (unknown rank) get a warning
    each. Initializers that are also listed as graph inputs are weights, not inputs, and are skipped.

    The suggested values are guesses from each dim's name and position, and the finding says so:
    - batch-like dims (dim 0 of a tensor of rank 2 or more, or named `batch`, `N`, `bs`, ...):
      `min_batch`/`opt_batch`/`max_batch` (1/8/16);
    - sequence-like dims (dim 1 of a 2-D integer input such as `input_ids`, or named `seq`, `length`,
      `tokens`, `past`, ...): `min_sequence`/`opt_sequence`/`max_sequence` (1/128/512);
    - image height and width (dims 2 and 3 of a 4-D float NCHW input, dims 1 and 2 of NHWC, or named
      `height`/`width`/`H`/`W`): min = opt = max (a fixed size builds the fastest engine), taken from the
      other spatial dim when that one is static (`[N,3,?,640]` gives 640), else from the export size the
      exporter recorded (ultralytics' `imgsz` metadata), else `image_size` (640);
    - any other dynamic dim: 1, listed as "no guess" so that you set it yourself.
    A symbolic name shared by several inputs (`input_ids` and `attention_mask` share `batch` and
    `sequence`) gets the same values everywhere, as TensorRT requires of equal dims.

    Only for TensorRT targets: ONNX Runtime takes any shape at each run and needs no profile (for
    `--target onnxruntime` nothing is reported).

Why it matters
    TensorRT builds an engine for a range of shapes, an optimization profile, and tunes its kernels for
    the `opt` shape. Without a profile, trtexec fixes every dynamic dim to 1 (or refuses to build), and a
    profile that is too wide costs memory and speed. An input of unknown rank cannot be built at all:
    TensorRT needs the rank of every input.

How to fix
    Paste the suggested line after checking its values: `opt` should be the shape you serve most, `max`
    the largest you will ever feed. Inputs of unknown rank need a shape at export (`torch.onnx.export`
    gives every input one) or set afterwards with `onnx.tools.update_model_dims`. If the model never sees
    other shapes, export it with static shapes instead.

Options
    `min_batch`, `opt_batch`, `max_batch` (1, 8, 16); `min_sequence`, `opt_sequence`, `max_sequence`
    (1, 128, 512); `image_size` (640), the height and width used when no static sibling dim says better.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir

from graphdoctor.analysis.format import format_dtype, format_type
from graphdoctor.engine import RuleContext
from graphdoctor.rule import Finding, Message, RuleKind, RuleMeta, Severity

__all__ = ["META", "Options", "check", "trtexec_command"]


@dataclass(frozen=True)
class Options:
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    min_sequence: int = 1
    opt_sequence: int = 128
    max_sequence: int = 512
    image_size: int = 640


META = RuleMeta(
    code="GD011",
    name="dynamic-shapes",
    kind=RuleKind.SUGGESTION,
    severity=Severity.INFO,
    summary="symbolic input dims that need a TensorRT optimization profile; suggests the trtexec line",
    options=Options(),
    messages={
        "dynamic": Message(
            "{count} graph input(s) with dynamic dims: {inputs}; TensorRT builds them only for the range of"
            " shapes given in an optimization profile (min/opt/max){caveat}",
            help="a suggested profile, guessed from dim names and positions (min/opt/max: {suggestions}); set opt to"
            " the shape you serve most and max to the largest: {command}",
        ),
        "unknown_rank": Message(
            "graph input '{name}' ({dtype}) has no shape, not even a rank: TensorRT cannot build an engine"
            " for an input of unknown rank",
            help="give it a shape at export (dynamic_axes / dynamic_shapes), or set one with"
            " onnx.tools.update_model_dims.update_inputs_outputs_dims",
            severity=Severity.WARNING,
        ),
    },
)

_BATCH = re.compile(r"^(n|b|bs|batch.*|.*_batch|.*batch_size|num_images)$", re.IGNORECASE)
_SEQUENCE = re.compile(r"seq|len|token|past|^t$|^l$", re.IGNORECASE)
_SPATIAL = re.compile(r"^(h|w|height|width|.*_height|.*_width|img_h|img_w)$", re.IGNORECASE)
_TRTEXEC_UNQUOTED = re.compile(r"^[A-Za-z0-9_./-]+$")  # names trtexec reads without quotes
_SHELL_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


@dataclass(frozen=True)
class _DynamicDim:
    """One dynamic dim of one input; `key` groups dims that must agree (a shared symbolic name)."""

    input: str
    index: int
    key: str
    role: str  # 'batch' | 'sequence' | 'spatial' | 'other'
    named_role: bool  # the role came from the dim's name, not its position


def check(model: ir.Model, ctx: RuleContext) -> Iterator[Finding]:
    if not ctx.analysis.target.is_tensorrt:  # ONNX Runtime needs no optimization profile
        return
    inputs = [v for v in model.graph.inputs if not _is_weight(model.graph, v)]
    unknown_rank = [v for v in inputs if v.shape is None]
    for value in unknown_rank:
        yield ctx.report("unknown_rank", values=[value], name=value.name, dtype=format_dtype(value.dtype))
    dynamic = [v for v in inputs if v.shape is not None and not all(isinstance(d, int) for d in v.shape)]
    if not dynamic:
        return
    dims = [dim for value in dynamic for dim in _dynamic_dims(value)]
    roles = _roles_by_key(dims)
    ranges = _ranges(dims, roles, {v.name: v for v in dynamic}, ctx.options, _exported_image_size(model))
    yield ctx.report(
        "dynamic",
        values=dynamic,
        count=len(dynamic),
        inputs=", ".join(f"'{v.name}' {format_type(v)}" for v in dynamic),
        suggestions=_describe(dims, ranges),
        command=trtexec_command(_model_path(ctx), dynamic, ranges),
        caveat=_caveat(dims, roles, dynamic, unknown_rank),
        profile={f"{name}[{index}]": values for (name, index), values in ranges.items()},
    )


def _is_weight(graph: ir.Graph, value: ir.Value) -> bool:
    """Initializers listed as graph inputs (old exporters did this) are weights, not model inputs."""
    return value.name in graph.initializers or value.const_value is not None


def _model_path(ctx: RuleContext) -> str:
    path = ctx.analysis.path
    return str(path) if path is not None else "model.onnx"


# --- what each dynamic dim is -------------------------------------------------------------------


def _dynamic_dims(value: ir.Value) -> Iterator[_DynamicDim]:
    assert value.shape is not None
    for index, dim in enumerate(value.shape):
        if isinstance(dim, int):
            continue
        symbol = dim.value if isinstance(dim, ir.SymbolicDim) else None
        named = _role_from_name(symbol) if symbol else None
        role = named or _role_from_position(value, index)
        key = symbol or f"{value.name}[{index}]"  # an unnamed dim agrees with nothing else
        yield _DynamicDim(value.name, index, key, role, named is not None)


def _role_from_name(symbol: str) -> str | None:
    if _BATCH.match(symbol):
        return "batch"
    if _SPATIAL.match(symbol):
        return "spatial"
    if _SEQUENCE.search(symbol):
        return "sequence"
    return None


def _role_from_position(value: ir.Value, index: int) -> str:
    """Exporters put the batch first; token ids are [batch, sequence]; images are NCHW or NHWC."""
    shape = value.shape
    assert shape is not None
    rank = len(shape)
    dtype = value.dtype
    if index == 0 and rank >= 2:
        return "batch"
    if rank == 2 and index == 1 and dtype is not None and dtype.is_integer():
        return "sequence"
    if rank == 4 and dtype is not None and dtype.is_floating_point() and index in _spatial_axes(shape):
        return "spatial"
    return "other"


def _spatial_axes(shape: ir.Shape) -> tuple[int, int]:
    """(1, 2) for NHWC, recognised by a small static last dim and a non-small dim 1; else NCHW's (2, 3)."""
    last, second = shape[3], shape[1]
    nhwc = isinstance(last, int) and last <= 4 and not (isinstance(second, int) and second <= 4)
    return (1, 2) if nhwc else (2, 3)


# --- the values to suggest ----------------------------------------------------------------------

Range = tuple[int, int, int]  # min, opt, max


def _roles_by_key(dims: list[_DynamicDim]) -> dict[str, str]:
    """A shared dim takes the role its name says, else the first role its positions suggest."""
    roles: dict[str, str] = {}
    for dim in sorted(dims, key=lambda d: not d.named_role):  # stable: named roles first, then input order
        if roles.get(dim.key, "other") == "other":
            roles[dim.key] = dim.role
    return roles


def _ranges(
    dims: list[_DynamicDim],
    roles: dict[str, str],
    inputs: dict[str, ir.Value],
    options: Options,
    image_hw: tuple[int, int] | None,
) -> dict[tuple[str, int], Range]:
    """min/opt/max for every dynamic dim, the same for dims that share a symbolic name."""
    by_key: dict[str, Range] = {}
    for dim in dims:
        if dim.key not in by_key:
            by_key[dim.key] = _range_for(roles[dim.key], inputs[dim.input], dim.index, options, image_hw)
    return {(dim.input, dim.index): by_key[dim.key] for dim in dims}


def _range_for(role: str, value: ir.Value, index: int, options: Options, image_hw: tuple[int, int] | None) -> Range:
    if role == "batch":
        return options.min_batch, options.opt_batch, options.max_batch
    if role == "sequence":
        return options.min_sequence, options.opt_sequence, options.max_sequence
    if role == "spatial":
        size = _static_sibling(value, index) or _exported_side(value, index, image_hw) or options.image_size
        return size, size, size
    return 1, 1, 1


def _exported_image_size(model: ir.Model) -> tuple[int, int] | None:
    """The size the model was exported at, where the exporter recorded it (ultralytics: imgsz='[640, 640]')."""
    numbers = re.findall(r"\d+", model.metadata_props.get("imgsz", ""))
    if len(numbers) == 1:
        return int(numbers[0]), int(numbers[0])
    return (int(numbers[0]), int(numbers[1])) if len(numbers) == 2 else None


def _exported_side(value: ir.Value, index: int, image_hw: tuple[int, int] | None) -> int | None:
    shape = value.shape
    if image_hw is None or shape is None or len(shape) != 4:
        return None
    axes = _spatial_axes(shape)
    return image_hw[axes.index(index)] if index in axes else None


def _static_sibling(value: ir.Value, index: int) -> int | None:
    """The other image side when it is static: [N,3,?,640] is most likely square."""
    shape = value.shape
    if shape is None or len(shape) != 4:
        return None
    axes = _spatial_axes(shape)
    if index not in axes:
        return None
    other = shape[axes[1] if index == axes[0] else axes[0]]
    return other if isinstance(other, int) and other > 1 else None


def _describe(dims: list[_DynamicDim], ranges: dict[tuple[str, int], Range]) -> str:
    """'batch 1/8/16; height, width 640': each distinct dim once, by its symbolic name where it has one."""
    labels: dict[Range, list[str]] = {}
    for dim in dims:
        label = dim.key if dim.key != f"{dim.input}[{dim.index}]" else f"'{dim.input}'[{dim.index}]"
        group = labels.setdefault(ranges[(dim.input, dim.index)], [])
        if label not in group:
            group.append(label)
    parts = []
    for (low, opt, high), group in labels.items():
        values = str(low) if low == opt == high else f"{low}/{opt}/{high}"
        parts.append(f"{', '.join(group)} {values}")
    return "; ".join(parts)


def _caveat(
    dims: list[_DynamicDim], roles: dict[str, str], dynamic: list[ir.Value], unknown_rank: list[ir.Value]
) -> str:
    """What the suggestion could not cover: dims it has no guess for, names trtexec cannot take."""
    notes = []
    guessless = sorted({dim.key for dim in dims if roles[dim.key] == "other"})
    if guessless:
        notes.append(f"no guess for {', '.join(guessless)} (set to 1 below: choose yourself)")
    unnamable = [v.name for v in dynamic if "," in v.name or "'" in v.name]
    if unnamable:
        names = ", ".join(repr(n) for n in unnamable)
        notes.append(f"trtexec cannot name input(s) {names} (',' or a quote in the name): rename them")
    if unknown_rank:
        notes.append(f"{len(unknown_rank)} input(s) of unknown rank left out")
    return "; " + "; ".join(notes) if notes else ""


# --- the command line ---------------------------------------------------------------------------


def trtexec_command(model_path: str | Path, inputs: list[ir.Value], ranges: dict[tuple[str, int], Range]) -> str:
    """`trtexec --onnx=... --minShapes=... --optShapes=... --maxShapes=...`, quoted for a POSIX shell."""
    args = [f"--onnx={model_path}"]
    for flag, which in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        specs = [f"{_trtexec_name(v.name)}:{_dims(v, ranges, which)}" for v in inputs]
        args.append(f"{flag}={','.join(specs)}")
    return "trtexec " + " ".join(_shell_quote(arg) for arg in args)


def _dims(value: ir.Value, ranges: dict[tuple[str, int], Range], which: int) -> str:
    assert value.shape is not None
    dims = (str(d) if isinstance(d, int) else str(ranges[(value.name, i)][which]) for i, d in enumerate(value.shape))
    return "x".join(dims)


def _trtexec_name(name: str) -> str:
    """trtexec splits specs on ',' and name from dims on the last ':'; a quoted name may hold ':'."""
    return name if _TRTEXEC_UNQUOTED.match(name) else f"'{name}'"


def _shell_quote(arg: str) -> str:
    if _SHELL_SAFE.match(arg):
        return arg
    if "'" not in arg:
        return f"'{arg}'"
    escaped = re.sub(r'([\\"$`])', r"\\\1", arg)  # trtexec's own single quotes survive inside "..."
    return f'"{escaped}"'
