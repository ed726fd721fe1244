"""Callbacks of the trainer layer: per-step reseeding for exact resume, throughput, predictions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class StepSeeder(pl.Callback):
    """Reseed torch before every training batch from (run seed, batches seen so far).

    Dropout masks then depend on the step alone, not on how much RNG state earlier work (data
    loader start-up, validation, a restart) consumed, so a run resumed from a checkpoint draws the
    same random numbers as one that never stopped.
    """

    def __init__(self) -> None:
        self.base_seed: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.base_seed = torch.initial_seed() % (2**31)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        seen = trainer.fit_loop.epoch_loop.batch_progress.total.ready
        torch.manual_seed(self.base_seed * 1_000_003 + seen)


def _batch_size_and_tokens(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    if "attention_mask" in batch:
        mask = batch["attention_mask"]
        return mask.shape[0], int(mask.sum())
    ids = [v for k, v in batch.items() if k.startswith("input_ids")]
    return ids[0].shape[0], int(sum((t != 0).sum() for t in ids))


class ThroughputCallback(pl.Callback):
    """Training examples/s and tokens/s (real tokens, padding excluded), logged as
    ``train/examples_per_sec`` and ``train/tokens_per_sec``.

    Time is summed over the intervals between consecutive training batches (data loading plus
    the step), so validation and checkpoint writing in between are not counted as training.
    """

    def __init__(self, log_every_n_steps: int = 50) -> None:
        self.log_every_n_steps = log_every_n_steps
        self.examples = 0
        self.tokens = 0
        self.train_seconds = 0.0
        self._last: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._last = time.perf_counter()  # validation inside an epoch is not training

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.train_seconds += now - self._last
        self._last = now
        size, tokens = _batch_size_and_tokens(batch)
        self.examples += size
        self.tokens += tokens
        if trainer.global_step % self.log_every_n_steps == 0 and self.train_seconds > 0:
            pl_module.log("train/examples_per_sec", self.examples / self.train_seconds)
            pl_module.log("train/tokens_per_sec", self.tokens / self.train_seconds)

    def summary(self) -> dict[str, float]:
        seconds = self.train_seconds or float("nan")
        return {
            "train_examples": self.examples,
            "train_tokens": self.tokens,
            "train_wall_seconds": self.train_seconds,
            "train_examples_per_second": self.examples / seconds,
            "train_tokens_per_second": self.tokens / seconds,
        }


class PredictionWriter(BasePredictionWriter):
    """Hands the predictions of ``apm predict`` to the module's ``write_predictions(outputs,
    out_dir) -> list[Path]``, which knows its task's file format."""

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__(write_interval="epoch")
        self.out_dir = Path(out_dir)
        self.written: list[Path] = []

    def write_on_epoch_end(self, trainer, pl_module, predictions: Any, batch_indices: Any) -> None:
        # One list per dataloader, also when there is a single one.
        groups = predictions if predictions and isinstance(predictions[0], list) else [predictions]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.written.extend(pl_module.write_predictions([g for g in groups if g], self.out_dir))
