"""Pretraining as one LightningModule; what is learned is its objective (``model.objective``):
``mlm``, ``clm``, ``electra`` or any other class registered in ``modules/objectives/`` (one file
each; docs/extending.md shows how to add one).

Backbones are Hugging Face models, from a checkpoint (``backbone``: a folder, a hub name,
``minilm``, or an apm ``.ckpt``) or a config (``backbone_config``). ``attention`` runs one
architecture with a causal or a bidirectional mask (BERT-family configs), so that an ablation
changes the objective and nothing else.

Masks and samples are a function of (run seed, step, the block's index in the corpus,
position), through a counter-based hash (``objectives/keyed_random.py``): a resumed run draws
the same masks, and a block gets the same mask whichever DDP rank holds it, so two processes
train exactly as one does on the same global batch. Validation masks depend on the block alone:
every evaluation scores the same positions. (Dropout uses torch's generator, which the trainer
layer reseeds every step.)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apm_lightning.core.errors import APMError
from apm_lightning.core.library_compat import attached_trainer
from apm_lightning.core.seeds import run_seed
from apm_lightning.core.trust import register_module
from apm_lightning.modules.base import APMModule, optimizer_recipe
from apm_lightning.modules.objectives import objective_class
from apm_lightning.modules.objectives.keyed_random import VALIDATION_SEED, row_keys

ATTENTIONS = ("auto", "bidirectional", "causal")
# Decoder-only families: no bidirectional mode.
DECODER_ONLY = ("gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "opt", "phi")


@register_module("apm_lightning.tasks.pretraining.PretrainingModule")
class PretrainingModule(APMModule):
    """Pretrain (or keep pretraining) a Transformer with MLM, CLM, ELECTRA or another objective.

    Args:
        objective: the name of a registered objective (``modules/objectives/``): ``mlm``,
            ``clm``, ``electra``, ...
        backbone: start from these weights (a folder, a hub name, ``minilm``, an apm
            ``.ckpt``); a missing MLM head is created and tied to the input embeddings.
        backbone_config: or build from a config, e.g. ``{model_type: bert, hidden_size: 128}``
            (``vocab_size`` defaults to the tokenizer's size).
        tokenizer: the tokenizer folder or name (default: the backbone's).
        attention: ``auto`` (causal for clm, else bidirectional), ``bidirectional`` or
            ``causal``: BERT-family models run either way, for objective ablations.
        mask_rate: share of tokens chosen for prediction (mlm, electra).
        sparse_prediction: run the MLM head only at masked positions.
        generator_size: ELECTRA generator width as a fraction of the discriminator's.
        discriminator_weight: ELECTRA's lambda (50 in the paper).
        objective_args: settings of the objective alone (its ``arguments``), e.g.
            ``{shuffle_rate: 0.15}`` for ``shuffled_tokens``.
        **kwargs: the optimisation settings (``APMModule``); by default 5e-4 with 6% warm-up
            and epsilon 1e-6 (RoBERTa's pretraining choice, steadier at high rates).
    """

    checkpoint_monitor = ("val/loss", "min")
    identity_keys = ("objective", "backbone", "backbone_config", "attention", "generator_size")
    optimizer_defaults = optimizer_recipe(5e-4, weight_decay=0.01, warmup_ratio=0.06, adam_epsilon=1e-6)

    def __init__(
        self,
        objective: str = "mlm",
        backbone: str | None = None,
        backbone_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        attention: str = "auto",
        mask_rate: float = 0.15,
        sparse_prediction: bool = True,
        generator_size: float = 0.25,
        discriminator_weight: float = 50.0,
        trust_remote_code: bool = False,
        objective_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        chosen = objective_class(objective)  # an unknown name: one line listing the registered ones
        if attention not in ATTENTIONS:
            raise APMError(f"unknown attention {attention!r}: choose one of {', '.join(ATTENTIONS)}")
        if not 0.0 < mask_rate < 1.0:
            raise APMError(f"mask_rate must be between 0 and 1, not {mask_rate}")
        self.save_hyperparameters()
        self.choose_backbone(
            None, "set model.backbone (a path, hub name or 'minilm') or model.backbone_config"
        )
        self.causal = attention == "causal" or (attention == "auto" and chosen.causal_only)
        if chosen.causal_only and not self.causal:
            raise APMError(
                f"{objective} needs a causal mask (attention: causal or auto): with a bidirectional "
                "one it sees the answer"
            )
        # A plain object, not a submodule: the networks it builds are this module's attributes.
        self.objective = chosen(self)
        self.tokenizer = self.load_tokenizer()
        self.tokens_seen = 0
        self._mask_seed = 0
        self._build()
        special = torch.zeros(max(self.vocab_size, len(self.tokenizer)), dtype=torch.bool)
        special[self.tokenizer.all_special_ids] = True
        self.register_buffer("special", special, persistent=False)
        self._val = nn.ModuleDict(self.objective.validation_metrics())

    @property
    def results_label(self) -> str:
        return f"pretrain-{self.hparams.objective}"

    # ------------------------------------------------------------------ building
    def load_tokenizer(self):
        tokenizer = self.objective.prepare_tokenizer(super().load_tokenizer())
        source = self.tokenizer_source()
        if self.objective.needs_mask_token and tokenizer.mask_token_id is None:
            raise APMError(
                f"the tokenizer {source} has no mask token, which {self.hparams.objective} needs; "
                "train one with apm tokenizer train (every kind it makes has one)"
            )
        return tokenizer

    def _config(self):
        from transformers import AutoConfig

        from apm_lightning.modules.hf_export import resolve_backbone

        if self.hparams.backbone_config is not None:
            settings = dict(self.hparams.backbone_config)
            model_type = settings.pop("model_type", None)
            if model_type is None:
                raise APMError("backbone_config needs a model_type (e.g. bert, gpt2, electra)")
            settings.setdefault("vocab_size", len(self.tokenizer))
            # E.g. ELECTRA on a BERT config: the same shape keys, an embedding projection on top.
            model_type = self.objective.model_type or model_type
            config = AutoConfig.for_model(model_type, **settings)
        else:
            config = AutoConfig.from_pretrained(
                resolve_backbone(self.hparams.backbone), trust_remote_code=self.hparams.trust_remote_code
            )
        self.check_vocabulary(self.tokenizer, config)
        config.pad_token_id = self.tokenizer.pad_token_id
        if config.model_type in DECODER_ONLY:
            if not self.causal:
                raise APMError(
                    f"{config.model_type} has no bidirectional mode; for an objective ablation use a "
                    "BERT-family config with attention: causal or bidirectional"
                )
        elif hasattr(config, "is_decoder"):
            config.is_decoder = self.causal
        return config

    def _build(self) -> None:
        from transformers.utils import logging as hf_logging

        from apm_lightning.modules.hf_export import resolve_backbone

        config = self._config()
        self.objective.check_config(config)
        self.vocab_size = config.vocab_size
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialized head" is what we ask for here
        try:
            backbone = self.hparams.backbone
            self.objective.build(config, resolve_backbone(backbone) if backbone is not None else None)
        finally:
            hf_logging.set_verbosity(verbosity)

    def compute(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None = None, metrics: bool = True
    ) -> dict[str, Any]:
        """The objective's loss and, with ``metrics``, the values its metrics need."""
        return self.objective.compute(input_ids, keys, metrics)

    # ------------------------------------------------------------------ loops
    def on_fit_start(self) -> None:
        # The run's seed (seed_everything: the same on every rank and on resume) keys the masks.
        self._mask_seed = run_seed()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        input_ids = batch["input_ids"]
        # Lightning writes logs every log_every_n_steps; values logged on other steps cost
        # Python time (milliseconds each) and are never seen.
        logging = (self.global_step + 1) % self.trainer.log_every_n_steps == 0
        keys = row_keys(self._mask_seed, self.global_step, batch["index"]) if "index" in batch else None
        out = self.compute(input_ids, keys, metrics=logging)
        self.tokens_seen += input_ids.numel() * self.trainer.world_size
        size = input_ids.shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=size)
        if logging:
            self.log("train/tokens_seen", float(self.tokens_seen), batch_size=size)
            for key in self.objective.train_metrics:
                if key in out:
                    self.log(f"train/{key}", out[key], batch_size=size)
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        input_ids = batch["input_ids"]
        # The same positions are masked at every evaluation: scores differ by the model alone.
        index = batch.get("index")
        if index is None:  # a batch without block indices: seed by position in the loader
            index = torch.arange(input_ids.shape[0], device=input_ids.device) + batch_idx * input_ids.shape[0]
        out = self.compute(input_ids, row_keys(VALIDATION_SEED, 0, index))
        self.objective.update_validation(self._val, out, input_ids.numel())

    def on_validation_epoch_end(self) -> None:
        values = {}
        for name, metric in self._val.items():
            values[f"val/{name}"] = metric.compute()
            metric.reset()
        # Tokens trained on so far, beside the scores (the x axis of the objective comparison);
        # float64 keeps it exact past 16M tokens.
        values["val/tokens_seen"] = torch.tensor(float(self.tokens_seen), dtype=torch.float64)
        self.log_dict(values)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    # ------------------------------------------------------------------ checkpoints and export
    def checkpoint_extras(self) -> dict[str, Any]:
        return {"tokens_seen": self.tokens_seen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # Checkpoints written before the transformer body was named ``body`` call it ``encoder``
        # (the same tensors as net's); their state is loaded after this hook.
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("encoder.")]:
            state["body." + key[len("encoder.") :]] = state.pop(key)

    def restore_extras(self, info: dict[str, Any]) -> None:
        # Resuming a fit continues the count; scoring the best checkpoint at the end of a run
        # must not roll the run's total back.
        trainer = attached_trainer(self)
        if trainer is None or trainer.state.fn == "fit":
            self.tokens_seen = int(info.get("tokens_seen", 0))

    def export_hf(self, out_dir: str) -> None:
        """A Hugging Face folder of the backbone (the discriminator for ELECTRA) with its LM or
        detection head and the tokenizer; ``AutoModelForSequenceClassification`` loads it."""
        net = self.objective.exported()
        if getattr(net.config, "is_decoder", False) and net.config.model_type not in DECODER_ONLY:
            # A BERT-family model pretrained causally (the ablation) is fine-tuned with full
            # attention: with a causal mask its [CLS] token would see only itself.
            net = copy.deepcopy(net)
            net.config.is_decoder = False
        net.save_pretrained(out_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)

    def results_summary(self, run_dir: Path) -> dict[str, Any]:
        """What ``apm pretrain`` adds to results.json (rank zero, after the best checkpoint was
        scored): the tokens trained on and the exported Hugging Face folder."""
        from apm_lightning.modules.hf_export import export_module

        folder = export_module(self, run_dir / "hf", overwrite=True)
        return {
            "objective": self.hparams.objective,
            "tokens_seen": self.tokens_seen,
            "hf_export": str(folder),
        }
