"""Classification and regression as LightningModules (the BiLSTM baseline is in
``bilstm_classifier.py``, text-to-text models in ``text_to_text.py``).

``ClassifierModule`` holds what every classifier shares: the task (taken from the data module
when not given), the loss, the task's metrics per validation split, and the check that refuses a
checkpoint of another task (optimisation and the other checkpoint checks are ``APMModule``'s).
A model is one subclass that says how text is encoded (``build_encoder``), what the network is
(``build_network``) and how a batch becomes logits (``forward``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torchmetrics import MeanMetric

from apm_lightning.core.errors import APMError
from apm_lightning.core.trust import register_module
from apm_lightning.data.task_spec import TaskSpec, parse_task
from apm_lightning.data.tasks import get_task, is_registered, register_task, task_file
from apm_lightning.metrics.classification import build_metrics, main_score, predictions_from_logits
from apm_lightning.modules.base import APMModule


def _split_suffix(split: str) -> str:
    """'validation' -> '', 'validation_matched' -> '_matched' (MNLI)."""
    rest = split.split("_", 1)
    return "_" + rest[1] if len(rest) == 2 else ""


class ClassifierModule(APMModule):
    """Base of the classification and regression models: the task, its loss and metrics."""

    def __init__(self, task: str | None = None, **kwargs: Any) -> None:
        # kwargs: the optimisation settings (APMModule's), which a subclass passes on.
        super().__init__(**kwargs)
        self.glue_task: TaskSpec | None = get_task(task) if task else None
        self.net: nn.Module | None = None
        self.encoder = None
        self.eval_splits: dict[str, list[str]] = {}
        self._updated: set[str] = set()

    # --- what a model provides -----------------------------------------------------------
    def build_network(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def results_label(self) -> str | None:
        return self.glue_task.name if self.glue_task else None

    # --- set-up ------------------------------------------------------------------------
    def _bind_task(self, data_task: TaskSpec) -> None:
        self.data_task = data_task
        if self.glue_task is None:
            # AX is predicted by an MNLI model: the model's task is MNLI, the data's is AX.
            self.glue_task = get_task(data_task.model_task) if data_task.model_task else data_task
        elif data_task.name != self.glue_task.name and data_task.model_task != self.glue_task.name:
            raise APMError(
                f"this model was set up for task {self.glue_task.name!r} but the data is "
                f"{data_task.name!r}; use a model (checkpoint) trained on {data_task.name}"
            )

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "task"):
            self._bind_task(datamodule.task)
            self.encoder = getattr(datamodule, "encoder", None) or self.encoder
            for name in ("validate", "test", "predict"):
                self.eval_splits[name] = datamodule.split_names(name)
            self.eval_splits["fit"] = self.eval_splits["validate"]
        if self.glue_task is None:
            raise APMError("the model has no task: give it a GLUE data module or model.task")
        if self.net is None:
            self.net = self.build_network()
        scored = {
            split
            for splits in self.eval_splits.values()
            for split in splits
            if self.glue_task.splits.get(split, None) is None or self.glue_task.splits[split].labelled
        }
        self._metrics = nn.ModuleDict({split: build_metrics(self.glue_task) for split in scored})
        # The loss as a metric too: a row-weighted mean that torchmetrics syncs across ranks.
        self._losses = nn.ModuleDict({split: MeanMetric() for split in scored})

    # --- training and evaluation -----------------------------------------------------------
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.glue_task.is_regression:
            return F.mse_loss(logits.squeeze(-1), labels.float())
        return F.cross_entropy(logits, labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["label"].shape[0])
        return loss

    # How a batch is scored; a text-to-text model overrides these (it generates its labels).
    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(self(batch), batch["label"])

    def scored_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, predictions: class ids, or scores for regression) of an evaluation batch."""
        logits = self(batch)
        return self.loss(logits, batch["label"]), predictions_from_logits(self.glue_task, logits)

    def predict_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return predictions_from_logits(self.glue_task, self(batch))

    def _eval_step(self, prefix: str, stage: str, batch, dataloader_idx: int) -> None:
        split = self.eval_splits[stage][dataloader_idx]
        labels = batch["label"]
        if split not in self._metrics:
            raise APMError(f"split {split!r} has no labels to score; use apm predict for it")
        loss, predictions = self.scored_batch(batch)
        self._losses[split].update(loss, weight=labels.shape[0])
        self._metrics[split].update(predictions, labels)
        self._updated.add(split)

    def _eval_epoch_end(self, prefix: str, stage: str) -> None:
        values: dict[str, float] = {}
        mains = []
        for split in self.eval_splits[stage]:
            updated = split in self._updated
            if self.trainer.world_size > 1:
                # compute() syncs across ranks: every rank must take part, or none.
                updated = self.trainer.strategy.reduce_boolean_decision(updated, all=False)
            if not updated:
                continue
            self._updated.discard(split)
            collection = self._metrics[split]
            computed = {k: float(v) for k, v in collection.compute().items()}
            collection.reset()
            mains.append(main_score(computed, self.glue_task))
            values[f"{prefix}/loss{_split_suffix(split)}"] = float(self._losses[split].compute())
            self._losses[split].reset()
            for name, value in computed.items():
                values[f"{prefix}/{name}{_split_suffix(split)}"] = value
        if mains:
            # MNLI's score is the mean of matched and mismatched; other tasks have one split.
            values[f"{prefix}/main"] = sum(mains) / len(mains)
            self.log_dict(values, prog_bar=False, add_dataloader_idx=False)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(
            "val", "validate" if self.trainer.state.fn == "validate" else "fit", batch, dataloader_idx
        )

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", "validate" if self.trainer.state.fn == "validate" else "fit")

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", "test", batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", "test")

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return {
            "split": self.eval_splits["predict"][dataloader_idx],
            "idx": batch["idx"].tolist(),
            "prediction": self.predict_batch(batch).tolist(),
        }

    def write_predictions(self, groups: list[list[dict]], out_dir: Path) -> list[Path]:
        """``<task>_<split>.tsv`` (``index``, ``prediction``) per split, sorted by index, with the
        task's label names (``negative``/``positive``: the exported config's ``id2label``); a
        GLUE submission respells them as the server wants (runners/submission.py)."""
        task = self.glue_task
        vocab = task.label_names
        written = []
        for outputs in groups:
            rows = sorted(
                (i, p) for out in outputs for i, p in zip(out["idx"], out["prediction"], strict=True)
            )
            lines = ["index\tprediction"]
            for index, pred in rows:
                lines.append(f"{index}\t{pred:.3f}" if task.is_regression else f"{index}\t{vocab[pred]}")
            name = getattr(self, "data_task", task).name
            path = out_dir / f"{name}_{outputs[0]['split']}.tsv"
            tmp = path.with_suffix(".tsv.tmp")
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            tmp.replace(path)
            written.append(path)
        return written

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint_extras(self) -> dict[str, Any]:
        # A task from a user's task file travels with the checkpoint (as the file's text), so
        # that export and loading work where that file is not: it is data, parsed as any file.
        path = task_file(self.glue_task.name) if self.glue_task is not None else None
        return {"task_declaration": path.read_text(encoding="utf-8")} if path is not None else {}

    def restore_extras(self, info: dict[str, Any]) -> None:
        declaration = info.get("task_declaration")
        if isinstance(declaration, str) and info.get("task") and not is_registered(info["task"]):
            register_task(parse_task(yaml.safe_load(declaration), f"the checkpoint's task {info['task']!r}"))
        if self.glue_task is not None and info["task"] not in (None, self.glue_task.name):
            raise APMError(
                f"the checkpoint was trained on task {info['task']!r}, not {self.glue_task.name!r}"
            )
        # load_from_checkpoint() builds the module without data: the task comes from here.
        if self.glue_task is None and info["task"]:
            self.glue_task = get_task(info["task"])
        if self.net is None and self.glue_task is not None:
            self.net = self.build_network()


