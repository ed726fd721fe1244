"""The LightningCLI behind ``apm fit | validate | test | predict``, and the trainer layer:
default callbacks (best-by-main-score and last checkpoints, learning rate, throughput, exact
reseeding, a stop on a non-finite loss, predictions), atomic and safe checkpoint files, default
loggers (W&B auto + CSV), run directories and ``results.json`` (secrets redacted).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

import apm_lightning.modules  # noqa: F401  (registers apm's modules: the classes a checkpoint may name)
from apm_lightning.core.errors import APMError
from apm_lightning.core.files import write_json_atomic
from apm_lightning.core.library_compat import cli_parser
from apm_lightning.core.redact import redact, redact_text
from apm_lightning.core.trust import (
    check_model_args,
    checkpoint_hparams,
    checkpoint_model_name,
    merge_model_args,
    verify_checkpoint,
    warn_replaced,
)
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
    remove_stale_temporaries,
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
from apm_lightning.training.preflight import check_run_settings, check_sequence_length
from apm_lightning.training.results import git_commit, package_versions, peak_rss_mb
from apm_lightning.training.resume_check import check_resume
from apm_lightning.training.run_dir import RunDirGuard, RunRecords, write_run_config
from apm_lightning.training.slurm import newest_resume_checkpoint

log = logging.getLogger("apm")

# Our modules log epoch-level values that are already equal on every rank (synced torchmetrics
# results; SQuAD scores all features on every rank): Lightning's advice to sync them again is noise.
warnings.filterwarnings("ignore", message=r".*sync_dist=True.*when logging on epoch level in distributed")
# `apm` hands LightningCLI the arguments it dispatched (apm fit ... -> args), which is what that
# parameter is for; the warning assumes a script that forgot sys.argv.
warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")

# Set by the launching process so the ranks it starts share its run directory.
RUN_DIR_ENV = "APM_RUN_DIR"
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def _run_name(config: Any) -> str:
    """``<task>-<time>``: the GLUE task, else the data module's kind (``squad``), else ``run``."""
    task = config.get("data.init_args.task")
    if task and str(task).lower().endswith((".yaml", ".yml")):
        task = Path(str(task)).stem  # a task file: its name, not its path
    if not task:
        class_path = config.get("data.class_path") or ""
        task = class_path.rsplit(".", 1)[-1].removesuffix("DataModule").lower() or "run"
    return f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


