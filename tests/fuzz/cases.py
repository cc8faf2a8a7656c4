"""Fuzz cases: a folder of files (the mutated model, its external data, links, FIFOs, option files, bait
outside the model's folder) and the graphdoctor commands to run on it, generated from `(seed, index)` alone,
so any case can be rebuilt and replayed without generating the ones before it.

Layout of a case folder (the runner's working directory):

    secret.bin          bait one level above the model: nothing may read or change it
    m/model.onnx        the model under test (and m/weights.bin etc. for external data)
    opt/                option files (--config, --inputs, --save-inputs targets)
    out/, out16/        fresh, empty folders for `fix -o` and `fix --fp16 -o`
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from tests.fuzz import mutate, seeds

__all__ = ["FAMILIES", "Case", "Command", "generate", "materialize"]

MODEL = "m/model.onnx"
FIXED = "out/fixed.onnx"
FIXED16 = "out16/fixed.fp16.onnx"
BAIT = "secret.bin"
BAIT_BYTES = 64 * 1024  # enough to back any seed tensor: a model that reads it gets plausible floats


@dataclass(frozen=True)
class Symlink:
    target: str  # as written into the link (relative to the link's folder, or absolute)


@dataclass(frozen=True)
class HardLink:
    to: str  # a path relative to the case folder


@dataclass(frozen=True)
class Fifo:
    pass


@dataclass(frozen=True)
class Folder:
    pass


FileSpec = bytes | Callable[[Path], bytes] | Symlink | HardLink | Fifo | Folder


@dataclass
class Command:
    """One graphdoctor invocation. `output` is the file `fix -o` writes (checked for loading and, after a
    failure, for absence); `candidate` is appended to argv only when that file exists when the command runs
    (verify the fix's output when it wrote one)."""

    argv: list[str]
    output: str | None = None
    extra_outputs: tuple[str, ...] = ()  # other files the command may create (--save-inputs)
    candidate: str | None = None
    signal: tuple[int, float] | None = None  # (signum, seconds after start)
    fsize: int | None = None  # RLIMIT_FSIZE in bytes
    time_limit: float = 30.0

    def to_json(self) -> dict:
        sig = None if self.signal is None else [signal.Signals(self.signal[0]).name, round(self.signal[1], 3)]
        return {"argv": self.argv, "output": self.output, "signal": sig, "fsize": self.fsize}


@dataclass
class Case:
    id: str
    family: str
    description: str
    files: dict[str, FileSpec] = field(default_factory=dict)
    commands: list[Command] = field(default_factory=list)
    explicit: tuple[str, ...] = ()  # paths named by options: reading them is asked for


def standard_commands(model: str = MODEL, extra: tuple[str, ...] = ()) -> list[Command]:
    return [
        Command(["lint", model, *extra]),
        Command(["fix", model, "-o", FIXED, *extra], output=FIXED),
        Command(["fix", model, "--fp16", "-o", FIXED16, *extra], output=FIXED16),
        Command(["verify", model, *extra], candidate=FIXED),
    ]


def materialize(case: Case, root: Path) -> None:
    """Create the case folder: bait, model folder, option and output folders, then every file of the case."""
    root.mkdir(parents=True)
    for folder in ("m", "opt", "out", "out16"):
        (root / folder).mkdir()
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    (root / BAIT).write_bytes(rng.standard_normal(BAIT_BYTES // 4).astype(np.float32).tobytes())
    for name, spec in sorted(case.files.items(), key=lambda item: isinstance(item[1], HardLink | Symlink)):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, Symlink):
            os.symlink(spec.target, path)
        elif isinstance(spec, HardLink):
            os.link(root / spec.to, path)
        elif isinstance(spec, Fifo):
            os.mkfifo(path)
        elif isinstance(spec, Folder):
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(spec(root) if callable(spec) else spec)


# --- external data ----------------------------------------------------------------------------------------


def externalize(model: onnx.ModelProto, location: str = "weights.bin", threshold: int = 256) -> bytes:
    """Move every tensor's raw_data of at least `threshold` bytes (subgraphs, functions and sparse values
    included) into one data file; returns its bytes."""
    data = bytearray()
    for tensor in mutate.all_tensors(model):
        if len(tensor.raw_data) < threshold:
            continue
        offset = len(data)
        data += tensor.raw_data
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data) - offset))):
            tensor.external_data.add(key=key, value=value)
    return bytes(data)


