"""``APMModule``: what every apm LightningModule shares.

- Optimisation: AdamW (fused where torch has the kernel) with BERT's no-decay groups, linear
  warm-up (``warmup_steps``, else ``warmup_ratio`` of the run) and linear decay to zero, stepped
  every optimizer step; LightningCLI's ``--optimizer``/``--lr_scheduler`` replace either part
  (``configured_optimizers``). The five settings (``--model.learning_rate`` ...) are declared
  here once; a subclass passes them on as ``**kwargs`` (LightningCLI reads them through that
  ``super().__init__`` call) and states its own defaults in one line, ``optimizer_defaults``.
  The hyper-parameters, and so every checkpoint, record the values the run used.
- Checkpoint identity: ``on_save_checkpoint`` writes an ``apm`` section (the module's class, its
  ``results_label``, the ``identity_keys`` hyper-parameters, plus ``checkpoint_extras``), and
  ``on_load_checkpoint`` refuses a checkpoint of another class or identity in one line, then
  hands the section to ``restore_extras``.
- Backbones and tokenizers: ``tokenizer_source``/``load_tokenizer``/``build_encoder`` and the
  vocabulary check, for every Hugging Face backbone.
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import torch

from apm_lightning.core.errors import APMError
from apm_lightning.core.redact import redact
from apm_lightning.core.trust import model_registry, module_name


def adamw(groups: list[dict], **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for the parameters' device (CPU and CUDA
    since torch 2.4): one kernel for all tensors instead of a Python loop over them."""
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


def parameter_groups(module: pl.LightningModule) -> tuple[list, list]:
    """The trainable parameters in two lists: those weight decay applies to (matrices) and those
    it does not (biases, normalisation weights: BERT's recipe)."""
    decay, no_decay = [], []
    for param in module.parameters():  # shared parameters (ELECTRA's embeddings) come once
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    return decay, no_decay


