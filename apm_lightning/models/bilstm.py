"""BiLSTM baseline of the GLUE paper (Wang et al., 2018), in plain torch.

The paper's baseline encodes each sentence with a 2-layer BiLSTM (1500D per direction) over
300D GloVe embeddings, max-pools over time, and classifies with an MLP (one 512D hidden layer).
Sentence pairs share one encoder and are combined as ``[u; v; |u - v|; u * v]``.

This file also holds the word-level tokenizer that the baseline needs (GloVe vectors are per
word, not per subword) and a streaming GloVe reader. Nothing here depends on Lightning, so the
pieces can be unit-tested and reused on their own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import PreTrainedTokenizerFast

from apm_lightning.core.errors import APMError

__all__ = [
    "PAD_TOKEN",
    "PRESETS",
    "UNK_TOKEN",
    "BiLSTMEncoder",
    "BiLSTMPairClassifier",
    "build_word_tokenizer",
    "load_glove",
    "word_tokenizer_from_json",
    "word_tokenizer_to_json",
]

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"

PRESETS: dict[str, dict] = {
    # GLUE paper: 2-layer BiLSTM, 1500D per direction, max pooling, 300D GloVe, MLP with a
    # 512D hidden layer.
    "paper": {
        "embedding_dim": 300,
        "hidden_size": 1500,
        "num_layers": 2,
        "mlp_hidden": 512,
        "dropout": 0.1,
    },
    # Small enough to train on a laptop CPU in minutes; same architecture.
    "cpu": {
        "embedding_dim": 100,
        "hidden_size": 128,
        "num_layers": 2,
        "mlp_hidden": 128,
        "dropout": 0.1,
    },
}


# --------------------------------------------------------------------------- tokenizer


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN)


def build_word_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 30000,
    lowercase: bool = True,
    min_frequency: int = 1,
) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on ``texts``: ``[PAD]`` is id 0, ``[UNK]`` id 1.

    ``vocab_size`` counts the two special tokens. Words are kept by decreasing frequency;
    the ``tokenizers`` WordLevelTrainer breaks frequency ties by the word itself, so the
    same texts give the same ids in every run (``tests/test_bilstm.py`` pins this).
    """
    if vocab_size < 2:
        raise APMError(
            f"build_word_tokenizer: vocab_size={vocab_size} is too small; it counts the "
            f"special tokens {PAD_TOKEN} and {UNK_TOKEN}, so use at least 2 (e.g. 30000)."
        )
    if min_frequency < 1:
        raise APMError(f"build_word_tokenizer: min_frequency={min_frequency} must be at least 1.")
    tok = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    # Splits on whitespace and isolates punctuation, like the NLTK-style tokenisation the
    # GloVe vocabularies were built with ("world!" -> "world", "!").
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN, UNK_TOKEN],  # listed first, so ids 0 and 1
        show_progress=False,
    )
    tok.train_from_iterator(iter(texts), trainer=trainer)
    return _wrap(tok)


def word_tokenizer_to_json(tok: PreTrainedTokenizerFast) -> str:
    """Serialise a tokenizer from :func:`build_word_tokenizer` to a JSON string (for checkpoints)."""
    return tok.backend_tokenizer.to_str()


def word_tokenizer_from_json(s: str) -> PreTrainedTokenizerFast:
    """Restore a tokenizer saved with :func:`word_tokenizer_to_json`; encodings are identical."""
    try:
        tok = Tokenizer.from_str(s)
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise APMError(
            f"word_tokenizer_from_json: the stored word-tokenizer JSON cannot be read ({exc}); "
            "the checkpoint is damaged or was not written by apm_lightning, so retrain it."
        ) from exc
    return _wrap(tok)


# --------------------------------------------------------------------------- GloVe


def _parse_header(fields: list[bytes]) -> int | None:
    """Return D if ``fields`` is a word2vec header ``N D``, else None."""
    if len(fields) != 2:
        return None
    try:
        int(fields[0])
        return int(fields[1])
    except ValueError:
        return None


