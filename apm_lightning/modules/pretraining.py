"""Pretraining as one LightningModule: ``objective: mlm | clm | electra``.

- ``mlm``: dynamic masking (``mask_rate``, the 80/10/10 rule), and the output head runs only at
  the masked positions (sparse prediction): for a 30k vocabulary the full head costs about as
  much as the encoder itself, and 85% of its output would be thrown away.
- ``clm``: next-token prediction.
- ``electra``: a small generator (MLM) and a discriminator trained on replaced-token detection,
  sharing their embeddings (the ELECTRA paper); the discriminator is what gets exported and
  fine-tuned.

Backbones are Hugging Face models, from a checkpoint (``backbone``: a folder, a hub name,
``minilm``, or an apm ``.ckpt``) or a config (``backbone_config``). ``attention`` runs one
architecture with a causal or a bidirectional mask (BERT-family configs), so that an ablation
changes the objective and nothing else.

Masks and ELECTRA's samples are a function of (run seed, step, the block's index in the corpus,
position), through a counter-based hash: a resumed run draws the same masks, and a block gets
the same mask whichever DDP rank holds it, so two processes train exactly as one does on the
same global batch. Validation masks depend on the block alone: every evaluation scores the same
positions. (Dropout uses torch's generator, which the trainer layer reseeds every step.)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from apm_lightning.core.errors import APMError
from apm_lightning.core.library_compat import attached_trainer
from apm_lightning.core.seeds import run_seed
from apm_lightning.core.trust import register_module
from apm_lightning.modules.base import APMModule

OBJECTIVES = ("mlm", "clm", "electra")
ATTENTIONS = ("auto", "bidirectional", "causal")
# Decoder-only families: no bidirectional mode.
DECODER_ONLY = ("gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "opt", "phi")
IGNORE = -100
VALIDATION_SEED = 1_000_003


# splitmix64 constants as signed int64 (torch has no uint64 arithmetic; products wrap).
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


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
    shape = input_ids.shape
    if keys is None:
        draws = [torch.rand(shape, device=input_ids.device) for _ in range(3)]
    else:
        positions = torch.arange(shape[1], device=input_ids.device, dtype=torch.int64)
        element = keys.view(-1, 1) * 4099 + positions  # distinct per (row key, position)
        draws = [keyed_uniform(element, stream) for stream in range(3)]
    chosen = (draws[0] < rate) & ~special[input_ids]
    action = draws[1]
    random_ids = (draws[2] * vocab_size).long().clamp_(max=vocab_size - 1)
    inputs = input_ids.clone()
    inputs[chosen & (action < 0.8)] = mask_id
    replace = chosen & (action >= 0.8) & (action < 0.9)
    inputs[replace] = random_ids[replace]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    return inputs, labels


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


def sample_tokens(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` drawn from its softmax, by inverting the cumulative
    distribution at ``uniform`` (one draw in [0, 1) per row)."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(dim=-1)
    target = uniform.view(-1, 1).to(cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def _mlm_parts(net: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(encoder, head) of a ``*ForMaskedLM`` model, so the head can run on masked positions
    only; head None when the model's head is not one module that maps hidden states to logits."""
    base = net.base_model
    heads = [module for _, module in net.named_children() if module is not base]
    if type(net).__name__ == "ElectraForMaskedLM":
        return base, nn.Sequential(net.generator_predictions, net.generator_lm_head)
    if len(heads) == 1:
        return base, heads[0]
    return base, None


