"""``apm compare``: one tiny study end to end (tokenizer, three objectives, fine-tuning, tables
and plots), then a second invocation that finds everything done."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import DATA
from run_options import QUIET as QUIET_RUN

from apm_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]


QUIET = [a for a in QUIET_RUN if not a.startswith("--wandb_mode")]  # the study sets W&B itself
STUDY = {
    "name": "tiny",
    "tokenizer": {"kind": "wordpiece", "vocab_size": 1000},
    "corpus": {
        "files": ["corpus/wikitext-2-raw/wiki.valid.raw"],
        "max_documents": 300,
        "block_size": 32,
        "batch_size": 8,
    },
    "budget_tokens": 2048,  # 8 steps of 8 x 32
    "evaluations": 2,
    "objectives": {
        "mlm": {"configs": ["experiments/pretrain/mlm_tiny.yaml"]},
        "clm": {"configs": ["experiments/pretrain/clm_tiny.yaml", "experiments/pretrain/causal_bert.yaml"]},
        "electra": {
            "configs": ["experiments/pretrain/electra_tiny.yaml"],
            "overrides": ["--model.backbone_config.embedding_size=32"],
        },
    },
    "pretrain_overrides": [
        "--model.backbone_config.hidden_size=32",
        "--model.backbone_config.intermediate_size=64",
        "--data.max_validation_blocks=8",
        *QUIET,
    ],
    "finetune": {
        "tasks": ["rte"],
        "seeds": 2,
        "max_train_samples": 32,
        "epochs": 1,
        "overrides": [
            "--model.learning_rate=3e-4",
            "--data.max_seq_length=32",
            "--data.max_eval_samples=32",
            *QUIET,
        ],
    },
}


def test_compare_study_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("APM_DATA_DIR", str(DATA))  # the study's corpus and GLUE files, real or generated
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(STUDY), encoding="utf-8")
    out = tmp_path / "out"
    args = [
        "compare",
        "-c",
        str(config),
        "--out",
        str(out),
        "--wandb_mode",
        "disabled",
        "--launcher",
        "inprocess",
    ]
    assert main(args) == 0
    for name in ("results.md", "results.csv", "val_loss_vs_tokens.png", "downstream.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = {r["objective"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["mlm", "clm", "electra"]
    # Same budget for every objective; MLM and the causal BERT share one architecture.
    assert {int(r["tokens_seen"]) for r in rows.values()} == {2048}
    assert rows["mlm"]["parameters"] == rows["clm"]["parameters"]
    for objective, row in rows.items():
        seeds = [float(s) for s in row["rte_seeds"].split()]
        assert len(seeds) == 2 and float(row["rte_mean"]) == pytest.approx(sum(seeds) / 2, abs=0.1)
        pretrain = json.loads((out / "pretrain" / objective / "results.json").read_text())
        assert pretrain["objective"] == objective and (Path(pretrain["hf_export"]) / "config.json").is_file()
    # The fine-tuned models are the exported ones, with the study's tokenizer.
    finetune = json.loads((out / "finetune" / "clm" / "runs" / "rte" / "seed0" / "results.json").read_text())
    assert finetune["config"]["model"]["init_args"]["backbone"] == str(out / "pretrain" / "clm" / "hf")
    assert json.loads((out / "tokenizer" / "apm_tokenizer.json").read_text())["kind"] == "wordpiece"
    # Running the study again finds every step done and only rewrites the tables; with W&B on
    # (offline here) they also go to a W&B run as a table.
    stamp = (out / "pretrain" / "mlm" / "results.json").stat().st_mtime_ns
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    again = [*args[:-3], "offline", *args[-2:]]
    assert main(again) == 0
    assert (out / "pretrain" / "mlm" / "results.json").stat().st_mtime_ns == stamp
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_compare_rejects_a_bad_study(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**STUDY, "objectives": {"bert": {}}}), encoding="utf-8")
    assert main(["compare", "-c", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown objective(s) bert" in err[0]


STUDIES = sorted((REPO / "experiments" / "compare_objectives").glob("*.yaml"))


@pytest.mark.parametrize("study_file", STUDIES, ids=lambda p: p.stem)
def test_shipped_studies_compose_valid_pretraining_configs(study_file, capsys):
    """Each study's objectives, with the study's overrides, are configs `apm pretrain` accepts
    (the CPU study runs in full in the closing note; GPU ones need a GPU and the hub)."""
    from apm_lightning.runners.compare import CompareRunner, load_study

    study = load_study(study_file)
    runner = CompareRunner(study, Path("unused"), DATA, "disabled")
    assert runner.steps * runner.block_size * runner.batch_size <= study["budget_tokens"]
    for spec in study["objectives"].values():
        args = ["fit", *[a for c in spec["configs"] for a in ("-c", str(REPO / c))]]
        args += [*study["pretrain_overrides"], *spec.get("overrides", []), "--print_config"]
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"].endswith("PretrainingModule")
