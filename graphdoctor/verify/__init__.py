"""Verification: run two models on the same inputs and say, per backend, whether they agree and where not."""

from __future__ import annotations

__all__ = ["sample_batches", "sample_inputs"]


def sample_inputs(model, inputs, shapes, seed: int):
    """Inputs for running `model`: loaded from the file `inputs` and bound to its inputs, else generated
    from its input specs (`shapes` for dynamic dims) with `seed`."""
    from graphdoctor.verify import inputs as verify_inputs

    if inputs is not None:
        return verify_inputs.bind_inputs(model, verify_inputs.load_inputs(inputs))
    return verify_inputs.generate_inputs(model, seed=seed, shapes=shapes)


def sample_batches(model, inputs, shapes, seed: int):
    """Batches of inputs for calibrating `model`: each file of the folder `inputs` (a lazy sequence, read a
    batch at a time), the one file `inputs`, or one generated batch."""
    from graphdoctor.verify import inputs as verify_inputs

    if inputs is not None:
        return verify_inputs.load_input_batches(inputs).bound_to(model)
    return [verify_inputs.generate_inputs(model, seed=seed, shapes=shapes)]
