"""``electra``: a small generator (MLM) and a discriminator trained on replaced-token detection,
sharing their embeddings (the ELECTRA paper); the discriminator is what gets exported and
fine-tuned. ``generator_size`` is the generator's width as a fraction of the discriminator's,
``discriminator_weight`` the paper's lambda."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from apm_lightning.core.errors import APMError
from apm_lightning.modules.objectives.base import register_objective
from apm_lightning.modules.objectives.keyed_random import keyed_uniform, position_keys
from apm_lightning.modules.objectives.masking import IGNORE, sample_tokens
from apm_lightning.modules.objectives.mlm import MaskedLM, mlm_parts


def electra_loss(
    generator_logits: torch.Tensor,
    generator_labels: torch.Tensor,
    discriminator_logits: torch.Tensor,
    replaced: torch.Tensor,
    discriminator_weight: float = 50.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ELECTRA's objective: the generator's MLM cross-entropy over the masked positions plus
    ``discriminator_weight`` times the discriminator's binary cross-entropy (replaced or
    original) averaged over every position it scores. Returns (total, generator, discriminator).
    """
    generator = F.cross_entropy(generator_logits.float(), generator_labels)
    discriminator = F.binary_cross_entropy_with_logits(discriminator_logits.float(), replaced.float())
    return generator + discriminator_weight * discriminator, generator, discriminator


@register_objective("electra")
class Electra(MaskedLM):
    model_type = "electra"
    train_metrics = ("masked_accuracy", "replaced_accuracy")
    validation_weights = {
        "loss": "predicted",
        "generator_loss": "predicted",
        "discriminator_loss": "tokens",
        "masked_accuracy": "predicted",
        "replaced_accuracy": "tokens",
    }

    def check_config(self, config: Any) -> None:
        if config.model_type != "electra":
            raise APMError(f"electra needs an ELECTRA backbone or config, not {config.model_type}")

    def build(self, config: Any, pretrained: str | None) -> None:
        from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

        module = self.module
        ratio = self.hparams.generator_size
        hidden = max(16, int(config.hidden_size * ratio))
        heads = max(1, int(config.num_attention_heads * ratio))
        while hidden % heads:
            heads -= 1
        gen_config = ElectraConfig(
            **{**config.to_dict(), "hidden_size": hidden, "num_attention_heads": heads}
        )
        gen_config.intermediate_size = max(hidden, int(config.intermediate_size * ratio))
        gen_config.is_decoder = False
        if pretrained is not None:
            module.discriminator = ElectraForPreTraining.from_pretrained(pretrained, config=config).train()
        else:
            module.discriminator = ElectraForPreTraining(config)
        module.generator = ElectraForMaskedLM(gen_config)
        # Shared embeddings (word, position, type, their LayerNorm), and the generator's output
        # matrix is the word embedding matrix: ELECTRA's "tied embeddings" setting.
        shared = module.discriminator.electra.embeddings
        module.generator.electra.embeddings = shared
        module.generator.generator_lm_head.weight = shared.word_embeddings.weight
        module.net = module.discriminator  # what is exported and fine-tuned
        module.body, module.mlm_head = mlm_parts(module.generator)

    def language_model(self) -> torch.nn.Module:
        return self.module.generator

    def compute(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None = None, metrics: bool = True
    ) -> dict[str, Any]:
        labels, logits, targets, scores = self.predict_masked(input_ids, keys, metrics)
        # Replace the masked tokens by the generator's samples (no gradient through sampling),
        # then the discriminator tells replaced from original at every position.
        selected = labels != IGNORE
        masked = scores["predicted"]  # the first rows of logits; padding rows follow
        with torch.no_grad():
            if keys is None:
                uniform = torch.rand(masked, device=logits.device)
            else:  # keyed like the masks: the same sample whichever rank holds the block
                uniform = keyed_uniform(position_keys(keys, labels.shape[1])[selected], stream=3)
            sampled = sample_tokens(logits[:masked].detach(), uniform)
        corrupted = input_ids.clone()
        corrupted[selected] = sampled
        replaced = corrupted != input_ids  # a sample equal to the original counts as original
        disc_logits = self.module.discriminator(input_ids=corrupted).logits
        weight = self.hparams.discriminator_weight
        _, _, disc_loss = electra_loss(logits, targets, disc_logits, replaced, weight)
        gen_loss = self.masked_cross_entropy(logits, targets, masked)
        if metrics:
            scores["replaced_accuracy"] = ((disc_logits > 0) == replaced).float().mean()
        loss = gen_loss + weight * disc_loss
        return {"loss": loss, "generator_loss": gen_loss, "discriminator_loss": disc_loss, **scores}