def load_glove(
    path: str | Path,
    vocab: dict[str, int],
    dim: int,
    *,
    pad_token: str = PAD_TOKEN,
    init_std: float = 0.1,
    seed: int = 0,
) -> tuple[torch.Tensor, int]:
    """Build an embedding matrix ``[len(vocab), dim]`` from a GloVe text file.

    Rows of vocab words found in the file hold their GloVe vectors; an exact match wins over
    a case-insensitive one, and among case-insensitive matches the first in the file (GloVe
    files are sorted by frequency) wins. Other rows are drawn from N(0, ``init_std`` ** 2) with a
    generator seeded ``seed``; the ``pad_token`` row is zero. Returns the matrix and the
    number of vocab words found.

    The file is streamed; lines for words outside the vocabulary are skipped without
    parsing their numbers. An optional word2vec header ``N D`` is tolerated, and words that
    contain spaces (GloVe 840B has some) are the fields before the last ``dim``.
    """
    path = Path(path)
    if not path.is_file():
        raise APMError(
            f"{path}: GloVe file not found; download it (e.g. glove.840B.300d.txt from "
            "https://nlp.stanford.edu/projects/glove/), unzip it and pass its path."
        )
    if dim < 1:
        raise APMError(f"load_glove: dim={dim} must be positive (e.g. 300).")
    n = max(vocab.values(), default=-1) + 1
    if n != len(vocab):
        raise APMError(
            f"load_glove: vocabulary ids must be 0..{len(vocab) - 1} without gaps, but the "
            f"largest id is {n - 1}; pass tokenizer.get_vocab()."
        )

    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(n, dim, generator=gen) * init_std
    pad_id = vocab.get(pad_token)

    # Case-insensitive index, so a lowercased vocabulary finds cased GloVe 840B words and a
    # cased vocabulary finds uncased GloVe 6B words.
    by_lower: dict[str, list[int]] = {}
    for word, idx in vocab.items():
        if idx != pad_id:
            by_lower.setdefault(word.lower(), []).append(idx)
    # 0 = exact match, 1 = case-insensitive match, 2 = not found yet.
    quality = [2] * n

    first_data_line = True
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\r\n").rstrip(b" ")
            if not line:
                continue
            n_values = line.count(b" ")  # fields after the first; cheap, no split
            if lineno == 1 and n_values == 1 and dim != 1:
                header_dim = _parse_header(line.split(b" "))
                if header_dim is not None:
                    if header_dim != dim:
                        raise APMError(
                            f"{path}:1: header says the vectors have {header_dim} values but "
                            f"dim={dim}; pass dim={header_dim} or use the {dim}D file."
                        )
                    continue
            # Words may contain spaces, so a line with too many fields is legal; but the
            # first data line of a GloVe file is a plain word ("the" or ","), so a mismatch
            # there means the file's dimension differs (this catches dim=50 on a 300D file).
            is_first, first_data_line = first_data_line, False
            if n_values < dim or (is_first and n_values != dim):
                raise APMError(
                    f"{path}:{lineno}: vector has {n_values} values but dim={dim}; pass the "
                    "dimension of this GloVe file as dim, or fix the line."
                )
            if n_values == dim:
                word_bytes = line[: line.index(b" ")]
            else:
                word_bytes = line.rsplit(b" ", dim)[0]
            # Only the word is decoded: an undecodable word cannot be in the vocabulary,
            # so it must not stop a multi-GB read.
            word = word_bytes.decode("utf-8", errors="replace")

            exact = vocab.get(word)
            targets: list[tuple[int, int]] = []
            if exact is not None and exact != pad_id and quality[exact] > 0:
                targets.append((exact, 0))
            for idx in by_lower.get(word.lower(), ()):
                if quality[idx] > 1:
                    targets.append((idx, 1))
            if not targets:
                continue

            try:
                values = [float(x) for x in line.rsplit(b" ", dim)[1:]]
            except ValueError:
                raise APMError(
                    f"{path}:{lineno}: non-numeric value in the vector of {word!r}; the file "
                    "is corrupt or not GloVe text format (word followed by numbers), so "
                    "re-download it."
                ) from None
            if not all(math.isfinite(v) for v in values):
                raise APMError(
                    f"{path}:{lineno}: the vector of {word!r} contains nan or inf; "
                    "re-download the file or remove that line."
                )
            vector = torch.tensor(values, dtype=matrix.dtype)
            for idx, q in targets:
                if q < quality[idx]:
                    matrix[idx] = vector
                    quality[idx] = q

    if pad_id is not None:
        matrix[pad_id] = 0.0
    found = sum(1 for q in quality if q < 2)
    return matrix, found


# --------------------------------------------------------------------------- models


