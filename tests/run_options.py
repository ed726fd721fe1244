"""Options every in-test run takes: no W&B, no progress bar, no model summary (quiet logs); and
the tiny pretraining run that the distributed tests compare across process layouts."""

from __future__ import annotations

from pathlib import Path

from conftest import DATA

REPO = Path(__file__).resolve().parents[1]
CORPUS = DATA / "corpus" / "wikitext-2-raw" / "wiki.valid.raw"


def one_line_error(capsys) -> str:
    """The last line of an in-process ``main`` run's stderr: an ``apm: error:`` line, no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err and err[-1].startswith("apm: error: "), err
    return err[-1]


QUIET = [
    "--wandb_mode=disabled",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


# The recipes' models made smaller still, dropout off: the BERT body, and span corruption's T5.
BERT_TINY = [
    "--model.backbone_config.hidden_size=32",
    "--model.backbone_config.intermediate_size=64",
    "--model.backbone_config.hidden_dropout_prob=0.0",
    "--model.backbone_config.attention_probs_dropout_prob=0.0",
]
T5_TINY = [
    "--model.backbone_config.d_model=32",
    "--model.backbone_config.d_kv=16",
    "--model.backbone_config.d_ff=64",
    "--model.backbone_config.dropout_rate=0.0",
]


def tiny_pretrain_args(recipe: str, run_dir: Path, batch_size: int, *extra: str) -> list[str]:
    """``apm pretrain`` with ``experiments/pretrain/<recipe>.yaml``, smaller still and dropout
    off, for 6 steps on WikiText-2 validation: the same run on any number of processes."""
    return [
        "pretrain",
        "-c",
        str(REPO / "experiments" / "pretrain" / f"{recipe}.yaml"),
        *(T5_TINY if recipe.startswith("span_corruption") else BERT_TINY),
        *extra,
        "--data.files",
        str(CORPUS),
        "--data.max_documents=400",
        "--data.block_size=32",
        f"--data.batch_size={batch_size}",
        "--data.max_validation_blocks=16",
        "--trainer.max_steps=6",
        "--trainer.val_check_interval=3",
        "--trainer.deterministic=true",
        "--trainer.default_root_dir",
        str(run_dir),
        *QUIET,
    ]
