"""``span_corruption``: T5's pretraining objective on an encoder-decoder (``AutoModelForSeq2SeqLM``:
T5 from ``backbone_config: {model_type: t5, ...}`` or any encoder-decoder folder).

In each block a share (``noise_density``) of the tokens, in spans of mean length
``mean_noise_span_length``, is chosen with T5's ``random_spans_noise_mask``: the numbers of noise
tokens and spans are fixed by the block length, the split of the noise and of the rest into spans
is random, and the block alternates kept span, noise span, ..., ending in noise. The encoder reads
the block with each noise span replaced by one sentinel (``<extra_id_0>``, ``<extra_id_1>``, ...);
the decoder writes each sentinel followed by the tokens it hid, then the end token (teacher
forcing; the loss is the cross-entropy of those targets). As in T5 the whole packed block is
corrupted, separators included; the first span is always kept, so a leading ``[CLS]`` stays.

The decoder only ever sees the targets (about ``noise_density * (1 + 1 / mean_noise_span_length)``
of the block), so its output head already runs on scored positions alone: the sparse prediction
of ``mlm`` comes for free, and every block of a batch gives inputs and targets of the same length
(no padding). The splits are keyed draws (``keyed_random``): a block is corrupted alike on any rank,
in any batch position and after a resume.

Sentinels: a tokenizer without ``<extra_id_0>`` (MiniLM's WordPiece, ``apm tokenizer train``
without ``--sentinels``) gets ``num_sentinels`` of them as additional special tokens, added so
that ``<extra_id_0>`` has the highest id (T5's convention: sentinel ids count down from the top);
the model's vocabulary covers them and the export saves the extended tokenizer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from apm_lightning.core.errors import APMError
from apm_lightning.modules.objectives.base import Objective, register_objective
from apm_lightning.modules.objectives.keyed_random import position_uniforms

SENTINEL = "<extra_id_{}>"


def noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """T5's numbers of noise tokens and of noise spans for ``length`` tokens (``random_spans_noise_mask``:
    rounded half to even as tf.round; at least one of each, at least one token kept). The spans
    are also capped at the kept tokens, which only a degenerate setting reaches (T5 would
    produce an empty kept span there)."""
    length = max(length, 2)
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(round(noise / mean_noise_span_length), 1)
    return noise, min(spans, length - noise)


def random_segmentation(draws: torch.Tensor, items: int, segments: int) -> torch.Tensor:
    """``(rows, segments)`` positive lengths summing to ``items`` per row: T5's
    ``_random_segmentation``, which shuffles ``items - 1`` flags of which ``segments - 1`` are
    set (a segment starts after each); the set flags here are those of the ``segments - 1``
    smallest ``draws``, a uniformly random subset as a shuffle's would be."""
    rows = draws.shape[0]
    starts = torch.zeros(rows, items, dtype=torch.long, device=draws.device)
    if segments > 1:
        chosen = draws[:, : items - 1].argsort(dim=1, stable=True)[:, : segments - 1]
        starts[:, 1:].scatter_(1, chosen, 1)
    segment = starts.cumsum(dim=1)
    lengths = torch.zeros(rows, segments, dtype=torch.long, device=draws.device)
    return lengths.scatter_add_(1, segment, torch.ones_like(segment))