@register_module("apm_lightning.tasks.pretraining.PretrainingModule")
class PretrainingModule(APMModule):
    """Pretrain (or keep pretraining) a Transformer with MLM, CLM or ELECTRA.

    Args:
        objective: ``mlm``, ``clm`` or ``electra``.
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
    """

    checkpoint_monitor = ("val/loss", "min")
    identity_keys = ("objective", "backbone", "backbone_config", "attention", "generator_size")

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
        learning_rate: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.06,
        warmup_steps: int | None = None,
        adam_epsilon: float = 1e-6,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise APMError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if attention not in ATTENTIONS:
            raise APMError(f"unknown attention {attention!r}: choose one of {', '.join(ATTENTIONS)}")
        from apm_lightning.models.backbones import check_backbone_choice

        check_backbone_choice(backbone, backbone_config, default=None)
        if backbone is None and backbone_config is None:
            raise APMError("set model.backbone (a path, hub name or 'minilm') or model.backbone_config")
        if not 0.0 < mask_rate < 1.0:
            raise APMError(f"mask_rate must be between 0 and 1, not {mask_rate}")
        self.save_hyperparameters()
        if backbone_config is not None:
            self.hparams.backbone = None
        self.causal = attention == "causal" or (attention == "auto" and objective == "clm")
        if objective == "clm" and not self.causal:
            raise APMError(
                "clm needs a causal mask (attention: causal or auto): with a bidirectional one it sees the answer"
            )
        self.tokenizer = self.load_tokenizer()
        self.tokens_seen = 0
        self._mask_seed = 0
        self._build()
        special = torch.zeros(max(self.vocab_size, len(self.tokenizer)), dtype=torch.bool)
        special[self.tokenizer.all_special_ids] = True
        self.register_buffer("special", special, persistent=False)
        self._val = nn.ModuleDict({name: MeanMetric() for name in self._val_metric_names()})
        self.perplexity = Perplexity(ignore_index=IGNORE) if objective == "clm" else None

    @property
    def results_label(self) -> str:
        return f"pretrain-{self.hparams.objective}"

    # ------------------------------------------------------------------ building
    def load_tokenizer(self):
        tokenizer = super().load_tokenizer()
        source = self.tokenizer_source()
        needs_mask = self.hparams.objective in ("mlm", "electra")
        if needs_mask and tokenizer.mask_token_id is None:
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
            if self.hparams.objective == "electra" and model_type != "electra":
                model_type = "electra"  # same shape keys; ELECTRA's embedding projection on top
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
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
        from transformers.utils import logging as hf_logging

        from apm_lightning.modules.hf_export import resolve_backbone

        config = self._config()
        self.vocab_size = config.vocab_size
        objective = self.hparams.objective
        pretrained = self.hparams.backbone is not None
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialized head" is what we ask for here
        try:
            if objective == "electra":
                self._build_electra(config, resolve_backbone(self.hparams.backbone) if pretrained else None)
                return
            auto = AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM
            if pretrained:
                self.net = auto.from_pretrained(
                    resolve_backbone(self.hparams.backbone),
                    config=config,
                    trust_remote_code=self.hparams.trust_remote_code,
                ).train()
            else:
                self.net = auto.from_config(config)
        finally:
            hf_logging.set_verbosity(verbosity)
        if config.tie_word_embeddings and self.net.get_output_embeddings() is not None:
            # A checkpoint without an LM head (sentence-transformers MiniLM) gets a new one whose
            # decoder is the input embedding matrix, as BERT's was.
            self.net.get_output_embeddings().weight = self.net.get_input_embeddings().weight
        self.encoder, self.mlm_head = _mlm_parts(self.net) if objective == "mlm" else (None, None)

    def _build_electra(self, config, pretrained_path: str | None) -> None:
        from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

        if config.model_type != "electra":
            raise APMError(f"electra needs an ELECTRA backbone or config, not {config.model_type}")
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
        if pretrained_path is not None:
            self.discriminator = ElectraForPreTraining.from_pretrained(pretrained_path, config=config).train()
        else:
            self.discriminator = ElectraForPreTraining(config)
        self.generator = ElectraForMaskedLM(gen_config)
        # Shared embeddings (word, position, type, their LayerNorm), and the generator's output
        # matrix is the word embedding matrix: ELECTRA's "tied embeddings" setting.
        shared = self.discriminator.electra.embeddings
        self.generator.electra.embeddings = shared
        self.generator.generator_lm_head.weight = shared.word_embeddings.weight
        self.net = self.discriminator  # what is exported and fine-tuned
        self.encoder, self.mlm_head = _mlm_parts(self.generator)

    def _val_metric_names(self) -> list[str]:
        names = ["loss"]
        if self.hparams.objective == "mlm":
            names.append("masked_accuracy")
        if self.hparams.objective == "electra":
            names += ["generator_loss", "discriminator_loss", "masked_accuracy", "replaced_accuracy"]
        return names

    # ------------------------------------------------------------------ objectives
    def _masked(self, input_ids: torch.Tensor, keys: torch.Tensor | None = None):
        return mask_tokens(
            input_ids,
            self.special,
            self.tokenizer.mask_token_id,
            len(self.tokenizer),
            self.hparams.mask_rate,
            keys,
        )

    def _masked_cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the masked tokens of the *global* batch: ranks hold different
        numbers of masked tokens, and DDP averages their gradients, so each rank divides its sum
        by the mean count over ranks; the result equals one process on the whole batch."""
        total = F.cross_entropy(logits.float(), targets, reduction="sum")
        count = torch.tensor(float(targets.numel()), device=logits.device)
        if self.training and attached_trainer(self) is not None and self.trainer.world_size > 1:
            count = self.trainer.strategy.reduce(count, reduce_op="sum") / self.trainer.world_size
        return total / count.clamp(min=1.0)

    def _mlm_logits(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels at the masked positions only."""
        selected = labels != IGNORE
        if self.hparams.sparse_prediction and self.mlm_head is not None:
            hidden = self.encoder(input_ids=inputs).last_hidden_state
            return self.mlm_head(hidden[selected]), labels[selected]
        model = self.generator if self.hparams.objective == "electra" else self.net
        return model(input_ids=inputs).logits[selected], labels[selected]

    def compute(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None = None, metrics: bool = True
    ) -> dict[str, torch.Tensor]:
        """The objective's loss and, with ``metrics``, the values its metrics need (an argmax
        over the vocabulary at every masked position: skipped on steps that log nothing)."""
        objective = self.hparams.objective
        if objective == "clm":
            logits = self.net(input_ids=input_ids).logits[:, :-1]
            labels = input_ids[:, 1:]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
            return {"loss": loss, "logits": logits, "labels": labels}
        inputs, labels = self._masked(input_ids, keys)
        logits, targets = self._mlm_logits(inputs, labels)
        scores = {"predicted": targets.numel()}
        if metrics:
            scores["masked_accuracy"] = (logits.argmax(-1) == targets).float().mean()
        if objective == "mlm":
            return {"loss": self._masked_cross_entropy(logits, targets), **scores}
        # ELECTRA: replace the masked tokens by the generator's samples (no gradient through
        # sampling), then the discriminator tells replaced from original at every position.
        selected = labels != IGNORE
        with torch.no_grad():
            if keys is None:
                uniform = torch.rand(logits.shape[0], device=logits.device)
            else:  # keyed like the masks: the same sample whichever rank holds the block
                positions = torch.arange(labels.shape[1], device=labels.device, dtype=torch.int64)
                element = keys.view(-1, 1) * 4099 + positions
                uniform = keyed_uniform(element[selected], stream=3)
            sampled = sample_tokens(logits.detach(), uniform)
        corrupted = input_ids.clone()
        corrupted[selected] = sampled
        replaced = corrupted != input_ids  # a sample equal to the original counts as original
        disc_logits = self.discriminator(input_ids=corrupted).logits
        _, _, disc_loss = electra_loss(
            logits, targets, disc_logits, replaced, self.hparams.discriminator_weight
        )
        gen_loss = self._masked_cross_entropy(logits, targets)
        loss = gen_loss + self.hparams.discriminator_weight * disc_loss
        if metrics:
            scores["replaced_accuracy"] = ((disc_logits > 0) == replaced).float().mean()
        return {"loss": loss, "generator_loss": gen_loss, "discriminator_loss": disc_loss, **scores}

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
            for key in ("masked_accuracy", "replaced_accuracy"):
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
        tokens = input_ids.numel()
        if self.hparams.objective == "clm":
            self._val["loss"].update(out["loss"], weight=out["labels"].numel())
            self.perplexity.update(out["logits"].float(), out["labels"])
            return
        predicted = max(1, out["predicted"])
        self._val["loss"].update(out["loss"], weight=predicted)
        self._val["masked_accuracy"].update(out["masked_accuracy"], weight=predicted)
        if self.hparams.objective == "electra":
            self._val["generator_loss"].update(out["generator_loss"], weight=predicted)
            self._val["discriminator_loss"].update(out["discriminator_loss"], weight=tokens)
            self._val["replaced_accuracy"].update(out["replaced_accuracy"], weight=tokens)

    def on_validation_epoch_end(self) -> None:
        values = {}
        for name, metric in self._val.items():
            values[f"val/{name}"] = metric.compute()
            metric.reset()
        if self.perplexity is not None:
            values["val/perplexity"] = self.perplexity.compute()
            self.perplexity.reset()
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

    def restore_extras(self, info: dict[str, Any]) -> None:
        # Resuming a fit continues the count; scoring the best checkpoint at the end of a run
        # must not roll the run's total back.
        trainer = attached_trainer(self)
        if trainer is None or trainer.state.fn == "fit":
            self.tokens_seen = int(info.get("tokens_seen", 0))

    def export_hf(self, out_dir: str) -> None:
        """A Hugging Face folder of the backbone (the discriminator for ELECTRA) with its LM or
        detection head and the tokenizer; ``AutoModelForSequenceClassification`` loads it."""
        net = self.net
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
