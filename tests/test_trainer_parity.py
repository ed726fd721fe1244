"""`apm fit` trains exactly as the Hugging Face Trainer does, given the same randomness.

The full-data parity benchmark (benchmarks/bench_glue_parity.py) compares the two peers over
seeds, whose draws differ (the head's initialisation, dropout masks, batch order), so a gap of a
point there can be chance or a real difference. Here those draws are made equal: both start from
one saved model (the classification head included) with dropout off, and the Trainer is fed
apm's batch order. Everything else is each peer's own: tokenization, padding, the loss, AdamW's
parameter groups and weight decay, warm-up and linear decay, gradient clipping, and apm's
[CLS]-only last layer. The losses of every step and the trained weights must then agree to
float rounding; a difference in any of those parts shows up within a few steps.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import GLUE

from apm_lightning.cli import main
from apm_lightning.core.model_paths import minilm_path

ROWS, BATCH, EPOCHS, LR, WARMUP, DECAY = 64, 16, 2, 1e-4, 2, 0.01


def rte_rows(n: int) -> tuple[list[str], list[str], list[int]]:
    """The first ``n`` RTE training rows, read as run_glue reads the TSV (no quoting)."""
    with open(GLUE / "RTE" / "train.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    col = {name: i for i, name in enumerate(rows[0])}
    rows = rows[1 : n + 1]
    labels = {"entailment": 0, "not_entailment": 1}
    return (
        [r[col["sentence1"]] for r in rows],
        [r[col["sentence2"]] for r in rows],
        [labels[r[col["label"]]] for r in rows],
    )


def test_apm_fit_and_the_trainer_take_the_same_steps(tmp_path: Path, one_thread) -> None:
    import datasets
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from apm_lightning.data.collate import EpochBatchSampler

    # One starting point for both, head included, and no dropout: no random draw is left.
    init = tmp_path / "init"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(),
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        id2label={0: "entailment", 1: "not_entailment"},
        label2id={"entailment": 0, "not_entailment": 1},
    )
    model.save_pretrained(init)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.save_pretrained(init)

    run = tmp_path / "apm"
    args = ["fit", "-c", "experiments/glue/rte.yaml", "--model.backbone", str(init)]
    args += [
        "--data.data_dir",
        str(GLUE),
        "--data.max_train_samples",
        str(ROWS),
        "--data.max_eval_samples",
        "8",
    ]
    args += ["--data.batch_size", str(BATCH), "--trainer.max_epochs", str(EPOCHS)]
    args += ["--trainer.log_every_n_steps", "1", "--model.learning_rate", str(LR)]
    args += ["--model.warmup_steps", str(WARMUP), "--model.weight_decay", str(DECAY)]
    args += ["--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false"]
    args += ["--seed_everything", "0", "--wandb_mode", "disabled", "--trainer.num_sanity_val_steps", "0"]
    assert main(args) == 0
    with open(next(run.rglob("metrics.csv")), newline="") as f:
        apm_losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    apm_weights = {
        k.removeprefix("net."): v
        for k, v in torch.load(run / "checkpoints" / "last.ckpt")["state_dict"].items()
    }

    # The Trainer: its own tokenization and collator, apm's batch order (EpochBatchSampler with
    # the run's seed: a length-grouped permutation drawn from transformers' own function).
    first, second, labels = rte_rows(ROWS)
    train = datasets.Dataset.from_dict(
        {"label": labels, **tokenizer(first, second, truncation=True, max_length=128)}
    )

    class ApmOrder(torch.utils.data.Sampler):
        def __init__(self) -> None:
            lengths = [len(ids) for ids in train["input_ids"]]
            self.batches = EpochBatchSampler(lengths, BATCH, shuffle=True, group_by_length=True, seed=0)

        def set_epoch(self, epoch: int) -> None:  # the Trainer calls it at every epoch
            self.batches.set_epoch(epoch)

        def __iter__(self):
            return iter([i for batch in self.batches for i in batch])

        def __len__(self) -> int:
            return ROWS

    class ApmOrderTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return ApmOrder()

    targs = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        learning_rate=LR,
        per_device_train_batch_size=BATCH,
        num_train_epochs=EPOCHS,
        warmup_steps=WARMUP,
        weight_decay=DECAY,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        seed=0,
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = ApmOrderTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(init),
        args=targs,
        train_dataset=train,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    hf_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    steps = ROWS // BATCH * EPOCHS
    assert len(apm_losses) == len(hf_losses) == steps
    assert apm_losses[-1] < apm_losses[0] - 0.01  # it learned: the comparison is not of idle runs
    assert apm_losses == pytest.approx(hf_losses, abs=1e-5)
    hf_weights = trainer.model.state_dict()
    assert apm_weights.keys() == hf_weights.keys()
    worst = max((apm_weights[k] - hf_weights[k]).abs().max().item() for k in hf_weights)
    moved = max((hf_weights[k] - model.state_dict()[k]).abs().max().item() for k in hf_weights)
    assert worst < 1e-5 < moved
