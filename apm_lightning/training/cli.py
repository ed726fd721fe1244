"""The LightningCLI behind ``apm fit | validate | test | predict``, and the trainer layer:
default callbacks (best-by-main-score and last checkpoints, learning rate, throughput, exact
reseeding, a stop on a non-finite loss, predictions), atomic and safe checkpoint files, default
loggers (W&B auto + CSV), run directories and ``results.json`` (secrets redacted).

Split by concern: ``cli_checks`` (checkpoint and input checks before anything runs),
``cli_results`` (results.json, validate/test scores, the printed table), ``cli_setup`` (run
directory and name, redacted config.yaml and hyper-parameters, the progress bar).
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.optim import Optimizer

import apm_lightning.modules  # noqa: F401  (registers apm's modules: the classes a checkpoint may name)
from apm_lightning.core.redact import redact_text
from apm_lightning.training.callbacks import (
    NonFiniteLossStop,
    PredictionWriter,
    StepSeeder,
    ThroughputCallback,
)
from apm_lightning.training.checkpointing import (
    AtomicCheckpointIO,
    LastCheckpoint,
    LoaderPosition,
)
from apm_lightning.training.cli_checks import CheckpointChecks
from apm_lightning.training.cli_results import ResultsHooks
from apm_lightning.training.cli_setup import (  # noqa: F401  (_run_name, RUN_DIR_ENV: imported from here)
    RUN_DIR_ENV,
    RedactedConfigCallback,
    _default_run_dir,
    _progress_bar,
    _redact_hyperparameters,
    _run_name,
)
from apm_lightning.training.interrupts import InterruptToCheckpoint, sigint_received
from apm_lightning.training.log_interval import LogIntervalFromLength
from apm_lightning.training.loggers import (
    RUN_ID_FILE,
    WANDB_MODES,
    default_loggers,
    resolve_wandb_mode,
    wandb_run_id,
)
from apm_lightning.training.parser import APMArgumentParser
from apm_lightning.training.preflight import check_run_settings
from apm_lightning.training.run_dir import RunDirGuard, RunRecords

log = logging.getLogger("apm")

# Our modules log epoch-level values that are already equal on every rank (synced torchmetrics
# results; SQuAD scores all features on every rank): Lightning's advice to sync them again is noise.
warnings.filterwarnings("ignore", message=r".*sync_dist=True.*when logging on epoch level in distributed")
# `apm` hands LightningCLI the arguments it dispatched (apm fit ... -> args), which is what that
# parameter is for; the warning assumes a script that forgot sys.argv.
warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")


class APMCLI(CheckpointChecks, ResultsHooks, LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The run directory's lock, and the folders to remove if the command fails (run_dir.py).
        self.run_dir_guard = RunDirGuard()
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self.run_dir_guard.close(failed=True)
            raise
        self.run_dir_guard.close(failed=False)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--wandb_mode",
            default="auto",
            choices=WANDB_MODES,
            help="auto: online with credentials and network, else offline on disk",
        )
        parser.add_argument("--wandb_project", default="apm-lightning")
        parser.add_argument("--run_name", default=None, help="W&B run name (default: the run dir)")
        # Our batch sampler shards data across ranks itself (and keeps the epoch-seeded order).
        parser.set_defaults({"trainer.use_distributed_sampler": False})
        parser.add_argument(
            "--allow_unsafe_checkpoints",
            default=False,
            type=bool,
            help="load checkpoints with full pickle (only for files you trust)",
        )
        parser.add_argument(
            "--checkpoint_every_n_steps",
            default=0,
            type=int,
            help="also write last.ckpt every N optimizer steps, for mid-epoch resume (0: epoch ends only)",
        )
        # LightningCLI's own --optimizer and --lr_scheduler (any torch optimizer or scheduler:
        # --optimizer AdamW --optimizer.lr 3e-5). Lightning's automatic configure_optimizers
        # stays off (auto_configure_optimizers=False): it builds the optimizer as the CLI starts,
        # from model.parameters(), but apm's modules build their networks in setup. The choice
        # goes to the module instead, which builds it in configure_optimizers (modules/base.py).
        parser.add_optimizer_args((Optimizer,))
        parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
        parser.add_argument(
            "--lr_scheduler_interval",
            default="step",
            choices=("step", "epoch"),
            help="how often a given --lr_scheduler steps: every optimizer step (default) or epoch "
            "(ReduceLROnPlateau always steps after a validation)",
        )

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """Hands ``--optimizer``/``--lr_scheduler`` to the module (where LightningCLI's version
        would build them now); with neither, the module keeps apm's default recipe."""
        config = self.config_init[subcommand] if subcommand else self.config_init
        optimizer, scheduler = config.get("optimizer"), config.get("lr_scheduler")
        if optimizer is None and scheduler is None:
            return
        self.model.optimizer_init = optimizer.as_dict() if optimizer is not None else None
        self.model.lr_scheduler_init = scheduler.as_dict() if scheduler is not None else None
        self.model.lr_scheduler_interval = config.get("lr_scheduler_interval") or "step"

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if not config.trainer.get("default_root_dir"):
            config.trainer.default_root_dir = _default_run_dir(config)
        check_run_settings(config)  # run folder and accelerator, before anything is written
        # Before anything is written: a fresh fit into a used run dir, or one in use, is refused.
        self.run_dir_guard.start(config.trainer.default_root_dir, self.subcommand, config.get("ckpt_path"))
        if "weights_only" in config:
            # Lightning's own restore in fit/validate/test/predict follows the user's choice too.
            config.weights_only = not config.allow_unsafe_checkpoints

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        config = self.config_init[self.subcommand]
        root = Path(config.trainer.default_root_dir)
        monitor, mode = getattr(self.model, "checkpoint_monitor", ("val/main", "max"))
        self.checkpoint_callback = ModelCheckpoint(
            dirpath=root / "checkpoints",
            filename="best-epoch{epoch}-step{step}",
            auto_insert_metric_name=False,
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            # A resumed run that redoes an epoch rewrites the same file (no '-v1' copy beside it).
            enable_version_counter=False,
        )
        # Lightning's save_last only writes when a top-k save happened, so a run whose score
        # stopped improving would resume from a stale epoch. A second, unmonitored callback
        # keeps last.ckpt current every epoch (and every N steps, and on SIGTERM).
        self.last_checkpoint = LastCheckpoint(root / "checkpoints", config.checkpoint_every_n_steps)
        self.throughput = ThroughputCallback()
        self.prediction_writer = PredictionWriter(root / "predictions")
        callbacks = [
            self.checkpoint_callback,
            self.last_checkpoint,
            self.throughput,
            StepSeeder(),
            LoaderPosition(),
            NonFiniteLossStop(),
            self.prediction_writer,
        ]
        run_id = None
        if self.subcommand != "fit":
            # Scoring and predicting write their own outputs only, never into a training run's
            # records (its metrics.csv, W&B run, config.yaml).
            if config.trainer.get("logger") in (None, True):
                kwargs["logger"] = False
        elif config.trainer.get("logger") in (None, True):
            run_name = redact_text(config.get("run_name") or root.name)
            resumed = False
            if resolve_wandb_mode(config.wandb_mode) != "disabled":
                resumed = config.get("ckpt_path") is not None and (root / RUN_ID_FILE).is_file()
                # Recorded once training starts (RunRecords): a refused command writes nothing.
                run_id = wandb_run_id(root, resume=config.get("ckpt_path") is not None, write=False)
            kwargs["logger"] = default_loggers(
                root, config.wandb_mode, config.wandb_project, run_name, run_id, resumed=resumed
            )
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.subcommand == "fit":
            callbacks += [RunRecords(root, run_id), InterruptToCheckpoint()]
        if config.trainer.get("enable_progress_bar") is not False:
            callbacks.append(_progress_bar())
        if config.trainer.get("log_every_n_steps") is None:  # not set by the user: fit the run's length
            callbacks.append(LogIntervalFromLength())
        kwargs["callbacks"] = list(config.trainer.get("callbacks") or []) + callbacks
        # One place writes (atomically) and reads (safely) every checkpoint file.
        plugins = config.trainer.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        kwargs["plugins"] = plugins + [AtomicCheckpointIO(allow_unsafe=config.allow_unsafe_checkpoints)]
        trainer = super().instantiate_trainer(**kwargs)
        for logger in trainer.loggers:
            _redact_hyperparameters(logger)
        return trainer


def run_lightning_cli(args: list[str]) -> APMCLI:
    failed = True
    try:
        cli = APMCLI(
            model_class=pl.LightningModule,
            datamodule_class=pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RedactedConfigCallback,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            seed_everything_default=0,
            parser_class=APMArgumentParser,
            args=args,
        )
        failed = False
        return cli
    except SIGTERMException:
        # The last checkpoint was written when the signal stopped the loop (LastCheckpoint).
        if sigint_received():  # Ctrl-C takes the same way (interrupts.py)
            print(
                "apm: stopped by Ctrl-C; last.ckpt was saved: resume with --ckpt_path last", file=sys.stderr
            )
            raise SystemExit(128 + 2) from None
        print("apm: stopped by SIGTERM; last.ckpt was saved: resume with --ckpt_path last", file=sys.stderr)
        raise SystemExit(128 + 15) from None
    except SystemExit as stop:
        if stop.code == 1 and sigint_received():  # a second Ctrl-C: Lightning stopped at once
            print("apm: stopped by Ctrl-C before last.ckpt was saved", file=sys.stderr)
            raise SystemExit(128 + 2) from None
        raise
    finally:
        # Lightning leaves the W&B run open, and the next run in this process (tests, in-process
        # runners) would log into it.
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