@register_module("apm_lightning.tasks.classification.TransformerClassifier")
class TransformerClassifier(ClassifierModule):
    """``AutoModelForSequenceClassification`` on any Hugging Face backbone.

    Args:
        backbone: a local model folder, a hub name, or ``minilm`` (the installed package).
        backbone_config: train from scratch with this config instead, e.g.
            ``{model_type: bert, hidden_size: 64, num_hidden_layers: 2, ...}``.
        tokenizer: tokenizer path/name when it differs from the backbone (needed with
            ``backbone_config``; ``minilm`` works for BERT-style vocabularies).
        trust_remote_code: allow a hub model's own Python code (off unless asked for).
        cls_only_last_layer: compute the last encoder layer at the first ([CLS]) position only,
            the one the classification head reads: the same logits and gradients with 14% fewer
            matrix products on a 6-layer BERT (BERT, RoBERTa and ELECTRA classifiers; other
            models run unchanged).
        **kwargs: the optimisation settings (``APMModule``); BERT's recipe by default.
    """

    identity_keys = ("backbone", "backbone_config")

    def __init__(
        self,
        backbone: str | None = "minilm",
        backbone_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        task: str | None = None,
        trust_remote_code: bool = False,
        cls_only_last_layer: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(task, **kwargs)
        # The task lives in the data module's hparams (and in the checkpoint's 'apm' section).
        self.save_hyperparameters(ignore=["task"])
        self.choose_backbone(default="minilm")
        if self.glue_task is not None:
            self.net = self.build_network()

    def build_network(self) -> nn.Module:
        from apm_lightning.models.backbones import build_sequence_classifier
        from apm_lightning.models.first_position import first_position_last_layer
        from apm_lightning.modules.hf_export import resolve_backbone

        task = self.glue_task
        id2label = None if task.is_regression else dict(enumerate(task.label_names))
        backbone = self.hparams.backbone
        net = build_sequence_classifier(
            resolve_backbone(backbone) if backbone and self.hparams.backbone_config is None else backbone,
            self.hparams.backbone_config,
            task.num_labels,
            id2label,
            self.hparams.trust_remote_code,
        )
        if self.encoder is not None:
            self.check_vocabulary(self.encoder.tokenizer, net.config)
            net.config.pad_token_id = self.encoder.tokenizer.pad_token_id
        if net.config.is_encoder_decoder:
            self._set_decoder_tokens(net.config)
        if self.hparams.cls_only_last_layer:
            first_position_last_layer(net)
        return net

    def _set_decoder_tokens(self, config: Any) -> None:
        """An encoder-decoder classifier (T5, BART) pools the decoder's state at the last
        end-of-sequence token, and starts its decoder from ``decoder_start_token_id``: both must
        be tokens this tokenizer writes (a BERT vocabulary ends sequences with [SEP])."""
        tokenizer = self.encoder.tokenizer if self.encoder is not None else self.load_tokenizer()
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if eos is None:
            raise APMError(
                "an encoder-decoder classifier needs a tokenizer with an end-of-sequence or [SEP] token"
            )
        config.eos_token_id = eos
        config.pad_token_id = tokenizer.pad_token_id
        if getattr(config, "decoder_start_token_id", None) is None:
            config.decoder_start_token_id = tokenizer.pad_token_id  # T5's convention

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "token_type_ids" in batch:
            inputs["token_type_ids"] = batch["token_type_ids"]
        return self.net(**inputs).logits

    def export_hf(self, out_dir: str) -> None:
        """Save a folder that ``AutoModelForSequenceClassification.from_pretrained`` loads."""
        self.net.save_pretrained(out_dir, safe_serialization=True)
        self.load_tokenizer().save_pretrained(out_dir)
