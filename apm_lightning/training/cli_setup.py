"""The run's surroundings that APMCLI sets up: the default run directory and name, the
redacted ``config.yaml`` and logged hyper-parameters, the progress bar.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import SaveConfigCallback

from apm_lightning.core.errors import APMError
from apm_lightning.core.redact import redact
from apm_lightning.training.callbacks import ProgressLines
from apm_lightning.training.run_dir import write_run_config

# Set by the launching process so the ranks it starts share its run directory.
RUN_DIR_ENV = "APM_RUN_DIR"


def _run_name(config: Any) -> str:
    """``<task>-<time>``: the GLUE task, else the data module's kind (``squad``), else ``run``."""
    task = config.get("data.init_args.task")
    if task and str(task).lower().endswith((".yaml", ".yml")):
        task = Path(str(task)).stem  # a task file: its name, not its path
    if not task:
        class_path = config.get("data.class_path") or ""
        task = class_path.rsplit(".", 1)[-1].removesuffix("DataModule").lower() or "run"
    return f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


class RedactedConfigCallback(SaveConfigCallback):
    """Writes ``config.yaml`` to the run directory like Lightning's, with secrets masked; only
    for a fit, once training really starts (a refused resume leaves it alone), and a resume
    keeps the original (see ``write_run_config``)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pass

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.already_saved or not self.save_to_log_dir:
            return
        log_dir = Path(trainer.log_dir)  # every rank: it is a broadcast
        if trainer.is_global_zero:
            config = redact(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
            text = yaml.safe_dump(config, sort_keys=False)
            write_run_config(log_dir, self.config_filename, text, resuming=trainer.ckpt_path is not None)
        self.already_saved = True


def _redact_hyperparameters(logger: Any) -> None:
    """Whatever reaches a logger as hyper-parameters (the config, the module's hparams that
    Lightning logs itself) goes through ``redact`` first."""
    log_hyperparams = logger.log_hyperparams

    @functools.wraps(log_hyperparams)
    def redacted(params: Any, *args: Any, **kwargs: Any) -> Any:
        params = vars(params) if isinstance(params, argparse.Namespace) else dict(params)
        return log_hyperparams(redact(params), *args, **kwargs)

    logger.log_hyperparams = redacted


def _default_run_dir(config: Any) -> str:
    """``runs/<task>-<time>``; the ranks a launcher starts take the launcher's (their clocks may
    have moved on). Other multi-process launchers (torchrun, srun) need an explicit directory."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and "LOCAL_RANK" in os.environ:
        return inherited
    launched = (
        any(k in os.environ for k in ("LOCAL_RANK", "RANK")) or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    )
    if launched:
        raise APMError("a multi-process run needs --trainer.default_root_dir (the same for every rank)")
    run_dir = str(Path("runs") / _run_name(config))
    os.environ[RUN_DIR_ENV] = run_dir
    return run_dir


def _progress_bar() -> pl.Callback:
    from lightning.pytorch.callbacks import RichProgressBar

    if sys.stdout.isatty():
        return RichProgressBar()
    # A log file: one line every 30 s ($APM_PROGRESS_SECONDS) rather than a redrawn bar.
    return ProgressLines()
