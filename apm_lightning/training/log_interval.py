"""How often a run writes its training curve, when the user did not set
``--trainer.log_every_n_steps``: about 20 points over the run, at most every 50 steps (Lightning's
default), so a short run still logs its training loss; and at least every 30 s of wall time
(``$APM_PROGRESS_SECONDS``), so a slow run's log and metrics.csv show progress."""

from __future__ import annotations

import math
import os
import time

import lightning.pytorch as pl

from apm_lightning.core.errors import APMError

POINTS_PER_RUN = 20
DEFAULT_INTERVAL = 50  # Lightning's own default
PROGRESS_SECONDS_ENV = "APM_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 30.0


def progress_seconds() -> float:
    """The most wall time between two logged points or progress lines: ``$APM_PROGRESS_SECONDS``,
    else 30."""
    value = os.environ.get(PROGRESS_SECONDS_ENV, "").strip()
    if not value:
        return DEFAULT_PROGRESS_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise APMError(f"{PROGRESS_SECONDS_ENV}={value!r} is not a number of seconds >= 0; unset it for 30")
    return seconds


def log_interval(total_steps: float) -> int:
    """Steps between logged points for a run of ``total_steps`` optimizer steps."""
    if not math.isfinite(total_steps):
        return DEFAULT_INTERVAL
    return max(1, min(DEFAULT_INTERVAL, int(total_steps) // POINTS_PER_RUN))


class LogIntervalFromLength(pl.Callback):
    """Sets ``trainer.log_every_n_steps`` once the run's length is known (at the start of
    training), then lowers it while the run goes on if that many steps take longer than
    ``progress_seconds()``; callbacks with an interval of their own (``log_every_n_steps``:
    throughput) follow it."""

    def __init__(self, every_seconds: float | None = None) -> None:
        self.every_seconds = progress_seconds() if every_seconds is None else every_seconds
        self._start = 0.0
        self._first_step = 0

    def _set(self, trainer: pl.Trainer, interval: int) -> None:
        trainer.log_every_n_steps = interval
        for callback in trainer.callbacks:
            if isinstance(getattr(callback, "log_every_n_steps", None), int):
                callback.log_every_n_steps = interval

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._set(trainer, log_interval(trainer.estimated_stepping_batches))
        self._start, self._first_step = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        steps = trainer.global_step - self._first_step
        if steps <= 0 or trainer.log_every_n_steps <= 1:
            return
        # Seconds per step so far in this process (validation included: it only lowers the
        # interval further). Only ever lowered: the curve's spacing changes at most a few times.
        per_step = (time.monotonic() - self._start) / steps
        fits = max(1, int(self.every_seconds / per_step)) if per_step > 0 else trainer.log_every_n_steps
        if fits < trainer.log_every_n_steps:
            self._set(trainer, fits)