class BiLSTMEncoder(nn.Module):
    """Embedding -> dropout -> bidirectional LSTM -> max pooling over the valid time steps."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.hidden_size = hidden_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            # nn.LSTM only applies dropout between layers and warns when there are none.
            dropout=dropout if num_layers > 1 else 0.0,
        )

    @property
    def output_dim(self) -> int:
        """Size of the sentence vector: both directions concatenated."""
        return 2 * self.hidden_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Encode right-padded ``input_ids [B, T]`` into sentence vectors ``[B, 2 * hidden]``."""
        if input_ids.dim() != 2:
            raise APMError(
                f"BiLSTMEncoder: input_ids must be [batch, time], got shape "
                f"{tuple(input_ids.shape)}; batch the tokenizer output with padding=True."
            )
        mask = input_ids != self.pad_id
        # Packing takes the first `length` steps of each row, so padding must be at the end.
        if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise APMError(
                "BiLSTMEncoder: input_ids contain padding before a real token; pad on the "
                "right (tokenizer.padding_side = 'right') and keep [PAD] out of the text."
            )
        # An empty sentence is run as a single [PAD] step: packing rejects length 0.
        lengths = mask.sum(dim=1).clamp(min=1)
        x = self.dropout(self.embedding(input_ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)  # [B, max(lengths), 2H]
        steps = torch.arange(out.size(1), device=out.device)
        valid = steps.unsqueeze(0) < lengths.to(out.device).unsqueeze(1)
        # Padded outputs are zeros, which would win the max over negative activations.
        out = out.masked_fill(~valid.unsqueeze(-1), float("-inf"))
        return out.max(dim=1).values


class BiLSTMPairClassifier(nn.Module):
    """GLUE BiLSTM baseline: shared encoder, ``[u; v; |u-v|; u*v]`` features, MLP head.

    ``num_labels == 1`` is regression (STS-B): the logits ``[B, 1]`` are the scores.
    """

    def __init__(
        self,
        vocab_size: int,
        num_labels: int,
        embedding_dim: int = 300,
        hidden_size: int = 1500,
        num_layers: int = 2,
        mlp_hidden: int = 512,
        dropout: float = 0.1,
        pad_id: int = 0,
        pair: bool = True,
    ) -> None:
        super().__init__()
        if num_labels < 1:
            raise APMError(
                f"BiLSTMPairClassifier: num_labels={num_labels}; use 1 for regression or "
                "the number of classes."
            )
        self.pair = pair
        self.pad_id = pad_id
        self.num_labels = num_labels
        self.encoder = BiLSTMEncoder(vocab_size, embedding_dim, hidden_size, num_layers, dropout, pad_id)
        features = self.encoder.output_dim * (4 if pair else 1)
        self.classifier = nn.Sequential(
            nn.Linear(features, mlp_hidden),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden, num_labels),
        )

    def forward(self, input_ids_a: torch.Tensor, input_ids_b: torch.Tensor | None = None) -> torch.Tensor:
        """Return logits ``[B, num_labels]`` for sentences a (and b for pair tasks)."""
        if not self.pair:
            if input_ids_b is not None:
                raise APMError(
                    "BiLSTMPairClassifier: got a second sentence but the model was built "
                    "with pair=False; build it with pair=True for sentence-pair tasks."
                )
            return self.classifier(self.encoder(input_ids_a))
        if input_ids_b is None:
            raise APMError(
                "BiLSTMPairClassifier: the model was built with pair=True but no second "
                "sentence was given; pass input_ids_b, or build it with pair=False."
            )
        if input_ids_a.size(0) != input_ids_b.size(0):
            raise APMError(
                f"BiLSTMPairClassifier: sentence batches differ in size "
                f"({input_ids_a.size(0)} vs {input_ids_b.size(0)}); pair them one to one."
            )
        # One LSTM call for both sides (same weights either way); extra padding is ignored.
        t = max(input_ids_a.size(1), input_ids_b.size(1))
        both = torch.cat(
            [
                F.pad(input_ids_a, (0, t - input_ids_a.size(1)), value=self.pad_id),
                F.pad(input_ids_b, (0, t - input_ids_b.size(1)), value=self.pad_id),
            ]
        )
        u, v = self.encoder(both).chunk(2)
        return self.classifier(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))

    def load_pretrained_embeddings(self, matrix: torch.Tensor) -> None:
        """Copy ``matrix [vocab_size, embedding_dim]`` (e.g. from :func:`load_glove`) in."""
        weight = self.encoder.embedding.weight
        if tuple(matrix.shape) != tuple(weight.shape):
            raise APMError(
                f"BiLSTMPairClassifier: embedding matrix has shape {tuple(matrix.shape)} but "
                f"the model expects {tuple(weight.shape)} (vocab_size, embedding_dim); load "
                "GloVe with this tokenizer's vocabulary and dim=embedding_dim."
            )
        with torch.no_grad():
            weight.copy_(matrix.to(dtype=weight.dtype, device=weight.device))
