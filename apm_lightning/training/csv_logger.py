"""``metrics.csv`` across resumes: Lightning's CSV logger deletes an existing file when a run
starts; this one appends to it, after dropping the rows of steps that the resume redoes."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from apm_lightning.core.library_compat import csv_logger_experiment


class AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing ``metrics.csv``; this one appends to it (after
    ``keep_before`` dropped the rows a resume redoes), and writes ``hparams.yaml`` with the
    metrics, not before the run has started."""

    def __init__(self, log_dir: str) -> None:
        self._hparams_written: dict | None = None
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)

    def keep_before(self, step: int) -> None:
        """Drop the rows of ``step`` and later from the file (all of them: a fresh run)."""
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        if step <= 0:
            os.remove(path)
            self.metrics_keys = []
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if not r.get("step") or int(float(r["step"])) < step]
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)

    def save(self) -> None:
        super().save()
        if self.hparams and self.hparams != self._hparams_written:
            super().log_hparams({})
            self._hparams_written = dict(self.hparams)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives resumes; every logged row is flushed, so a
    kill loses none of those before the checkpoint it resumes from."""

    def __init__(self, save_dir: str | Path, name: str = "csv", version: str = "") -> None:
        super().__init__(save_dir=str(save_dir), name=name, version=version, flush_logs_every_n_steps=1)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        return csv_logger_experiment(self, lambda: AppendingWriter(log_dir=self.log_dir))
