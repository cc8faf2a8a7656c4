"""`python -m tests.fuzz [run] [--cases N] [--seed S] [--workers W]`: run the fuzzer and print the table;
`python -m tests.fuzz replay CASE_ID`: rebuild one case (`SEED-INDEX`, as the table and the failure JSON name
it), run it again and print every command's exit code, stderr and violations.

`make fuzz` runs `run`; FUZZ_CASES and FUZZ_SEED set the defaults of --cases and --seed. Exit 1 when any
case broke an invariant; the failing cases go to .cache/fuzz/failures-SEED.json (argv, stderr, violations,
and the folder holding the mutated model as it was before the run: .cache/fuzz/cases/CASE_ID/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict

from tests.fuzz.runner import CATEGORIES, REPO, CaseResult, run_case, run_cases, warm_up

CACHE = REPO / ".cache" / "fuzz"
SHORT = {
    "traceback": "trace",
    "internal-error": "intern",
    "bad-exit": "exit",
    "stderr-lines": "lines",
    "input-modified": "input",
    "leftover": "left",
    "read-outside": "read",
    "unloadable": "load",
    "over-memory": "mem",
    "over-time": "time",
    "signal-ignored": "signal",
    "harness": "harness",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run N cases and print the table (the default)")
    _run_arguments(run)
    replay = commands.add_parser("replay", help="run one case again, verbosely")
    replay.add_argument("case_id", metavar="CASE_ID", help="SEED-INDEX, e.g. 0-1234")
    _run_arguments(parser)
    args = parser.parse_args(argv)
    if args.command == "replay":
        return _replay(args.case_id)
    return _run(args.cases, args.seed, args.workers, args.start)


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=int, default=int(os.environ.get("FUZZ_CASES", 5000)))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", 0)))
    parser.add_argument("--start", type=int, default=0, help="first case index (default 0)")
    parser.add_argument("--workers", type=int, default=2, choices=(1, 2), help="parallel workers (at most 2)")


def _run(cases: int, seed: int, workers: int, start: int) -> int:
    began = time.perf_counter()
    report = CACHE / f"failures-{seed}.json"
    partial = report.with_suffix(".partial.jsonl")  # failures as they come, for a look during a long run
    report.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("")
    failing = 0

    def on_result(result: CaseResult, done: int, total: int) -> None:
        nonlocal failing
        if result.violations:
            failing += 1
            with partial.open("a") as file:
                file.write(json.dumps(result.to_json()) + "\n")
        if done % 100 == 0 or done == total:
            elapsed = time.perf_counter() - began
            print(f"  {done}/{total} cases, {failing} failing, {elapsed:.0f} s", file=sys.stderr, flush=True)

    indices = list(range(start, start + cases))
    results = run_cases(seed, indices, CACHE / "work", CACHE / "cases", workers, on_result)
    print(render_table(results, time.perf_counter() - began))
    failures = [r for r in results if r.violations]
    report.write_text(json.dumps([r.to_json() for r in failures], indent=1))
    partial.unlink()
    print(f"\n{len(failures)} of {len(results)} cases broke an invariant; details: {report}")
    if failures:
        print(f"replay one: python -m tests.fuzz replay {failures[0].id}")
    return 1 if failures else 0


def render_table(results: list[CaseResult], seconds: float) -> str:
    """Per family: cases and the count of each violation category; then totals, peak memory, slowest."""
    by_family: dict[str, Counter] = defaultdict(Counter)
    cases: Counter = Counter()
    for result in results:
        cases[result.family] += 1
        for category in {category for category, _ in result.violations}:
            by_family[result.family][category] += 1
    shown = [c for c in CATEGORIES if c != "harness" or any(by_family[f]["harness"] for f in by_family)]
    width = max([len("family"), *map(len, cases)]) + 2
    header = "family".ljust(width) + "cases".rjust(6) + "".join(SHORT[c].rjust(8) for c in shown)
    lines = [header, "-" * len(header)]
    total: Counter = Counter()
    for family in sorted(cases):
        counts = by_family[family]
        total.update(counts)
        lines.append(family.ljust(width) + f"{cases[family]:6d}" + "".join(f"{counts[c]:8d}" for c in shown))
    lines.append("-" * len(header))
    lines.append("total".ljust(width) + f"{sum(cases.values()):6d}" + "".join(f"{total[c]:8d}" for c in shown))
    lines.append(
        "(cases with at least one violation of each kind; columns: " + ", ".join(f"{SHORT[c]}={c}" for c in shown) + ")"
    )
    commands = [(command, result) for result in results for command in result.commands]
    if commands:
        peak, peak_case = max(commands, key=lambda item: item[0].rss_mb)
        slow, slow_case = max(commands, key=lambda item: item[0].seconds)
        lines.append(f"peak memory: {peak.rss_mb:.0f} MiB ({peak_case.id}: graphdoctor {' '.join(peak.argv[:1])})")
        lines.append(f"slowest command: {slow.seconds:.1f} s ({slow_case.id}: graphdoctor {' '.join(slow.argv)[:120]})")
        slowest = max(results, key=lambda r: sum(c.seconds for c in r.commands))
        total_seconds = sum(c.seconds for c in slowest.commands)
        lines.append(f"slowest case: {total_seconds:.1f} s for {len(slowest.commands)} commands ({slowest.id})")
    lines.append(f"{len(results)} cases, {len(commands)} commands in {seconds:.0f} s")
    return "\n".join(lines)


def _replay(case_id: str) -> int:
    from tests.fuzz.cases import generate

    seed, _, index = case_id.partition("-")
    case = generate(int(seed), int(index))
    warm_up()
    root = CACHE / "replay" / case_id
    if root.exists():
        import shutil

        shutil.rmtree(root)
    print(f"case {case.id} ({case.family}): {case.description}\nfolder: {root}")
    result = run_case(case, root)
    for command in result.commands:
        print(f"\n$ graphdoctor {' '.join(command.argv)}")
        print(f"  exit {command.exit}, {command.seconds:.2f} s, {command.rss_mb:.0f} MiB")
        for line in command.stderr.strip().splitlines()[-20:]:
            print(f"  stderr| {line}")
        for category, detail in command.violations:
            print(f"  VIOLATION {category}: {detail}")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
