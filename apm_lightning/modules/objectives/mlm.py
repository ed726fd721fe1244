"""``mlm``: masked-language modelling (BERT). Dynamic masking (``mask_rate``, the 80/10/10
rule), and the output head runs only at the masked positions (``sparse_prediction``): for a 30k
vocabulary the full head costs about as much as the encoder itself, and 85% of its output would
be thrown away."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from apm_lightning.modules.objectives.base import Objective, register_objective
from apm_lightning.modules.objectives.masking import IGNORE, mask_tokens

# The sparse head's rows are padded to a multiple of this many (see ``MaskedLM.mlm_logits``).
HEAD_ROWS_MULTIPLE = 64


def mlm_parts(net: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(transformer body, head) of a ``*ForMaskedLM`` model, so the head can run on masked
    positions only; head None when the model's head is not one module that maps hidden states
    to logits."""
    base = net.base_model
    heads = [module for _, module in net.named_children() if module is not base]
    if type(net).__name__ == "ElectraForMaskedLM":
        return base, nn.Sequential(net.generator_predictions, net.generator_lm_head)
    if len(heads) == 1:
        return base, heads[0]
    return base, None


@register_objective("mlm")
class MaskedLM(Objective):
    needs_mask_token = True
    train_metrics = ("masked_accuracy",)
    validation_weights = {"loss": "predicted", "masked_accuracy": "predicted"}

    def build(self, config: Any, pretrained: str | None) -> None:
        super().build(config, pretrained)
        # The body and head of the MLM network, for sparse prediction (the same parameters).
        self.module.body, self.module.mlm_head = mlm_parts(self.module.net)

    def language_model(self) -> nn.Module:
        """The network with the MLM head (ELECTRA: its generator)."""
        return self.module.net

    def masked(self, input_ids: torch.Tensor, keys: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        module = self.module
        return mask_tokens(
            input_ids,
            module.special,
            module.tokenizer.mask_token_id,
            len(module.tokenizer),
            self.hparams.mask_rate,
            keys,
        )

    def mlm_logits(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets at the masked positions only. The sparse head's rows are padded
        to a multiple of ``HEAD_ROWS_MULTIPLE``; a padding row's target is ``IGNORE``, so no
        loss or metric counts it.

        Why the padding: the number of masked tokens changes every step, and so did the size of
        each of the head's buffers (about 1 MB each at 32 x 128). glibc's heap, given blocks of
        a new size every step between the encoder's 25 MB activations, fragmented: TAPT's
        resident memory grew from 2.0 to 4.1 GB over 60 steps with 0.44 GB in use between steps
        (``benchmarks/bench_memory.py --steps 60``). With a few sizes the blocks are reused and
        it stays flat; the extra rows cost under 1% of a step."""
        selected = labels != IGNORE
        head = getattr(self.module, "mlm_head", None)
        if self.hparams.sparse_prediction and head is not None:
            hidden = self.module.body(input_ids=inputs).last_hidden_state
            positions = selected.flatten().nonzero().squeeze(1)
            padding = -positions.numel() % HEAD_ROWS_MULTIPLE
            targets = F.pad(labels.flatten()[positions], (0, padding), value=IGNORE)
            rows = F.pad(positions, (0, padding))  # a padding row reads position 0 again
            return head(hidden.flatten(0, 1)[rows]), targets
        return self.language_model()(input_ids=inputs).logits[selected], labels[selected]

    def masked_cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor, masked: int) -> torch.Tensor:
        """Mean cross-entropy over the ``masked`` tokens of the global batch (``global_mean``);
        padding rows (target ``IGNORE``) add nothing."""
        total = F.cross_entropy(logits.float(), targets, reduction="sum", ignore_index=IGNORE)
        return self.global_mean(total, masked)

    def predict_masked(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None, metrics: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Mask the batch and predict the masked tokens: ``(labels, logits, targets, scores)``,
        logits and targets as ``mlm_logits`` gives them (the masked positions first, then any
        padding rows). The accuracy needs an argmax over the vocabulary at every masked
        position: skipped without ``metrics``."""
        inputs, labels = self.masked(input_ids, keys)
        logits, targets = self.mlm_logits(inputs, labels)
        masked = int((targets != IGNORE).sum())
        scores: dict[str, Any] = {"predicted": masked}
        if metrics:
            scores["masked_accuracy"] = (logits[:masked].argmax(-1) == targets[:masked]).float().mean()
        return labels, logits, targets, scores

    def compute(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None = None, metrics: bool = True
    ) -> dict[str, Any]:
        _, logits, targets, scores = self.predict_masked(input_ids, keys, metrics)
        return {"loss": self.masked_cross_entropy(logits, targets, scores["predicted"]), **scores}
