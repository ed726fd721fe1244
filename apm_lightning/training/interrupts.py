"""Ctrl-C (SIGINT) during training stops like a preemption: the batch in progress ends,
``last.ckpt`` is saved and ``apm`` says how to resume (exit 130).

A KeyboardInterrupt raised wherever the signal lands (in the middle of an optimizer step, say)
would leave no consistent state to save. So while training runs, SIGINT only raises Lightning's
SIGTERM flag: the loops stop at the next batch boundary with ``SIGTERMException`` (all ranks,
Lightning broadcasts it), and ``LastCheckpoint`` saves as for SIGTERM. A second Ctrl-C stops at
once, without a checkpoint.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import lightning.pytorch as pl

from apm_lightning.core.library_compat import request_graceful_stop

_received = False


def sigint_received() -> bool:
    """Whether a Ctrl-C stopped training in this process."""
    return _received


class InterruptToCheckpoint(pl.Callback):
    def __init__(self) -> None:
        self._previous: Any = None
        self._installed = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        global _received
        _received = False
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers live in the main thread only
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN:
            return  # started with Ctrl-C ignored (nohup, background jobs): keep it so

        def handler(signum: int, frame: Any) -> None:
            global _received
            if _received:  # the second Ctrl-C: stop now
                self._restore()
                raise KeyboardInterrupt
            _received = True
            request_graceful_stop(trainer)

        self._previous = previous
        signal.signal(signal.SIGINT, handler)
        self._installed = True

    def _restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            self._installed = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()
        if _received:
            # The signal came after the last batch boundary (the last validation): training is
            # over and saved, but the user asked to stop, so skip what would follow.
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            raise SIGTERMException

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
