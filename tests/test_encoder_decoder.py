"""Encoder-decoder models fine-tuned on GLUE tasks, both ways `transformers` offers: a
classification head on the decoder's last end-of-sequence state (`TransformerClassifier` with a
T5 config), and text-to-text (`TextToTextClassifier`: the label generated as words, scored by the
task's metrics). Tiny T5s trained from scratch on MiniLM's vocabulary; real GLUE rows."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from apm_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
T5_HEAD = [
    "--model.class_path=apm_lightning.modules.classification.TransformerClassifier",
    "--model.backbone=null",
    "--model.tokenizer=minilm",
    '--model.backbone_config={"model_type": "t5", "d_model": 32, "d_kv": 16, "d_ff": 64, '
    '"num_layers": 2, "num_decoder_layers": 1, "num_heads": 2}',
]
QUIET = [
    "--wandb_mode=disabled",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def fit(task: str, run: Path, glue_dir: Path, *model: str, rows: int = 32, epochs: int = 1) -> dict:
    args = [
        "fit",
        "-c",
        str(REPO / "experiments" / "glue" / f"{task}.yaml"),
        *model,
        f"--data.data_dir={glue_dir}",
        f"--data.max_train_samples={rows}",
        f"--data.max_eval_samples={rows}",
        "--data.max_seq_length=48",
        "--data.batch_size=8",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.default_root_dir={run}",
        *QUIET,
    ]
    assert main(args) == 0
    return json.loads((run / "results.json").read_text())


def test_t5_classification_head_fits_and_exports(glue_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from apm_lightning.modules.hf_export import load_module_from_checkpoint

    results = fit("mrpc", tmp_path / "run", glue_dir, *T5_HEAD)
    assert set(results["metrics"]) >= {"accuracy", "f1", "main"}
    out = tmp_path / "hf"
    assert main(["export", results["best_checkpoint"], str(out)]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.model_type == "t5" and model.config.eos_token_id == 102  # MiniLM's [SEP]
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(
        ["a man plays", "two dogs run"],
        ["a person plays music", "dogs are running"],
        return_tensors="pt",
        padding=True,
        return_token_type_ids=False,
    )
    module = load_module_from_checkpoint(results["best_checkpoint"]).eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, module.net(**batch).logits, atol=1e-6)


def test_text_to_text_learns_to_write_the_labels(glue_dir, tmp_path):
    """After 8 epochs on 32 SST-2 rows, greedy generation writes label words only (no
    invalid outputs), scored by the task's accuracy; the export generates the same words."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = [
        "-c",
        str(REPO / "experiments" / "models" / "tiny_t5_text_to_text.yaml"),
        "--model.learning_rate=1e-2",
    ]
    results = fit("sst2", tmp_path / "run", glue_dir, *model, epochs=8)
    assert results["metrics"]["invalid_outputs"] == 0.0
    assert (
        0.0 <= results["metrics"]["accuracy"] <= 1.0
        and results["metrics"]["main"] == results["metrics"]["accuracy"]
    )
    rows = list((tmp_path / "run" / "csv").glob("metrics.csv"))[0].read_text().splitlines()
    losses = [
        float(r.split(",")[rows[0].split(",").index("train/loss")])
        for r in rows[1:]
        if r.split(",")[rows[0].split(",").index("train/loss")]
    ]
    assert losses[-1] < 0.6 * losses[0]  # from ~10.3 (uniform over 30k words) towards the two label words
    out = tmp_path / "hf"
    assert main(["export", results["best_checkpoint"], str(out)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    net = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    ids = tokenizer(
        ["sst2 sentence: a gorgeous , witty film"], return_tensors="pt", return_token_type_ids=False
    )
    text = tokenizer.batch_decode(net.generate(**ids, max_new_tokens=8), skip_special_tokens=True)[0].strip()
    assert text in ("negative", "positive")
    card = (out / "README.md").read_text()
    assert "TextToTextClassifier" in card


def test_text_to_text_regression_writes_scores(glue_dir, tmp_path):
    """STS-B as T5 does it: the score written as a number rounded to 0.2, scored by Pearson and
    Spearman; nothing crashes when early outputs are not numbers."""
    model = ["-c", str(REPO / "experiments" / "models" / "tiny_t5_text_to_text.yaml")]
    results = fit("stsb", tmp_path / "run", glue_dir, *model, rows=16)
    assert {"pearson", "spearman", "invalid_outputs"} <= set(results["metrics"])
    assert 0.0 <= results["metrics"]["invalid_outputs"] <= 1.0
