"""The BiLSTM baseline of the GLUE paper as a LightningModule (the network is
``apm_lightning.models.bilstm``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from apm_lightning.core.errors import APMError
from apm_lightning.core.redact import redact_text
from apm_lightning.core.trust import register_module
from apm_lightning.modules.base import optimizer_recipe
from apm_lightning.modules.classification import ClassifierModule


@register_module(
    "apm_lightning.tasks.classification.BiLSTMClassifier",
    "apm_lightning.modules.classification.BiLSTMClassifier",  # this version, before the file split
)
class BiLSTMClassifier(ClassifierModule):
    """The BiLSTM baseline of the GLUE paper: word embeddings (optionally GloVe), a 2-layer
    BiLSTM with max pooling, pair features ``[u; v; |u-v|; u*v]`` and an MLP head.

    Args:
        preset: ``paper`` (300D embeddings, 1500D per direction, 512D MLP) or ``cpu`` (small).
        embedding_dim / hidden_size / num_layers / mlp_hidden / dropout: override the preset.
        vocab_size: the word vocabulary, learned from the task's training text.
        glove_path: a GloVe-format text file to initialise the embeddings from.
        **kwargs: the optimisation settings (``APMModule``); 1e-3, no warm-up and no weight
            decay by default (a network trained from scratch).
    """

    identity_keys = ("preset", "embedding_dim", "hidden_size", "num_layers", "mlp_hidden", "vocab_size")
    optimizer_defaults = optimizer_recipe(1e-3)

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
        **kwargs: Any,
    ) -> None:
        super().__init__(task, **kwargs)
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

        return {**super().checkpoint_extras(), "word_tokenizer": word_tokenizer_to_json(self.tokenizer)}

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
