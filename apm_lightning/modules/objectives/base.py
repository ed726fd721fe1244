"""What a pretraining objective decides, and the registry that finds objectives by name.

An objective is one file in this folder: a subclass of ``Objective`` decorated with
``@register_objective("name")``; the package imports every file in it, so the file is all a new
objective takes (``model.objective: name`` in a config then selects it). ``PretrainingModule``
(modules/pretraining.py) owns what every objective shares: the backbone's config and tokenizer,
the optimizer, the loops, the keyed random draws, checkpoints, export and results. It asks its
objective for the rest:

- its own settings (``arguments``, set in a config as ``model.objective_args``);
- tokens it adds to the tokenizer (``prepare_tokenizer``: T5's sentinels), before the
  vocabulary size is read;
- the networks, built on a Hugging Face config (``build``; ``needs_mask_token``, ``causal_only``
  and ``model_type`` constrain the config and tokenizer it gets);
- the loss and metric values of a batch (``compute``);
- the metrics logged in training (``train_metrics``) and validation (``validation_weights``:
  how each value is weighted when batches are averaged; ``validation_metrics`` and
  ``update_validation`` for anything else, e.g. CLM's perplexity);
- what is exported and fine-tuned (``exported``, by default ``module.net``).

Networks are attributes of the LightningModule (``module.net`` and any others), not of the
objective: their names are the checkpoint's state-dict keys, and Lightning moves, wraps and
saves them with the module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torchmetrics import MeanMetric, Metric

from apm_lightning.core.errors import APMError
from apm_lightning.core.library_compat import attached_trainer

if TYPE_CHECKING:
    from apm_lightning.modules.pretraining import PretrainingModule

REGISTRY: dict[str, type[Objective]] = {}


def register_objective(name: str):
    """Class decorator: ``model.objective: name`` selects the class."""

    def register(cls: type[Objective]) -> type[Objective]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"two pretraining objectives are named {name!r}: {REGISTRY[name]} and {cls}")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return register


class Objective:
    """One pretraining objective of a ``PretrainingModule`` (``self.module``); see the module
    docstring for what a subclass decides."""

    name: ClassVar[str] = ""  # set by register_objective
    # The tokenizer must have a mask token (objectives that mask their input).
    needs_mask_token: ClassVar[bool] = False
    # ``attention: auto`` runs causally and a bidirectional mask is refused: it would see the answer.
    causal_only: ClassVar[bool] = False
    # A ``backbone_config`` is built as this model type (ELECTRA's shape keys on a BERT config).
    model_type: ClassVar[str | None] = None
    # The transformers Auto class ``build`` instantiates.
    auto_model: ClassVar[str] = "AutoModelForMaskedLM"
    # Values of ``compute`` logged as train/<name> on logging steps (when present).
    train_metrics: ClassVar[tuple[str, ...]] = ()
    # Validation values, each averaged over batches weighted by "predicted" (``compute``'s
    # count of scored positions) or "tokens" (every position of the batch); logged as val/<name>.
    validation_weights: ClassVar[dict[str, str]] = {"loss": "predicted"}
    # Settings of this objective alone, with their defaults; a config sets them as
    # ``model.objective_args`` and the objective reads ``self.args``.
    arguments: ClassVar[dict[str, Any]] = {}

    def __init__(self, module: PretrainingModule) -> None:
        self.module = module
        given = dict(module.hparams.get("objective_args") or {})
        unknown = sorted(set(given) - set(self.arguments))
        if unknown:
            raise APMError(
                f"objective {self.name} has no setting {', '.join(unknown)} (model.objective_args); "
                f"its settings: {', '.join(self.arguments) or 'none'}"
            )
        self.args = {**self.arguments, **given}

    @property
    def hparams(self) -> Any:
        return self.module.hparams

    # ------------------------------------------------------------------ building
    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        """The tokenizer this objective trains with and exports: e.g. with tokens added. It is
        called before the model's vocabulary size is taken from it, and for the corpus too."""
        return tokenizer

    def check_config(self, config: Any) -> None:
        """Refuse (APMError) a Hugging Face config this objective cannot train."""

    def build(self, config: Any, pretrained: str | None) -> None:
        """Create the networks as attributes of ``self.module``; ``module.net`` is the one
        exported. ``pretrained`` is a resolved checkpoint folder, or None to start from scratch."""
        self.module.net = self.load_network(self.auto_model, config, pretrained)

    def load_network(self, auto_model: str, config: Any, pretrained: str | None) -> nn.Module:
        """A transformers ``auto_model`` (e.g. ``AutoModelForMaskedLM``) on ``config``, from the
        ``pretrained`` weights or freshly initialised; an output layer is tied to the input
        embeddings when the config says so."""
        import transformers

        auto = getattr(transformers, auto_model)
        if pretrained is not None:
            net = auto.from_pretrained(
                pretrained, config=config, trust_remote_code=self.hparams.trust_remote_code
            ).train()  # from_pretrained returns eval mode
        else:
            net = auto.from_config(config)
        if config.tie_word_embeddings and net.get_output_embeddings() is not None:
            # A checkpoint without an LM head (sentence-transformers MiniLM) gets a new one whose
            # decoder is the input embedding matrix, as BERT's was.
            net.get_output_embeddings().weight = net.get_input_embeddings().weight
        return net

    # ------------------------------------------------------------------ a batch
    def compute(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None = None, metrics: bool = True
    ) -> dict[str, Any]:
        """``loss`` (what is minimised), ``predicted`` (how many positions it scores) and the
        values the metrics need. ``keys`` (one int64 per block, ``keyed_random.row_keys``) key
        every random draw, so a block is corrupted alike on any rank and after a resume; None
        means torch's generator. ``metrics`` False: a step that logs nothing (skip extra work)."""
        raise NotImplementedError

    def global_mean(self, total: torch.Tensor, count: int) -> torch.Tensor:
        """``total / count`` for the *global* batch: ranks hold different numbers of scored
        positions and DDP averages their gradients, so each rank divides its sum by the mean
        count over ranks; the result equals one process on the whole batch."""
        module = self.module
        counted = torch.tensor(float(count), device=total.device)
        if module.training and attached_trainer(module) is not None and module.trainer.world_size > 1:
            counted = module.trainer.strategy.reduce(counted, reduce_op="sum") / module.trainer.world_size
        return total / counted.clamp(min=1.0)

    # ------------------------------------------------------------------ validation
    def validation_metrics(self) -> dict[str, Metric]:
        return {name: MeanMetric() for name in self.validation_weights}

    def update_validation(self, metrics: nn.ModuleDict, out: dict[str, Any], tokens: int) -> None:
        weights = {"predicted": max(1, out["predicted"]), "tokens": tokens}
        for name, weight in self.validation_weights.items():
            metrics[name].update(out[name], weight=weights[weight])

    # ------------------------------------------------------------------ export
    def exported(self) -> nn.Module:
        """The network written by ``apm export`` and fine-tuned downstream."""
        return self.module.net
