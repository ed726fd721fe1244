"""Conventions users already know: a results table names its task, plotting leaves a notebook's
matplotlib backend alone, short runs still log their training loss, one option spelling."""

from __future__ import annotations

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
