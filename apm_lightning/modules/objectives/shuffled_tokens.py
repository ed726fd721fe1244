"""``shuffled_tokens``: shuffled-token detection, the worked example of docs/extending.md.

A share (``shuffle_rate``) of each block's positions is chosen and their tokens are permuted
among themselves; a token-classification head on a BERT-style model says at every position
whether its token moved (binary cross-entropy), as ELECTRA's discriminator does for replaced
tokens. Which positions, and in what order, are keyed draws: the same on any rank and after a
resume.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from apm_lightning.modules.objectives.base import Objective, register_objective
from apm_lightning.modules.objectives.keyed_random import position_uniforms


def shuffle_chosen(input_ids: torch.Tensor, chosen: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """``input_ids`` with the tokens at the ``chosen`` positions of each row permuted among
    themselves, in the order of ``draws`` (uniform [0, 1)); the other positions keep theirs."""
    length = input_ids.shape[1]
    positions = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    # Per row, the chosen positions come first, then the others in order: where tokens go...
    targets = torch.argsort(torch.where(chosen, positions, positions + length), dim=1, stable=True)
    # ...and where they come from: the chosen positions in the order of their draws.
    sources = torch.argsort(torch.where(chosen, draws, 1.0 + positions), dim=1, stable=True)
    return input_ids.scatter(1, targets, input_ids.gather(1, sources))


@register_objective("shuffled_tokens")
class ShuffledTokens(Objective):
    auto_model = "AutoModelForTokenClassification"
    arguments = {"shuffle_rate": 0.15}  # a config sets it as model.objective_args.shuffle_rate
    train_metrics = ("moved_accuracy",)
    validation_weights = {"loss": "predicted", "moved_accuracy": "predicted"}

    def build(self, config: Any, pretrained: str | None) -> None:
        config.num_labels = 1  # one logit per position: moved or not
        super().build(config, pretrained)

    def shuffle(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shuffled blocks, and where a token moved (one swapped with an equal one has not)."""
        choose, order = position_uniforms(keys, input_ids.shape, 2, input_ids.device)
        chosen = (choose < self.args["shuffle_rate"]) & ~self.module.special[input_ids]
        shuffled = shuffle_chosen(input_ids, chosen, order)
        return shuffled, shuffled != input_ids

    def compute(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None = None, metrics: bool = True
    ) -> dict[str, Any]:
        shuffled, moved = self.shuffle(input_ids, keys)
        logits = self.module.net(input_ids=shuffled).logits.squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), moved.float())
        out: dict[str, Any] = {"loss": loss, "predicted": moved.numel()}
        if metrics:
            out["moved_accuracy"] = ((logits > 0) == moved).float().mean()
        return out
