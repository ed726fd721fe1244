"""Trust: a checkpoint is data. Nothing in a ``.ckpt`` (hyper-parameters, the class it names)
may turn on trust_remote_code, pick a model folder to run code from or name a class outside apm;
and a secret in a data path or URL reaches no output: stdout, results.json, config, metrics,
checkpoints or error lines."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import GLUE
from run_options import one_line_error

from apm_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
RTE = str(REPO / "experiments" / "glue" / "rte.yaml")
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")
QUIET = ["--wandb_mode", "disabled", "--trainer.enable_progress_bar", "false"]
QUIET += ["--trainer.enable_model_summary", "false"]
SMALL = ["--data.max_train_samples", "16", "--data.max_eval_samples", "16", "--data.batch_size", "8"]
SMALL += ["--data.max_seq_length", "32", "--data.max_predict_samples", "8"]
# The architecture of experiments/models/tiny_bert.yaml (a remote-code folder must match it).
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
}


def apm(command: str, *args: str, data_dir: Path = GLUE, model: tuple[str, ...] = (TINY,)) -> int:
    configs = [x for m in model for x in ("-c", m)]
    return main([command, "-c", RTE, *configs, "--data.data_dir", str(data_dir), *SMALL, *QUIET, *args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained")
    assert apm("fit", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run)) == 0
    return run


# ----------------------------------------------------------------------------- hostile files
def remote_code_folder(root: Path, marker: Path, weights: bool = False) -> Path:
    """A Hugging Face folder whose config.json points (``auto_map``) at ``modeling_evil.py``,
    which writes ``marker`` when imported: what trust_remote_code would run."""
    folder = root / "evil-model"
    folder.mkdir(parents=True)
    if weights:  # a loadable BERT of the tiny architecture, with the hostile config around it
        from transformers import BertConfig, BertForSequenceClassification

        config = {k: v for k, v in TINY_BERT.items() if k != "model_type"}
        BertForSequenceClassification(BertConfig(**config)).save_pretrained(folder)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else dict(TINY_BERT)
    config["auto_map"] = {
        "AutoConfig": "modeling_evil.EvilConfig",
        "AutoModel": "modeling_evil.EvilModel",
        "AutoModelForSequenceClassification": "modeling_evil.EvilModel",
    }
    config_file.write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('code from a checkpoint ran')\n"
        "from transformers import BertConfig, BertForSequenceClassification\n"
        "class EvilConfig(BertConfig):\n    pass\n"
        "class EvilModel(BertForSequenceClassification):\n    config_class = EvilConfig\n"
    )
    return folder


def importable_module(root: Path, marker: Path, monkeypatch) -> str:
    """A module on sys.path that writes ``marker`` when imported: a class name from a
    checkpoint that apm would import would run it."""
    folder = root / "pythonpath"
    folder.mkdir()
    (folder / "evilmod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "class Model:\n    pass\n\ndef instantiate(cls, kwargs):\n    return cls(**kwargs)\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return "evilmod"


def hostile_copy(ckpt: Path, out: Path, hparams: dict | None = None, apm_info: dict | None = None) -> Path:
    """A real checkpoint with some of its strings replaced; it still loads with weights_only."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"].update(hparams or {})
    checkpoint["apm"].update(apm_info or {})
    torch.save(checkpoint, out)
    torch.load(out, weights_only=True)  # still a "safe" file
    return out


