"""Every private (underscore) member of Lightning, Optuna, pgserver and transformers that apm
uses, one small function each, in one place.

apm needs a few things those libraries do not expose: Lightning's checkpoint loader and
``ModelCheckpoint``'s save steps (``last.ckpt`` mid-epoch), the loop's "validation follows this
batch" test, the SIGTERM flag (Ctrl-C stops like SIGTERM), a W&B logger's prefix and init
arguments, a progress bar's refresh rate (no setter), the CSV logger's writer slot, the loggers'
step counter (corrected after a resume from a stop at an epoch's end), the
trainer a module is attached to (without the property's error), the data module's flag that
logs its hyper-parameters, LightningCLI's parser; Optuna's storage key of a trial, a study's
storage and a trial rebuilt from its key (the pruning callback in a child process); pgserver's
``pg_ctl``; a transformers config's attention implementation (which mask form a model takes).
A library release that renames one of them breaks here, and ``tests/test_library_compat.py``
calls every function against the installed versions and names the member that changed.

Checked against lightning 2.4-2.6 (2.6.6 installed when written), optuna 4.0-5.0 (5.0.0),
pgserver 0.1.4 and transformers 5.0-5.24. Imports are inside the functions: ``apm --help``
imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# Methods of library classes that apm's subclasses override. Lightning calls them by these
# names; if one is renamed, the override is silently never called (the test checks they exist).
OVERRIDDEN_PRIVATE_METHODS = (
    ("lightning.pytorch.cli", "LightningCLI", "_parse_ckpt_path"),  # training/cli.py: APMCLI
    ("lightning.pytorch.loggers.csv_logs", "ExperimentWriter", "_check_log_dir_exists"),  # AppendingWriter
)


class LibraryChanged(RuntimeError):
    """A private member apm relies on is gone or changed: this module needs an update."""


def _member(obj: Any, name: str, owner: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise LibraryChanged(f"{owner}.{name} is gone: update apm_lightning/core/library_compat.py") from None


def _require_slot(obj: Any, name: str, owner: str) -> None:
    """Setting a private attribute that no longer exists would pass silently: check first."""
    _member(obj, name, owner)


# --------------------------------------------------------------------------- Lightning
def add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> Mapping[str, Any]:
    """``lightning.fabric.utilities.logger._add_prefix``: the logger's prefix on metric names,
    as Lightning's own loggers apply it."""
    from lightning.fabric.utilities import logger

    return _member(logger, "_add_prefix", "lightning.fabric.utilities.logger")(metrics, prefix, separator)


