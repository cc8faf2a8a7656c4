"""A fuzzer for graphdoctor's promises on hostile input: `make fuzz` (thousands of cases, a table) and a
fixed-seed slice in the test suite. See runner.py for the invariants, cases.py for what a case is."""
