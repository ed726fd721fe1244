"""GLUE classification and regression as LightningModules.

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
from torch import nn
from torchmetrics import MeanMetric

from apm_lightning.core.errors import APMError
from apm_lightning.core.redact import redact_text
from apm_lightning.core.trust import register_module
from apm_lightning.data.task_spec import TaskSpec
from apm_lightning.data.tasks import get_task
from apm_lightning.metrics.classification import build_metrics, main_score, predictions_from_logits
from apm_lightning.modules.base import APMModule


def _split_suffix(split: str) -> str:
    """'validation' -> '', 'validation_matched' -> '_matched' (MNLI)."""
    rest = split.split("_", 1)
    return "_" + rest[1] if len(rest) == 2 else ""


class ClassifierModule(APMModule):
    """Base of the classification and regression models: the task, its loss and metrics."""

    def __init__(
        self,
        task: str | None = None,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.06,
        warmup_steps: int | None = None,
        adam_epsilon: float = 1e-8,
    ) -> None:
        super().__init__()
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
        loss = self.loss(self(batch), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["label"].shape[0])
        return loss

    def _eval_step(self, prefix: str, stage: str, batch, dataloader_idx: int) -> None:
        split = self.eval_splits[stage][dataloader_idx]
        logits = self(batch)
        labels = batch["label"]
        if split not in self._metrics:
            raise APMError(f"split {split!r} has no labels to score; use apm predict for it")
        self._losses[split].update(self.loss(logits, labels), weight=labels.shape[0])
        self._metrics[split].update(predictions_from_logits(self.glue_task, logits), labels)
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
        logits = self(batch)
        return {
            "split": self.eval_splits["predict"][dataloader_idx],
            "idx": batch["idx"].tolist(),
            "prediction": predictions_from_logits(self.glue_task, logits).tolist(),
        }

    def write_predictions(self, groups: list[list[dict]], out_dir: Path) -> list[Path]:
        """``<task>_<split>.tsv`` (``index``, ``prediction``) per split, sorted by index, labels
        spelled as the task's files spell them (0/1, or names such as entailment)."""
        task = self.glue_task
        vocab = task.file_label_values or task.label_names
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
    def restore_extras(self, info: dict[str, Any]) -> None:
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
    """

    identity_keys = ("backbone", "backbone_config")

    def __init__(
        self,
        backbone: str | None = "minilm",
        backbone_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        task: str | None = None,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.06,
        warmup_steps: int | None = None,
        adam_epsilon: float = 1e-8,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(task, learning_rate, weight_decay, warmup_ratio, warmup_steps, adam_epsilon)
        # The task lives in the data module's hparams (and in the checkpoint's 'apm' section).
        self.save_hyperparameters(ignore=["task"])
        from apm_lightning.models.backbones import check_backbone_choice

        check_backbone_choice(backbone, backbone_config, default="minilm")
        if backbone_config is not None:
            self.hparams.backbone = None  # a config means: from scratch, whatever the default
        if self.glue_task is not None:
            self.net = self.build_network()

    def build_network(self) -> nn.Module:
        from apm_lightning.models.backbones import build_sequence_classifier
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
        return net

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "token_type_ids" in batch:
            inputs["token_type_ids"] = batch["token_type_ids"]
        return self.net(**inputs).logits

    def export_hf(self, out_dir: str) -> None:
        """Save a folder that ``AutoModelForSequenceClassification.from_pretrained`` loads."""
        self.net.save_pretrained(out_dir, safe_serialization=True)
        self.load_tokenizer().save_pretrained(out_dir)


@register_module("apm_lightning.tasks.classification.BiLSTMClassifier")
class BiLSTMClassifier(ClassifierModule):
    """The BiLSTM baseline of the GLUE paper: word embeddings (optionally GloVe), a 2-layer
    BiLSTM with max pooling, pair features ``[u; v; |u-v|; u*v]`` and an MLP head.

    Args:
        preset: ``paper`` (300D embeddings, 1500D per direction, 512D MLP) or ``cpu`` (small).
        embedding_dim / hidden_size / num_layers / mlp_hidden / dropout: override the preset.
        vocab_size: the word vocabulary, learned from the task's training text.
        glove_path: a GloVe-format text file to initialise the embeddings from.
    """

    identity_keys = ("preset", "embedding_dim", "hidden_size", "num_layers", "mlp_hidden", "vocab_size")

    def __init__(
        self,
        preset: str = "cpu",
        embedding_dim: int | None = None,
        hidden_size: int | None = None,
        num_layers: int | None = None,
        mlp_hidden: int | None = None,
        dropout: float | None = None,
        vocab_size: int = 30000,
        lowercase: bool = True,
        glove_path: str | None = None,
        task: str | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        warmup_steps: int | None = None,
        adam_epsilon: float = 1e-8,
    ) -> None:
        super().__init__(task, learning_rate, weight_decay, warmup_ratio, warmup_steps, adam_epsilon)
        from apm_lightning.models.bilstm import PRESETS

        if preset not in PRESETS:
            raise APMError(f"unknown BiLSTM preset {preset!r}: choose one of {', '.join(PRESETS)}")
        self.save_hyperparameters(ignore=["task"])
        self.tokenizer = None  # built from the training text, or restored from a checkpoint

    def architecture(self) -> dict[str, Any]:
        from apm_lightning.models.bilstm import PRESETS

        arch = dict(PRESETS[self.hparams.preset])
        for key in arch:
            if self.hparams.get(key) is not None:
                arch[key] = self.hparams[key]
        return arch

    def build_encoder(self, datamodule):
        from apm_lightning.data.encoders import SeparatePairEncoder
        from apm_lightning.models.bilstm import build_word_tokenizer

        if self.tokenizer is None:
            self.tokenizer = build_word_tokenizer(
                datamodule.training_texts(), self.hparams.vocab_size, self.hparams.lowercase
            )
        self.encoder = SeparatePairEncoder(self.tokenizer)
        return self.encoder

    def build_network(self) -> nn.Module:
        from apm_lightning.models.bilstm import BiLSTMPairClassifier

        if self.tokenizer is None:
            raise APMError("the BiLSTM needs its vocabulary: train it on data or load a checkpoint")
        return BiLSTMPairClassifier(
            vocab_size=len(self.tokenizer),
            num_labels=self.glue_task.num_labels,
            pad_id=self.tokenizer.pad_token_id,
            pair=self.glue_task.is_pair,
            **self.architecture(),
        )

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # GloVe initialises a fresh run only; a resumed run restores its trained embeddings.
        if stage == "fit" and self.hparams.glove_path and self.trainer.ckpt_path is None:
            from apm_lightning.models.bilstm import load_glove

            dim = self.architecture()["embedding_dim"]
            matrix, found = load_glove(self.hparams.glove_path, self.tokenizer.get_vocab(), dim)
            self.net.load_pretrained_embeddings(matrix)
            print(
                redact_text(
                    f"GloVe: {found} of {len(self.tokenizer)} vocabulary words found in {self.hparams.glove_path}"
                )
            )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["input_ids_a"], batch.get("input_ids_b"))

    def checkpoint_extras(self) -> dict[str, Any]:
        from apm_lightning.models.bilstm import word_tokenizer_to_json

        return {"word_tokenizer": word_tokenizer_to_json(self.tokenizer)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from apm_lightning.models.bilstm import word_tokenizer_from_json

        saved = (checkpoint.get("apm") or {}).get("word_tokenizer")
        if saved is not None:
            stored = word_tokenizer_from_json(saved)
            if self.tokenizer is not None and stored.get_vocab() != self.tokenizer.get_vocab():
                raise APMError(
                    "the checkpoint's word vocabulary differs from the one built from this data; "
                    "use the training data the checkpoint was trained on"
                )
            self.tokenizer = stored
        super().on_load_checkpoint(checkpoint)
