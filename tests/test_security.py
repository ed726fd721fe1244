"""Security: checkpoints load with weights_only=True on every path unless the user opts in;
trust_remote_code is off unless asked for; secrets never reach configs, logs or results.json."""

from __future__ import annotations

import argparse
import inspect
import json
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import GLUE

from apm_lightning.cli import main
from apm_lightning.core.redact import MASK, redact
from apm_lightning.training.checkpointing import AtomicCheckpointIO

REPO = Path(__file__).resolve().parents[1]
RTE = str(REPO / "experiments" / "glue" / "rte.yaml")
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")
QUIET = [
    "--wandb_mode",
    "disabled",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]
SMALL = ["--data.max_train_samples", "16", "--data.max_eval_samples", "16", "--data.batch_size", "8"]
SMALL += ["--data.max_seq_length", "32", "--data.max_predict_samples", "8"]


def apm(command: str, *args: str) -> int:
    return main([command, "-c", RTE, "-c", TINY, "--data.data_dir", str(GLUE), *SMALL, *QUIET, *args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained")
    assert apm("fit", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run)) == 0
    return run


def unsafe_copy(ckpt: Path, out: Path) -> Path:
    """The checkpoint plus an object that weights_only loading refuses to unpickle."""
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["extra"] = argparse.Namespace(note="any pickled object could run code")
    torch.save(checkpoint, out)
    return out


def test_unsafe_checkpoints_load_only_when_allowed(trained, tmp_path, capsys):
    evil = unsafe_copy(trained / "checkpoints" / "last.ckpt", tmp_path / "evil.ckpt")
    root = ["--trainer.default_root_dir", str(tmp_path / "run")]
    # An explicit path: validate (predict and test take the same path) and export.
    assert apm("validate", "--ckpt_path", str(evil), *root) == 2
    err = capsys.readouterr().err
    assert "could not be read" in err and "--allow_unsafe_checkpoints true" in err
    assert apm("validate", "--ckpt_path", str(evil), "--allow_unsafe_checkpoints", "true", *root) == 0
    assert main(["export", str(evil), str(tmp_path / "hf")]) == 2
    assert main(["export", str(evil), str(tmp_path / "hf"), "--allow-unsafe-checkpoints"]) == 0
    # Resume with --ckpt_path last: the file Lightning would pick is checked first.
    run = tmp_path / "resume"
    shutil.copytree(trained / "checkpoints", run / "checkpoints")
    shutil.copy(evil, run / "checkpoints" / "last.ckpt")
    assert (
        apm("fit", "--ckpt_path", "last", "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run))
        == 2
    )
    assert "could not be read" in capsys.readouterr().err


def test_lightning_restores_go_through_the_safe_loader(trained, tmp_path, monkeypatch):
    """fit (resume), validate, predict and the end-of-fit validation all read checkpoints
    through AtomicCheckpointIO, which uses weights_only unless the user opted in."""
    calls: list[tuple[str, bool]] = []
    load = AtomicCheckpointIO.load_checkpoint

    def spy(self, path, *args, **kwargs):
        calls.append((Path(path).name, self.allow_unsafe))
        return load(self, path, *args, **kwargs)

    monkeypatch.setattr(AtomicCheckpointIO, "load_checkpoint", spy)
    best = json.loads((trained / "results.json").read_text())["best_checkpoint"]
    root = ["--trainer.default_root_dir", str(tmp_path / "out")]
    assert apm("validate", "--ckpt_path", best, *root) == 0
    assert apm("predict", "--ckpt_path", best, *root) == 0
    assert apm("predict", "--ckpt_path", best, "--allow_unsafe_checkpoints", "true", *root) == 0
    run = tmp_path / "resume"
    shutil.copytree(trained / "checkpoints", run / "checkpoints")
    assert (
        apm("fit", "--ckpt_path", "last", "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run))
        == 0
    )
    best_name = Path(best).name
    assert calls[:3] == [(best_name, False), (best_name, False), (best_name, True)]
    assert calls[3] == ("last.ckpt", False) and calls[4][0].startswith("best-") and not calls[4][1]

    # The loader itself: a pickled object is refused unless allowed.
    evil = unsafe_copy(trained / "checkpoints" / "last.ckpt", tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        load(AtomicCheckpointIO(), evil)
    assert isinstance(load(AtomicCheckpointIO(allow_unsafe=True), evil)["extra"], argparse.Namespace)


def test_trust_remote_code_is_off_unless_asked_for(capsys):
    from apm_lightning.models.backbones import build_sequence_classifier
    from apm_lightning.modules.classification import TransformerClassifier
    from apm_lightning.modules.question_answering import QuestionAnsweringModule, build_qa_network

    for fn in (build_sequence_classifier, TransformerClassifier, QuestionAnsweringModule):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False, fn
    assert "trust_remote_code" in inspect.signature(build_qa_network).parameters
    with pytest.raises(SystemExit):
        main(["fit", "-c", RTE, "--print_config"])
    assert "trust_remote_code: false" in capsys.readouterr().out


def test_redact_masks_secret_keys_url_passwords_and_parameters():
    config = {
        "storage": "postgresql://optuna:hunter2@db.example.com:5432/sweeps",
        "redis": "redis://:s3cret@cache:6379/0",
        "sqlite": "sqlite:///runs/sweeps.db",
        "url": "https://example.com/data?token=abc123&split=train",
        "note": "WANDB_API_KEY=0123abcd in the environment",
        "wandb": {"api_key": "0123abcd", "project": "apm"},
        "password": "hunter2",
        "hf_token": "hf_abc",
        "tokenizer": "minilm",
        "pad_token": "[PAD]",
        "max_tokens": 512,
        "nested": [{"secret": "x"}, "mysql://u:pw@h/d"],
        "empty_password": None,
    }
    clean = redact(config)
    assert clean["storage"] == f"postgresql://optuna:{MASK}@db.example.com:5432/sweeps"
    assert clean["redis"] == f"redis://:{MASK}@cache:6379/0"
    assert clean["url"] == f"https://example.com/data?token={MASK}&split=train"
    assert clean["note"] == f"WANDB_API_KEY={MASK} in the environment"
    assert clean["wandb"] == {"api_key": MASK, "project": "apm"}
    assert clean["password"] == clean["hf_token"] == MASK
    assert clean["nested"] == [{"secret": MASK}, f"mysql://u:{MASK}@h/d"]
    for key in ("sqlite", "tokenizer", "pad_token", "max_tokens", "empty_password"):
        assert clean[key] == config[key], key
    assert config["password"] == "hunter2"  # a copy: the input is left alone


def test_secrets_never_reach_the_run_directory(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    secret = "hunter2-" + str(int(time.time()))
    args = ["--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run)]
    args += [
        "--run_name",
        f"postgresql://bob:{secret}@db/sweeps",
        "--data.column_map",
        json.dumps({"api_key": secret}),
    ]
    assert apm("fit", *args) == 0
    printed = capsys.readouterr()
    assert secret not in printed.out + printed.err
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["run_name"] == f"postgresql://bob:{MASK}@db/sweeps"
    written = [p for p in run.rglob("*") if p.is_file() and p.suffix != ".ckpt"]
    assert {"results.json", "config.yaml", "hparams.yaml"} <= {p.name for p in written}
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
    # The same for what is logged to W&B (offline files on disk).
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb_run = tmp_path / "wandb-run"
    args[args.index(str(run))] = str(wandb_run)
    assert apm("fit", *args, "--wandb_mode", "offline") == 0
    files = [p for p in (wandb_run / "wandb").rglob("*") if p.is_file()]
    assert files and not any(secret.encode() in p.read_bytes() for p in files)
