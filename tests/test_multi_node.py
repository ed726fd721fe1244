"""Multi-node training as clusters launch it, on one machine as two "nodes" (gloo, CPU):
``torchrun --nnodes 2`` and the environment ``srun`` gives two tasks. A 2-node run matches one
process with the same global batch, only global rank zero writes, a run whose processes were all
killed resumes exactly from its mid-run ``last.ckpt``, and SLURM's requeue signal (SIGUSR1) saves
an ``hpc_ckpt`` and calls ``scontrol requeue`` (a stand-in ``scontrol`` records its arguments:
there is no SLURM here)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from run_options import tiny_pretrain_args
from test_multi_device import fit_args, val_losses

from apm_lightning.cli import main
from apm_lightning.core.trust import verify_checkpoint

REPO = Path(__file__).resolve().parents[1]
TWO_NODES = [
    "--trainer.accelerator=cpu",
    "--trainer.strategy=ddp",
    "--trainer.num_nodes=2",
    "--trainer.devices=1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    """One thread per process (2 shared cores); no variables of an outer launcher."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        base.pop(k, None)
    return {**base, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}


def no_dropout_model(tmp_path: Path) -> Path:
    model = yaml.safe_load((REPO / "experiments/models/tiny_bert.yaml").read_text())
    model["model"]["init_args"]["backbone_config"].update(
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    path = tmp_path / "tiny_bert_no_dropout.yaml"
    path.write_text(yaml.safe_dump(model))
    return path


def torchrun_nodes(args: list[str], port: int, logs: Path) -> list[subprocess.Popen]:
    """The command every node runs under a cluster: one torchrun agent per node."""
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
        cmd += ["--node-rank", str(node), "--master-addr", "localhost", "--master-port", str(port)]
        cmd += ["-m", "apm_lightning", *args]
        out = open(logs / f"node{node}.log", "w")
        procs.append(
            subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env(), start_new_session=True)
        )
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 300) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:  # the whole group: what a killed rank started (W&B's service) too
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow  # three trainings, two of them 2-node ones (about 100 s on 2 busy cores)
def test_torchrun_two_nodes_killed_and_resumed_match_one_process(glue_dir, tmp_path):
    model = no_dropout_model(tmp_path)
    one = tmp_path / "one"
    assert main([*fit_args(one, model, 8), "--wandb_mode", "disabled"]) == 0

    # Two nodes x batch 4. Both ranks kill themselves (SIGKILL: no chance to save) at the start
    # of batch 8, after last.ckpt was written at step 6; torchrun on each node then gives up.
    run = tmp_path / "two_nodes"
    args = [
        *fit_args(run, model, 4),
        *TWO_NODES,
        "--wandb_mode",
        "offline",
        "--checkpoint_every_n_steps",
        "3",
    ]
    kill = {"class_path": "apm_lightning.training.faults.KillAt", "init_args": {"batch": 8, "sig": "KILL"}}
    first = torchrun_nodes([*args, f"--trainer.callbacks+={json.dumps(kill)}"], free_port(), tmp_path)
    assert all(rc != 0 for rc in wait_all(first))
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    assert not (run / "results.json").exists()

    resumed = torchrun_nodes([*args, "--ckpt_path", "last"], free_port(), tmp_path)
    logs = [(tmp_path / f"node{n}.log") for n in (0, 1)]
    assert wait_all(resumed) == [0, 0], "\n".join(p.read_text()[-3000:] for p in logs)

    a = json.loads((one / "results.json").read_text())
    b = json.loads((run / "results.json").read_text())
    assert a["metrics"].keys() == b["metrics"].keys()
    for key in a["metrics"]:
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=1e-5), key
    assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)
    # The validations after the resume (epoch 2, then the best checkpoint's scoring).
    assert val_losses(run)[-2:] == pytest.approx(val_losses(one)[-2:], abs=1e-5)
    assert a["global_step"] == b["global_step"] == 16
    weights_a, weights_b = weights(one / "checkpoints/last.ckpt"), weights(run / "checkpoints/last.ckpt")
    for key in weights_a:
        assert torch.allclose(weights_a[key], weights_b[key], atol=1e-5), key
    scores_a, scores_b = ({**r["metrics"], "val_loss": r["val_loss"]} for r in (a, b))
    report_differences("torchrun 2 nodes, killed and resumed", scores_a, scores_b, weights_a, weights_b)

    # Only global rank zero (node 0) printed the results and logged to W&B (one run, resumed).
    node0, node1 = (p.read_text() for p in logs)
    assert node0.count("results: rte") == 1 and "results: rte" not in node1
    run_id = (run / "wandb_run_id").read_text().strip()
    assert {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")} == {run_id}


def report_differences(name: str, one: dict, two: dict, weights_one: dict, weights_two: dict) -> None:
    """One line with the largest differences of the scores both runs checked above and of the
    weights, for the record (``pytest -s`` shows it)."""
    score = max(abs(two[k] - v) for k, v in one.items())
    weight = max((weights_one[k].float() - weights_two[k].float()).abs().max().item() for k in weights_one)
    print(f"\n{name} vs 1 process: max |metric diff| {score:.2e}, max |weight diff| {weight:.2e}")


def slurm_env(rank: int, ntasks: int, port: int, job_id: str = "4242", **extra: str) -> dict[str, str]:
    """What ``srun`` sets for task ``rank`` of a job with one task per node."""
    return env(
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NAME="apm-test",
        SLURM_NTASKS=str(ntasks),
        SLURM_NNODES=str(ntasks),
        SLURM_NTASKS_PER_NODE="1",
        SLURM_PROCID=str(rank),
        SLURM_LOCALID="0",
        SLURM_NODEID=str(rank),
        SLURM_NODELIST="localhost",
        MASTER_ADDR="localhost",
        MASTER_PORT=str(port),
        **extra,
    )


def pretrain_args(run_dir: Path, batch_size: int) -> list[str]:
    """experiments/pretrain/mlm_tiny.yaml, smaller still, dropout off."""
    return tiny_pretrain_args("mlm_tiny", run_dir, batch_size)


@pytest.mark.slow  # about 60 s on 2 busy cores
def test_srun_two_tasks_pretraining_matches_one_process(tmp_path):
    one = tmp_path / "one"
    assert main(pretrain_args(one, 8)) == 0
    run = tmp_path / "srun"
    port = free_port()
    cmd = [sys.executable, "-m", "apm_lightning", *pretrain_args(run, 4), *TWO_NODES]
    procs = [
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=slurm_env(r, 2, port),
            start_new_session=True,
        )
        for r in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    finally:
        wait_all(procs, timeout=1)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    a = json.loads((one / "results.json").read_text())
    b = json.loads((run / "results.json").read_text())
    scores_a = {**a["metrics"], "val_loss": a["val_loss"]}
    scores_b = {**b["metrics"], "val_loss": b["val_loss"]}
    for i, (loss_a, loss_b) in enumerate(zip(val_losses(one), val_losses(run), strict=True)):
        scores_a[f"val/loss #{i}"], scores_b[f"val/loss #{i}"] = loss_a, loss_b
    assert scores_a.keys() == scores_b.keys()
    for key in scores_a:
        assert scores_b[key] == pytest.approx(scores_a[key], rel=1e-5, abs=1e-5), key
    assert a["tokens_seen"] == b["tokens_seen"] == 6 * 8 * 32
    weights_a, weights_b = weights(one / "checkpoints/last.ckpt"), weights(run / "checkpoints/last.ckpt")
    for key in weights_a:
        assert torch.allclose(weights_a[key], weights_b[key], atol=1e-5), key
    report_differences("srun 2 tasks, MLM pretraining", scores_a, scores_b, weights_a, weights_b)
    # Global rank zero alone wrote the results and printed them.
    assert outputs[0].count(str((run / "results.json").resolve())) == 1
    assert str(run / "results.json") not in outputs[1] and "results:" not in outputs[1]


def test_slurm_requeue_signal_saves_and_requeues(glue_dir, tmp_path):
    """SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``) to a running single-task job: Lightning's
    auto-requeue writes hpc_ckpt_1.ckpt and runs ``scontrol requeue 4242``; the job is then
    killed (the time limit), and the requeued command (--ckpt_path last) resumes from that save."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    scontrol = bin_dir / "scontrol"
    # Records its arguments, then blocks as a real requeue would until SLURM kills the job.
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nsleep 60\n')
    scontrol.chmod(0o755)
    run = tmp_path / "run"
    args = [*fit_args(run, REPO / "experiments/models/tiny_bert.yaml", 8), "--wandb_mode", "disabled"]
    args += ["--trainer.max_epochs", "12", "--data.max_train_samples", "16", "--data.max_eval_samples", "8"]
    args += ["--ckpt_path", "last"]
    job_env = slurm_env(0, 1, free_port(), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "apm_lightning", *args]
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        job = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=job_env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "last.ckpt").is_file():  # training is under way
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)
        while not calls.is_file():
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the time limit: no more saves
        job.wait()
    assert calls.read_text().split("\n")[0] == "requeue 4242"
    hpc = run / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and not list(run.glob(".*.tmp"))
    saved = verify_checkpoint(str(hpc))  # a safe load (weights only), like every checkpoint we write
    assert saved["global_step"] > 0 and hpc.stat().st_mtime > (run / "checkpoints/last.ckpt").stat().st_mtime

    # The requeued job: the same command and job id; --ckpt_path last takes the newer hpc save.
    with open(log, "w") as out:
        again = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=job_env, timeout=300)
    text = log.read_text()
    assert again.returncode == 0, text[-3000:]
    assert f"Restoring states from the checkpoint path at {hpc}" in text
    results = json.loads((run / "results.json").read_text())
    # Lightning saves hpc_ckpt from inside the signal handler, part-way through a step: the
    # batch being trained when SIGUSR1 landed may be counted as seen but not as a step.
    assert results["epochs"] == 12 and results["global_step"] in (12 * 2 - 1, 12 * 2)