def hostile_variants(trained: Path, tmp_path: Path, marker: Path, monkeypatch) -> dict[str, Path]:
    last = trained / "checkpoints" / "last.ckpt"
    evil = remote_code_folder(tmp_path, marker)
    module = importable_module(tmp_path, marker, monkeypatch)
    identity = {"backbone": str(evil), "backbone_config": None}
    return {
        "trust_remote_code": hostile_copy(
            last,
            tmp_path / "remote.ckpt",
            {"backbone": str(evil), "backbone_config": None, "trust_remote_code": True},
            {"identity": identity},
        ),
        "backbone_path": hostile_copy(
            last,
            tmp_path / "path.ckpt",
            {"backbone": str(evil), "backbone_config": None},
            {"identity": identity},
        ),
        "os_module": hostile_copy(
            last, tmp_path / "os.ckpt", {"_class_path": "os.Foo"}, {"module": "os.Foo"}
        ),
        "module_on_path": hostile_copy(
            last, tmp_path / "evilmod.ckpt", {"_class_path": f"{module}.Model"}, {"module": f"{module}.Model"}
        ),
        "instantiator": hostile_copy(
            last, tmp_path / "inst.ckpt", {"_instantiator": f"{module}.instantiate"}
        ),
    }


# ----------------------------------------------------------------------------- the checks
def test_the_allow_list_is_apms_lightning_modules():
    import lightning.pytorch as pl

    import apm_lightning.modules  # noqa: F401  (registers apm's modules)
    from apm_lightning.core.trust import model_registry

    registry = model_registry()
    classes = {cls.__qualname__ for cls in registry.values()}
    assert classes == {
        "TransformerClassifier",
        "BiLSTMClassifier",
        "QuestionAnsweringModule",
        "PretrainingModule",
        "TextToTextClassifier",
        "GenerativeQAModule",
    }
    assert all(issubclass(cls, pl.LightningModule) for cls in registry.values())
    # Checkpoints written before the modules moved (apm_lightning.tasks.*) still name them.
    assert (
        registry["apm_lightning.tasks.classification.TransformerClassifier"].__qualname__
        == "TransformerClassifier"
    )


def test_the_remote_code_folder_runs_code_when_the_user_trusts_it(tmp_path):
    """The fixture is really hostile: a loader told to trust it imports modeling_evil.py."""
    marker = tmp_path / "marker"
    evil = remote_code_folder(tmp_path, marker)
    code = f"from transformers import AutoConfig; AutoConfig.from_pretrained({str(evil)!r}, trust_remote_code=True)"
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert marker.is_file()