def _external(model: onnx.ModelProto) -> list[TensorProto]:
    return [t for t in mutate.all_tensors(model) if t.data_location == TensorProto.EXTERNAL]


def _in_bodies(model: onnx.ModelProto) -> list[TensorProto]:
    """External tensors inside If/Loop bodies or function bodies."""
    main = {id(t) for t in model.graph.initializer}
    main |= {id(a.t) for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR}
    return [t for t in _external(model) if id(t) not in main]


def _set_entry(tensor: TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    tensor.external_data.add(key=key, value=value)


def _model_file(model: onnx.ModelProto, mutated: mutate.Mutated | None = None) -> bytes:
    data = model.SerializeToString()
    for marker, replacement in mutated.patches if mutated else ():
        data = data.replace(marker, replacement)
    return data


# --- families ---------------------------------------------------------------------------------------------


def _seed_name(rng: random.Random, heavy_share: float = 0.08) -> str:
    heavy = sorted(seeds.HEAVY)
    light = [name for name in seeds.SEED_NAMES if name not in seeds.HEAVY]
    return rng.choice(heavy) if heavy and rng.random() < heavy_share else rng.choice(light)


def _byte_case(rng: random.Random, case: Case) -> None:
    name = rng.choice(sorted(mutate.BYTE_MUTATORS))
    seed = _seed_name(rng)
    model = seeds.seed_model(seed)
    files: dict[str, FileSpec] = {}
    if rng.random() < 0.3:
        files["m/weights.bin"] = externalize(model)
    data, what = mutate.BYTE_MUTATORS[name](rng, model.SerializeToString())
    files[MODEL] = data
    case.family, case.description = f"bytes.{name}", f"{seed}: {what}"
    case.files, case.commands = files, standard_commands()


def _proto_case(rng: random.Random, case: Case) -> None:
    names = [rng.choice(sorted(mutate.PROTO_MUTATORS))]
    if rng.random() < 0.2:
        names += rng.sample(sorted(mutate.PROTO_MUTATORS), rng.choice([1, 2]))
    seed = _seed_name(rng)
    model = seeds.seed_model(seed)
    mutated = mutate.Mutated()
    what = [mutate.PROTO_MUTATORS[names[0]](rng, model, mutated)]
    for name in names[1:]:
        with contextlib.suppress(mutate.NotApplicable):
            what.append(mutate.PROTO_MUTATORS[name](rng, model, mutated))
    files: dict[str, FileSpec] = {}
    if rng.random() < 0.25:
        files["m/weights.bin"] = externalize(model)
    files[MODEL] = _model_file(model, mutated)
    case.family, case.description = f"proto.{names[0]}", f"{seed}: " + "; ".join(what)
    case.files, case.commands = files, standard_commands()


_EXTERNAL_KINDS = (
    "absolute-bait",
    "parent-bait",
    "dotdot-inside",
    "long-location",
    "nul-location",
    "empty-location",
    "folder-location",
    "symlink-out",
    "symlink-loop",
    "symlink-dev-zero",
    "dev-zero",
    "fifo",
    "hardlink",
    "offset-beyond",
    "length-beyond",
    "offset-garbage",
    "missing-file",
    "sparse-parent-bait",
    "body-parent-bait",
)


def _external_case(rng: random.Random, case: Case) -> None:
    kind = rng.choice(_EXTERNAL_KINDS)
    body_seeds = ["branches", "loop", "function"]
    seed = rng.choice(body_seeds) if kind == "body-parent-bait" or rng.random() < 0.3 else _seed_name(rng)
    model = seeds.seed_model(seed)
    if kind == "sparse-parent-bait":
        mutate.sparse_initializer(random.Random(0), model, mutate.Mutated())
        sparse_values = model.graph.sparse_initializer[-1].values
        sparse_values.raw_data = np.arange(64, dtype=np.float32)[:3].tobytes()
        sparse_values.ClearField("float_data")
    data = externalize(model, threshold=8 if kind == "sparse-parent-bait" else 256)
    files: dict[str, FileSpec] = {"m/weights.bin": data}
    tensors = _external(model)
    if kind == "body-parent-bait":
        tensors = _in_bodies(model) or tensors
    elif kind == "sparse-parent-bait":
        tensors = [model.graph.sparse_initializer[-1].values]
    target = rng.choice(tensors)
    location = None
    if kind == "absolute-bait":
        location = lambda root: os.fspath(root / BAIT)  # noqa: E731 (resolved when the case folder exists)
    elif kind in ("parent-bait", "sparse-parent-bait", "body-parent-bait"):
        location = rng.choice(["../secret.bin", "./../secret.bin", "sub/../../secret.bin"])
    elif kind == "dotdot-inside":
        location = "sub/../weights.bin"
        files["m/sub"] = Folder()
    elif kind == "long-location":
        location = rng.choice(["w" * 5000, "a/" * 2500 + "w"])
    elif kind == "nul-location":
        location = "weights.bin\x00.txt"
    elif kind == "empty-location":
        location = rng.choice(["", ".", "./"])
    elif kind == "folder-location":
        location = "sub"
        files["m/sub"] = Folder()
    elif kind == "symlink-out":
        files["m/weights.bin"] = Symlink("../secret.bin")
    elif kind == "symlink-loop":
        files["m/weights.bin"] = Symlink("weights.bin")
    elif kind == "symlink-dev-zero":
        files["m/weights.bin"] = Symlink("/dev/zero")
    elif kind == "dev-zero":
        location = "/dev/zero"
    elif kind == "fifo":
        files["m/weights.bin"] = Fifo()
    elif kind == "hardlink":  # the data's only other name is outside the model's folder
        files["outside.bin"] = data
        files["m/weights.bin"] = HardLink("outside.bin")
    elif kind == "offset-beyond":
        _set_entry(target, "offset", str(rng.choice([len(data), len(data) + 4096, 2**40, 2**63 - 1, -8])))
    elif kind == "length-beyond":
        _set_entry(target, "length", str(rng.choice([len(data) + 1, 2**40, 2**64, 0, -1])))
    elif kind == "offset-garbage":
        _set_entry(target, rng.choice(["offset", "length"]), rng.choice(["abc", "1e3", "", " 12", "0x10"]))
    elif kind == "missing-file":
        location = "missing.bin"
    if location is not None:
        for tensor in tensors if rng.random() < 0.5 else [target]:
            if not callable(location):
                _set_entry(tensor, "location", location)
    if callable(location):
        files[MODEL] = _located(model, [target], location)
    else:
        files[MODEL] = model.SerializeToString()
    case.family, case.description = f"external.{kind}", f"{seed}: tensor '{target.name}' ({kind})"
    case.files, case.commands = files, standard_commands()
    if kind in ("fifo",):
        for command in case.commands:
            command.time_limit = 10.0  # refusing a FIFO takes no time: a hang shows as over-time sooner


def _located(model: onnx.ModelProto, tensors: list[TensorProto], location: Callable[[Path], str]):
    """Model bytes whose `tensors` point at a location known only once the case folder exists."""
    blob = model.SerializeToString()

    def build(root: Path) -> bytes:
        copy = onnx.ModelProto()
        copy.ParseFromString(blob)
        names = {t.name for t in tensors}
        for tensor in _external(copy):
            if tensor.name in names:
                _set_entry(tensor, "location", location(root))
        return copy.SerializeToString()

    return build


_CLI_KINDS = (
    "out-is-input",
    "out-is-data",
    "out-data-is-input-data",
    "out-other-folder",
    "out-hardlink",
    "out-symlink",
    "signal",
    "fsize",
    "shape",
    "seed",
    "inputs-file",
    "config-file",
    "save-inputs",
    "npz-header",
)


def _cli_case(rng: random.Random, case: Case) -> None:
    kind = rng.choice(_CLI_KINDS)
    seed = _seed_name(rng, heavy_share=0.4 if kind == "signal" else 0.05)
    model = seeds.seed_model(seed)
    files: dict[str, FileSpec] = {}
    data_name = "o.onnx.data" if kind == "out-data-is-input-data" else "weights.bin"
    if kind.startswith("out-") or rng.random() < 0.3:
        files[f"m/{data_name}"] = externalize(model, location=data_name)
    files[MODEL] = model.SerializeToString()
    input_name = next(v.name for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer})
    fp16 = ["--fp16"] if rng.random() < 0.3 else []
    commands: list[Command] = []
    explicit: tuple[str, ...] = ()
    what = kind
    if kind == "out-is-input":
        out = rng.choice(["m/model.onnx", "./m/model.onnx", "m/../m/model.onnx"])
        commands = [Command(["fix", MODEL, *fp16, "-o", out], output=None)]
    elif kind == "out-is-data":
        commands = [Command(["fix", MODEL, *fp16, "-o", "m/weights.bin", *_maybe_external(rng)], output=None)]
    elif kind == "out-data-is-input-data":
        commands = [Command(["fix", MODEL, *fp16, "-o", "m/o.onnx", "--external-data"], output="m/o.onnx")]
    elif kind == "out-other-folder":
        files["m/sub"] = Folder()
        out = rng.choice(["m/sub/out.onnx", "out/out.onnx"])
        commands = [Command(["fix", MODEL, *fp16, "-o", out, *_maybe_external(rng)], output=out)]
    elif kind == "out-hardlink":
        linked = rng.choice([MODEL, f"m/{data_name}"])
        files["m/alias.onnx"] = HardLink(linked)
        commands = [Command(["fix", MODEL, *fp16, "-o", "m/alias.onnx"], output=None)]
        what = f"{kind} to {linked}"
    elif kind == "out-symlink":
        linked = rng.choice(["model.onnx", data_name])
        files["m/alias.onnx"] = Symlink(linked)
        commands = [Command(["fix", MODEL, *fp16, "-o", "m/alias.onnx"], output=None)]
        what = f"{kind} to {linked}"
    elif kind == "signal":
        signum = rng.choice([signal.SIGINT, signal.SIGTERM])
        delay = rng.uniform(0.02, 2.0)
        argv = rng.choice([["fix", MODEL, "-o", FIXED], ["fix", MODEL, "--fp16", "-o", FIXED16], ["verify", MODEL]])
        output = argv[-1] if argv[0] == "fix" else None
        commands = [Command(argv, output=output, signal=(int(signum), delay))]
        what = f"{signal.Signals(signum).name} after {delay:.2f} s during {' '.join(argv[:2])}"
    elif kind == "fsize":
        limit = rng.choice([0, 1, 512, 4096, 64 * 1024])
        commands = [Command(["fix", MODEL, *fp16, "-o", FIXED, *_maybe_external(rng)], output=FIXED, fsize=limit)]
        what = f"RLIMIT_FSIZE {limit} B"
    elif kind == "shape":
        dims = ["100000000x4x8", "0x0", "1x-3", "", "x".join(["2"] * 40), "1000000x1000000", "9:9:9", "1e3"]
        value = rng.choice([f"{input_name}:{d}" for d in dims] + ["nosuch:1x2"])
        commands = _some_commands(rng, ["--shape", value])
        what = f"--shape {value}"
    elif kind == "seed":
        value = rng.choice(["-1", str(2**70), "-99999999999999999999", "1.5", "nan"])
        commands = _some_commands(rng, ["--seed", value])
        what = f"--seed {value}"
    elif kind in ("inputs-file", "config-file", "save-inputs", "npz-header"):
        commands, explicit, what = _option_file_case(rng, kind, files, input_name)
    case.family, case.description = f"cli.{kind}", f"{seed}: {what}"
    case.files, case.commands, case.explicit = files, commands, explicit


