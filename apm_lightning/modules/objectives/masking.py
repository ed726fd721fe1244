"""BERT's dynamic masking and token sampling, shared by the objectives that corrupt their input."""

from __future__ import annotations

import torch

from apm_lightning.modules.objectives.keyed_random import position_uniforms

IGNORE = -100  # the label of a position that is not scored (torch's cross-entropy default)


def mask_tokens(
    input_ids: torch.Tensor,
    special: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    rate: float = 0.15,
    keys: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's dynamic masking: each non-special token is chosen with probability ``rate``; a
    chosen token becomes ``mask_id`` (80%), a random token (10%) or stays (10%).

    Returns ``(inputs, labels)``, labels being the original ids at chosen positions and -100
    elsewhere. ``special`` is a boolean lookup over the vocabulary. With ``keys`` (one int64 per
    row, see ``row_keys``) the draws are a function of the row key and the position alone, so
    a block gets the same mask whichever rank or batch it lands in; else torch's generator.
    """
    draws = position_uniforms(keys, input_ids.shape, 3, input_ids.device)
    chosen = (draws[0] < rate) & ~special[input_ids]
    action = draws[1]
    random_ids = (draws[2] * vocab_size).long().clamp_(max=vocab_size - 1)
    inputs = input_ids.clone()
    inputs[chosen & (action < 0.8)] = mask_id
    replace = chosen & (action >= 0.8) & (action < 0.9)
    inputs[replace] = random_ids[replace]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    return inputs, labels


def sample_tokens(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` drawn from its softmax, by inverting the cumulative
    distribution at ``uniform`` (one draw in [0, 1) per row)."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(dim=-1)
    target = uniform.view(-1, 1).to(cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
