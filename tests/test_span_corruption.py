"""T5-style span corruption (``modules/objectives/span_corruption.py``): the noise mask has the
counts of T5's ``random_spans_noise_mask``, inputs and targets give back the block, the draws
are keyed, sentinels are added to (or baked into) tokenizers, and a real ``apm pretrain`` run
exports a model that ``AutoModelForSeq2SeqLM`` loads and ``TextToTextClassifier`` fine-tunes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from run_options import CORPUS, QUIET, REPO

from apm_lightning.core.errors import APMError
from apm_lightning.modules.objectives.keyed_random import VALIDATION_SEED, row_keys
from apm_lightning.modules.objectives.span_corruption import (
    SENTINEL,
    noise_counts,
    random_spans_noise_mask,
    sentinel_ids,
)
from apm_lightning.modules.pretraining import PretrainingModule

T5 = {"model_type": "t5", "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2}


def t5_reference_mask(length: int, density: float, mean_span: float, rng: np.random.Generator) -> np.ndarray:
    """T5's ``random_spans_noise_mask`` (t5/data/preprocessors.py), in numpy as transformers'
    ``run_t5_mlm_flax.py`` ports it: the reference the counts are checked against."""
    num_noise = int(np.round(length * density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(np.round(num_noise / mean_span)), 1)

    def segmentation(items: int, segments: int) -> np.ndarray:
        flags = np.arange(items - 1) < (segments - 1)
        rng.shuffle(flags)
        segment_id = np.cumsum(np.pad(flags, [[1, 0]]))
        return np.bincount(segment_id, minlength=segments)

    noise = segmentation(num_noise, num_spans)
    kept = segmentation(length - num_noise, num_spans)
    starts = np.cumsum(np.stack([kept, noise], axis=1).reshape(-1))[:-1]
    indicator = np.zeros(length, dtype=np.int64)
    indicator[starts] = 1
    return np.cumsum(indicator) % 2 == 1


def runs(row: list[bool]) -> int:
    return sum(1 for i, v in enumerate(row) if v and (i == 0 or not row[i - 1]))


@pytest.mark.parametrize("density,mean_span", [(0.15, 3.0), (0.3, 1.0), (0.5, 5.0), (0.05, 8.0)])
def test_noise_mask_has_the_counts_of_t5s_algorithm(density, mean_span):
    rng = np.random.default_rng(0)
    for length in (2, 3, 7, 10, 32, 64, 100, 128, 512):
        reference = t5_reference_mask(length, density, mean_span, rng).tolist()
        keys = row_keys(3, 5, torch.arange(16))
        mask = random_spans_noise_mask(keys, (16, length), density, mean_span)
        noise, spans = noise_counts(length, density, mean_span)
        assert (noise, spans) == (sum(reference), runs(reference))
        assert noise == min(max(round(density * length), 1), length - 1)
        for row in mask.tolist():
            assert sum(row) == noise and runs(row) == spans
            # Kept span first, noise span last, alternating in between (as the reference).
            assert not row[0] and row[-1] and not reference[0] and reference[-1]
    # Over many rows every split occurs: spans of several lengths, not one fixed layout.
    mask = random_spans_noise_mask(row_keys(0, 0, torch.arange(256)), (256, 128), 0.15, 3.0)
    assert len({tuple(r) for r in mask.tolist()}) == 256


@pytest.fixture(scope="module")
def module() -> PretrainingModule:
    torch.manual_seed(0)
    return PretrainingModule("span_corruption", backbone_config=T5, tokenizer="minilm")


def uncorrupt(inputs: list[int], targets: list[int], sentinels: list[int], end: int) -> list[int]:
    """The block back from the encoder's input and the decoder's targets."""
    assert targets[-1] == end and targets[0] == sentinels[0]
    spans: list[list[int]] = []
    for token in targets[:-1]:
        if token in sentinels:
            assert sentinels.index(token) == len(spans)  # <extra_id_0>, <extra_id_1>, ... in order
            spans.append([])
        else:
            spans[-1].append(token)
    block = []
    for token in inputs:
        block.extend(spans[sentinels.index(token)] if token in sentinels else [token])
    return block


def test_inputs_and_targets_give_back_the_block(module):
    tokenizer = module.tokenizer
    # MiniLM has no sentinels: 100 were added, <extra_id_0> on top, and the model covers them.
    assert len(tokenizer) == 30522 + 100 == module.net.config.vocab_size
    ids = sentinel_ids(tokenizer)
    assert ids == list(range(len(tokenizer) - 1, len(tokenizer) - 101, -1))
    assert set(ids) <= set(tokenizer.all_special_ids)
    blocks = torch.randint(1000, 30000, (8, 64), generator=torch.Generator().manual_seed(0))
    blocks[:, 0], blocks[:, 30] = 101, 102  # [CLS] first, a document separator inside
    inputs, targets = module.objective.corrupt(blocks, row_keys(1, 2, torch.arange(8)))
    noise, spans = noise_counts(64, 0.15, 3.0)
    assert inputs.shape == (8, 64 - noise + spans) and targets.shape == (8, noise + spans + 1)
    for row in range(8):
        got = uncorrupt(inputs[row].tolist(), targets[row].tolist(), ids, 102)
        assert got == blocks[row].tolist()
        assert inputs[row, 0] == 101  # the first span is kept
    out = module.compute(blocks, row_keys(1, 2, torch.arange(8)))
    assert out["predicted"] == targets.numel() and torch.isfinite(out["loss"])
    assert 0.0 <= float(out["target_accuracy"]) <= 1.0


def test_a_block_is_corrupted_alike_in_any_batch_position(module):
    blocks = torch.randint(1000, 30000, (6, 48), generator=torch.Generator().manual_seed(1))
    index = torch.arange(100, 106)
    inputs, targets = module.objective.corrupt(blocks, row_keys(7, 3, index))
    order = torch.tensor([4, 0, 5, 2])  # another batch: other blocks, other positions
    moved_inputs, moved_targets = module.objective.corrupt(blocks[order], row_keys(7, 3, index[order]))
    assert torch.equal(moved_inputs, inputs[order]) and torch.equal(moved_targets, targets[order])
    # Another step draws other spans; validation keys depend on the block alone.
    other, _ = module.objective.corrupt(blocks, row_keys(7, 4, index))
    assert not torch.equal(other, inputs)
    first = module.objective.corrupt(blocks, row_keys(VALIDATION_SEED, 0, index))
    assert torch.equal(first[0], module.objective.corrupt(blocks, row_keys(VALIDATION_SEED, 0, index))[0])


def test_settings_are_checked():
    with pytest.raises(APMError, match="noise_density must be between 0 and 1"):
        PretrainingModule(
            "span_corruption", backbone_config=T5, tokenizer="minilm", objective_args={"noise_density": 1.5}
        )
    with pytest.raises(APMError, match="encoder-decoder"):
        PretrainingModule("span_corruption", backbone_config={"model_type": "bert"}, tokenizer="minilm")
    few = PretrainingModule(
        "span_corruption", backbone_config=T5, tokenizer="minilm", objective_args={"num_sentinels": 2}
    )
    assert len(few.tokenizer) == 30524
    with pytest.raises(APMError, match="has 10 noise spans but the tokenizer has 2 sentinels"):
        few.compute(torch.randint(1000, 2000, (2, 200)))


def test_tokenizer_train_bakes_sentinels_in(data_root, tmp_path, capsys):
    from transformers import AutoTokenizer

    from apm_lightning.cli import main

    emma = data_root / "corpus" / "nltk-gutenberg" / "austen-emma.txt"
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "400", "--files", str(emma)]
    assert main([*args, "--max-documents", "300", "--sentinels", "20", "--out", str(out)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) <= 400
    # Counting down from the top of the vocabulary, as in T5; special (skipped when decoding).
    assert sentinel_ids(tokenizer) == list(range(len(tokenizer) - 1, len(tokenizer) - 21, -1))
    text = f"emma {SENTINEL.format(3)} woodhouse"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == "emma woodhouse"
    assert json.loads((out / "apm_tokenizer.json").read_text())["sentinels"] == 20
    # The objective takes them as they are: nothing added, the model's vocabulary is the folder's.
    module = PretrainingModule("span_corruption", backbone_config=T5, tokenizer=str(out))
    assert len(module.tokenizer) == len(tokenizer) == module.net.config.vocab_size
    assert len(module.sentinel_ids) == 20
    assert main([*args, "--sentinels", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "sentinels must be 0 or more" in capsys.readouterr().err


def apm(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "apm_lightning", *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.skipif(not CORPUS.is_file(), reason="../shared/data/corpus is missing")
def test_pretrain_exports_a_seq2seq_model_that_text_to_text_fine_tunes(glue_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    run = tmp_path / "span"
    apm(
        "pretrain",
        "-c",
        str(REPO / "experiments" / "pretrain" / "span_corruption_tiny.yaml"),
        *("--model.backbone_config.d_model=32", "--model.backbone_config.d_ff=64"),
        *("--model.backbone_config.dropout_rate=0.0", "--data.files", str(CORPUS)),
        *("--data.max_documents=400", "--data.block_size=32", "--data.batch_size=8"),
        *("--data.max_validation_blocks=16", "--trainer.max_steps=8", "--trainer.val_check_interval=4"),
        *("--trainer.default_root_dir", str(run), *QUIET),
    )
    with open(next((run / "csv").rglob("metrics.csv"))) as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) >= 4 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2])  # from ~10.3 (uniform over 30k tokens) down
    results = json.loads((run / "results.json").read_text())
    assert results["train_tokens_per_second"] > 0 and "target_accuracy" in results["metrics"]
    hf = Path(results["hf_export"])
    net = AutoModelForSeq2SeqLM.from_pretrained(hf)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    assert type(net).__name__ == "T5ForConditionalGeneration"
    assert len(tokenizer) == net.config.vocab_size == 30622 and len(sentinel_ids(tokenizer)) == 100
    assert net.config.decoder_start_token_id == 0 and net.config.eos_token_id == 102  # pad, [SEP]

    fine = tmp_path / "rte"
    apm(
        "fit",
        *("-c", str(REPO / "experiments" / "glue" / "rte.yaml")),
        *("-c", str(REPO / "experiments" / "models" / "tiny_t5_text_to_text.yaml")),
        *("--model.backbone", str(hf), "--model.backbone_config", "null", "--model.tokenizer", "null"),
        *(f"--data.data_dir={glue_dir}", "--data.max_train_samples=8", "--data.max_eval_samples=8"),
        *("--data.max_seq_length=48", "--data.batch_size=8", "--trainer.max_epochs=1"),
        *("--trainer.default_root_dir", str(fine), *QUIET),
    )
    scores = json.loads((fine / "results.json").read_text())
    assert scores["config"]["model"]["class_path"].endswith("TextToTextClassifier")
    assert {"accuracy", "invalid_outputs"} <= set(scores["metrics"])
