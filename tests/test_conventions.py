"""Conventions users already know: a results table names its task, plotting leaves a notebook's
matplotlib backend alone, short runs still log their training loss, one option spelling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apm_lightning.cli import main
from tests.run_options import QUIET

REPO = Path(__file__).resolve().parents[1]
GLUE = REPO.parent / "shared" / "data" / "glue"
RTE = str(REPO / "experiments" / "glue" / "rte.yaml")
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")
SMALL = ["--data.max_train_samples", "16", "--data.max_eval_samples", "16", "--data.batch_size", "8"]
SMALL += ["--data.max_seq_length", "32"]

needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason="../shared/data/glue is missing")


def apm(command: str, run_dir: Path, *args: str) -> int:
    return main(
        [command, "-c", RTE, "-c", TINY, "--data.data_dir", str(GLUE), *SMALL, *QUIET]
        + ["--trainer.default_root_dir", str(run_dir), *args]
    )


@needs_glue
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