def linear_warmup_schedule(module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> Any:
    """Linear warm-up (``warmup_steps``, else ``warmup_ratio`` of the run) then linear decay to
    zero over the run's optimizer steps."""
    from transformers import get_linear_schedule_with_warmup

    hparams = module.hparams
    total = max(1, int(module.trainer.estimated_stepping_batches))
    warmup = hparams.warmup_steps if hparams.warmup_steps is not None else int(hparams.warmup_ratio * total)
    return get_linear_schedule_with_warmup(optimizer, warmup, total)


def default_adamw(module: pl.LightningModule) -> torch.optim.AdamW:
    """AdamW with no decay on biases and normalisation weights (BERT's recipe); learning rate,
    weight decay and epsilon from ``module.hparams``."""
    hparams = module.hparams
    decay, no_decay = parameter_groups(module)
    return adamw(
        [{"params": decay, "weight_decay": hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=hparams.learning_rate,
        eps=hparams.adam_epsilon,
    )


def adamw_linear_schedule(module: pl.LightningModule) -> dict[str, Any]:
    """AdamW (no decay on biases and normalisation weights, BERT's recipe) with linear warm-up
    then linear decay to zero; hyper-parameters from ``module.hparams``."""
    optimizer = default_adamw(module)
    scheduler = linear_warmup_schedule(module, optimizer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def configured_optimizers(
    module: pl.LightningModule,
    optimizer_init: dict | None,
    lr_scheduler_init: dict | None,
    interval: str = "step",
) -> dict[str, Any]:
    """The optimizer and scheduler named on the command line (LightningCLI's ``--optimizer`` and
    ``--lr_scheduler``: ``class_path`` + ``init_args``), built here because the network only
    exists once the module is set up; the one left out is apm's default (AdamW from the module's
    hyper-parameters; linear warm-up and decay)."""
    from lightning.pytorch.cli import instantiate_class
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    if optimizer_init is None:
        optimizer = default_adamw(module)
    else:
        # A given optimizer keeps the no-decay groups: the decay group takes the optimizer's own
        # weight_decay (--optimizer.weight_decay, else its class default), while biases and
        # normalisation weights get 0, as in the default recipe, since decaying a LayerNorm
        # gain or a bias towards zero only hurts. An optimizer without weight decay gets the
        # two groups unchanged.
        decay, no_decay = parameter_groups(module)
        optimizer = instantiate_class([{"params": decay}], optimizer_init)
        if no_decay:
            extra = {"weight_decay": 0.0} if "weight_decay" in optimizer.defaults else {}
            optimizer.add_param_group({"params": no_decay, **extra})
    if lr_scheduler_init is None:
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": linear_warmup_schedule(module, optimizer), "interval": "step"},
        }
    scheduler = instantiate_class(optimizer, lr_scheduler_init)
    if isinstance(scheduler, ReduceLROnPlateau):
        # It steps on a validation score, known only after a validation: once per epoch, on
        # Lightning's --lr_scheduler.monitor (its ReduceLROnPlateau), else the checkpoint's score.
        monitor = getattr(scheduler, "monitor", None) or module.checkpoint_monitor[0]
        config = {"scheduler": scheduler, "monitor": monitor, "interval": "epoch"}
    else:
        config = {"scheduler": scheduler, "interval": interval}
    return {"optimizer": optimizer, "lr_scheduler": config}


def optimizer_recipe(
    learning_rate: float, weight_decay: float = 0.0, warmup_ratio: float = 0.0, adam_epsilon: float = 1e-8
) -> dict[str, float]:
    """A module's own defaults for the optimisation settings (``APMModule.optimizer_defaults``)."""
    return {
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "warmup_ratio": warmup_ratio,
        "adam_epsilon": adam_epsilon,
    }


# The encoder-decoder modules' recipe (T5 fine-tunes at a higher rate than BERT, without warm-up
# or weight decay).
SEQ2SEQ_OPTIMIZER_DEFAULTS = optimizer_recipe(3e-4)


class APMModule(pl.LightningModule):
    # Hyper-parameters that must agree between a checkpoint and the module loading it.
    identity_keys: tuple[str, ...] = ()
    # What picks the best checkpoint (the CLI reads this).
    checkpoint_monitor: tuple[str, str] = ("val/main", "max")
    # The module's own recipe: what an optimisation setting left at None takes (BERT's
    # fine-tuning recipe here; the T5 modules, pretraining and the BiLSTM state theirs).
    optimizer_defaults: dict[str, float] = optimizer_recipe(2e-5, weight_decay=0.01, warmup_ratio=0.06)

    def __init__(
        self,
        learning_rate: float | None = None,
        weight_decay: float | None = None,
        warmup_ratio: float | None = None,
        warmup_steps: int | None = None,
        adam_epsilon: float | None = None,
    ) -> None:
        """AdamW with linear warm-up and decay; a setting left at None takes the module's own
        default (``optimizer_defaults``: 2e-5 for TransformerClassifier, 3e-5 for
        QuestionAnsweringModule, 3e-4 for the T5 modules, 5e-4 for pretraining).

        Args:
            learning_rate: the peak learning rate.
            weight_decay: AdamW's decoupled weight decay (never on biases and normalisation
                weights).
            warmup_ratio: linear warm-up over this share of the run's optimizer steps.
            warmup_steps: or over this many steps (then warmup_ratio is not used).
            adam_epsilon: AdamW's epsilon.
        """
        super().__init__()
        given = {
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "warmup_ratio": warmup_ratio,
            "warmup_steps": warmup_steps,
            "adam_epsilon": adam_epsilon,
        }
        self.optimization = {
            key: self.optimizer_defaults.get(key) if value is None else value for key, value in given.items()
        }

    def save_hyperparameters(
        self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True
    ) -> None:
        """Lightning's, plus the five optimisation settings as this module resolved them: they
        reach a subclass as ``**kwargs`` (only those given), and a checkpoint must keep the
        values the run used even if a default changes later."""
        super().save_hyperparameters(
            *args, ignore=ignore, frame=frame or inspect.currentframe().f_back, logger=logger
        )
        self._hparams.update(self.optimization)
        self._hparams_initial.update(self.optimization)

    @property
    def results_label(self) -> str | None:
        """What ``results.json`` names as the run's task (``sst2``, ``squad_v2``, ``pretrain-mlm``)."""
        return None

    # --- optimisation -------------------------------------------------------------------
    # Set by the CLI from LightningCLI's --optimizer / --lr_scheduler (None: apm's default).
    optimizer_init: dict | None = None
    lr_scheduler_init: dict | None = None
    lr_scheduler_interval: str = "step"

    def configure_optimizers(self):
        if self.optimizer_init is None and self.lr_scheduler_init is None:
            return adamw_linear_schedule(self)
        return configured_optimizers(
            self, self.optimizer_init, self.lr_scheduler_init, self.lr_scheduler_interval
        )

    # --- backbones and tokenizers ---------------------------------------------------------
    def choose_backbone(self, default: str | None, required: str | None = None) -> None:
        """After ``save_hyperparameters``: ``backbone`` (pretrained weights) and
        ``backbone_config`` (from scratch) must not contradict each other, a config means from
        scratch whatever the class's default backbone, and with ``required`` (the message) one
        of the two must be given."""
        from apm_lightning.models.backbones import check_backbone_choice

        backbone, config = self.hparams.get("backbone"), self.hparams.get("backbone_config")
        check_backbone_choice(backbone, config, default=default)
        if required and backbone is None and config is None:
            raise APMError(required)
        if config is not None:
            self.hparams.backbone = None

    def tokenizer_source(self) -> str:
        source = self.hparams.get("tokenizer") or self.hparams.get("backbone")
        if source is None:
            raise APMError("a model built from backbone_config needs model.tokenizer (a folder or 'minilm')")
        return source

    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        from apm_lightning.modules.hf_export import resolve_tokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            resolve_tokenizer(self.tokenizer_source()),
            trust_remote_code=self.hparams.get("trust_remote_code", False),
        )
        if tokenizer.pad_token is None:  # GPT-style tokenizers have no pad token
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def build_encoder(self, datamodule: Any) -> Any:
        """How the data module turns text into this model's inputs (the handshake)."""
        from apm_lightning.data.encoders import JointPairEncoder

        self.encoder = JointPairEncoder(self.load_tokenizer())
        return self.encoder

    def build_seq2seq(self, tokenizer: Any, instead: str) -> Any:
        """The encoder-decoder LM (T5, BART) from ``backbone`` or ``backbone_config``; ``instead``
        ends the message that refuses a backbone of another kind."""
        from apm_lightning.models.seq2seq import build_seq2seq_lm
        from apm_lightning.modules.hf_export import resolve_backbone

        backbone, config = self.hparams.backbone, self.hparams.backbone_config
        return build_seq2seq_lm(
            resolve_backbone(backbone) if config is None and backbone else None,
            config,
            tokenizer,
            self.hparams.trust_remote_code,
            name=backbone,
            instead=instead,
        )

    @staticmethod
    def check_vocabulary(tokenizer: Any, config: Any) -> None:
        """A tokenizer larger than the model's embedding table would index past it."""
        if len(tokenizer) > config.vocab_size:
            raise APMError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                f"{config.vocab_size}; raise backbone_config.vocab_size or change the tokenizer"
            )

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint_extras(self) -> dict[str, Any]:
        """What a subclass adds to the checkpoint's ``apm`` section."""
        return {}

    def restore_extras(self, info: dict[str, Any]) -> None:
        """Read back what ``checkpoint_extras`` wrote (after the identity checks passed)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["apm"] = {
            "module": module_name(type(self)),
            "task": self.results_label,
            "identity": {k: self.hparams.get(k) for k in self.identity_keys},
            **self.checkpoint_extras(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("apm")
        if info is None:
            raise APMError("the checkpoint was not written by apm-lightning (no 'apm' section)")
        # The registry maps names of earlier versions (apm_lightning.tasks.*) to today's class.
        if model_registry().get(info["module"]) is not type(self):
            raise APMError(
                f"the checkpoint holds a {info['module'].rsplit('.', 1)[-1]} model, not a "
                f"{type(self).__qualname__}; use the config it was trained with"
            )
        for key, value in info.get("identity", {}).items():
            if redact(self.hparams.get(key)) != redact(value):  # stored redacted
                raise APMError(
                    f"the checkpoint's {key} is {value!r} but this run's is "
                    f"{self.hparams.get(key)!r}; use the config the checkpoint was trained with"
                )
        self.restore_extras(info)
