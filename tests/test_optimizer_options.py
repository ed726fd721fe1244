"""LightningCLI's own ``--optimizer`` / ``--lr_scheduler`` options on every apm module: a given
optimizer is the one that trains (with the no-decay parameter groups), a given scheduler steps
every optimizer step unless told otherwise, and with neither the recipe is today's AdamW with
linear warm-up and decay, to the same losses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from apm_lightning.cli import main
from tests.run_options import QUIET

REPO = Path(__file__).resolve().parents[1]
RTE = str(REPO / "experiments" / "glue" / "rte.yaml")
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")
# 16 rows in batches of 4: a 4-step epoch.
SMALL = ["--data.max_train_samples=16", "--data.max_eval_samples=16", "--data.batch_size=4"]
SMALL += ["--data.max_seq_length=32", "--trainer.max_epochs=1"]


def fit(glue_dir: Path, run: Path, *extra: str) -> Path:
    args = ["fit", "-c", RTE, "-c", TINY, "--data.data_dir", str(glue_dir), *SMALL, *QUIET, *extra]
    assert main([*args, "--trainer.default_root_dir", str(run)]) == 0
    return run


def train_losses(run: Path) -> list[float]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


def optimizer_state(run: Path) -> tuple[dict, dict]:
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    return checkpoint["optimizer_states"][0], checkpoint["lr_schedulers"][0]


# Measured on commit 1a71fc1 (before --optimizer existed), seed 0, this machine's CPU.
PINNED_LOSSES = [0.6926209926605225, 0.6809765100479126, 0.6899197101593018, 0.6964321136474609]
PINNED_VAL = 0.6838268637657166


def test_default_recipe_is_unchanged(glue_dir, tmp_path):
    """Pinned on the code before the options existed: AdamW, no decay on biases and LayerNorm,
    linear warm-up/decay stepped every optimizer step, from the model's hyper-parameters."""
    # Pinned with the full last layer: the [CLS]-only one (tests/test_first_position.py) draws
    # dropout masks for one position instead of all, so the same recipe gives other losses.
    run = fit(glue_dir, tmp_path / "run", "--model.cls_only_last_layer=false")
    assert train_losses(run) == pytest.approx(PINNED_LOSSES, rel=1e-5)
    assert json.loads((run / "results.json").read_text())["val_loss"] == pytest.approx(PINNED_VAL, rel=1e-5)
    optimizer, scheduler = optimizer_state(run)
    groups = optimizer["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # rte.yaml's weight_decay; no-decay group
    assert all(g["initial_lr"] == 1e-3 for g in groups)  # tiny_bert.yaml's learning_rate
    assert groups[0]["decoupled_weight_decay"] and groups[0]["fused"]  # AdamW, fused kernel
    assert scheduler["_step_count"] == 4 + 1  # stepped every optimizer step (the +1: its construction)
    assert groups[0]["lr"] == 0.0  # decayed to zero at the run's end


def test_given_optimizer_trains_with_no_decay_groups(glue_dir, tmp_path):
    run = fit(
        glue_dir, tmp_path / "run", "--optimizer=SGD", "--optimizer.lr=0.1", "--optimizer.weight_decay=0.01"
    )
    optimizer, scheduler = optimizer_state(run)
    groups = optimizer["param_groups"]
    assert all("nesterov" in g and "amsgrad" not in g for g in groups)  # torch.optim.SGD's groups
    assert [g["initial_lr"] for g in groups] == [0.1, 0.1]  # the given lr, not the model's 1e-3
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # biases and LayerNorm: no decay
    assert scheduler["_step_count"] == 4 + 1 and groups[0]["lr"] == 0.0  # apm's schedule, per step
    config = json.loads((run / "results.json").read_text())["config"]
    assert config["optimizer"]["class_path"] == "torch.optim.SGD"
    assert config["optimizer"]["init_args"]["lr"] == 0.1


def test_given_scheduler_steps_every_optimizer_step(glue_dir, tmp_path):
    schedule = ["--lr_scheduler=LinearLR", "--lr_scheduler.start_factor=0.5", "--lr_scheduler.total_iters=2"]
    run = fit(glue_dir, tmp_path / "run", *schedule)
    optimizer, scheduler = optimizer_state(run)
    assert scheduler["start_factor"] == 0.5 and scheduler["_step_count"] == 4 + 1  # LinearLR, per step
    assert [g["lr"] for g in optimizer["param_groups"]] == [1e-3, 1e-3]  # warmed up to the model's lr
    assert optimizer["param_groups"][0]["fused"]  # the default AdamW stays


def test_scheduler_interval_epoch(glue_dir, tmp_path):
    run = fit(
        glue_dir,
        tmp_path / "run",
        "--lr_scheduler=StepLR",
        "--lr_scheduler.step_size=1",
        "--lr_scheduler_interval=epoch",
    )
    _, scheduler = optimizer_state(run)
    assert scheduler["_step_count"] == 1 + 1  # one epoch


def test_print_config_shows_the_options(glue_dir, capsys):
    args = ["fit", "-c", RTE, "-c", TINY, "--data.data_dir", str(glue_dir)]
    with pytest.raises(SystemExit) as stop:
        main([*args, "--optimizer=SGD", "--optimizer.lr=0.1", "--lr_scheduler=LinearLR", "--print_config"])
    assert stop.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["optimizer"]["class_path"] == "torch.optim.SGD"
    assert config["optimizer"]["init_args"]["lr"] == 0.1
    assert config["lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.LinearLR"
    assert config["lr_scheduler_interval"] == "step"


# The optimisation settings are declared once, on APMModule; each module passes them on as
# **kwargs and states its own defaults (optimizer_defaults).
MODULE_DEFAULTS = {
    "TransformerClassifier": (2e-5, 0.01, 0.06, 1e-8),
    "QuestionAnsweringModule": (3e-5, 0.01, 0.1, 1e-8),
    "TextToTextClassifier": (3e-4, 0.0, 0.0, 1e-8),
    "GenerativeQAModule": (3e-4, 0.0, 0.0, 1e-8),
    "PretrainingModule": (5e-4, 0.01, 0.06, 1e-6),
    "BiLSTMClassifier": (1e-3, 0.0, 0.0, 1e-8),
}
SETTINGS = ("learning_rate", "weight_decay", "warmup_ratio", "adam_epsilon")


def apm_modules() -> dict[str, type]:
    from apm_lightning.core.trust import model_registry
    from apm_lightning.modules import (  # noqa: F401  (importing registers them)
        bilstm_classifier,
        classification,
        generative_qa,
        pretraining,
        question_answering,
        text_to_text,
    )

    return {cls.__name__: cls for cls in model_registry().values()}


def test_every_module_takes_the_optimizer_options_from_the_command_line():
    """LightningCLI reads the five settings through each module's ``super().__init__(**kwargs)``
    chain (two levels for the classifiers), so ``--model.learning_rate`` works on every module,
    and an option given is the one the module trains with."""
    from jsonargparse import ArgumentParser

    from apm_lightning.core.trust import init_parameters
    from apm_lightning.modules.base import APMModule

    modules = apm_modules()
    assert set(MODULE_DEFAULTS) <= set(modules)
    for name, cls in modules.items():
        parser = ArgumentParser(exit_on_error=False)
        parser.add_subclass_arguments(APMModule, "model")
        cfg = parser.parse_args(["--model", f"{cls.__module__}.{name}", "--model.learning_rate", "0.25"])
        init_args = vars(cfg.model.init_args)
        assert init_args["learning_rate"] == 0.25, name
        assert {"weight_decay", "warmup_ratio", "warmup_steps", "adam_epsilon"} <= set(init_args), name
        # A checkpoint's settings are accepted back when a module is rebuilt from it.
        assert {"learning_rate", "warmup_steps"} <= init_parameters(cls), name
    # The BiLSTM builds no network until it sees data: a given setting wins, the rest are its own.
    bilstm = modules["BiLSTMClassifier"](learning_rate=0.25, warmup_steps=7)
    assert bilstm.hparams.learning_rate == 0.25 and bilstm.hparams.warmup_steps == 7
    assert bilstm.hparams.weight_decay == 0.0 and bilstm.hparams.adam_epsilon == 1e-8


def test_each_module_records_its_own_defaults():
    """A setting left out takes the module's recipe, and the hyper-parameters (so the checkpoint
    and hparams.yaml) record the number, not None."""
    modules = apm_modules()
    tiny_t5 = {"model_type": "t5", "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 2}
    tiny_bert = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    tiny_bert["intermediate_size"] = 32
    built = {
        "TransformerClassifier": modules["TransformerClassifier"](),
        "QuestionAnsweringModule": modules["QuestionAnsweringModule"](
            backbone_config=tiny_bert, tokenizer="minilm"
        ),
        "TextToTextClassifier": modules["TextToTextClassifier"](backbone_config=tiny_t5, tokenizer="minilm"),
        "PretrainingModule": modules["PretrainingModule"](backbone_config=tiny_bert, tokenizer="minilm"),
        "BiLSTMClassifier": modules["BiLSTMClassifier"](),
    }
    for name, module in built.items():
        recorded = tuple(module.hparams[key] for key in SETTINGS)
        assert recorded == MODULE_DEFAULTS[name], name
        assert module.hparams.warmup_steps is None
        assert module.hparams_initial.learning_rate == MODULE_DEFAULTS[name][0], name
    assert modules["GenerativeQAModule"].optimizer_defaults == dict(
        zip(SETTINGS, MODULE_DEFAULTS["GenerativeQAModule"], strict=True)
    )
