"""Multi-device: DDP on CPU (2 processes, gloo) against one process with the same global batch;
rank-zero-only outputs; sharded evaluation; the GPU trainer configs and the CI workflow."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import GLUE
from run_options import tiny_pretrain_args

from apm_lightning.cli import main
from apm_lightning.data.collate import EpochBatchSampler

REPO = Path(__file__).resolve().parents[1]
TRAINER_CONFIGS = REPO / "experiments" / "trainer"


def fit_args(run_dir: Path, model: Path, batch_size: int) -> list[str]:
    return [
        "fit",
        "-c",
        str(REPO / "experiments" / "glue" / "rte.yaml"),
        "-c",
        str(model),
        "--data.data_dir",
        str(GLUE),
        "--data.max_train_samples",
        "64",
        "--data.max_eval_samples",
        "24",
        "--data.batch_size",
        str(batch_size),
        "--data.group_by_length",
        "false",  # mega-batches depend on the per-device batch size
        "--data.max_seq_length",
        "32",
        "--trainer.max_epochs",
        "2",
        "--trainer.deterministic",
        "true",
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]


def val_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [float(row["val/loss"]) for row in csv.DictReader(f) if row.get("val/loss")]


def test_ddp_two_processes_match_one_process(tmp_path, capsys):
    # Dropout off: each rank draws its own masks, so only the arithmetic is compared.
    model = yaml.safe_load((REPO / "experiments/models/tiny_bert.yaml").read_text())
    model["model"]["init_args"]["backbone_config"].update(
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model_file = tmp_path / "tiny_bert_no_dropout.yaml"
    model_file.write_text(yaml.safe_dump(model))

    one = tmp_path / "one"
    assert main([*fit_args(one, model_file, 8), "--wandb_mode", "disabled"]) == 0
    ddp = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "apm_lightning",
        *fit_args(ddp, model_file, 4),
        "-c",
        str(TRAINER_CONFIGS / "ddp_cpu.yaml"),
        "--wandb_mode",
        "offline",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env)
    assert done.returncode == 0, done.stderr[-4000:]

    a = json.loads((one / "results.json").read_text())
    b = json.loads((ddp / "results.json").read_text())
    # The final scores plus the dev loss of each validation (a continuous value, synced over
    # ranks): after epochs 1 and 2, then the final scoring of the best checkpoint.
    scores_a, scores_b = dict(a["metrics"]), dict(b["metrics"])
    for name, loss_a, loss_b in zip(
        ("epoch 1", "epoch 2", "best"), val_losses(one), val_losses(ddp), strict=True
    ):
        scores_a[f"val/loss {name}"], scores_b[f"val/loss {name}"] = loss_a, loss_b
    with capsys.disabled():
        print("\nDDP (2 CPU processes x batch 4) vs one process (batch 8), RTE, 64 rows, 2 epochs")
        print(f"{'metric':<22}{'1 process':>14}{'DDP x2':>14}{'|diff|':>12}")
        for key in scores_a:
            diff = abs(scores_a[key] - scores_b[key])
            print(f"{key:<22}{scores_a[key]:>14.8f}{scores_b[key]:>14.8f}{diff:>12.2e}")
    assert scores_a.keys() == scores_b.keys() and len(scores_a) == len(a["metrics"]) + 3
    for key in scores_a:
        assert scores_b[key] == pytest.approx(scores_a[key], abs=1e-5), key
    assert a["global_step"] == b["global_step"] == 16
    assert a["train_examples"] == b["train_examples"] == 128  # summed over both ranks
    weights_a = torch.load(one / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    weights_b = torch.load(ddp / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for key in weights_a:
        assert torch.allclose(weights_a[key], weights_b[key], atol=1e-5), key

    # One W&B run (rank zero's), whose id is kept in the run directory; one results table printed.
    runs = list((ddp / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    assert runs[0].name.endswith("-" + (ddp / "wandb_run_id").read_text().strip())
    assert done.stdout.count("results: rte") == 1
    assert done.stdout.strip().splitlines()[-1] == str((ddp / "results.json").resolve())


def test_evaluation_is_sharded_without_loss_or_repeats():
    lengths = [5, 9, 3, 7, 7, 2, 8, 1, 6, 4, 10]
    for world in (2, 3):
        ranks = [
            EpochBatchSampler(lengths, 4, shuffle=False, num_replicas=world, rank=r) for r in range(world)
        ]
        rows = sorted(i for sampler in ranks for batch in sampler for i in batch)
        assert rows == list(range(len(lengths)))
        assert all(len(list(s)) == len(s) >= 1 for s in ranks)
    # Fewer batches than ranks: batches shrink so every rank gets one (it must join the sync).
    ranks = [EpochBatchSampler([3, 2, 1], 8, shuffle=False, num_replicas=3, rank=r) for r in range(3)]
    assert [list(s) for s in ranks] == [[[0]], [[1]], [[2]]]


def test_gpu_trainer_configs_are_valid(capsys):
    """The GPU configs cannot run here; check they parse and name real strategy arguments."""
    import inspect

    from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry

    configs = sorted(TRAINER_CONFIGS.glob("*.yaml"))
    assert {c.stem for c in configs} == {"ddp", "ddp_cpu", "fsdp", "deepspeed"}
    for config in configs:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "-c", str(REPO / "experiments/glue/rte.yaml"), "-c", str(config), "--print_config"])
        assert exit_info.value.code == 0, config
        printed = yaml.safe_load(capsys.readouterr().out)["trainer"]["strategy"]
        strategy = yaml.safe_load(config.read_text())["trainer"]["strategy"]
        if isinstance(strategy, str):
            assert strategy == printed and strategy in StrategyRegistry, strategy
        else:
            assert (
                printed["class_path"] == strategy["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
            )
            assert set(strategy["init_args"]) <= set(inspect.signature(FSDPStrategy).parameters)
            # The wrap policies were resolved to classes (printed back as their import names).
            assert printed["init_args"]["auto_wrap_policy"] == ["transformers.BertLayer"]
            FSDPStrategy(**{k: v for k, v in strategy["init_args"].items() if "policy" not in k})


def test_ci_workflow_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    command = readme.strip().splitlines()[1]
    assert command.endswith("python -m pytest -q -n 2 --dist loadfile")
    workflow = yaml.safe_load((REPO / ".github/workflows/tests.yml").read_text())
    steps = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert command in steps
    assert command in (REPO / ".ci/run").read_text().splitlines()


# ELECTRA (masking, the generator's sampling, both losses) and span corruption (noise spans drawn
# per block, on a T5): tiny, dropout off.
DDP_PRETRAIN = {
    "electra_tiny": ["--model.backbone_config.embedding_size=32"],
    "span_corruption_tiny": [],
}


# The prefix LM's split points are the same keyed draws (modules/objectives/keyed_random.py) as
# span corruption's spans, so the two recipes here cover them on two ranks; its resume is
# test_pretraining.py's (this keeps 18 s of CI).
@pytest.mark.parametrize("recipe", ["electra_tiny", "span_corruption_tiny"])
def test_ddp_pretraining_matches_one_process(recipe, tmp_path, capsys):
    # Masks, spans and generator samples are keyed by block, and each loss is normalised by the
    # global count of predicted tokens: two ranks of 4 blocks train exactly as one process of 8.
    one = tmp_path / "one"
    assert main(tiny_pretrain_args(recipe, one, 8, *DDP_PRETRAIN[recipe])) == 0
    ddp = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "apm_lightning",
        *tiny_pretrain_args(recipe, ddp, 4, *DDP_PRETRAIN[recipe]),
        "-c",
        str(TRAINER_CONFIGS / "ddp_cpu.yaml"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-4000:]
    a = json.loads((one / "results.json").read_text())
    b = json.loads((ddp / "results.json").read_text())
    scores_a = {**a["metrics"], "val_loss": a["val_loss"]}
    scores_b = {**b["metrics"], "val_loss": b["val_loss"]}
    for i, (loss_a, loss_b) in enumerate(zip(val_losses(one), val_losses(ddp), strict=True)):
        scores_a[f"val/loss #{i}"], scores_b[f"val/loss #{i}"] = loss_a, loss_b
    with capsys.disabled():
        print(f"\nDDP pretraining ({recipe}, 2 CPU processes x 4 blocks) vs one process (8 blocks)")
        for key in scores_a:
            print(
                f"{key:<22}{scores_a[key]:>14.8f}{scores_b[key]:>14.8f}{abs(scores_a[key] - scores_b[key]):>12.2e}"
            )
    assert scores_a.keys() == scores_b.keys()
    for key in scores_a:
        # float32 sums in another order (per rank, then across ranks): ELECTRA's loss is ~44.
        assert scores_b[key] == pytest.approx(scores_a[key], rel=1e-5, abs=1e-5), key
    assert a["tokens_seen"] == b["tokens_seen"] == 6 * 8 * 32
    weights_a = torch.load(one / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    weights_b = torch.load(ddp / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for key in weights_a:
        assert torch.allclose(weights_a[key], weights_b[key], atol=1e-5), key
