"""``prefix_lm``: prefix language modelling on a BERT-style model (UniLM's seq-to-seq mask, T5's
prefix LM). Each block is split at a random point; the prefix attends bidirectionally within
itself, every later position sees the prefix and the positions before it, and the loss is
next-token cross-entropy over the part after the prefix. One network learns both an encoder's
bidirectional context and a decoder's left-to-right prediction.

The split point is a keyed draw (one per block: the same on any rank and after a resume),
uniform over 1 .. length - 1, so every block keeps at least its first token as prefix and one
token to predict. The attention mask is passed to the model as a ready 4D mask in the form its
attention implementation takes (sdpa: booleans, eager: additive).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from apm_lightning.core.errors import APMError
from apm_lightning.core.library_compat import attention_implementation
from apm_lightning.modules.objectives.base import Objective, register_objective
from apm_lightning.modules.objectives.keyed_random import keyed_uniform


def prefix_lengths(keys: torch.Tensor | None, rows: int, length: int, device: torch.device) -> torch.Tensor:
    """One prefix length per block, uniform over 1 .. length - 1 (keyed, else torch's generator)."""
    uniform = keyed_uniform(keys, stream=0) if keys is not None else torch.rand(rows, device=device)
    return 1 + (uniform * (length - 1)).long().clamp_(max=length - 2)


def prefix_lm_allowed(prefix: torch.Tensor, length: int) -> torch.Tensor:
    """``(rows, 1, length, length)`` booleans, True where a query position may attend to a key
    position: every key in its row's prefix, and every key at or before the query (causal)."""
    positions = torch.arange(length, device=prefix.device)
    causal = positions.view(1, 1, length, 1) >= positions.view(1, 1, 1, length)
    return causal | (positions.view(1, 1, 1, length) < prefix.view(-1, 1, 1, 1))


@register_objective("prefix_lm")
class PrefixLM(Objective):
    train_metrics = ("next_token_accuracy",)
    validation_weights = {"loss": "predicted", "next_token_accuracy": "predicted"}

    def check_config(self, config: Any) -> None:
        if getattr(config, "is_decoder", False):
            raise APMError(
                "prefix_lm sets its own attention mask (bidirectional over the prefix, causal after "
                "it): use attention: auto"
            )

    def attention_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """The mask in the form the model's attention implementation takes."""
        implementation = attention_implementation(self.module.net.config)
        if implementation == "sdpa":
            return allowed  # torch's scaled_dot_product_attention: True takes part
        if implementation == "eager":
            additive = torch.zeros(allowed.shape, device=allowed.device)
            return additive.masked_fill_(~allowed, torch.finfo(additive.dtype).min)
        raise APMError(f"prefix_lm needs the sdpa or eager attention implementation, not {implementation}")

    def compute(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None = None, metrics: bool = True
    ) -> dict[str, Any]:
        rows, length = input_ids.shape
        prefix = prefix_lengths(keys, rows, length, input_ids.device)
        mask = self.attention_mask(prefix_lm_allowed(prefix, length))
        logits = self.module.net(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
        # Position t predicts token t + 1 from position prefix - 1 on: earlier ones see it.
        scored = torch.arange(length - 1, device=input_ids.device).view(1, -1) >= (prefix - 1).view(-1, 1)
        logits, targets = logits[scored], input_ids[:, 1:][scored]
        total = F.cross_entropy(logits.float(), targets, reduction="sum")
        out: dict[str, Any] = {"loss": self.global_mean(total, targets.numel()), "predicted": targets.numel()}
        if metrics:
            out["next_token_accuracy"] = (logits.argmax(-1) == targets).float().mean()
        return out
