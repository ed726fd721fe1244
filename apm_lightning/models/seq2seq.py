"""Encoder-decoder language models (``AutoModelForSeq2SeqLM``: T5, BART, the study's exported
span-corruption models) set up to generate with a given tokenizer: from a resolved folder or
hub name, or from a config with random weights. Shared by the text-to-text classifier and
generative question answering."""

from __future__ import annotations

from typing import Any

from apm_lightning.core.errors import APMError


def end_token_id(tokenizer: Any) -> int:
    """The id that ends a target: the tokenizer's end token (T5's ``</s>``), else its separator
    (BERT vocabularies such as MiniLM's, which the study's T5 models use: ``[SEP]``)."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def build_seq2seq_lm(
    path: str | None,
    backbone_config: dict[str, Any] | None,
    tokenizer: Any,
    trust_remote_code: bool = False,
    name: str | None = None,
    instead: str = "",
):
    """``AutoModelForSeq2SeqLM`` from ``path`` (resolved already; ``name`` is what the user
    gave) or from ``backbone_config`` (``{"model_type": "t5", ...}``; its vocabulary defaults to
    the tokenizer's), with pad, decoder-start and end ids taken from ``tokenizer`` so that
    training targets and ``generate`` agree. A model that is no encoder-decoder is refused in
    one line, ending with ``instead`` (what to use for such a model)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    if backbone_config is not None:
        settings = dict(backbone_config)
        model_type = settings.pop("model_type", None)
        if model_type is None:
            raise APMError("backbone_config needs a model_type (e.g. t5, bart)")
        settings.setdefault("vocab_size", len(tokenizer))
        config = AutoConfig.for_model(model_type, **settings)
        _require_encoder_decoder(config, f"backbone_config (model_type {model_type})", instead)
        net = AutoModelForSeq2SeqLM.from_config(config)
    else:
        if path is None:
            raise APMError(
                "set model.backbone (an encoder-decoder folder or hub name) or model.backbone_config"
            )
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        _require_encoder_decoder(config, name or path, instead)
        net = AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=trust_remote_code)
        net.train()  # from_pretrained returns eval mode; Lightning keeps a submodule's mode
    if len(tokenizer) > net.config.vocab_size:  # a larger tokenizer would index past the table
        raise APMError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{net.config.vocab_size}; raise backbone_config.vocab_size or change the tokenizer"
        )
    net.config.pad_token_id = tokenizer.pad_token_id
    if getattr(net.config, "decoder_start_token_id", None) is None:
        net.config.decoder_start_token_id = tokenizer.pad_token_id  # T5's convention
    eos = end_token_id(tokenizer)
    net.config.eos_token_id = eos
    net.generation_config.decoder_start_token_id = net.config.decoder_start_token_id
    net.generation_config.eos_token_id = eos
    net.generation_config.pad_token_id = tokenizer.pad_token_id
    return net


def _require_encoder_decoder(config: Any, what: str, instead: str) -> None:
    if not getattr(config, "is_encoder_decoder", False):
        raise APMError(f"{what} is a {config.model_type} model, not an encoder-decoder" + instead)
