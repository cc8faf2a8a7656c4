"""A fixed-seed slice of the fuzzer (the first cases of `make fuzz`'s default run): every invariant of
tests/fuzz/runner.py must hold on each. A failure names the case; `python -m tests.fuzz replay CASE_ID`
rebuilds it and shows every command's output.

The slice runs in a fresh interpreter, as `make fuzz` and users do: its fork server forks every command
from its own process, and a pytest process that other tests have run ONNX Runtime sessions in (its thread
pools already started) gives forked children errors no user process sees ("SystemError: error return
without exception set", measured after tests/fix)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fuzz.runner import REPO

SEED = 0
CASES = 300  # 60 s on the idle 2-core machine (two workers): each fix --fp16 case now also loads its output in a child

SLICE = """
import json, sys
from pathlib import Path
from tests.fuzz.runner import REPO, run_cases

seed, cases, work = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
results = run_cases(seed, list(range(cases)), work, REPO / ".cache/fuzz/slice-cases")
print(json.dumps({
    "cases": len(results),
    "failing": [
        f"{r.id} {r.family} ({r.description[:80]}): {r.violations[0][0]}: {r.violations[0][1][:160]}"
        for r in results if r.violations
    ],
}))
"""


def test_fuzz_slice_breaks_no_invariant(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", SLICE, str(SEED), str(CASES), str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["cases"] == CASES
    failing = summary["failing"]
    assert not failing, f"{len(failing)} of {CASES} fuzz cases broke an invariant:\n" + "\n".join(failing)
