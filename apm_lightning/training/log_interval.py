"""How often a run writes its training curve: about 20 points over the run, at most every 50
steps (Lightning's default), so a short run still logs its training loss and its log file shows
progress; only when the user did not set ``--trainer.log_every_n_steps``."""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar

from apm_lightning.core.library_compat import set_progress_bar_refresh_rate

POINTS_PER_RUN = 20
DEFAULT_INTERVAL = 50  # Lightning's own default


def log_interval(total_steps: float) -> int:
    """Steps between logged points for a run of ``total_steps`` optimizer steps."""
    if not math.isfinite(total_steps):
        return DEFAULT_INTERVAL
    return max(1, min(DEFAULT_INTERVAL, int(total_steps) // POINTS_PER_RUN))


class LogIntervalFromLength(pl.Callback):
    """Sets ``trainer.log_every_n_steps`` once the run's length is known (at the start of
    training), and brings the in-log (TQDM) progress bar and step-counting callbacks with an
    interval of their own (``log_every_n_steps``: throughput) down to it."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        interval = log_interval(trainer.estimated_stepping_batches)
        trainer.log_every_n_steps = interval
        for callback in trainer.callbacks:
            if isinstance(getattr(callback, "log_every_n_steps", None), int):
                callback.log_every_n_steps = interval
            # The bar has no setter; apm's own bar in a log file refreshes every 50 batches.
            if type(callback) is TQDMProgressBar and callback.refresh_rate > interval:
                set_progress_bar_refresh_rate(callback, interval)
