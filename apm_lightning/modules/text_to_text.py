"""Classification and regression as T5 does them: the input is text (``"rte sentence1: ...
sentence2: ..."``), the label is generated as words (``entailment``; STS-B's score as a number
rounded to 0.2, ``"3.8"``), and the generated text is scored by the task's own metrics.

Any encoder-decoder with a language-modelling head works (``AutoModelForSeq2SeqLM``: T5, BART,
the study's exported span-corruption models), from a folder, the hub or a config. Training
minimises the cross-entropy of the label's words (teacher forcing); evaluation generates
greedily. A generation that is no label counts as a wrong answer, as in T5's evaluation: for a
class it is scored as a class other than the gold one, for STS-B as 2.5 (mid-range); the share
of such outputs is logged as ``val/invalid_outputs``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from apm_lightning.core.errors import APMError
from apm_lightning.core.trust import register_module
from apm_lightning.modules.base import SEQ2SEQ_OPTIMIZER_DEFAULTS
from apm_lightning.modules.classification import ClassifierModule

IGNORE = -100
# STS-B's scores as T5 writes them: 0.0, 0.2, ..., 5.0.
REGRESSION_STEPS = 25
REGRESSION_MAX = 5.0


@register_module()
class TextToTextClassifier(ClassifierModule):
    """A sequence-to-sequence model that writes the label.

    Args:
        backbone: an encoder-decoder folder or hub name (e.g. ``google-t5/t5-small``).
        backbone_config: or train from scratch, e.g. ``{model_type: t5, d_model: 64, ...}``.
        tokenizer: the tokenizer when it differs from the backbone (needed with backbone_config).
        max_target_length: longest label, in tokens (generation stops there).
        trust_remote_code: allow a hub model's own Python code (off unless asked for).
        **kwargs: the optimisation settings (``APMModule``); 3e-4, no warm-up and no
            weight decay by default (T5 fine-tuning takes a higher rate than BERT).
    """

    identity_keys = ("backbone", "backbone_config")
    optimizer_defaults = SEQ2SEQ_OPTIMIZER_DEFAULTS

    def __init__(
        self,
        backbone: str | None = None,
        backbone_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        task: str | None = None,
        max_target_length: int = 8,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(task, **kwargs)
        self.save_hyperparameters(ignore=["task"])
        self.choose_backbone(
            None, "set model.backbone (an encoder-decoder folder or hub name) or model.backbone_config"
        )
        self._invalid = MeanMetric()
        if self.glue_task is not None:
            self.net = self.build_network()

    # --- building ------------------------------------------------------------------------
    def build_encoder(self, datamodule: Any) -> Any:
        from apm_lightning.data.encoders import TextToTextEncoder

        if self.glue_task is None:
            self._bind_task(datamodule.task)
        self.encoder = TextToTextEncoder(self.load_tokenizer(), self.glue_task.name)
        return self.encoder

    def build_network(self) -> nn.Module:
        tokenizer = self.encoder.tokenizer if self.encoder is not None else self.load_tokenizer()
        net = self.build_seq2seq(
            tokenizer, "; text-to-text needs one (T5, BART), or use TransformerClassifier"
        )
        self._words = self.label_words()
        self.register_buffer("targets", self._target_ids(tokenizer), persistent=False)
        return net

    def label_words(self) -> list[str]:
        task = self.glue_task
        if task.is_regression:
            return [f"{REGRESSION_MAX * i / REGRESSION_STEPS:.1f}" for i in range(REGRESSION_STEPS + 1)]
        return [name.replace("_", " ") for name in task.label_names]

    def _target_ids(self, tokenizer: Any) -> torch.Tensor:
        """One row of target ids per label (padded with -100, which the loss ignores)."""
        rows = tokenizer(self._words, add_special_tokens=True)["input_ids"]
        width = max(len(r) for r in rows)
        if width > self.hparams.max_target_length:
            raise APMError(
                f"the label {self._words[max(range(len(rows)), key=lambda i: len(rows[i]))]!r} takes {width} "
                f"tokens; raise model.max_target_length to {width} or more"
            )
        return torch.tensor([r + [IGNORE] * (width - len(r)) for r in rows])

    # --- scoring -------------------------------------------------------------------------
    def _label_rows(self, labels: torch.Tensor) -> torch.Tensor:
        if self.glue_task.is_regression:
            index = (labels.float() * REGRESSION_STEPS / REGRESSION_MAX).round().long()
            return index.clamp(0, REGRESSION_STEPS)
        return labels

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        targets = self.targets[self._label_rows(batch["label"])]
        return self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=targets)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch).loss

    def _generate(self, batch: dict[str, torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        out = self.net.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=self.hparams.max_target_length,
            do_sample=False,
            num_beams=1,
        )
        texts = [t.strip() for t in self.encoder_tokenizer().batch_decode(out, skip_special_tokens=True)]
        task = self.glue_task
        invalid = []
        predictions = []
        for i, text in enumerate(texts):
            if task.is_regression:
                try:
                    value, bad = min(max(float(text), 0.0), REGRESSION_MAX), False
                except ValueError:
                    value, bad = REGRESSION_MAX / 2, True
            elif text in self._words:
                value, bad = self._words.index(text), False
            else:  # no label: scored as a wrong class (any class when the gold one is unknown)
                gold = int(labels[i]) if labels is not None else 0
                value, bad = (gold + 1) % task.num_labels, True
            predictions.append(value)
            invalid.append(float(bad))
        if invalid:
            self._invalid.update(torch.tensor(invalid))
        dtype = torch.float if task.is_regression else torch.long
        return torch.tensor(predictions, dtype=dtype, device=batch["input_ids"].device)

    def encoder_tokenizer(self) -> Any:
        return self.encoder.tokenizer if self.encoder is not None else self.load_tokenizer()

    def scored_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self(batch).loss, self._generate(batch, batch["label"])

    def predict_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._generate(batch, None)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self._invalid.update_count:
            self.log("val/invalid_outputs", self._invalid.compute())
            self._invalid.reset()

    def export_hf(self, out_dir: str) -> None:
        """A folder that ``AutoModelForSeq2SeqLM.from_pretrained`` loads (with its tokenizer)."""
        self.net.save_pretrained(out_dir, safe_serialization=True)
        self.encoder_tokenizer().save_pretrained(out_dir)
