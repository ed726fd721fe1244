"""Text encoders: how a model wants its text turned into token ids.

A Transformer reads a pair as one sequence (``[CLS] a [SEP] b [SEP]``); the BiLSTM of the GLUE
paper encodes each sentence on its own. The model supplies its encoder, the data module applies
it in batches and caches the result keyed by ``fingerprint``.
"""

from __future__ import annotations

import hashlib

from transformers import PreTrainedTokenizerBase


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of everything that decides the ids a fast tokenizer produces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding settings are runtime state the tokenizer keeps from its last
        # call (every call sets them again), not part of what ids it produces: clear them. The
        # serialisation itself is canonical (vocabularies in id order), so it is hashed as it is:
        # a JSON round trip to sort keys took 0.1 s per run start, most of a warm cache hit.
        backend.no_truncation()
        backend.no_padding()
        state = backend.to_str()
    else:
        state = repr(sorted(tokenizer.get_vocab().items()))
    extra = f"{type(tokenizer).__name__}|{tokenizer.padding_side}|{tokenizer.truncation_side}"
    return hashlib.sha256((state + extra).encode()).hexdigest()[:16]


class JointPairEncoder:
    """One sequence per example, pairs joined by the tokenizer's own template."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.fingerprint = "joint-" + tokenizer_fingerprint(tokenizer)
        self.pad_values = {"input_ids": tokenizer.pad_token_id or 0, "token_type_ids": 0}

    def encode(
        self, text_a: list[str], text_b: list[str] | None, max_length: int
    ) -> dict[str, list[list[int]]]:
        out = self.tokenizer(
            text_a,
            text_b,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,  # rebuilt per batch by the collator
        )
        return {k: v for k, v in out.items() if k in ("input_ids", "token_type_ids")}


class SeparatePairEncoder:
    """Each sentence of a pair on its own (``input_ids_a``, ``input_ids_b``), no special tokens."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.fingerprint = "separate-" + tokenizer_fingerprint(tokenizer)
        pad = tokenizer.pad_token_id or 0
        self.pad_values = {"input_ids_a": pad, "input_ids_b": pad}

    def encode(
        self, text_a: list[str], text_b: list[str] | None, max_length: int
    ) -> dict[str, list[list[int]]]:
        def ids(texts: list[str]) -> list[list[int]]:
            return self.tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)[
                "input_ids"
            ]

        out = {"input_ids_a": ids(text_a)}
        if text_b is not None:
            out["input_ids_b"] = ids(text_b)
        return out


class TextToTextEncoder:
    """T5's input format: one sequence ``"<task> sentence1: a sentence2: b"`` (or ``"<task>
    sentence: a"``), ending with the tokenizer's own end token; no segment ids."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prefix: str) -> None:
        self.tokenizer = tokenizer
        self.prefix = prefix
        self.fingerprint = f"text-to-text-{prefix}-" + tokenizer_fingerprint(tokenizer)
        self.pad_values = {"input_ids": tokenizer.pad_token_id or 0}

    def encode(
        self, text_a: list[str], text_b: list[str] | None, max_length: int
    ) -> dict[str, list[list[int]]]:
        if text_b is None:
            texts = [f"{self.prefix} sentence: {a}" for a in text_a]
        else:
            texts = [
                f"{self.prefix} sentence1: {a} sentence2: {b}" for a, b in zip(text_a, text_b, strict=True)
            ]
        out = self.tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False)
        return {"input_ids": out["input_ids"]}
