"""Callbacks of the trainer layer: per-step reseeding for exact resume, a stop on a non-finite loss,
throughput, predictions, progress lines for log files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ProgressBar

from apm_lightning.core.errors import APMError
from apm_lightning.core.seeds import run_seed
from apm_lightning.training.log_interval import progress_seconds


class StepSeeder(pl.Callback):
    """Reseed torch before every training batch from (run seed, batches seen so far).

    Dropout masks then depend on the step alone, not on how much RNG state earlier work (data
    loader start-up, validation, a restart) consumed, so a run resumed from a checkpoint draws the
    same random numbers as one that never stopped.
    """

    def __init__(self) -> None:
        self.base_seed: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.base_seed = run_seed()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        seen = trainer.fit_loop.epoch_loop.batch_progress.total.ready
        # Each rank draws its own dropout masks (rank 0 keeps the single-process seeds).
        torch.manual_seed(self.base_seed * 1_000_003 + seen + (trainer.global_rank << 52))


class NonFiniteLossStop(pl.Callback):
    """Stop the run when the training loss becomes NaN or infinite, before the backward pass,
    so the weights and ``last.ckpt`` keep their last good values."""

    def on_before_backward(self, trainer: pl.Trainer, pl_module, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every rank must stop, or the others wait for it forever
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        from apm_lightning.training.checkpointing import LastCheckpoint

        saved = [c.saved_path for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)]
        where = next((p for p in saved if p), None)
        value = "nan" if torch.isnan(loss).any() else "infinite"
        raise APMError(
            f"the training loss became {value} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}); stopped before the update. "
            + (
                f"The last good checkpoint is {where} (resume with --ckpt_path last, e.g. with a "
                "lower --model.learning_rate or --trainer.gradient_clip_val 1.0)"
                if where
                else "No checkpoint was saved yet."
            )
        )


def _batch_size_and_tokens(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    if "attention_mask" in batch:
        mask = batch["attention_mask"]
        return mask.shape[0], int(mask.sum())
    if "input_ids" in batch:  # packed pretraining blocks: no padding at all
        return batch["input_ids"].shape[0], batch["input_ids"].numel()
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

    def summary(self, trainer: pl.Trainer | None = None) -> dict[str, float]:
        """Totals of this process, or of all ranks when given the (distributed) trainer."""
        examples, tokens = self.examples, self.tokens
        if trainer is not None and trainer.world_size > 1:
            totals = torch.tensor(
                [examples, tokens], dtype=torch.float64, device=trainer.strategy.root_device
            )
            examples, tokens = (int(v) for v in trainer.strategy.reduce(totals, reduce_op="sum").tolist())
        seconds = self.train_seconds or float("nan")
        return {
            "train_examples": examples,
            "train_tokens": tokens,
            "train_wall_seconds": self.train_seconds,
            "train_examples_per_second": examples / seconds,
            "train_tokens_per_second": tokens / seconds,
        }


class PredictionWriter(BasePredictionWriter):
    """Hands the predictions of ``apm predict`` to the module's ``write_predictions(outputs,
    out_dir) -> list[Path]``, which knows its task's file format."""

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__(write_interval="epoch")
        self.out_dir = Path(out_dir)
        self.written: list[Path] = []

    def write_on_epoch_end(self, trainer, pl_module, predictions: Any, batch_indices: Any) -> None:
        if not trainer.is_global_zero:
            return  # prediction loaders are not sharded: rank zero holds every row
        # One list per dataloader, also when there is a single one.
        groups = predictions if predictions and isinstance(predictions[0], list) else [predictions]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.written.extend(pl_module.write_predictions([g for g in groups if g], self.out_dir))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ProgressLines(ProgressBar):
    """The progress bar when stdout is a log file, not a terminal: one line such as
    ``step 120/960 loss 0.512 elapsed 2m31s`` after the first training step, then at the first
    step end after every ``every_seconds`` of wall time (``$APM_PROGRESS_SECONDS``, default 30),
    and at the last step; long evaluations (``validation 40/200 elapsed ...``) on the same clock.

    Hand-written because Lightning's bars are for terminals: a redrawn bar is one endless line
    in a file, and TQDM's refresh counts batches, not time, so a slow run showed nothing for
    minutes. Only rank zero prints (Lightning disables the bar on the other ranks).
    """

    def __init__(self, every_seconds: float | None = None) -> None:
        super().__init__()
        self.every_seconds = progress_seconds() if every_seconds is None else every_seconds
        self._enabled = True
        self._start = time.monotonic()
        self._last: float | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._start, self._last = time.monotonic(), None

    def _due(self) -> bool:
        return self._enabled and (self._last is None or time.monotonic() - self._last >= self.every_seconds)

    def _line(self, text: str) -> None:
        self._last = time.monotonic()
        print(f"{text} elapsed {_duration(self._last - self._start)}", flush=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        total = trainer.estimated_stepping_batches
        finished = trainer.global_step >= total
        if not (self._due() or (finished and self._enabled)):
            return
        loss = self.get_metrics(trainer, pl_module).get("train/loss")
        loss_text = f" loss {float(loss):.3f}" if isinstance(loss, (int, float)) else ""
        total_text = str(int(total)) if total != float("inf") else "?"
        self._line(f"step {trainer.global_step}/{total_text} epoch {trainer.current_epoch}{loss_text}")

    def _eval_batch_end(self, stage: str, batch_idx: int, totals: Any, dataloader_idx: int) -> None:
        if self._due() and not self.trainer.sanity_checking:
            total = totals[dataloader_idx] if isinstance(totals, list) else totals
            total_text = str(int(total)) if total != float("inf") else "?"
            self._line(f"{stage} batch {batch_idx + 1}/{total_text}")

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._eval_batch_end("validation", batch_idx, trainer.num_val_batches, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_end("test", batch_idx, trainer.num_test_batches, dataloader_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_end("predict", batch_idx, trainer.num_predict_batches, dataloader_idx)
