"""A fixed-seed slice of the fuzzer (the first cases of `make fuzz`'s default run): every invariant of
tests/fuzz/runner.py must hold on each. A failure names the case; `python -m tests.fuzz replay CASE_ID`
rebuilds it and shows every command's output."""

from __future__ import annotations

from pathlib import Path

from tests.fuzz.runner import REPO, run_cases

SEED = 0
CASES = 200  # about 90 s on the 2-core development machine, two workers


def test_fuzz_slice_breaks_no_invariant(tmp_path: Path) -> None:
    results = run_cases(SEED, list(range(CASES)), tmp_path / "work", REPO / ".cache" / "fuzz" / "slice-cases")
    assert len(results) == CASES
    failing = [r for r in results if r.violations]
    report = "\n".join(
        f"{r.id} {r.family} ({r.description[:80]}): {r.violations[0][0]}: {r.violations[0][1][:160]}" for r in failing
    )
    assert not failing, f"{len(failing)} of {CASES} fuzz cases broke an invariant:\n{report}"
