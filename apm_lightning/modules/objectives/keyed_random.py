"""Counter-based random numbers for masks and samples: a draw is a function of (run seed, step,
the block's index in the corpus, position, stream), never of a generator's state.

A resumed run draws the same masks, and a block gets the same mask whichever DDP rank or batch
holds it, so two processes train exactly as one does on the same global batch. Hand-written
because torch's generators are stateful: no torch or numpy generator is keyed per element.
"""

from __future__ import annotations

import torch

# splitmix64 constants as signed int64 (torch has no uint64 arithmetic; products wrap).
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
# Validation keys: every evaluation scores the same positions (the model alone changes).
VALIDATION_SEED = 1_000_003


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x >> bits) & ((1 << (64 - bits)) - 1)  # logical shift on int64


def splitmix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer, elementwise on int64: well-mixed keys from consecutive ones."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def keyed_uniform(keys: torch.Tensor, stream: int) -> torch.Tensor:
    """Uniform [0, 1) float32 per int64 key, for one of several independent streams; the same on
    every device, rank and run."""
    offset = ((stream + 1) * 0x5851F42D4C957F2D) % (1 << 64)
    offset -= (1 << 64) if offset >= (1 << 63) else 0  # as a signed int64
    mixed = splitmix(splitmix(keys + offset))
    return _shift_right(mixed, 40).to(torch.float32) * (1.0 / (1 << 24))


def row_keys(seed: int, step: int, rows: torch.Tensor) -> torch.Tensor:
    """One key per block: a function of (seed, step, the block's index in the corpus)."""
    base = splitmix(torch.tensor([seed * 1_000_003 + step], dtype=torch.int64, device=rows.device))
    return splitmix(base + rows.to(torch.int64))


def position_keys(keys: torch.Tensor, length: int) -> torch.Tensor:
    """One int64 key per (block, position): ``(rows, length)`` from one key per row."""
    positions = torch.arange(length, device=keys.device, dtype=torch.int64)
    return keys.view(-1, 1) * 4099 + positions  # distinct per (row key, position)


def position_uniforms(
    keys: torch.Tensor | None, shape: torch.Size, streams: int, device: torch.device
) -> list[torch.Tensor]:
    """``streams`` independent uniform [0, 1) draws per position of a ``(rows, length)`` batch:
    keyed (see ``row_keys``) when ``keys`` is given, else from torch's generator (a batch
    without block indices)."""
    if keys is None:
        return [torch.rand(shape, device=device) for _ in range(streams)]
    element = position_keys(keys, shape[1])
    return [keyed_uniform(element, stream) for stream in range(streams)]
