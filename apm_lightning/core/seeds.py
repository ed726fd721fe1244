"""The run's seed, as the data samplers, the step seeder and the pretraining masks read it."""

from __future__ import annotations


def run_seed() -> int:
    """The seed ``seed_everything`` set for this run (the same on every rank and on resume),
    folded into 31 bits: numpy and ``random`` take it as is."""
    import torch

    return torch.initial_seed() % (2**31)
