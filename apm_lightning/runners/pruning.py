"""Optuna pruning as a Lightning callback (what optuna-integration's callback does, without the
extra package).

After each validation of ``apm fit`` the monitored score is reported to the trial, and when the
study's pruner says so the run stops with ``optuna.TrialPruned``. The trial is found through
the study's storage, so the callback works in whichever process runs the fit (the sweep worker
or a child it started). The storage URL comes from ``$APM_OPTUNA_STORAGE`` rather than an init
argument: the run's config is saved, and a database password must not be.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from apm_lightning.core.library_compat import trial_from_storage_id
from apm_lightning.runners.sweep_samplers import build_pruner
from apm_lightning.runners.sweep_spec import PRUNED_FILE, STORAGE_ENV
from apm_lightning.runners.sweep_study import open_storage


class OptunaPruning(pl.Callback):
    """Report ``monitor`` after each validation during fit; raise ``optuna.TrialPruned`` when
    the pruner (built from ``pruner``, as in the sweep file) prunes the trial.

    Steps are counted in validations (1, 2, ...), not optimizer steps, so trials with other
    batch sizes are compared at the same point of their schedules.
    """

    def __init__(
        self, study_name: str, trial_id: int, monitor: str = "val/main", pruner: dict[str, Any] | None = None
    ) -> None:
        self.study_name = study_name
        self.trial_id = trial_id
        self.monitor = monitor
        self.pruner = pruner or {"name": "median"}
        self.validations = 0
        self._trial = None

    def trial(self):
        if self._trial is None:
            import optuna

            url = os.environ.get(STORAGE_ENV)
            if not url:
                raise RuntimeError(f"OptunaPruning needs ${STORAGE_ENV} (set by apm sweep)")
            study = optuna.load_study(
                study_name=self.study_name,
                storage=open_storage(url, heartbeat=False),
                pruner=build_pruner(self.pruner),
            )
            self._trial = trial_from_storage_id(study, self.trial_id)
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.validations += 1
        value = trainer.callback_metrics.get(self.monitor)
        prune = False
        if trainer.is_global_zero and value is not None:
            trial = self.trial()
            trial.report(float(value), step=self.validations)
            prune = trial.should_prune()
        # Every rank must stop together (only rank 0 talks to the study).
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            import optuna

            score = f" ({self.monitor} = {float(value):.4f})" if value is not None else ""
            reason = f"pruned after validation {self.validations}{score}"
            if trainer.is_global_zero:
                root = Path(trainer.default_root_dir)
                root.mkdir(parents=True, exist_ok=True)
                (root / PRUNED_FILE).write_text(json.dumps({"reason": reason, "step": self.validations}))
            raise optuna.TrialPruned(reason)