def load_checkpoint_file(path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
    """``lightning.fabric.utilities.cloud_io._load``: ``torch.load`` of a local path or URL
    (fsspec), as Lightning's ``TorchCheckpointIO`` loads."""
    from lightning.fabric.utilities import cloud_io

    load = _member(cloud_io, "_load", "lightning.fabric.utilities.cloud_io")
    return load(path, map_location=map_location, weights_only=weights_only)


def logger_prefix(logger: Any) -> str:
    """``WandbLogger._prefix``: the prefix given to the logger."""
    return _member(logger, "_prefix", type(logger).__name__)


def wandb_init_args(logger: Any) -> dict[str, Any]:
    """``WandbLogger._wandb_init``: the arguments the logger passes to ``wandb.init``."""
    return _member(logger, "_wandb_init", type(logger).__name__)


def epoch_loop_should_check_val(epoch_loop: Any, data_fetcher: Any) -> bool:
    """``_TrainingEpochLoop._should_check_val_fx(data_fetcher)``: whether the loop validates
    right after the current training batch."""
    return _member(epoch_loop, "_should_check_val_fx", type(epoch_loop).__name__)(data_fetcher)


def fit_loop_data_fetcher(fit_loop: Any) -> Any:
    """``_FitLoop._data_fetcher``: the training data fetcher (``_should_check_val_fx`` wants it)."""
    return _member(fit_loop, "_data_fetcher", type(fit_loop).__name__)


def checkpoint_should_skip(callback: Any, trainer: Any) -> bool:
    """``ModelCheckpoint._should_skip_saving_checkpoint(trainer)``: no save while sanity
    checking, in a fast dev run, or twice at one step."""
    return _member(callback, "_should_skip_saving_checkpoint", "ModelCheckpoint")(trainer)


def checkpoint_monitor_candidates(callback: Any, trainer: Any) -> dict[str, Any]:
    """``ModelCheckpoint._monitor_candidates(trainer)``: the metrics a file name may hold."""
    return _member(callback, "_monitor_candidates", "ModelCheckpoint")(trainer)


def checkpoint_save_unmonitored(
    callback: Any, trainer: Any, candidates: dict[str, Any] | None = None
) -> None:
    """``ModelCheckpoint._save_none_monitor_checkpoint(trainer, candidates)``: the save of a
    callback with ``monitor=None`` (``last.ckpt``); candidates default to
    :func:`checkpoint_monitor_candidates`."""
    if candidates is None:
        candidates = checkpoint_monitor_candidates(callback, trainer)
    _member(callback, "_save_none_monitor_checkpoint", "ModelCheckpoint")(trainer, candidates)


def request_graceful_stop(trainer: Any) -> None:
    """``trainer._signal_connector.received_sigterm = True``: the flag Lightning's SIGTERM
    handler sets; the loop stops between batches (last.ckpt, exit like SIGTERM)."""
    connector = _member(trainer, "_signal_connector", "Trainer")
    _require_slot(connector, "received_sigterm", type(connector).__name__)
    connector.received_sigterm = True


def _stepping_loop(trainer: Any) -> Any:
    epoch_loop = trainer.fit_loop.epoch_loop
    _require_slot(epoch_loop, "_batches_that_stepped", type(epoch_loop).__name__)
    return epoch_loop


def logging_step(trainer: Any) -> int:
    """``fit_loop.epoch_loop._batches_that_stepped``: the step the loggers write."""
    return _stepping_loop(trainer)._batches_that_stepped


def set_logging_step(trainer: Any, step: int) -> None:
    _stepping_loop(trainer)._batches_that_stepped = step


def csv_logger_experiment(logger: Any, make: Callable[[], Any]) -> Any:
    """``CSVLogger._experiment`` and ``._fs``: the logger's writer, made once by ``make`` (after
    the log folder is created on the logger's file system) where Lightning makes its own."""
    if _member(logger, "_experiment", "CSVLogger") is None:
        _member(logger, "_fs", "CSVLogger").makedirs(logger.root_dir, exist_ok=True)
        logger._experiment = make()
    return logger._experiment


def attached_trainer(module: Any) -> Any:
    """``LightningModule._trainer``: the trainer, or None when the module is not attached to one
    (the public ``trainer`` property raises then)."""
    return _member(module, "_trainer", "LightningModule")


def cli_parser(cli: Any, subcommand: str | None) -> Any:
    """``LightningCLI._parser(subcommand)``: the parser of a subcommand (to dump its config)."""
    return _member(cli, "_parser", "LightningCLI")(subcommand)


# --------------------------------------------------------------------------- Optuna
def trial_storage_id(trial: Any) -> int:
    """``optuna.trial.Trial._trial_id``: the trial's key in its storage (``number`` counts
    within a study; the storage's key is what ``Trial(study, id)`` takes)."""
    return _member(trial, "_trial_id", "optuna.trial.Trial")


def study_storage(study: Any) -> Any:
    """``optuna.Study._storage``: the study's storage (heartbeat interval)."""
    return _member(study, "_storage", "optuna.Study")


def trial_from_storage_id(study: Any, trial_id: int) -> Any:
    """``optuna.trial.Trial(study, trial_id)``: a running trial rebuilt in another process (the
    pruning callback); Optuna documents the constructor as not meant for direct use."""
    import optuna

    return optuna.trial.Trial(study, trial_id)


def tpe_settings(sampler: Any) -> dict[str, Any]:
    """``TPESampler._constant_liar``, ``._multivariate``, ``._n_startup_trials``: what a built
    TPE sampler really got (Optuna has no public read-back)."""
    return {
        "constant_liar": _member(sampler, "_constant_liar", "TPESampler"),
        "multivariate": _member(sampler, "_multivariate", "TPESampler"),
        "n_startup_trials": _member(sampler, "_n_startup_trials", "TPESampler"),
    }


# --------------------------------------------------------------------------- pgserver
def pg_ctl() -> Callable[..., str]:
    """``pgserver._commands.pg_ctl(args, pgdata=, user=)``: PostgreSQL's ``pg_ctl`` run as the
    server's user (a TCP port, stop and start)."""
    from pgserver import _commands

    return _member(_commands, "pg_ctl", "pgserver._commands")


# --------------------------------------------------------------------------- transformers
def attention_implementation(config: Any) -> str:
    """``PretrainedConfig._attn_implementation``: ``"sdpa"``, ``"eager"``, ... (the name a model
    was built with; transformers has no public reader)."""
    return _member(config, "_attn_implementation", type(config).__name__)
