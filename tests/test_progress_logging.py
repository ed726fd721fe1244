"""Progress people can see: every run logs about 20 training-loss points (or one per step when
shorter), at least every ``$APM_PROGRESS_SECONDS`` (30 s) of wall time, and a log file (stdout
not a terminal) gets one progress line on that clock instead of a redrawn bar."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from apm_lightning.cli import main
from apm_lightning.core.errors import APMError
from apm_lightning.training.log_interval import LogIntervalFromLength, log_interval, progress_seconds
from tests.run_options import QUIET

REPO = Path(__file__).resolve().parents[1]
RTE = str(REPO / "experiments" / "glue" / "rte.yaml")
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")
SMALL = ["--data.max_eval_samples=8", "--data.max_seq_length=32", "--trainer.max_epochs=1"]
SMALL += ["--data.batch_size=4", "--model.learning_rate=1e-4"]


def fit(glue_dir: Path, run: Path, train_rows: int, *extra: str) -> None:
    args = ["fit", "-c", RTE, "-c", TINY, "--data.data_dir", str(glue_dir), *SMALL]
    args += [f"--data.max_train_samples={train_rows}", "--trainer.default_root_dir", str(run), *extra]
    assert main(args) == 0


def train_loss_steps(run: Path) -> list[int]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]


def test_interval_follows_the_run_length():
    assert [log_interval(n) for n in (8, 96, 400, 1000, 10**6, float("inf"))] == [1, 4, 20, 50, 50, 50]


def test_an_eight_step_run_logs_every_step(glue_dir, tmp_path):
    fit(glue_dir, tmp_path / "run", 32, *QUIET)
    assert train_loss_steps(tmp_path / "run") == list(range(8))


def test_log_file_gets_progress_lines_and_a_set_interval_is_kept(glue_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("APM_PROGRESS_SECONDS", "0")  # a line at every step end
    options = ["--wandb_mode=disabled", "--trainer.enable_model_summary=false"]
    fit(glue_dir, tmp_path / "run", 16, *options, "--trainer.log_every_n_steps=2")
    out = capsys.readouterr().out  # pytest's capture: not a terminal
    steps = re.findall(r"^step (\d+)/4 epoch 0 loss \d+\.\d{3} elapsed \d+m\d\ds$", out, re.M)
    assert steps == ["1", "2", "3", "4"], out
    assert re.search(r"^validation batch 1/1 elapsed \d+m\d\ds$", out, re.M), out
    assert "\r" not in out  # lines, not a redrawn bar
    assert train_loss_steps(tmp_path / "run") == [1, 3]  # the user's interval, not the run length's


def test_default_clock_prints_the_first_and_last_step(glue_dir, tmp_path, capsys):
    options = ["--wandb_mode=disabled", "--trainer.enable_model_summary=false"]
    fit(glue_dir, tmp_path / "run", 16, *options)
    steps = re.findall(r"^step (\d+)/4 ", capsys.readouterr().out, re.M)
    assert steps[0] == "1" and steps[-1] == "4"


class SlowSteps(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        time.sleep(0.02)


@pytest.mark.parametrize(("seconds", "expected"), [(1e9, 5), (0.1, 4), (0.0, 1)])
def test_slow_steps_lower_the_interval(seconds, expected):
    """100 steps: 5 from the run length; steps of >= 20 ms bring it under ``seconds``."""
    trainer = pl.Trainer(
        max_steps=100,
        callbacks=[SlowSteps(), LogIntervalFromLength(every_seconds=seconds)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(BoringModel())
    # 0.1 s / (>= 0.02 s per step) is at most 5 steps; a busy machine makes it fewer.
    assert trainer.log_every_n_steps <= expected and (seconds == 1e9) == (trainer.log_every_n_steps == 5)


def test_progress_seconds_setting(monkeypatch):
    assert progress_seconds() == 30.0
    monkeypatch.setenv("APM_PROGRESS_SECONDS", "2.5")
    assert progress_seconds() == 2.5
    monkeypatch.setenv("APM_PROGRESS_SECONDS", "soon")
    with pytest.raises(APMError, match="APM_PROGRESS_SECONDS"):
        progress_seconds()
