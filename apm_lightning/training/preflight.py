"""Checks of a run's settings before anything is written or trained: the run folder can be
one, the accelerator asked for is there, and the sequence length fits the model's positions."""

from __future__ import annotations

from typing import Any

from apm_lightning.core.checks import check_output_dir
from apm_lightning.core.errors import APMError

# Models whose position ids start after the padding index: RoBERTa's 514 positions hold 512 tokens.
_OFFSET_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "data2vec-text",
    "mpnet",
    "ibert",
}


def check_run_settings(config: Any) -> None:
    """Run folder and accelerator (``config`` is the subcommand's parsed config)."""
    check_output_dir(config.trainer.default_root_dir, "--trainer.default_root_dir")
    check_accelerator(config.trainer.get("accelerator"))


def check_accelerator(accelerator: Any) -> None:
    """A named accelerator that this machine lacks fails here, not in a Lightning traceback."""
    if not isinstance(accelerator, str):
        return
    import torch

    name = accelerator.lower()
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        if name == "gpu" and torch.backends.mps.is_available():
            return  # Apple silicon: Lightning's 'gpu' is MPS there
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise APMError(
            f"--trainer.accelerator {accelerator}: no CUDA GPU is available here (torch {torch.__version__}, "
            f"{build}); use --trainer.accelerator cpu (or auto)"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise APMError("--trainer.accelerator mps: Apple's MPS is not available here; use cpu (or auto)")


def position_limit(config: Any) -> int | None:
    """How many tokens a Hugging Face model config's position embeddings hold (None: no limit
    known, e.g. rotary or relative positions)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        positions -= (getattr(config, "pad_token_id", None) or 1) + 1
    return positions


def _model_config(model: Any) -> Any:
    """The model's Hugging Face config: its network's, or (a classifier that builds its network
    once it knows the task) the one its backbone settings name."""
    net = getattr(model, "net", None)
    if net is not None:
        return getattr(net, "config", None)
    hparams = getattr(model, "hparams", {})
    if "backbone_config" not in hparams:
        return None
    from transformers import AutoConfig

    settings = dict(hparams.get("backbone_config") or {})
    if settings:
        model_type = settings.pop("model_type", None)
        return AutoConfig.for_model(model_type, **settings) if model_type else None
    if not hparams.get("backbone"):
        return None
    from apm_lightning.modules.hf_export import resolve_backbone

    return AutoConfig.from_pretrained(
        resolve_backbone(hparams["backbone"]), trust_remote_code=bool(hparams.get("trust_remote_code"))
    )


def check_sequence_length(model: Any, datamodule: Any) -> None:
    """``max_seq_length`` (``block_size`` for a corpus) longer than the model's position table
    would fail at the first long batch, after training started: fail now, giving the limit."""
    for option in ("max_seq_length", "block_size"):
        length = getattr(datamodule, option, None)
        if isinstance(length, int):
            break
    else:
        return
    limit = position_limit(_model_config(model))
    if limit is not None and length > limit:
        raise APMError(
            f"data.{option}={length} is longer than the model's {limit} positions "
            f"(max_position_embeddings); use --data.{option} {limit} or less"
        )
