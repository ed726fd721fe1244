"""Hugging Face networks built for a task: pretrained weights (a folder, a hub name or
``minilm``, resolved by ``apm_lightning.core.model_paths``) or a config to train from scratch."""

from __future__ import annotations

from typing import Any

from apm_lightning.core.errors import APMError
from apm_lightning.core.model_paths import resolve_backbone


def build_sequence_classifier(
    backbone: str | None,
    backbone_config: dict[str, Any] | None,
    num_labels: int,
    id2label: dict[int, str] | None,
    trust_remote_code: bool = False,
):
    """``AutoModelForSequenceClassification`` from pretrained weights, or from a config
    (``{"model_type": "bert", "hidden_size": 64, ...}``) with random weights."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    problem = "regression" if num_labels == 1 else "single_label_classification"
    labels = {"num_labels": num_labels, "problem_type": problem}
    if id2label:
        labels.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    if backbone_config is not None:
        settings = dict(backbone_config)
        model_type = settings.pop("model_type", None)
        if model_type is None:
            raise APMError("backbone_config needs a model_type (e.g. bert, gpt2, roberta)")
        config = AutoConfig.for_model(model_type, **settings, **labels)
        return AutoModelForSequenceClassification.from_config(config)
    if backbone is None:
        raise APMError("set model.backbone (a path, a hub name or 'minilm') or model.backbone_config")
    path = resolve_backbone(backbone)
    # The "newly initialized classifier" report is expected for fine-tuning; keep logs readable.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=trust_remote_code, **labels
        )
        # from_pretrained returns eval mode, and Lightning keeps a submodule's mode: without
        # this, fine-tuning would silently run with dropout off.
        return model.train()
    finally:
        hf_logging.set_verbosity(verbosity)


def check_backbone_choice(
    backbone: str | None, backbone_config: dict[str, Any] | None, default: str | None
) -> None:
    """``backbone_config`` builds a model from scratch and ``backbone`` loads pretrained
    weights: naming both (other than the class's default backbone, which a task config may
    leave in place) is a contradiction that would silently drop the backbone."""
    if backbone_config is not None and backbone is not None and backbone != default:
        raise APMError(
            f"model.backbone ({backbone}) and model.backbone_config are both set: the config trains "
            f"from scratch and would ignore the backbone; drop one (set --model.backbone null, or "
            f"--model.backbone_config null to fine-tune {backbone})"
        )
