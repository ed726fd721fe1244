"""Conventions users already know: a results table names its task, plotting leaves a notebook's
matplotlib backend alone, short runs still log their training loss, one option spelling."""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import GLUE

from apm_lightning.cli import main
from apm_lightning.training.log_interval import log_interval
from tests.run_options import QUIET

REPO = Path(__file__).resolve().parents[1]
RTE = str(REPO / "experiments" / "glue" / "rte.yaml")
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")
SMALL = ["--data.max_train_samples", "16", "--data.max_eval_samples", "16", "--data.batch_size", "8"]
SMALL += ["--data.max_seq_length", "32"]


def apm(command: str, run_dir: Path, *args: str) -> int:
    return main(
        [command, "-c", RTE, "-c", TINY, "--data.data_dir", str(GLUE), *SMALL, *QUIET]
        + ["--trainer.default_root_dir", str(run_dir), *args]
    )


def test_validate_table_is_titled_with_the_task(tmp_path, capsys) -> None:
    assert apm("validate", tmp_path / "run") == 0
    out = capsys.readouterr().out
    assert "results: rte" in out, out
    assert "results: None" not in out


def test_plots_leave_the_matplotlib_backend_alone(tmp_path) -> None:
    """A notebook's backend (here: svg, set before the import) survives drawing every plot, and
    pyplot, which picks and switches backends, is never imported."""
    script = f"""
import sys
import matplotlib
matplotlib.rcParams["backend"] = "svg"
from pathlib import Path
from apm_lightning.reports import plots
out = Path({str(tmp_path)!r})
run = out / "run"
(run / "csv").mkdir(parents=True)
(run / "csv" / "metrics.csv").write_text("step,train/loss,val/main,val/loss,val/tokens_seen\\n0,0.9,,,\\n1,0.7,0.5,2.0,64\\n")
rows = [{{"task": "rte", "main": 0.6, "seed": 1}}, {{"task": "rte", "main": 0.7, "seed": 2}}]
made = [
    plots.learning_curves([("a", run)], out / "curves.png"),
    plots.scores_per_task(rows, out / "scores.png"),
    plots.validation_loss_vs_tokens([("mlm", run / "csv" / "metrics.csv")], out / "tokens.png"),
    plots.downstream_by_objective({{"mlm": {{"rte": [0.6, 0.7]}}}}, out / "objectives.png"),
]
assert all(p is not None and p.stat().st_size > 0 for p in made), made
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "False"], done.stdout


def test_log_interval_follows_the_run_length() -> None:
    assert [log_interval(n) for n in (8, 100, 400, 10_000)] == [1, 5, 20, 50]
    assert log_interval(float("inf")) == 50  # length unknown: Lightning's default


def train_loss_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if row.get("train/loss")]


@pytest.mark.parametrize("user_interval", [None, 4])
def test_short_run_logs_its_training_loss(tmp_path, user_interval) -> None:
    """8 steps: one train/loss row per step by default (Lightning's 50 logged none); a value the
    user gives is kept."""
    extra = ["--data.batch_size", "2", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1"]
    if user_interval:
        extra += ["--trainer.log_every_n_steps", str(user_interval)]
    assert apm("fit", tmp_path / "run", *extra) == 0
    rows = train_loss_rows(tmp_path / "run")
    assert len(rows) == (8 if user_interval is None else 8 // user_interval), rows


@pytest.mark.parametrize(
    ("flag", "allowed"),
    [
        ([], False),
        (["--allow_unsafe_checkpoints", "true"], True),  # fit's spelling, which the hint names
        (["--allow_unsafe_checkpoints"], True),
        (["--allow-unsafe-checkpoints"], True),  # the earlier spelling still works
        (["--allow_unsafe_checkpoints", "false"], False),
    ],
)
def test_export_takes_the_option_spelling_of_fit(tmp_path, capsys, flag, allowed) -> None:
    """A checkpoint holding a pickled object: refused with the hint, or unpickled (and then
    refused for having no weights) when the option allows it; nothing is written either way."""
    ckpt = tmp_path / "pickled.ckpt"
    torch.save({"extra": argparse.Namespace(a=1)}, ckpt)
    assert main(["export", str(ckpt), str(tmp_path / "hf"), *flag]) == 2
    err = capsys.readouterr().err
    if allowed:
        assert "has no state_dict" in err, err
    else:
        assert "pass --allow_unsafe_checkpoints true" in err, err
    assert not (tmp_path / "hf").exists()


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_run_and_export_folders_are_git_ignored() -> None:
    """The README's own commands write runs/ and exported/ in the checkout."""
    for path in ("runs/rte/checkpoints/last.ckpt", "exported/rte/config.json"):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, timeout=30)
        assert done.returncode == 0, f"{path} is not git-ignored"
