"""Every adapter in ``apm_lightning/core/library_compat.py`` against the installed Lightning,
Optuna and pgserver: a release that renames or changes one of the private members apm relies on
fails here, naming the member, instead of somewhere deep in a training run."""

from __future__ import annotations

import importlib
import inspect

import lightning.pytorch as pl
import optuna
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from apm_lightning.core import library_compat as compat


def test_a_missing_member_is_named():
    with pytest.raises(
        compat.LibraryChanged, match=r"^LightningModule\._trainer is gone: update apm_lightning"
    ):
        compat.attached_trainer(object())


def test_overridden_private_methods_still_exist_and_are_called():
    for module, cls, method in compat.OVERRIDDEN_PRIVATE_METHODS:
        owner = getattr(importlib.import_module(module), cls)
        assert callable(getattr(owner, method, None)), f"{module}.{cls}.{method} is gone (apm overrides it)"
        assert list(inspect.signature(getattr(owner, method)).parameters) == ["self"], (
            f"{cls}.{method} changed"
        )
        sources = "".join(inspect.getsource(c) for c in owner.__mro__ if c.__module__.startswith("lightning"))
        assert f"self.{method}()" in sources, f"{cls} no longer calls {method}: apm's override is dead"


def test_add_prefix_prefix_and_wandb_init_args(tmp_path):
    assert dict(compat.add_prefix({"loss": 1.0}, "train", "-")) == {"train-loss": 1.0}
    logger = WandbLogger(project="p", prefix="pre", save_dir=str(tmp_path), offline=True)
    assert compat.logger_prefix(logger) == "pre"
    assert compat.wandb_init_args(logger)["project"] == "p"


def test_load_checkpoint_file(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"w": torch.ones(2)}, path)
    assert compat.load_checkpoint_file(path, map_location="cpu", weights_only=True)["w"].tolist() == [
        1.0,
        1.0,
    ]


def test_csv_writer_slot(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv", version="")
    made: list[object] = []
    writer = compat.csv_logger_experiment(logger, lambda: made.append(object()) or made[-1])
    assert (
        compat.csv_logger_experiment(logger, lambda: pytest.fail("made twice")) is writer is logger.experiment
    )
    assert (tmp_path / "csv").is_dir() and len(made) == 1


class Probe(pl.Callback):
    """Calls the loop and checkpoint adapters during a real (tiny) fit."""

    def __init__(self, saver: ModelCheckpoint, stop_at: int | None = None) -> None:
        self.saver, self.stop_at = saver, stop_at
        self.checks: list[bool] = []
        self.trainers: list[object] = []
        self.logging_steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # The loggers' step: the number of optimizer steps so far (one optimizer).
        self.logging_steps.append(compat.logging_step(trainer))
        compat.set_logging_step(trainer, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.trainers.append(compat.attached_trainer(pl_module))
        fetcher = compat.fit_loop_data_fetcher(trainer.fit_loop)
        self.checks.append(compat.epoch_loop_should_check_val(trainer.fit_loop.epoch_loop, fetcher))
        if batch_idx == 1:
            assert compat.checkpoint_should_skip(self.saver, trainer) is False
            assert "step" in compat.checkpoint_monitor_candidates(self.saver, trainer)
            compat.checkpoint_save_unmonitored(self.saver, trainer)
            assert compat.checkpoint_should_skip(self.saver, trainer) is True  # once per step
        if batch_idx == self.stop_at:
            compat.request_graceful_stop(trainer)


def fit(tmp_path, stop_at: int | None = None) -> tuple[pl.Trainer, Probe]:
    saver = ModelCheckpoint(dirpath=tmp_path, filename="probe", monitor=None, save_top_k=1)
    probe = Probe(saver, stop_at)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        val_check_interval=2,
        num_sanity_val_steps=0,
        callbacks=[saver, probe],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return trainer, probe


def test_loop_checkpoint_and_trainer_adapters_in_a_real_fit(tmp_path):
    model = BoringModel()
    assert compat.attached_trainer(model) is None
    trainer, probe = fit(tmp_path)
    trainer.fit(model)
    assert probe.checks == [False, True, False, True]  # validation after every 2nd batch
    assert probe.trainers == [trainer] * 4
    assert probe.logging_steps == [0, 1, 2, 3]
    assert (tmp_path / "probe.ckpt").is_file()


def test_graceful_stop_stops_between_batches(tmp_path):
    trainer, probe = fit(tmp_path, stop_at=2)
    with pytest.raises(SIGTERMException):
        trainer.fit(BoringModel())
    assert len(probe.checks) == 3, "the flag must stop the loop before the next batch"


def test_cli_parser(tmp_path):
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    cli = LightningCLI(BoringModel, run=False, args=[f"--trainer.default_root_dir={tmp_path}"])
    assert isinstance(compat.cli_parser(cli, cli.subcommand), LightningArgumentParser)


def test_optuna_adapters(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    trial = study.ask()
    trial_id = compat.trial_storage_id(trial)
    storage = compat.study_storage(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert storage.get_trial(trial_id).number == trial.number
    again = compat.trial_from_storage_id(study, trial_id)
    again.report(0.5, step=1)  # what the pruning callback does in the trial's process
    assert study.trials[0].intermediate_values == {1: 0.5}
    sampler = optuna.samplers.TPESampler(n_startup_trials=3, constant_liar=True, multivariate=True)
    assert compat.tpe_settings(sampler) == {
        "constant_liar": True,
        "multivariate": True,
        "n_startup_trials": 3,
    }
    assert compat.tpe_settings(optuna.samplers.TPESampler(constant_liar=False))["constant_liar"] is False


def test_transformers_attention_implementation():
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "bert",
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    for name in ("sdpa", "eager"):
        net = AutoModelForSequenceClassification.from_config(config, attn_implementation=name)
        assert compat.attention_implementation(net.config) == name


def test_pgserver_pg_ctl():
    pytest.importorskip("pgserver")
    pg_ctl = compat.pg_ctl()
    assert "pgdata" in inspect.signature(pg_ctl).parameters


# The private members the adapters wrap: read anywhere else, the adapter is bypassed.
WRAPPED = {
    "_add_prefix", "_load", "_prefix", "_wandb_init", "_refresh_rate", "_should_check_val_fx",
    "_data_fetcher", "_should_skip_saving_checkpoint", "_monitor_candidates",
    "_save_none_monitor_checkpoint", "_signal_connector", "_experiment", "_fs", "_trainer",
    "_log_hyperparams", "_parser", "_trial_id", "_storage", "pg_ctl", "_attn_implementation",
}  # fmt: skip


def test_private_members_are_reached_only_through_the_compat_module():
    import ast
    from pathlib import Path

    package = Path(compat.__file__).resolve().parents[1]
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "library_compat.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = {
            n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "lightning",
                "optuna",
                "pgserver",
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private or any(p.startswith("_") for p in node.module.split(".")):
                    found.append(f"{path.name}:{node.lineno} from {node.module} import {private}")
            elif isinstance(node, ast.Attribute) and node.attr in WRAPPED - own and node.attr.startswith("_"):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not found, "private library members outside core/library_compat.py:\n" + "\n".join(found)