def random_spans_noise_mask(
    keys: torch.Tensor | None,
    shape: tuple[int, int],
    noise_density: float,
    mean_noise_span_length: float,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(rows, length)`` booleans, True at noise tokens: T5's ``random_spans_noise_mask`` per
    row, its two segmentations drawn from the keyed streams 0 and 1 of the row's positions
    (torch's generator when ``keys`` is None)."""
    rows, length = shape
    noise, spans = noise_counts(length, noise_density, mean_noise_span_length)
    noise_draws, kept_draws = position_uniforms(keys, torch.Size(shape), 2, torch.device(device))
    noise_lengths = random_segmentation(noise_draws, noise, spans)
    kept_lengths = random_segmentation(kept_draws, length - noise, spans)
    # Kept span, noise span, kept span, ...: a span number that is odd is noise.
    interleaved = torch.stack([kept_lengths, noise_lengths], dim=2).view(rows, 2 * spans)
    span_starts = interleaved.cumsum(dim=1)[:, :-1]
    indicator = torch.zeros(rows, length, dtype=torch.long, device=noise_draws.device)
    indicator.scatter_add_(1, span_starts, torch.ones_like(span_starts))
    return indicator.cumsum(dim=1) % 2 == 1


def replace_spans(tokens: torch.Tensor, spans: torch.Tensor, sentinels: torch.Tensor) -> torch.Tensor:
    """T5's ``noise_span_to_unique_sentinel``: each run of ``spans`` positions in a row becomes
    one token, ``sentinels[k]`` for the row's k-th run. Every row must keep as many positions
    (true of a noise mask and of its complement: the counts are fixed by the length)."""
    previous = torch.cat([torch.zeros_like(spans[:, :1]), spans[:, :-1]], dim=1)
    first = spans & ~previous
    run = (first.long().cumsum(dim=1) - 1).clamp_(min=0)
    replaced = torch.where(first, sentinels[run], tokens)
    return replaced[~(spans & previous)].view(tokens.shape[0], -1)


def sentinel_ids(tokenizer: Any) -> list[int]:
    """The ids of ``<extra_id_0>``, ``<extra_id_1>``, ... as far as the tokenizer has them."""
    vocab = tokenizer.get_vocab()
    ids: list[int] = []
    while SENTINEL.format(len(ids)) in vocab:
        ids.append(vocab[SENTINEL.format(len(ids))])
    return ids


def end_token_id(tokenizer: Any) -> int:
    """What ends a target: the end-of-sequence token, else the separator (BERT's [SEP])."""
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise APMError("span_corruption needs a tokenizer with an eos or sep token to end its targets")
    return end


@register_objective("span_corruption")
class SpanCorruption(Objective):
    auto_model = "AutoModelForSeq2SeqLM"
    arguments = {"noise_density": 0.15, "mean_noise_span_length": 3.0, "num_sentinels": 100}
    train_metrics = ("target_accuracy",)
    validation_weights = {"loss": "predicted", "target_accuracy": "predicted"}

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        density, mean, count = (self.args[k] for k in self.arguments)
        if not 0.0 < float(density) < 1.0:
            raise APMError(f"objective_args.noise_density must be between 0 and 1, not {density}")
        if not float(mean) >= 1.0:
            raise APMError(f"objective_args.mean_noise_span_length must be 1 or more, not {mean}")
        if not isinstance(count, int) or count < 1:
            raise APMError(f"objective_args.num_sentinels must be a positive integer, not {count}")

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        if not sentinel_ids(tokenizer):
            # Reversed, so that <extra_id_0> gets the highest id, as in T5's vocabularies.
            added = [SENTINEL.format(i) for i in reversed(range(self.args["num_sentinels"]))]
            tokenizer.add_special_tokens({"additional_special_tokens": added})
        return tokenizer

    def check_config(self, config: Any) -> None:
        if not getattr(config, "is_encoder_decoder", False):
            raise APMError(
                f"span_corruption needs an encoder-decoder (e.g. backbone_config model_type: t5), "
                f"not {config.model_type}"
            )

    def build(self, config: Any, pretrained: str | None) -> None:
        module = self.module
        tokenizer = module.tokenizer
        end = end_token_id(tokenizer)
        if pretrained is None or getattr(config, "decoder_start_token_id", None) is None:
            config.decoder_start_token_id = tokenizer.pad_token_id  # T5's convention
        config.eos_token_id = end
        super().build(config, pretrained)
        generation = module.net.generation_config  # what generate() (and the export) use
        generation.decoder_start_token_id = config.decoder_start_token_id
        generation.eos_token_id, generation.pad_token_id = end, tokenizer.pad_token_id
        module.register_buffer("sentinel_ids", torch.tensor(sentinel_ids(tokenizer)), persistent=False)
        module.register_buffer("end_id", torch.tensor([end]), persistent=False)

    def corrupt(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)``: the blocks with each noise span replaced by a sentinel, and
        per block each sentinel followed by the span it hides, then the end token."""
        module = self.module
        rows, length = input_ids.shape
        density, mean = self.args["noise_density"], self.args["mean_noise_span_length"]
        spans = noise_counts(length, density, mean)[1]
        if spans > len(module.sentinel_ids):
            raise APMError(
                f"a block of {length} tokens has {spans} noise spans but the tokenizer has "
                f"{len(module.sentinel_ids)} sentinels; raise objective_args.num_sentinels or shorten blocks"
            )
        noise = random_spans_noise_mask(keys, (rows, length), density, mean, input_ids.device)
        inputs = replace_spans(input_ids, noise, module.sentinel_ids)
        targets = replace_spans(input_ids, ~noise, module.sentinel_ids)
        return inputs, torch.cat([targets, module.end_id.expand(rows, 1)], dim=1)

    def compute(
        self, input_ids: torch.Tensor, keys: torch.Tensor | None = None, metrics: bool = True
    ) -> dict[str, Any]:
        net = self.module.net
        inputs, targets = self.corrupt(input_ids, keys)
        decoder_inputs = net.prepare_decoder_input_ids_from_labels(labels=targets)
        logits = net(input_ids=inputs, decoder_input_ids=decoder_inputs).logits
        logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        total = F.cross_entropy(logits.float(), targets, reduction="sum")
        out: dict[str, Any] = {"loss": self.global_mean(total, targets.numel()), "predicted": targets.numel()}
        if metrics:
            out["target_accuracy"] = (logits.argmax(-1) == targets).float().mean()
        return out
