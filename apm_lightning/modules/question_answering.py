"""Extractive question answering (SQuAD v1.1 / v2.0) as a LightningModule.

``QuestionAnsweringModule`` wraps ``AutoModelForQuestionAnswering``: any encoder, and the
decoders for which transformers has a span head (GPT-2, Llama, Qwen, ...), from a pretrained
folder or hub name, the ``minilm`` package, an apm-pretrained export (a Hugging Face folder), or
a config to train from scratch. Answers are decoded as the reference implementations do
(:func:`postprocess`) and scored as the official scripts do (``apm_lightning.metrics.squad``).

Scores (``val/...``, and ``results.json``): ``exact``, ``f1`` and ``main`` = their mean, which
picks the best checkpoint. For v2.0 the model answers ``""`` when its null-score difference is
above a threshold; the threshold is the official ``best_f1_thresh`` chosen on the validation
questions at every validation, so ``exact``/``f1`` are those of the thresholded predictions
(``f1`` = the script's ``best_f1``, the number SQuAD 2.0 papers report) and ``null_threshold``,
``HasAns_*``, ``NoAns_*`` and ``best_exact`` are logged beside them. Where answering never beats
answering nothing, the threshold is the script's 0.0 (:func:`~apm_lightning.metrics.squad.squad_v2_tuned`);
without an unanswerable validation question it cannot learn to abstain, which the data module
warns about. The threshold is kept in the checkpoint and used by ``apm predict`` and ``apm test``.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apm_lightning.core.errors import APMError
from apm_lightning.core.trust import register_module
from apm_lightning.data.squad_features import offsets_array
from apm_lightning.metrics.squad import squad_v1_scores, squad_v2_scores, squad_v2_tuned
from apm_lightning.modules.base import optimizer_recipe
from apm_lightning.modules.squad_base import SQuADModule

# One evaluation feature: (question index, context offsets, start logits, end logits). The
# offsets are an (n, 2) int32 array, -1 off the context (``offsets_array``); a list with None
# there is accepted too. Evaluation keeps one per window until it decodes, so they stay compact:
# about 16 bytes a token (see tests/test_memory.py).
Feature = tuple[int, np.ndarray | list, np.ndarray, np.ndarray]


def _first_context_char(offsets: np.ndarray) -> int:
    context = np.flatnonzero(offsets[:, 0] >= 0)
    return int(offsets[context[0], 0]) if len(context) else 0


def postprocess(
    examples: Sequence, features: Iterable[Feature], n_best_size: int = 20, max_answer_length: int = 30
) -> tuple[dict[str, str], dict[str, float]]:
    """Best answer text and null-score difference per question, as the reference code decodes.

    Per window, the ``n_best_size`` highest start and end logits are paired; pairs outside the
    context, reversed, or longer than ``max_answer_length`` tokens are dropped; the best
    remaining pair over all windows is the answer, cut from the original context by character
    offsets. The null score is the lowest ``start[0] + end[0]`` over the windows; the
    difference (null minus best span score, the official "null odds") decides v2.0 no-answers.
    """
    by_question: dict[int, list[Feature]] = defaultdict(list)
    for feature in features:
        index, offsets, start, end = feature
        by_question[index].append((index, offsets_array(offsets), start, end))
    answers, null_odds = {}, {}
    for index, windows in by_question.items():
        example = examples[index]
        # Windows in text order, so that ties resolve as in the reference (first window wins).
        windows.sort(key=lambda f: _first_context_char(f[1]))
        best_score, best_span, null_score = -np.inf, None, np.inf
        for _, offsets, start, end in windows:
            null_score = min(null_score, float(start[0] + end[0]))
            valid = offsets[:, 0] >= 0
            starts = np.argsort(start)[::-1][:n_best_size]
            ends = np.argsort(end)[::-1][:n_best_size]
            s, e = np.meshgrid(starts, ends, indexing="ij")
            ok = valid[s] & valid[e] & (e >= s) & (e - s + 1 <= max_answer_length)
            if not ok.any():
                continue
            scores = np.where(ok, start[s] + end[e], -np.inf)
            k = np.unravel_index(int(np.argmax(scores)), scores.shape)
            if scores[k] > best_score:
                best_score = float(scores[k])
                best_span = (int(offsets[s[k], 0]), int(offsets[e[k], 1]))
        answers[example.id] = example.context[best_span[0] : best_span[1]] if best_span else ""
        null_odds[example.id] = null_score - best_score  # +inf when no span was possible
    return answers, null_odds


def build_qa_network(backbone: str | None, backbone_config: dict[str, Any] | None, trust_remote_code: bool):
    """``AutoModelForQuestionAnswering`` from pretrained weights or from a config."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering
    from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    from apm_lightning.modules.hf_export import resolve_backbone

    if backbone_config is not None:
        settings = dict(backbone_config)
        model_type = settings.pop("model_type", None)
        if model_type is None:
            raise APMError("backbone_config needs a model_type (e.g. bert, gpt2, roberta)")
        config = AutoConfig.for_model(model_type, **settings)
    elif backbone is None:
        raise APMError("set model.backbone (a path, a hub name or 'minilm') or model.backbone_config")
    else:
        backbone = resolve_backbone(backbone)
        config = AutoConfig.from_pretrained(backbone, trust_remote_code=trust_remote_code)
    if config.model_type not in MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES and not trust_remote_code:
        raise APMError(f"transformers has no question-answering head for model type {config.model_type!r}")
    if backbone is None:
        return AutoModelForQuestionAnswering.from_config(config)
    # The "newly initialized qa_outputs" report is expected for fine-tuning; keep logs readable.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        net = AutoModelForQuestionAnswering.from_pretrained(backbone, trust_remote_code=trust_remote_code)
    finally:
        hf_logging.set_verbosity(verbosity)
    # from_pretrained returns eval mode and Lightning keeps a submodule's mode: without this,
    # fine-tuning would silently run with dropout off.
    return net.train()


