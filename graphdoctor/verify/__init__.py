"""Verification: run two models on the same inputs and say, per backend, whether they agree and where not."""
