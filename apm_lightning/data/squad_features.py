"""SQuAD questions as model features: the question and a window of its context, long contexts
cut into overlapping windows (``max_seq_length``, ``doc_stride``) as the reference implementations
do. Training features carry the answer's start and end token, or the first position (``[CLS]``)
when the window does not hold the answer or there is none; evaluation features carry their
question's index and the character offsets of their context tokens, so predicted spans map back
to the original text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from apm_lightning.core.errors import APMError
from apm_lightning.data.collate import PadCollator
from apm_lightning.data.squad_files import QAExample


def _answer_tokens(offsets: list, sequence_ids: list, start_char: int, end_char: int) -> tuple[int, int]:
    """First and last context token of the answer, or (0, 0) when the window does not hold it."""
    context = [k for k, s in enumerate(sequence_ids) if s == 1]
    if not context:
        return 0, 0
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    # Bounded by the window's context (the reference loop can run into the final [SEP]).
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def prepare_features(
    tokenizer,
    examples: Sequence[QAExample],
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    labels: bool = True,
    offsets: bool = False,
) -> dict[str, list]:
    """Tokenize questions with their contexts into overlapping windows.

    Returns ``input_ids`` (and ``token_type_ids`` when the tokenizer makes them), with
    ``labels``: ``start_positions``/``end_positions`` (the first answer; 0 when outside the
    window or unanswerable), with ``offsets``: ``example_index`` and ``offset_mapping``
    (character spans of context tokens, ``None`` elsewhere).
    """
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    if doc_stride >= max_seq_length - max_query_length - specials:
        raise APMError(
            f"doc_stride={doc_stride} must be less than max_seq_length - max_query_length - "
            f"{specials} special tokens = {max_seq_length - max_query_length - specials}"
        )
    # Leading whitespace would become tokens of nothing; long questions are cut to
    # max_query_length tokens (Google's BERT recipe) so that every window keeps some context.
    questions = [ex.question.lstrip() for ex in examples]
    spans = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    questions = [
        q[: s[max_query_length - 1][1]] if len(s) > max_query_length else q
        for q, s in zip(questions, spans, strict=True)
    ]
    encoded = tokenizer(
        questions,
        [ex.context for ex in examples],
        truncation="only_second",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_attention_mask=False,  # rebuilt per batch by the collator
        padding=False,
    )
    sample_map = encoded["overflow_to_sample_mapping"]
    out: dict[str, list] = {k: encoded[k] for k in ("input_ids", "token_type_ids") if k in encoded}
    starts, ends, masked = [], [], []
    for i, window in enumerate(encoded["offset_mapping"]):
        sequence_ids = encoded.sequence_ids(i)
        example = examples[sample_map[i]]
        if labels:
            if example.answers:
                start_char = example.answer_starts[0]
                span = _answer_tokens(window, sequence_ids, start_char, start_char + len(example.answers[0]))
            else:
                span = (0, 0)
            starts.append(span[0])
            ends.append(span[1])
        if offsets:
            masked.append([list(o) if s == 1 else None for o, s in zip(window, sequence_ids, strict=True)])
    if labels:
        out["start_positions"], out["end_positions"] = starts, ends
    if offsets:
        out["example_index"] = list(sample_map)
        out["offset_mapping"] = masked
    return out


def offsets_array(offsets: Sequence) -> np.ndarray:
    """A window's character offsets as an ``(n, 2)`` int32 array, ``-1`` where a token is not
    context (``None`` in ``prepare_features``): about 8 bytes a token, where the same offsets as
    Python lists of ints take about 100, which evaluation would hold for every window."""
    if isinstance(offsets, np.ndarray):
        return offsets
    rows = [(-1, -1) if o is None else (o[0], o[1]) for o in offsets]
    return np.asarray(rows, dtype=np.int32).reshape(len(rows), 2)


class QACollator:
    """:class:`PadCollator` for QA features; ``offset_mapping`` becomes one ``(batch, length, 2)``
    int32 array (``-1`` off the context and in padding), kept out of the tensors moved to the
    device."""

    def __init__(self, pad_values: dict[str, int]) -> None:
        self.pad = PadCollator(pad_values)

    def __call__(self, features: Sequence[dict]) -> dict[str, Any]:
        offsets = [f["offset_mapping"] for f in features] if "offset_mapping" in features[0] else None
        batch: dict[str, Any] = self.pad(
            [{k: v for k, v in f.items() if k != "offset_mapping"} for f in features]
        )
        if offsets is not None:
            packed = np.full((len(offsets), batch["input_ids"].shape[1], 2), -1, dtype=np.int32)
            for row, window in zip(packed, offsets, strict=True):
                window = offsets_array(window)
                row[: len(window)] = window
            batch["offset_mapping"] = packed
        return batch