class APMCLI(LightningCLI):
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

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads a checkpoint's hyper-parameters into the model config before
        anything else; check the file first, so a corrupt or foreign checkpoint gets one clear
        line instead of an unpickling error or a config parse failure."""
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt or ckpt in SPECIAL_CKPT_PATHS or Path(ckpt).is_dir():
            return  # 'last' is resolved (and verified) once the run directory is known
        checkpoint = verify_checkpoint(ckpt, allow_unsafe=self.config[sub].get("allow_unsafe_checkpoints"))
        # The class it names must be one of apm's (never imported by its name).
        stored = checkpoint_model_name(checkpoint, ckpt)
        model = self.config[sub].get("model") or {}
        wanted = model.get("class_path")
        if stored and wanted and stored != wanted:
            raise APMError(
                f"the checkpoint holds a {stored.rsplit('.', 1)[-1]} model, not a "
                f"{wanted.rsplit('.', 1)[-1]}; use the config it was trained with"
            )
        # LightningCLI's own version re-reads the file with weights_only=True whatever the user
        # allowed, and takes every value from it; here the checkpoint's settings are data: code
        # permission and model paths stay the user's, and a replaced option is named.
        hparams = checkpoint_hparams(checkpoint)
        if not hparams:
            return
        init_args = model.get("init_args") or {}
        given = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)
        hparams, replaced = merge_model_args(hparams, given, ckpt)
        warn_replaced(replaced, rank_zero_only.rank == 0)
        model_config = (
            {"class_path": stored or wanted, "dict_kwargs": hparams} if stored or wanted else hparams
        )
        self.config = self.parser.parse_object({sub: {"model": model_config}}, self.config)

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

    # --- checks before anything runs: bad input fails here, with nothing written -----------
    def _check(self, stage: str) -> None:
        check = getattr(self.datamodule, "check", None)
        if check is not None:
            check(stage)
        check_sequence_length(self.model, self.datamodule)
        config = self.config_init[self.subcommand]
        ckpt = config.get("ckpt_path")
        if ckpt == "last":  # the newest last*.ckpt, or a newer save of SLURM's requeue signal
            found = newest_resume_checkpoint(self.last_checkpoint.dirpath, config.trainer.default_root_dir)
            ckpt = str(found) if found else None
            if found is not None and found.name.startswith("hpc_ckpt_"):
                config.ckpt_path = ckpt  # Lightning's 'last' only looks in checkpoints/
        if not ckpt or ckpt in SPECIAL_CKPT_PATHS:
            return
        if Path(ckpt).is_dir():
            # DeepSpeed and sharded FSDP checkpoints are folders their strategies load with full
            # unpickling: only on the user's word.
            if not config.allow_unsafe_checkpoints:
                raise APMError(
                    f"checkpoint {ckpt} is a folder (DeepSpeed or sharded FSDP), which its strategy "
                    "loads with full unpickling; pass --allow_unsafe_checkpoints true if you trust it"
                )
            return
        checkpoint = verify_checkpoint(ckpt, allow_unsafe=config.allow_unsafe_checkpoints)
        # 'last' was not seen when the config was parsed: the same trust checks as an explicit path.
        checkpoint_model_name(checkpoint, ckpt)
        check_model_args(checkpoint_hparams(checkpoint), dict(self.model.hparams), ckpt)
        if stage == "fit":  # a resume: same data and trainer settings as the checkpoint's run
            check_resume(checkpoint, ckpt, self.datamodule, config.trainer)

    def before_fit(self) -> None:
        self._check("fit")
        if rank_zero_only.rank == 0:  # set from the environment before the ranks are set up
            remove_stale_temporaries(self.last_checkpoint.dirpath)
        config = self._config_dict()
        for logger in self.trainer.loggers:
            logger.log_hyperparams({"config": config})

    def before_validate(self) -> None:
        self._check("validate")

    def before_test(self) -> None:
        self._check("test")

    def before_predict(self) -> None:
        self._check("predict")

    # --- the results contract ---------------------------------------------------------------
    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted:
            return
        best = self.checkpoint_callback.best_model_path or None
        last = self.last_checkpoint.best_model_path or None
        # End by scoring the best checkpoint on dev, as the results of the run.
        scores = trainer.validate(
            self.model,
            datamodule=self.datamodule,
            ckpt_path=best,
            verbose=False,
            weights_only=not self.config_init["fit"].allow_unsafe_checkpoints,
        )
        metrics = {}
        val_loss = None
        for entry in scores:
            for key, value in entry.items():
                if key == "val/loss":
                    val_loss = float(value)
                elif key.startswith("val/") and not key.startswith("val/loss"):
                    metrics[key[4:]] = float(value)
        root = Path(self.config_init["fit"].trainer.default_root_dir)
        throughput = self.throughput.summary(trainer)
        results = {
            "task": getattr(self.model, "results_label", None),
            "metrics": metrics,
            "val_loss": val_loss,
            **throughput,
            "tokens_per_second": throughput["train_tokens_per_second"],
            "peak_rss_mb": peak_rss_mb(),
            "best_checkpoint": best,
            "last_checkpoint": last,
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "data_source": getattr(self.datamodule, "source_description", None),
            "run_dir": str(root.resolve()),
            "config": self._config_dict(),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "device": _device_name(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if trainer.is_global_zero:
            # Module-specific results (pretraining: tokens seen, the exported folder).
            summary = getattr(self.model, "results_summary", None)
            if summary is not None:
                results.update(summary(root))
            path = write_json_atomic(root / "results.json", _redacted_results(results))
            _print_metrics(results)
            print(path.resolve(), flush=True)

    def after_validate(self) -> None:
        if self.trainer.is_global_zero and self.trainer.callback_metrics:
            values = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
            _print_metrics({"task": _task_title(self.model, self.datamodule), "metrics": values})
            self._write_scores(values)

    def after_test(self) -> None:
        if self.trainer.is_global_zero and self.trainer.callback_metrics:
            self._write_scores({k: float(v) for k, v in self.trainer.callback_metrics.items()})

    def _write_scores(self, metrics: dict[str, float]) -> None:
        """``validate-<time>.json`` / ``test-<time>.json``: the scores of this command, beside
        (never in place of) what the run directory holds."""
        config = self.config_init[self.subcommand]
        root = Path(config.trainer.default_root_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, n = root / f"{self.subcommand}-{stamp}.json", 1
        while path.exists():
            n += 1
            path = root / f"{self.subcommand}-{stamp}-{n}.json"
        scores = {
            "command": self.subcommand,
            "task": getattr(self.datamodule, "task", None),
            "metrics": metrics,
            "ckpt_path": config.get("ckpt_path"),
            "config": self._config_dict(),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        print(write_json_atomic(path, scores).resolve(), flush=True)

    def after_predict(self) -> None:
        for path in self.prediction_writer.written:
            print(Path(path).resolve(), flush=True)

    def _config_dict(self) -> dict:
        """The resolved config, secrets masked: what results.json and the loggers get."""
        parser = cli_parser(self, self.subcommand)
        return redact(yaml.safe_load(parser.dump(self.config[self.subcommand], skip_none=False)))


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


# Where the run wrote its own output: kept as written, since the runners and reports read them
# back (``apm glue`` predicts with best_checkpoint). Everything else (the data source above all)
# is redacted.
_OUTPUT_LOCATIONS = ("run_dir", "best_checkpoint", "last_checkpoint", "hf_export")


def _redacted_results(results: dict) -> dict:
    clean = redact(results)
    clean.update({k: results[k] for k in _OUTPUT_LOCATIONS if k in results})
    return clean


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


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({torch.get_num_threads()} threads)"


def _progress_bar() -> pl.Callback:
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    if sys.stdout.isatty():
        return RichProgressBar()
    return TQDMProgressBar(refresh_rate=50)  # logs, not terminals: fewer lines


def _task_title(model: Any, datamodule: Any) -> str | None:
    """The name a results table is titled with, as fit's results.json records it: the module's
    task name (GLUE task, squad_v2, pretrain-mlm), else the data module's task or kind."""
    name = getattr(model, "results_label", None)
    if name:
        return str(name)
    task = getattr(datamodule, "task", None)
    if task is not None:
        return str(getattr(task, "name", task))
    return type(datamodule).__name__.removesuffix("DataModule").lower() if datamodule is not None else None


def _print_metrics(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"results: {results.get('task')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results["metrics"].items():
        table.add_row(key, f"{value:.4f}")
    for key in ("train_examples_per_second", "train_tokens_per_second", "train_wall_seconds", "peak_rss_mb"):
        if key in results:
            table.add_row(key, f"{results[key]:.1f}")
    Console(stderr=False).print(table)


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