def _maybe_external(rng: random.Random) -> list[str]:
    return rng.choice([[], ["--external-data"], ["--no-external-data"]])


def _some_commands(rng: random.Random, extra: list[str]) -> list[Command]:
    """The commands that take `extra` (verify and fix take --shape/--seed/--inputs; lint too)."""
    pool = standard_commands(extra=tuple(extra))
    return rng.sample(pool, rng.choice([1, 2, 4]))


def _npz_claiming(member: str, elements: int) -> bytes:
    """An .npz whose member `member` has a header claiming `elements` float32 values but holds 16 bytes."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({elements},), }}"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(16)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{member}.npy", npy)
    return buffer.getvalue()


def _option_file_case(rng: random.Random, kind: str, files: dict[str, FileSpec], input_name: str):
    if kind == "npz-header":
        member = rng.choice(["x", input_name])  # unnamed or named after the model's input
        claimed = rng.choice([10**12, 2**40, 2**62])
        path = "opt/inputs.npz"
        files[path] = _npz_claiming(member, claimed)
        return _some_commands(rng, ["--inputs", path]), (path,), f"--inputs .npz member '{member}' claiming {claimed}"
    if kind == "config-file":
        variant = rng.choice(["fifo", "missing-folder", "non-utf8", "deep", "folder", "dev-zero", "huge-key"])
        path = "opt/cfg.toml"
        if variant == "fifo":
            files[path] = Fifo()
        elif variant == "missing-folder":
            path = "opt/missing/cfg.toml"
        elif variant == "non-utf8":
            files[path] = b"[tool.graphdoctor]\nselect = ['\xff\xfe']\n"
        elif variant == "deep":
            files[path] = b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n"
        elif variant == "folder":
            files[path] = Folder()
        elif variant == "dev-zero":
            files[path] = Symlink("/dev/zero")
        else:
            files[path] = b"[tool.graphdoctor]\n" + b"k" * 100_000 + b" = 1\n"
        pool = [c for c in standard_commands(extra=("--config", path)) if c.argv[0] != "verify"]
        commands = rng.sample(pool, rng.choice([1, 3]))
        for command in commands:
            command.time_limit = 10.0
        return commands, (path,), f"--config {variant}"
    option = "--inputs" if kind == "inputs-file" else "--save-inputs"
    variant = rng.choice(["fifo", "missing-folder", "folder", "dev-zero", "garbage", "model-itself"])
    path = "opt/inputs.npz"
    if variant == "fifo":
        files[path] = Fifo()
    elif variant == "missing-folder":
        path = "opt/missing/inputs.npz"
    elif variant == "folder":
        files[path] = Folder()
    elif variant == "dev-zero":
        files[path] = Symlink("/dev/zero")
    elif variant == "garbage":
        files[path] = b"PK\x03\x04" + bytes(100)
    else:
        path = MODEL
    if option == "--save-inputs":
        commands = [Command(["verify", MODEL, option, path], extra_outputs=(path,))]
    else:
        commands = _some_commands(rng, [option, path])
    for command in commands:
        command.time_limit = 10.0
    return commands, (path,), f"{option} {variant}"


FAMILIES: dict[str, tuple[float, Callable[[random.Random, Case], None]]] = {
    "bytes": (0.2, _byte_case),
    "proto": (0.45, _proto_case),
    "external": (0.2, _external_case),
    "cli": (0.15, _cli_case),
}


def generate(seed: int, index: int) -> Case:
    """Case `index` of run `seed`: the same pair always gives the same case."""
    rng = random.Random(f"graphdoctor-fuzz:{seed}:{index}")
    case = Case(id=f"{seed}-{index}", family="", description="")
    weights = [weight for weight, _ in FAMILIES.values()]
    builder = rng.choices([build for _, build in FAMILIES.values()], weights)[0]
    for _attempt in range(5):  # a mutator can fail on a seed it does not fit (no tensor to change)
        try:
            builder(rng, case)
            return case
        except (IndexError, ValueError, StopIteration, TypeError):
            continue
    raise RuntimeError(f"case {case.id}: no mutation applied")
