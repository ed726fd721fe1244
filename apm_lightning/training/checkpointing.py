"""Checkpoints that survive faults: atomic writes, safe loads, ``last.ckpt`` every epoch, every N
steps and on SIGTERM.

- ``AtomicCheckpointIO`` is the single place where Lightning writes and reads checkpoint files
  (ours and its own restore in fit/validate/test/predict). A save goes to a temporary file in the
  same folder, then ``os.replace``: a kill during a save leaves the previous file whole. A load
  uses ``weights_only=True`` unless the user passed ``--allow_unsafe_checkpoints true``.
- ``LastCheckpoint`` keeps ``last.ckpt`` current: at every epoch end, every N training steps
  (mid-epoch resume) and when SIGTERM (preemption) stops the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from apm_lightning.core import library_compat as compat
from apm_lightning.core.redact import redact

TMP_SUFFIX = ".tmp"


class AtomicCheckpointIO(TorchCheckpointIO):
    def __init__(self, allow_unsafe: bool = False) -> None:
        super().__init__()
        self.allow_unsafe = allow_unsafe

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        checkpoint = redacted_checkpoint(checkpoint)
        if "://" in str(path):  # remote storage (fsspec): Lightning's writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name must not start with 'last': Lightning's ckpt_path='last' lookup
        # would take a half-written file for a checkpoint.
        tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        # Whatever the caller asked for, the user's choice decides (Lightning's default, None,
        # would follow torch's and an environment override).
        return compat.load_checkpoint_file(
            path, map_location=map_location or "cpu", weights_only=not self.allow_unsafe
        )


def redacted_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy with secrets (a token in a data path or URL) masked in what the file keeps
    as text: the model's and the data module's hyper-parameters and the model's identity. A run
    takes its real values from its command line and config, never from these."""
    out = dict(checkpoint)
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if isinstance(out.get(key), dict):
            out[key] = redact(dict(out[key]))
    info = out.get("apm")
    if isinstance(info, dict) and isinstance(info.get("identity"), dict):
        out["apm"] = {**info, "identity": redact(info["identity"])}
    return out


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete the temporary files of saves that a kill interrupted."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(f".*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)


def _validation_follows(trainer: pl.Trainer) -> bool:
    """Whether the loop validates right after this training batch (end of epoch included)."""
    loop = trainer.fit_loop.epoch_loop
    fetcher = compat.fit_loop_data_fetcher(trainer.fit_loop)
    return loop.batch_progress.is_last_batch or compat.epoch_loop_should_check_val(loop, fetcher)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: at every epoch end, every ``every_n_steps`` optimizer steps (0: off) and
    when a SIGTERM stops the run.

    A step save is skipped when validation runs right after the batch: Lightning resumes such a
    checkpoint past that validation, so the best checkpoint could differ from an uninterrupted
    run; a save after that validation (mid-epoch, or the epoch-end one) covers the point instead.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self.every_n_steps = every_n_steps
        self._resumed = False  # set when a fit starts from a checkpoint (on_train_start)

    @property
    def saved_path(self) -> str | None:
        """The last checkpoint on disk, if any (also one restored from before a resume)."""
        for path in (self.best_model_path, Path(self.dirpath or "") / "last.ckpt"):
            if path and Path(path).is_file():
                return str(path)
        return None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if (
            self.every_n_steps < 1
            or step % self.every_n_steps
            or compat.checkpoint_should_skip(self, trainer)
            or _validation_follows(trainer)
        ):
            return
        compat.checkpoint_save_unmonitored(self, trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        # A validation in the middle of an epoch (val_check_interval; pretraining runs one long
        # epoch): save after it, in place of the step save skipped just before it.
        if (
            self.every_n_steps < 1
            or trainer.sanity_checking
            or trainer.state.fn != "fit"
            or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            or compat.checkpoint_should_skip(self, trainer)
        ):
            return
        compat.checkpoint_save_unmonitored(self, trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._resumed = trainer.global_step > 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        # A resume from a checkpoint this callback saved on a stop after an epoch's last batch:
        # Lightning's restart adds 1 to the loggers' step, for checkpoints saved before it counts
        # the batch, but this one was saved after, so every later row would be logged one step
        # late (rows 0, 1, 2, 4, 5). With one optimizer the loggers' step is the global step.
        if self._resumed:
            self._resumed = False
            if pl_module.automatic_optimization and compat.logging_step(trainer) != trainer.global_step:
                compat.set_logging_step(trainer, trainer.global_step)

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        # Lightning raises SIGTERMException between batches, when the state is consistent.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            if not compat.checkpoint_should_skip(self, trainer):
                compat.checkpoint_save_unmonitored(self, trainer)


class LoaderPosition(pl.Callback):
    """Keeps the training loader's position (epoch, batches served; see ``ResumableLoader``) in
    every checkpoint and hands it back when a resumed fit starts.

    Lightning does this itself for loaders with a ``state_dict``, but only if it builds the
    loader after restoring the checkpoint; a module whose ``configure_optimizers`` reads
    ``trainer.estimated_stepping_batches`` (ours, for the LR schedule) makes it build the loader
    first, and the saved position is silently dropped.
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._saved: dict | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _loader(self) -> Any:
        loader = getattr(self._trainer, "train_dataloader", None)
        return loader if hasattr(loader, "load_state_dict") else None

    def state_dict(self) -> dict[str, Any]:
        loader = self._loader()
        return {"loader": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict.get("loader")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before the first batch is drawn: the loader's iterator only starts at the first batch.
        loader = self._loader()
        if self._saved is not None and loader is not None:
            loader.load_state_dict(self._saved)
        self._saved = None