@pytest.mark.parametrize(
    "variant", ["trust_remote_code", "backbone_path", "os_module", "module_on_path", "instantiator"]
)
def test_every_entry_point_refuses_a_hostile_checkpoint(variant, trained, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    ckpt = hostile_variants(trained, tmp_path, marker, monkeypatch)[variant]
    capsys.readouterr()
    expected = {
        "trust_remote_code": "trust_remote_code true",
        "backbone_path": "model.backbone",
        "os_module": "'os.Foo', which is not one of apm's",
        "module_on_path": "'evilmod.Model', which is not one of apm's",
        "instantiator": "'evilmod.instantiate'",
    }[variant]
    root = ["--trainer.default_root_dir", str(tmp_path / "run")]
    for command in ("fit", "validate", "test", "predict"):
        assert apm(command, "--ckpt_path", str(ckpt), *root) == 2, command
        assert expected in one_line_error(capsys), command
    # Resume with --ckpt_path last: the file is found in the run directory, then refused.
    resume = tmp_path / "resume"
    shutil.copytree(trained / "checkpoints", resume / "checkpoints")
    shutil.copy(ckpt, resume / "checkpoints" / "last.ckpt")
    rc = apm(
        "fit", "--ckpt_path", "last", "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(resume)
    )
    assert rc == 2 and expected in one_line_error(capsys)
    if variant != "backbone_path":  # export takes no config: a path alone runs no code (below)
        assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 2
        assert expected in one_line_error(capsys)
        assert not (tmp_path / "hf").exists()
        # A model built on the checkpoint as its backbone (apm glue and apm compare pass exports
        # and checkpoints this way).
        backbone = ["--model.backbone", str(ckpt), "--trainer.max_epochs", "1"]
        assert apm("fit", *backbone, *root, model=()) == 2
        assert expected in one_line_error(capsys)
    assert not marker.exists()
    assert not (tmp_path / "modules").exists() or not any((tmp_path / "modules").rglob("*evil*"))


def test_export_of_a_backbone_with_auto_map_carries_no_code(trained, tmp_path, monkeypatch):
    """A checkpoint may name a model folder that holds code: exporting it loads the weights
    without trust_remote_code, runs nothing, and the folder written has no auto_map or .py."""
    from transformers import AutoModelForSequenceClassification

    marker = tmp_path / "marker"
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    evil = remote_code_folder(tmp_path, marker, weights=True)
    ckpt = hostile_copy(
        trained / "checkpoints" / "last.ckpt",
        tmp_path / "path.ckpt",
        {"backbone": str(evil), "backbone_config": None},
        {"identity": {"backbone": str(evil), "backbone_config": None}},
    )
    out = tmp_path / "hf"
    assert main(["export", str(ckpt), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and not list(out.glob("*.py"))
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
    AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)  # nothing to run
    assert not marker.exists()


def test_a_replaced_option_is_named_in_one_line(trained, tmp_path, capsys):
    """validate takes the trained model's settings from its checkpoint; an option the user gave
    that differs is named, not silently replaced."""
    best = json.loads((trained / "results.json").read_text())["best_checkpoint"]
    root = ["--trainer.default_root_dir", str(tmp_path / "val")]
    assert apm("validate", "--ckpt_path", best, "--model.learning_rate", "0.5", *root) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("apm: warning:")]
    assert len(warnings) == 1 and "model.learning_rate (0.5 -> 0.001)" in warnings[0]
    # The settings it was trained with: nothing to name.
    assert apm("validate", "--ckpt_path", best, *root) == 0
    assert "apm: warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- secrets
@pytest.fixture
def lightning_log():
    """What Lightning logs (``rank_zero_info`` lines included): its handler writes to the stream
    it found at import, which the capture fixtures do not see."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def test_a_secret_in_a_data_path_reaches_no_output(tmp_path, capfd, lightning_log):
    secret = "abc123secret"
    data = tmp_path / f"token={secret}"
    (data / "RTE").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        lines = (GLUE / "RTE" / name).read_text(encoding="utf-8").splitlines()[:17]
        (data / "RTE" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    root = ["--trainer.default_root_dir", str(run)]
    assert apm("fit", "--trainer.max_epochs", "1", *root, data_dir=data) == 0
    # Resume and validate still work: the run's values come from its command line.
    assert apm("fit", "--trainer.max_epochs", "2", "--ckpt_path", "last", *root, data_dir=data) == 0
    best = json.loads((run / "results.json").read_text())["best_checkpoint"]
    assert apm("validate", "--ckpt_path", best, "--trainer.logger", "false", *root, data_dir=data) == 0
    printed = capfd.readouterr()
    printed = printed.out + printed.err + lightning_log.getvalue()
    assert "rte data: local GLUE files:" in printed  # the line is there, redacted
    assert secret not in printed
    results = json.loads((run / "results.json").read_text())
    assert results["data_source"].startswith("local GLUE files:") and "token=***" in results["data_source"]
    for path in (run / "results.json", run / "csv" / "config.yaml", run / "csv" / "metrics.csv"):
        assert secret not in path.read_text(encoding="utf-8"), path
    for path in run.rglob("*"):
        if path.is_file() and path.suffix != ".ckpt":
            assert secret.encode() not in path.read_bytes(), path
    checkpoints = list((run / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) >= 2
    for ckpt in checkpoints:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
        stored = repr({k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")})
        assert secret not in stored and "token=***" in stored, ckpt
        assert secret.encode() not in ckpt.read_bytes(), ckpt
    # An error line naming such a path is redacted too.
    other = ["--trainer.default_root_dir", str(tmp_path / "other-run")]  # not the used run dir
    assert apm("fit", *other, data_dir=data / "missing") == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("apm: error: ") and "token=***" in err[-1]
    assert secret not in "\n".join(err) + lightning_log.getvalue()
