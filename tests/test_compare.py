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
    # The study file picks the launcher (the shipped CPU preset does): no --launcher here.
    config.write_text(yaml.safe_dump({**STUDY, "launcher": "inprocess"}), encoding="utf-8")
    out = tmp_path / "out"
    args = ["compare", "-c", str(config), "--out", str(out), "--wandb_mode", "disabled"]
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
    again = [*args[:-1], "offline"]
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
    config.write_text(yaml.safe_dump({**STUDY, "launcher": "slurm"}), encoding="utf-8")
    assert main(["compare", "-c", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "launcher must be one of subprocess, inprocess, not 'slurm'" in err[0]
    assert not (tmp_path / "o").exists()


STUDIES = sorted((REPO / "experiments" / "compare_objectives").glob("*.yaml"))


@pytest.mark.parametrize("study_file", STUDIES, ids=lambda p: p.stem)
def test_shipped_studies_compose_valid_pretraining_configs(study_file, capsys):
    """Each study's objectives, with the study's overrides, are configs `apm pretrain` accepts
    (the CPU study runs in full in the closing note; GPU ones need a GPU and the hub)."""
    from apm_lightning.runners.compare import CompareRunner, load_study

    study = load_study(study_file)
    runner = CompareRunner(study, Path("unused"), DATA, "disabled")
    # The study of issue 13: five objectives, three or more budgets, an interval per cell.
    assert runner.objectives == ["mlm", "clm", "electra", "prefix_lm", "span_corruption"]
    assert len(runner.budgets) >= 3 and all(b.label for b in runner.budgets)
    assert study["finetune"]["seeds"] >= 3
    for spec in study["objectives"].values():
        args = ["fit", *[a for c in spec["configs"] for a in ("-c", str(REPO / c))]]
        args += [*study["pretrain_overrides"], *spec.get("overrides", []), "--print_config"]
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"].endswith("PretrainingModule")


# ----------------------------------------------------------------------- issue 13: budgets, intervals
def test_flop_counter_counts_a_linear_layer_forward_and_backward():
    """The counter the budgets rest on: a Linear's m x k by k x n product costs 2mnk forward and
    twice that backward (the input's and the weight's gradients)."""
    import torch

    from apm_lightning.runners.compare_budget import count_training_flops

    m, k, n = 8, 16, 4
    layer = torch.nn.Linear(k, n)
    x = torch.randn(m, k, requires_grad=True)
    assert count_training_flops(lambda: layer(x).sum()) == 2 * m * n * k * 3


def test_budgets_and_their_steps():
    from apm_lightning.core.errors import APMError
    from apm_lightning.runners.compare_budget import Budget, budget_label, steps_for, study_budgets

    budgets = study_budgets({"budgets": ["1e14", 3e13, 3.0e14]})  # YAML 1.1 reads 3e13 as a string
    assert [(b.kind, b.value, b.label) for b in budgets] == [
        ("flops", 3e13, "flops-3e13"),
        ("flops", 1e14, "flops-1e14"),
        ("flops", 3e14, "flops-3e14"),
    ]
    assert [b.label for b in study_budgets({"budgets": [2048, 1.5e6], "budget_kind": "tokens"})] == [
        "tokens-2048",
        "tokens-1.5e6",
    ]
    assert study_budgets({"budget_tokens": 3000000}) == [Budget("tokens", 3e6, None)]
    assert budget_label("flops", 2.5e12) == "flops-2.5e12"
    # 1e12 FLOPs at 3e6 per token, 4096 tokens a step: 81 steps (81.4, rounded down).
    assert steps_for(Budget("flops", 1e12, "x"), 3e6, 4096) == 81
    assert steps_for(Budget("tokens", 1e6, "x"), 3e6, 4096) == 244  # the FLOPs play no part
    assert steps_for(Budget("flops", 1.0, "x"), 3e6, 4096) == 1  # at least one step
    for bad, message in [
        ({"budgets": [1e12], "budget_kind": "time"}, "budget_kind must be one of flops, tokens"),
        ({"budgets": ["lots"]}, "'lots' is not a number"),
        ({"budgets": [-1]}, "budgets must be positive"),
        ({"budgets": 1e12}, "budgets must be a list"),
        ({}, "needs 'budgets'"),
    ]:
        with pytest.raises(APMError, match=message):
            study_budgets(bad)


def test_intervals_and_separation_on_hand_numbers():
    from apm_lightning.reports.intervals import interval, separation_line, separation_lines, t_quantile

    # Student t 0.975 quantiles (any table): the interval's multiplier for n = df + 1 seeds.
    for df, value in [
        (1, 12.706205),
        (2, 4.302653),
        (3, 3.182446),
        (4, 2.776445),
        (9, 2.262157),
        (30, 2.042272),
    ]:
        assert t_quantile(0.975, df) == pytest.approx(value, abs=2e-6)
    a = interval([1.0, 2.0, 3.0])  # mean 2, sd 1, half width 4.302653 / sqrt(3) = 2.484138
    assert (a.n, a.mean, a.sd) == (3, 2.0, 1.0)
    assert a.low == pytest.approx(-0.484138, abs=1e-6) and a.high == pytest.approx(4.484138, abs=1e-6)
    b, c = interval([10.0, 11.0, 12.0]), interval([3.0, 4.0, 5.0])
    assert (
        separation_line("mlm", a, "clm", b)
        == "clm > mlm: separated (clm 11.00 [8.52, 13.48], mlm 2.00 [-0.48, 4.48])"
    )
    assert separation_line("mlm", a, "clm", c) == (
        "mlm vs clm: not separated (mlm 2.00 [-0.48, 4.48], clm 4.00 [1.52, 6.48])"
    )
    single = interval([5.0])
    assert (single.sd, single.low) == (None, None) and interval([]) is None
    assert separation_line("a", single, "b", b) == "a vs b: no comparison (an interval needs 2 or more seeds)"
    assert separation_line("a", None, "b", b) == "a vs b: no comparison (a has no scores)"
    assert len(separation_lines({"a": a, "b": b, "c": c, "d": None})) == 6


FIVE = {
    **STUDY,
    "name": "tiny-five",
    "budgets": [8e7, 1.6e8, 3.2e8],  # training FLOPs: a few hundred to a few thousand tokens each
    "budget_kind": "flops",
    "evaluations": 1,
    "objectives": {
        **STUDY["objectives"],
        "prefix_lm": {"configs": ["experiments/pretrain/prefix_lm_tiny.yaml"]},
        "span_corruption": {
            "configs": ["experiments/pretrain/span_corruption_tiny.yaml"],
            "overrides": ["--model.backbone_config.d_ff=64", "--model.backbone_config.d_kv=16"],
        },
    },
    "pretrain_overrides": [*STUDY["pretrain_overrides"][:2], "--data.max_validation_blocks=2", *QUIET],
    "finetune": {**STUDY["finetune"], "max_train_samples": 16},
}
FIVE.pop("budget_tokens")


@pytest.mark.slow  # 15 pretraining runs and 30 fine-tunes: about 160 s on 2 quiet cores
def test_compare_five_objectives_at_three_flops_budgets(tmp_path, monkeypatch, capsys):
    """MLM, CLM, ELECTRA, prefix LM and span corruption (a T5) at three equal-FLOPs budgets: the
    FLOPs per token measured on each model, each budget's steps from them, a run per (objective,
    budget), and the table, the curves and the separation lines at the largest budget."""
    monkeypatch.setenv("APM_DATA_DIR", str(DATA))
    config = tmp_path / "five.yaml"
    config.write_text(yaml.safe_dump(FIVE), encoding="utf-8")
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
    # --plan: the tokenizer and the measurement, then what each run will train; nothing trains.
    assert main([*args, "--plan"]) == 0
    planned = [line for line in capsys.readouterr().out.splitlines() if line.startswith("apm compare: plan:")]
    assert len(planned) == 15 and not (out / "pretrain").exists()
    assert main(args) == 0
    flops = json.loads((out / "flops.json").read_text())
    per_token = {o: flops[o]["train_flops_per_token"] for o in FIVE["objectives"]}
    # Measured, not assumed: ELECTRA adds a generator to MLM's network; CLM and prefix LM run the
    # output head at every position (MLM at the masked 15%), on the same BERT body.
    assert per_token["electra"] > per_token["mlm"] and per_token["clm"] > 1.5 * per_token["mlm"]
    assert per_token["prefix_lm"] == pytest.approx(per_token["clm"], rel=0.1)
    assert per_token["span_corruption"] > 0
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["objective"], r["budget"]) for r in rows] == [
        (o, b) for b in ("flops-8e7", "flops-1.6e8", "flops-3.2e8") for o in FIVE["objectives"]
    ]
    for row in rows:
        budget, tokens = float(row["budget"].split("-")[1]), int(row["tokens_seen"])
        steps = max(1, int(budget // (per_token[row["objective"]] * 8 * 32)))  # batches of 8 x 32
        assert int(row["steps"]) == steps and tokens == steps * 8 * 32
        assert float(row["train_flops"]) == pytest.approx(tokens * per_token[row["objective"]])
        assert int(row["rte_n"]) == 2 and row["rte_ci_low"] and row["rte_ci_high"]
        run = out / "pretrain" / row["objective"] / row["budget"]
        assert json.loads((run / "results.json").read_text())["tokens_seen"] == tokens
    for name in ("results.md", "score_vs_flops_rte.png", "val_loss_vs_tokens.png", "downstream.png"):
        assert (out / name).stat().st_size > 0, name
    text = (out / "results.md").read_text()
    lines = text.split("## Separation at the largest budget (flops-3.2e8)")[1].splitlines()
    pairs = [line for line in lines if "separated" in line or "no comparison" in line]
    assert len(pairs) == 10  # every pair of the five objectives
    assert "span corruption >= BERT-style MLM > prefix LM" in text and "ELECTRA-Small 79.9" in text
    # Running it again finds every run done.
    stamp = (out / "pretrain" / "span_corruption" / "flops-8e7" / "results.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "pretrain" / "span_corruption" / "flops-8e7" / "results.json").stat().st_mtime_ns == stamp
