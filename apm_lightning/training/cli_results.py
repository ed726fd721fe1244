"""The results contract: ``apm fit`` ends by scoring the best checkpoint and writing
``results.json``; ``apm validate|test`` write ``<command>-<time>.json`` beside the run's records,
and print a table; ``apm predict`` prints the files it wrote.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import yaml

from apm_lightning.core.files import write_json_atomic
from apm_lightning.core.library_compat import cli_parser
from apm_lightning.core.redact import redact
from apm_lightning.training.results import git_commit, package_versions, peak_rss_mb


class ResultsHooks:
    """APMCLI's after-stage hooks (a mixin: it uses the LightningCLI's trainer, model and config)."""

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


# Where the run wrote its own output: kept as written, since the runners and reports read them
# back (``apm glue`` predicts with best_checkpoint). Everything else (the data source above all)
# is redacted.
_OUTPUT_LOCATIONS = ("run_dir", "best_checkpoint", "last_checkpoint", "hf_export")


def _redacted_results(results: dict) -> dict:
    clean = redact(results)
    clean.update({k: results[k] for k in _OUTPUT_LOCATIONS if k in results})
    return clean


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({torch.get_num_threads()} threads)"


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
