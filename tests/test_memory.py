"""Memory that grows with the data: SQuAD evaluation keeps one feature per window until it
decodes, so a feature must stay compact (arrays, not Python lists of offsets); loaders read
lengths from Arrow; and the compact offsets decode exactly as the list form did.
(benchmarks/bench_memory.py measures whole runs; these checks are cheap and exact.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from apm_lightning.data.squad import SQuADDataModule, _lengths
from apm_lightning.data.squad_features import offsets_array
from apm_lightning.data.squad_files import QAExample
from apm_lightning.modules.question_answering import QuestionAnsweringModule, postprocess

REPO = Path(__file__).resolve().parents[1]
V1 = REPO.parent / "shared" / "data" / "squad" / "v1.1" / "dev-v1.1.json"
needs_data = pytest.mark.skipif(not V1.is_file(), reason="../shared/data/squad is missing")
TINY = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def deep_size(value: object) -> int:
    """Bytes held by ``value``: arrays by their buffers, containers with their items."""
    if isinstance(value, np.ndarray):
        return sys.getsizeof(value) + (0 if value.base is None else value.nbytes)
    if isinstance(value, (list, tuple)):
        return sys.getsizeof(value) + sum(deep_size(v) for v in value)
    return 0 if value is None else sys.getsizeof(value)


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    """Validation features of the last 40 questions' windows of SQuAD v1.1 dev (128 tokens)."""
    dm = SQuADDataModule(
        train_file=str(V1),
        split_by_article=47,
        tokenizer="minilm",
        max_seq_length=128,
        doc_stride=64,
        max_query_length=32,
        eval_batch_size=16,
        max_eval_samples=40,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    dm.setup("validate")
    return dm


@needs_data
def test_evaluation_features_are_compact(validation):
    model = QuestionAnsweringModule(backbone=None, backbone_config=TINY, tokenizer="minilm").eval()
    features, tokens = [], 0
    with torch.no_grad():
        for batch in validation.val_dataloader():
            features += model._collect(batch)
            tokens += int(batch["attention_mask"].sum())
    assert len(features) == len(validation.datasets["validation"]) > 40  # long contexts: windows
    # Offsets (2 x int32) and two float32 logits: 16 bytes a token, plus a few hundred bytes of
    # object headers per window. Offsets as Python lists of ints took about 130 bytes a token.
    per_token = sum(deep_size(f) for f in features) / tokens
    assert per_token < 24, f"{per_token:.0f} bytes per token kept per evaluation window"
    index, offsets, start, end = features[0]
    assert offsets.dtype == np.int32 and offsets.shape == (len(start), 2) and start.dtype == np.float32


@needs_data
def test_loader_lengths_come_from_arrow(validation):
    dataset = validation.datasets["validation"]
    assert _lengths(dataset) == [len(x) for x in dataset["input_ids"]]
    assert _lengths(dataset.select([3, 1])) == [len(dataset[3]["input_ids"]), len(dataset[1]["input_ids"])]


@needs_data
def test_compact_offsets_decode_as_lists(validation):
    # The same random logits over real windows: list offsets (with None) and int32 arrays
    # give the same answers and null odds.
    dataset, examples = validation.datasets["validation"], validation.examples("validation")
    rng = np.random.default_rng(0)
    as_lists, as_arrays = [], []
    for row in dataset:
        n = len(row["input_ids"])
        start, end = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
        as_lists.append((row["example_index"], row["offset_mapping"], start, end))
        as_arrays.append((row["example_index"], offsets_array(row["offset_mapping"]), start, end))
    assert postprocess(examples, as_lists) == postprocess(examples, as_arrays)


def test_offsets_array_by_hand():
    ex = QAExample("q", "t", "The cat sat.", "Who?", ("cat",), (4,))
    offsets = [None, None, None, [0, 3], [4, 7], [8, 11], [11, 12], None]
    packed = offsets_array(offsets)
    assert packed.dtype == np.int32 and packed.tolist() == [[-1, -1]] * 3 + offsets[3:7] + [[-1, -1]]
    assert offsets_array(packed) is packed
    start, end = np.zeros(8, np.float32), np.zeros(8, np.float32)
    start[4] = end[4] = 5.0
    assert postprocess([ex], [(0, packed, start, end)])[0] == {"q": "cat"}