@register_module("apm_lightning.tasks.question_answering.QuestionAnsweringModule")
class QuestionAnsweringModule(SQuADModule):
    """Span extraction for SQuAD v1.1 and v2.0.

    Args:
        backbone: a local model folder (an apm export too), a hub name, or ``minilm``.
        backbone_config: train from scratch with this config instead (``{model_type: bert, ...}``).
        tokenizer: tokenizer path/name when it differs from the backbone (needed with
            ``backbone_config``).
        n_best_size / max_answer_length: answer decoding (see :func:`postprocess`).
        trust_remote_code: allow a hub model's own Python code (off unless asked for).
        **kwargs: the optimisation settings (``APMModule``); BERT's SQuAD recipe by default
            (3e-5, 10% warm-up).
    """

    identity_keys = ("backbone", "backbone_config")
    optimizer_defaults = optimizer_recipe(3e-5, weight_decay=0.01, warmup_ratio=0.1)

    def __init__(
        self,
        backbone: str | None = "minilm",
        backbone_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        n_best_size: int = 20,
        max_answer_length: int = 30,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.choose_backbone(default="minilm")
        # The head does not depend on the data, so the network is built here (and a checkpoint
        # loads without data); the SQuAD version comes from the data or the checkpoint.
        self.net = build_qa_network(self.hparams.backbone, backbone_config, trust_remote_code)
        self.null_threshold = 0.0  # v2.0: answer "" above this null-score difference
        self.encoder = None
        self._features: list[Feature] = []

    # --- set-up ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "squad_version"):
            self._bind_version(datamodule.squad_version)
            self.encoder = getattr(datamodule, "encoder", None) or self.encoder
        if self.version is None:
            raise APMError("the model has no SQuAD version: give it a SQuADDataModule")
        if self.encoder is not None:
            self.check_vocabulary(self.encoder.tokenizer, self.net.config)
            self.net.config.pad_token_id = self.encoder.tokenizer.pad_token_id

    # --- training and evaluation -----------------------------------------------------------
    def _inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        keys = ["input_ids", "attention_mask"]
        # Segment ids only for networks that take them (DistilBERT and Llama do not).
        if "token_type_ids" in inspect.signature(self.net.forward).parameters:
            keys.append("token_type_ids")
        return {k: batch[k] for k in keys if k in batch}

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(**self._inputs(batch))
        return out.start_logits, out.end_logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # The head's loss: mean of start and end cross-entropy (positions past the input ignored).
        loss = self.net(
            **self._inputs(batch),
            start_positions=batch["start_positions"],
            end_positions=batch["end_positions"],
        ).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _collect(self, batch: dict[str, Any]) -> list[Feature]:
        start, end = (t.float().cpu().numpy() for t in self(batch))
        lengths = batch["attention_mask"].sum(1).tolist()
        offsets = batch["offset_mapping"]
        # Copies, one per window: a view would keep its whole padded batch array alive.
        return [
            (int(index), offsets_array(offsets[i])[:n].copy(), start[i, :n].copy(), end[i, :n].copy())
            for i, (index, n) in enumerate(zip(batch["example_index"].tolist(), lengths, strict=True))
        ]

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._features.extend(self._collect(batch))

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._features.extend(self._collect(batch))

    def _score(self, prefix: str, tune_threshold: bool) -> None:
        features, self._features = self._features, []
        if self.trainer.sanity_checking or not features:
            return  # a partial pass: decoding would score unseen questions as wrong
        examples = self._questions("validation")
        answers, null_odds = postprocess(
            examples, features, self.hparams.n_best_size, self.hparams.max_answer_length
        )
        # Only questions that had features (all of them unless validation batches are limited).
        golds = {ex.id: list(ex.answers) for ex in examples if ex.id in answers}
        if self.version == 1:
            scores = squad_v1_scores(golds, answers)
        elif tune_threshold:
            scores, self.null_threshold = squad_v2_tuned(golds, answers, null_odds)
        else:
            final = {q: "" if null_odds[q] > self.null_threshold else a for q, a in answers.items()}
            scores = squad_v2_scores(golds, final)
            best = squad_v2_scores(golds, answers, null_odds)
            scores.update({k: v for k, v in best.items() if k.startswith("best_")})
        values = {f"{prefix}/{k}": float(v) for k, v in scores.items() if not k.endswith("total")}
        if self.version == 2:
            values[f"{prefix}/null_threshold"] = float(self.null_threshold)
        values[f"{prefix}/main"] = (scores["exact"] + scores["f1"]) / 2
        self.log_dict(values, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        self._score("val", tune_threshold=True)

    def on_test_epoch_end(self) -> None:
        # Test scores use the threshold chosen on validation, never one tuned on test data.
        self._score("test", tune_threshold=False)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return {"split": "predict", "features": self._collect(batch)}

    def write_predictions(self, groups: list[list[dict]], out_dir: Path) -> list[Path]:
        """``predictions.json`` ({question id: answer text}, the official format) and, for
        v2.0, ``null_odds.json`` ({question id: null-score difference}) for the official
        script's ``--na-prob-file``."""
        from apm_lightning.core.files import write_json_atomic

        examples = self._questions("predict")
        features = [f for outputs in groups for out in outputs for f in out["features"]]
        answers, null_odds = postprocess(
            examples, features, self.hparams.n_best_size, self.hparams.max_answer_length
        )
        order = [ex.id for ex in examples if ex.id in answers]  # the file's question order
        if self.version == 2:
            answers = {q: "" if null_odds[q] > self.null_threshold else answers[q] for q in order}
        written = [write_json_atomic(out_dir / "predictions.json", {q: answers[q] for q in order})]
        if self.version == 2:
            odds = {q: null_odds[q] for q in order}
            written.append(write_json_atomic(out_dir / "null_odds.json", odds))
        return written

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint_extras(self) -> dict[str, Any]:
        return {"null_threshold": self.null_threshold}

    def restore_extras(self, info: dict[str, Any]) -> None:
        super().restore_extras(info)  # the SQuAD version
        self.null_threshold = float(info.get("null_threshold", 0.0))

    def export_hf(self, out_dir: str) -> None:
        """Save a folder that ``AutoModelForQuestionAnswering.from_pretrained`` loads."""
        self.net.save_pretrained(out_dir, safe_serialization=True)
        self.load_tokenizer().save_pretrained(out_dir)
