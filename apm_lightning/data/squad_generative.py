"""SQuAD questions as text-to-text pairs, T5's format: the source ``"question: <question>
context: <context>"`` cut to ``max_seq_length`` tokens (no windows: one source per question),
the target the first gold answer (an unanswerable v2.0 question: the no-answer text), ending with
the model's end token. ``GenerativeQAEncoder`` is what a generative model hands the SQuAD data
module in the encoder handshake (``squad_features`` replaces the span features), and
:func:`answer_in_context` maps a decoded answer back to the context's own spelling."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence
from typing import Any

from apm_lightning.data.encoders import tokenizer_fingerprint
from apm_lightning.data.squad_files import QAExample

SOURCE = "question: {question} context: {context}"
IGNORE = -100  # target padding, which the loss ignores


def _cut_questions(tokenizer: Any, examples: Sequence[QAExample], max_query_length: int) -> list[str]:
    """Questions cut to ``max_query_length`` tokens, as the span features cut them, so that a
    long question never crowds out the context."""
    questions = [ex.question.strip() for ex in examples]
    spans = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [
        q[: s[max_query_length - 1][1]] if len(s) > max_query_length else q
        for q, s in zip(questions, spans, strict=True)
    ]


class GenerativeQAEncoder:
    """Source and target token ids for a sequence-to-sequence model.

    Args:
        tokenizer: the model's (fast) tokenizer.
        end_id: the token that ends a target (the model's ``eos_token_id``).
        max_target_length: longest target in tokens, the end token included.
        no_answer_text: the target of an unanswerable question.
    """

    def __init__(self, tokenizer: Any, end_id: int, max_target_length: int, no_answer_text: str) -> None:
        self.tokenizer = tokenizer
        self.end_id = end_id
        self.max_target_length = max_target_length
        self.no_answer_text = no_answer_text
        settings = json.dumps([SOURCE, end_id, max_target_length, no_answer_text])
        digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
        self.fingerprint = f"generative-qa-{digest}-" + tokenizer_fingerprint(tokenizer)
        self.pad_values = {"input_ids": tokenizer.pad_token_id or 0, "labels": IGNORE}

    def sources(self, examples: Sequence[QAExample], max_query_length: int) -> list[str]:
        questions = _cut_questions(self.tokenizer, examples, max_query_length)
        return [
            SOURCE.format(question=q, context=ex.context) for q, ex in zip(questions, examples, strict=True)
        ]

    def squad_features(
        self,
        examples: Sequence[QAExample],
        max_seq_length: int,
        doc_stride: int,
        max_query_length: int,
        labels: bool = True,
        offsets: bool = False,
    ) -> dict[str, list]:
        """``input_ids`` (the source, cut at ``max_seq_length`` tokens); with ``labels`` the
        target ``labels`` and two flags per question, ``answer_lost`` (the gold answer lies past
        the cut, so it cannot be read from the input) and ``target_cut`` (the answer is longer
        than ``max_target_length``); with ``offsets`` the question's ``example_index``.
        ``doc_stride`` is the span features' and unused: a question has one source."""
        sources = self.sources(examples, max_query_length)
        encoded = self.tokenizer(
            sources,
            truncation=True,
            max_length=max_seq_length,
            return_offsets_mapping=labels,
            return_attention_mask=False,  # rebuilt per batch by the collator
        )
        out: dict[str, list] = {"input_ids": encoded["input_ids"]}
        if labels:
            texts = [ex.answers[0] if ex.answers else self.no_answer_text for ex in examples]
            words = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            room = self.max_target_length - 1
            out["labels"] = [ids[:room] + [self.end_id] for ids in words]
            out["target_cut"] = [int(len(ids) > room) for ids in words]
            lost = []
            for source, ex, spans in zip(sources, examples, encoded["offset_mapping"], strict=True):
                if not ex.answers:
                    lost.append(0)
                    continue
                context_at = len(source) - len(ex.context)
                answer_end = context_at + ex.answer_starts[0] + len(ex.answers[0])
                kept = max((end for _, end in spans), default=0)  # special tokens are (0, 0)
                lost.append(int(answer_end > kept))
            out["answer_lost"] = lost
        if offsets:
            out["example_index"] = list(range(len(examples)))
        return out


def _squashed(text: str) -> tuple[str, list[int]]:
    """``text`` lower-cased, without accents or whitespace, and the index in ``text`` of each
    character kept: what an uncased WordPiece vocabulary keeps of it."""
    chars, where = [], []
    for i, ch in enumerate(text):
        for c in unicodedata.normalize("NFD", ch.lower()):
            if not c.isspace() and unicodedata.category(c) != "Mn":
                chars.append(c)
                where.append(i)
    return "".join(chars), where


def answer_in_context(answer: str, context: str) -> str:
    """The context's own text of a generated ``answer`` that occurs in it up to case, accents
    and spacing, else ``answer`` unchanged.

    Decoding loses the original spelling: an uncased WordPiece vocabulary (MiniLM's, which the
    study's T5 models use) writes ``"3. 5"`` for ``3.5`` and ``"1, 000"`` for ``1,000``, which
    the official normalisation scores as other words. The characters are the model's; only
    their spacing and case are taken from the context. No library does this for T5 outputs, so
    it is written here.
    """
    wanted, _ = _squashed(answer)
    if not wanted:
        return answer
    squashed, where = _squashed(context)
    at = squashed.find(wanted)
    if at < 0:
        return answer
    return context[where[at] : where[at + len(wanted) - 1] + 1]
