"""The LightningCLI behind ``apm fit | validate | test | predict``, and the trainer layer:
default callbacks (best-by-main-score and last checkpoints, learning rate, throughput, exact
reseeding, predictions), default loggers (W&B auto + CSV), run directories and ``results.json``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from apm_lightning.errors import APMError
from apm_lightning.training.callbacks import PredictionWriter, StepSeeder, ThroughputCallback
from apm_lightning.training.loggers import WANDB_MODES, default_loggers
from apm_lightning.training.results import git_commit, package_versions, peak_rss_mb, write_json_atomic

log = logging.getLogger("apm")


def _run_name(config: Any) -> str:
    data = config.get("data") or {}
    args = data.get("init_args", data) if isinstance(data, dict) else {}
    task = getattr(args, "get", lambda *_: None)("task") or "run"
    return f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


class APMCLI(LightningCLI):
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

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads a checkpoint's hyper-parameters into the model config before
        anything else; check the file first, so a corrupt or foreign checkpoint gets one clear
        line instead of an unpickling error or a config parse failure."""
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and ckpt not in ("last", "best", "hpc", "registry"):
            checkpoint = verify_checkpoint(
                ckpt, allow_unsafe=self.config[sub].get("allow_unsafe_checkpoints")
            )
            stored = (checkpoint.get("apm") or {}).get("module")
            wanted = self.config[sub].get("model", {}).get("class_path")
            if stored and wanted and stored != wanted:
                raise APMError(
                    f"the checkpoint holds a {stored.rsplit('.', 1)[-1]} model, not a "
                    f"{wanted.rsplit('.', 1)[-1]}; use the config it was trained with"
                )
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if not config.trainer.get("default_root_dir"):
            config.trainer.default_root_dir = str(Path("runs") / _run_name(config))

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
        )
        # Lightning's save_last only writes when a top-k save happened, so a run whose score
        # stopped improving would resume from a stale epoch. A second, unmonitored callback
        # keeps last.ckpt current every epoch.
        self.last_checkpoint = ModelCheckpoint(
            dirpath=root / "checkpoints",
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        )
        self.throughput = ThroughputCallback()
        self.prediction_writer = PredictionWriter(root / "predictions")
        callbacks = [
            self.checkpoint_callback,
            self.last_checkpoint,
            self.throughput,
            StepSeeder(),
            self.prediction_writer,
        ]
        if config.trainer.get("logger") in (None, True):
            run_name = config.get("run_name") or root.name
            kwargs["logger"] = default_loggers(root, config.wandb_mode, config.wandb_project, run_name)
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if config.trainer.get("enable_progress_bar") is not False:
            callbacks.append(_progress_bar())
        kwargs["callbacks"] = list(config.trainer.get("callbacks") or []) + callbacks
        return super().instantiate_trainer(**kwargs)

    # --- checks before anything runs: bad input fails here, with nothing written -----------
    def _check(self, stage: str) -> None:
        check = getattr(self.datamodule, "check", None)
        if check is not None:
            check(stage)
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt and ckpt not in ("last", "best", "hpc", "registry"):
            verify_checkpoint(ckpt, allow_unsafe=self.config_init[self.subcommand].allow_unsafe_checkpoints)

    def before_fit(self) -> None:
        self._check("fit")
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
        scores = trainer.validate(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)
        metrics = {}
        for entry in scores:
            for key, value in entry.items():
                if key.startswith("val/") and not key.startswith("val/loss"):
                    metrics[key[4:]] = float(value)
        root = Path(self.config_init["fit"].trainer.default_root_dir)
        results = {
            "task": getattr(self.model, "task_name", None),
            "metrics": metrics,
            **self.throughput.summary(),
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
            path = write_json_atomic(root / "results.json", results)
            _print_metrics(results)
            print(path.resolve(), flush=True)

    def after_validate(self) -> None:
        if self.trainer.is_global_zero and self.trainer.callback_metrics:
            values = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
            _print_metrics({"task": getattr(self.datamodule, "task", None), "metrics": values})

    def after_predict(self) -> None:
        for path in self.prediction_writer.written:
            print(Path(path).resolve(), flush=True)

    def _config_dict(self) -> dict:
        parser = self._parser(self.subcommand)
        return yaml.safe_load(parser.dump(self.config[self.subcommand], skip_none=False))


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({torch.get_num_threads()} threads)"


def _progress_bar() -> pl.Callback:
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    if sys.stdout.isatty():
        return RichProgressBar()
    return TQDMProgressBar(refresh_rate=50)  # logs, not terminals: fewer lines


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


def verify_checkpoint(path: str, allow_unsafe: bool = False) -> dict:
    """Load a checkpoint file safely, or fail with one clear line."""
    file = Path(path)
    if not file.is_file():
        raise APMError(f"checkpoint not found: {file}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=not allow_unsafe)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise APMError(
            f"checkpoint {file} could not be read ({first}); it may be truncated or not a "
            f"checkpoint (pass --allow_unsafe_checkpoints true only for a file you trust)"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise APMError(f"checkpoint {file} has no state_dict: not a Lightning checkpoint")
    return checkpoint


def run_lightning_cli(args: list[str]) -> APMCLI:
    return APMCLI(
        model_class=pl.LightningModule,
        datamodule_class=pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        seed_everything_default=0,
        args=args,
    )
