"""``clm``: causal-language modelling (next-token prediction), on a decoder (GPT-2, Llama...)
or on a BERT-family model run with a causal mask (the objective ablation)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.text import Perplexity

from apm_lightning.modules.objectives.base import Objective, register_objective
from apm_lightning.modules.objectives.masking import IGNORE


@register_objective("clm")
class CausalLM(Objective):
    causal_only = True
    auto_model = "AutoModelForCausalLM"
    validation_weights = {"loss": "predicted"}

    def compute(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None = None, metrics: bool = True
    ) -> dict[str, Any]:
        logits = self.module.net(input_ids=input_ids).logits[:, :-1]
        labels = input_ids[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        return {"loss": loss, "predicted": labels.numel(), "logits": logits, "labels": labels}

    def validation_metrics(self) -> dict[str, Metric]:
        return {**super().validation_metrics(), "perplexity": Perplexity(ignore_index=IGNORE)}

    def update_validation(self, metrics: nn.ModuleDict, out: dict[str, Any], tokens: int) -> None:
        super().update_validation(metrics, out, tokens)
        metrics["perplexity"].update(out["logits"].float(), out["labels"])
