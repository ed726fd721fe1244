"""Fault injection for the fault-tolerance tests and ``benchmarks/kill_resume.py``; never added by
default. Add one to a run like any callback::

    apm fit ... --trainer.callbacks+='{"class_path": "apm_lightning.training.faults.KillAt",
                                       "init_args": {"batch": 7, "where": "save"}}'
"""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
import torch

WHERE = ("batch_start", "backward", "validation", "save")


class KillAt(pl.Callback):
    """Send ``sig`` (KILL or TERM) to this process once training batch ``batch`` (1-based, counted
    over the whole run) is reached, at ``where``:

    - ``batch_start``: before the batch runs;
    - ``backward``: after its backward pass, before the optimizer step;
    - ``validation``: at the first validation batch after it;
    - ``save``: in the middle of writing the first checkpoint after it (a half-written file).

    ``target="parent"`` signals the process that started this one instead (``apm glue``,
    ``apm compare``, ``apm sweep``: a scheduler stopping the runner), once: a run resumed from a
    checkpoint does not signal it again.
    """

    def __init__(
        self, batch: int, where: str = "batch_start", sig: str = "KILL", target: str = "self"
    ) -> None:
        if where not in WHERE:
            raise ValueError(f"where must be one of {WHERE}")
        if target not in ("self", "parent"):
            raise ValueError("target must be self or parent")
        self.batch = batch
        self.where = where
        self.signal = getattr(signal, f"SIG{sig.upper()}")
        self.target = target
        self._armed = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.target == "parent" and trainer.ckpt_path is not None:
            self._armed = False

    def _reached(self, trainer: pl.Trainer) -> bool:
        return self._armed and trainer.fit_loop.epoch_loop.batch_progress.total.ready >= self.batch

    def _target_pid(self) -> int:
        return os.getppid() if self.target == "parent" else os.getpid()

    def _fire(self) -> None:
        self._armed = False
        os.kill(self._target_pid(), self.signal)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.where == "batch_start" and self._reached(trainer):
            self._fire()
        elif self.where == "save" and self._reached(trainer):
            self._break_next_save()

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.where == "backward" and self._reached(trainer):
            self._fire()

    def on_validation_batch_start(
        self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.where == "validation" and not trainer.sanity_checking and self._reached(trainer):
            self._fire()

    def _break_next_save(self) -> None:
        """The next ``torch.save`` writes part of its bytes, flushes them, then is killed."""
        self._armed = False
        save = torch.save

        def half_save(obj, f, *args, **kwargs) -> None:
            import io

            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()[: buffer.tell() // 2]
            if hasattr(f, "write"):
                f.write(data)
                f.flush()
            else:
                with open(f, "wb") as out:
                    out.write(data)
            os.kill(self._target_pid(), self.signal)

        torch.save = half_save


class NaNAt(pl.Callback):
    """Make the model diverge at training batch ``batch``: its first weight becomes NaN, so the
    loss is NaN from there on."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready == self.batch:
            next(pl_module.parameters()).data.fill_(float("nan"))
