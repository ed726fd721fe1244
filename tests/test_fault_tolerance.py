"""Fault tolerance: SIGKILL anywhere (mid-epoch, in validation, while a checkpoint is written),
SIGTERM and a NaN loss; every resume with ``--ckpt_path last`` ends bitwise equal to a run that
never stopped. The kills are real: ``apm fit`` runs as a subprocess with a ``KillAt`` callback.

The kill points are drawn from ``APM_FAULT_SEED`` (default 0); set it to explore others.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import GLUE

from apm_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "models" / "tiny_bert.yaml"


# RTE, 48 rows in batches of 8: 6 steps an epoch, 12 in all; last.ckpt every 2 steps.
ARGS = [
    "fit",
    "-c",
    str(REPO / "experiments" / "glue" / "rte.yaml"),
    "-c",
    str(TINY),
    "--data.data_dir",
    str(GLUE),
    "--data.max_train_samples",
    "48",
    "--data.max_eval_samples",
    "16",
    "--data.batch_size",
    "8",
    "--data.max_seq_length",
    "32",
    "--trainer.max_epochs",
    "2",
    "--trainer.deterministic",
    "true",
    "--checkpoint_every_n_steps",
    "2",
    "--wandb_mode",
    "disabled",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def kill_at(batch: int, where: str = "batch_start", sig: str = "KILL") -> list[str]:
    args = {"batch": batch, "where": where, "sig": sig}
    return [
        "--trainer.callbacks+",
        json.dumps({"class_path": "apm_lightning.training.faults.KillAt", "init_args": args}),
    ]


def fit_process(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "apm_lightning", *ARGS, "--trainer.default_root_dir", str(run_dir), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for state_a, state_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for index, values in state_a["state"].items():
            for name, tensor in values.items():
                assert torch.equal(tensor, state_b["state"][index][name]), (index, name)
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_kills_anywhere_then_resume_is_bitwise_exact(tmp_path):
    rng = random.Random(int(os.environ.get("APM_FAULT_SEED", "0")))
    points = {
        "mid_epoch": rng.randint(2, 5),  # a SIGKILL before batch k of epoch 0
        "save": rng.randint(7, 9),  # in the middle of writing the next last.ckpt of epoch 1
        "sigterm": rng.randint(10, 12),  # preemption
    }
    assert main([*ARGS, "--trainer.default_root_dir", str(tmp_path / "straight")]) == 0
    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    resume = ["--ckpt_path", "last"]

    # 1. SIGKILL before batch k: last.ckpt is the newest even step before it (or none yet).
    p = fit_process(run, *kill_at(points["mid_epoch"]))
    assert p.returncode == -signal.SIGKILL, (points, p.stderr[-3000:])
    saved = (points["mid_epoch"] - 1) // 2 * 2
    assert (checkpoint(last)["global_step"] if last.exists() else 0) == saved, points

    # 2. SIGKILL during the validation at the end of epoch 0: no step save right before a
    #    validation (Lightning would resume past it), so last.ckpt is from step 4.
    p = fit_process(run, *resume, *kill_at(6, "validation"))
    assert p.returncode == -signal.SIGKILL, (points, p.stderr[-3000:])
    assert checkpoint(last)["global_step"] == 4

    # 3. SIGKILL while a checkpoint is being written: the half-written temporary file is left,
    #    last.ckpt is the previous, whole one (the end of epoch 0).
    p = fit_process(run, *resume, *kill_at(points["save"], "save"))
    assert p.returncode == -signal.SIGKILL, (points, p.stderr[-3000:])
    leftovers = list(last.parent.glob(".*.tmp"))
    assert leftovers and leftovers[0].stat().st_size > 0, points
    assert checkpoint(last)["global_step"] == 6

    # 4. SIGTERM: the batch in progress ends, last.ckpt is written, the exit says so.
    p = fit_process(run, *resume, *kill_at(points["sigterm"], sig="TERM"))
    assert p.returncode == 143, (points, p.stderr[-3000:])
    assert "stopped by SIGTERM" in p.stderr and "--ckpt_path last" in p.stderr
    assert checkpoint(last)["global_step"] == points["sigterm"]
    assert not list(last.parent.glob(".*.tmp"))  # the interrupted save's leftover was removed

    # 5. The last resume runs to the end: the same weights, optimizer and scores, bit for bit.
    p = fit_process(run, *resume)
    assert p.returncode == 0, (points, p.stderr[-3000:])
    straight = tmp_path / "straight"
    assert_same_training_state(checkpoint(straight / "checkpoints/last.ckpt"), checkpoint(last))
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((run / "results.json").read_text())
    assert a["metrics"] == b["metrics"] and a["global_step"] == b["global_step"] == 12
    assert Path(a["best_checkpoint"]).name == Path(b["best_checkpoint"]).name
    assert not list(last.parent.glob("*-v*.ckpt"))  # redone epochs rewrote, never duplicated


def test_resumable_loader_skips_what_was_trained_on():
    from apm_lightning.data.collate import EpochBatchSampler, ResumableLoader

    def loader() -> ResumableLoader:
        sampler = EpochBatchSampler(list(range(1, 31)), 4, shuffle=True, seed=3)
        return ResumableLoader(list(range(30)), batch_sampler=sampler, collate_fn=lambda rows: rows)

    straight = loader()
    straight.batch_sampler.set_epoch(1)
    epoch = list(straight)
    stopped = loader()
    stopped.batch_sampler.set_epoch(1)
    iterator = iter(stopped)
    seen = [next(iterator) for _ in range(3)]
    state = stopped.state_dict()
    assert state == {"epoch": 1, "batches": 3}
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.batch_sampler.set_epoch(1)
    rest = list(resumed)
    assert seen + rest == epoch  # nothing skipped, nothing twice
    assert resumed.state_dict() == {"epoch": 1, "batches": len(epoch)}
    # A checkpoint from the end of epoch 1 resumes at epoch 2 from its first batch.
    after = loader()
    after.load_state_dict(resumed.state_dict())
    after.batch_sampler.set_epoch(2)
    assert len(list(after)) == len(epoch)


def test_atomic_save_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    from apm_lightning.training.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path, capsys):
    nan_at = {"class_path": "apm_lightning.training.faults.NaNAt", "init_args": {"batch": 4}}
    rc = main(
        [
            *ARGS,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.callbacks+",
            json.dumps(nan_at),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert err.startswith("apm: error: the training loss became nan at step 3 (epoch 0)"), err
    assert f"The last good checkpoint is {last.resolve()}" in err
    state = checkpoint(last)
    assert state["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values())
    assert not (tmp_path / "results.json").exists()


def test_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = [*ARGS, "--wandb_mode", "offline", "--trainer.default_root_dir", str(tmp_path)]
    args += ["--trainer.max_epochs", "1"]
    assert main(args) == 0
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert main([*args, "--ckpt_path", "last"]) == 0  # (nothing left to train: scoring only)
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # W&B names an offline run folder offline-run-<time>-<id>, adding "-1" when two runs
    # of one id start within the same second.
    assert len(runs) == 2 and all(f"-{run_id}" in r.name for r in runs), runs
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    # A fresh fit (no --ckpt_path) into the same directory is refused: it would replace the run.
    assert main(args) == 2
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id


@pytest.mark.parametrize(
    ("sig", "heard", "code", "name"),
    [("TERM", "TERM", 143, "SIGTERM"), ("INT", "INT", 130, "Ctrl-C"), ("HUP", "TERM", 129, "SIGHUP")],
)
def test_a_runner_passes_its_signal_to_the_run_and_stops(
    tmp_path, monkeypatch, request, sig, heard, code, name
):
    """SIGTERM, SIGINT or a hang-up sent to a runner's process alone (a scheduler, ``kill``, a
    closed terminal) reaches the child it is waiting for, once (a hang-up as SIGTERM: save and
    stop); the runner then stops instead of starting the next run. The child is a stand-in
    interpreter that signals its parent and ends as ``apm fit`` does."""
    from apm_lightning.runners import launch

    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        "n=0\n"
        f'trap \'n=$((n+1)); echo "heard $n"; echo "apm: stopped; last.ckpt was saved"; exit 1\' {heard}\n'
        f"kill -{sig} $PPID\n"
        "i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n"  # 10 s unless it hears it
    )
    fake.chmod(0o755)
    monkeypatch.setattr(launch.sys, "executable", str(fake))
    log = tmp_path / "apm.log"
    signum = getattr(signal, f"SIG{sig}")
    # A runner started under nohup (SIGHUP) or in the background (SIGINT) keeps the signal ignored,
    # by design; this test is about one that hears it, whatever the suite was started under.
    if signal.getsignal(signum) is signal.SIG_IGN:
        default = signal.default_int_handler if sig == "INT" else signal.SIG_DFL
        signal.signal(signum, default)
        request.addfinalizer(lambda: signal.signal(signum, signal.SIG_IGN))
    before = signal.getsignal(signum)
    with pytest.raises(launch.RunStopped) as stop:
        launch.run_apm(["fit", "-c", "recipe.yaml"], log)
    assert stop.value.exit_code == code
    assert str(stop.value) == (
        f"stopped by {name}; the run in progress saved last.ckpt (log: {log}); "
        "the same command continues where it stopped"
    )
    assert log.read_text().splitlines()[1] == "heard 1"  # once: not also from the process group
    assert signal.getsignal(signum) is before  # the runner's own handling is back


def test_a_run_stopped_before_its_save_is_not_reported_as_saved(tmp_path, monkeypatch):
    """A second Ctrl-C stops ``apm fit`` at once; the runner's line must not claim a last.ckpt."""
    from apm_lightning.runners import launch

    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        "trap 'echo \"apm: stopped by Ctrl-C before last.ckpt was saved\"; exit 130' INT\n"
        "kill -INT $PPID\n"
        "i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(launch.sys, "executable", str(fake))
    log = tmp_path / "apm.log"
    with pytest.raises(launch.RunStopped) as stop:
        launch.run_apm(["fit"], log)
    assert str(stop.value) == (
        "stopped by Ctrl-C; the run in progress ended (killed by SIGINT: apm: stopped by Ctrl-C before "
        f"last.ckpt was saved) (log: {log}); the same command continues where it stopped"
    )


def _glue_killing_its_runner(out: Path, sig: str) -> list[str]:
    """A tiny ``apm glue`` (RTE, 64 rows, batch 8: 8 steps) whose child sends ``sig`` to the
    runner at batch 3, once."""
    killer = {"class_path": "apm_lightning.training.faults.KillAt"}
    killer["init_args"] = {"batch": 3, "sig": sig, "target": "parent"}
    args = ["glue", "--model", str(TINY), "--tasks", "rte", "--seeds", "1", "--data-dir", str(GLUE)]
    args += ["--out", str(out), "--max-train-samples", "64", "--max-eval-samples", "16", "--epochs", "1"]
    args += ["--no-submission", "--data.batch_size", "8", "--data.max_seq_length", "32"]
    args += ["--wandb_mode", "disabled", "--trainer.enable_progress_bar", "false"]
    return args + ["--trainer.enable_model_summary", "false", "--trainer.callbacks+", json.dumps(killer)]


def _processes_reading(path: Path) -> list[Path]:
    return [c for c in Path("/proc").glob("[0-9]*/cmdline") if str(path) in _reads(c)]


def test_sigterm_to_apm_glue_stops_its_training_child_and_the_same_command_resumes(tmp_path):
    """A real ``apm glue``: its child ``apm fit`` sends SIGTERM to the runner's pid only, at batch 3.
    The child ends its batch, saves last.ckpt and exits; the runner exits 143 with one line and
    leaves no process training. The same command resumes that run from last.ckpt and finishes."""
    out = tmp_path / "out"
    args = _glue_killing_its_runner(out, "TERM")
    p = subprocess.run(
        [sys.executable, "-m", "apm_lightning", *args], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 143, p.stderr[-3000:]
    run = out / "runs" / "rte" / "seed0"
    assert p.stderr.strip().splitlines()[-1] == (
        f"apm: stopped by SIGTERM; the run in progress saved last.ckpt (log: {run / 'apm.log'}); "
        "the same command continues where it stopped"
    )
    step = checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 3 <= step < 8 and not (run / "results.json").exists()  # 64 rows, batch 8: 8 steps
    assert _processes_reading(run) == []

    assert main(args) == 0  # the child resumes (KillAt signals its parent once per run)
    commands = [x for x in (run / "apm.log").read_text().splitlines() if x.startswith("$ apm fit")]
    assert len(commands) == 2 and commands[1].endswith("--ckpt_path last")
    assert json.loads((run / "results.json").read_text())["global_step"] == 8


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_run_whose_runner_is_killed_saves_and_stops_instead_of_training_on(tmp_path):
    """``kill -9`` to a real ``apm glue`` at batch 3 of its child: the runner cannot pass anything
    on, and the child (in a session of its own) used to train on as an orphan, holding the run
    directory's lock against the next ``apm glue``. The kernel now sends it SIGTERM: it saves
    last.ckpt and exits within seconds, and the same command resumes the run and finishes it."""
    out = tmp_path / "out"
    args = _glue_killing_its_runner(out, "KILL")
    p = subprocess.run(
        [sys.executable, "-m", "apm_lightning", *args], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    run = out / "runs" / "rte" / "seed0"
    deadline = time.monotonic() + 60
    while _processes_reading(run) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_reading(run) == []  # no orphan training on
    log = (run / "apm.log").read_text()
    assert "apm: stopped by SIGTERM" in log and "last.ckpt was saved" in log, log[-2000:]
    step = checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 3 <= step < 8 and not (run / "results.json").exists()

    assert main(args) == 0
    commands = [x for x in (run / "apm.log").read_text().splitlines() if x.startswith("$ apm fit")]
    assert len(commands) == 2 and commands[1].endswith("--ckpt_path last")
    assert json.loads((run / "results.json").read_text())["global_step"] == 8


def _reads(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # a process that ended while we looked
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_run_whose_runner_died_before_it_started_stops_at_once(tmp_path):
    """The kernel's SIGTERM cannot come for a runner that died before the child asked for it: the
    child then stops itself. A live runner that is not the parent (a wrapper between them) and
    no runner at all leave it running."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    code = "from apm_lightning.runners.launch import follow_runner; follow_runner(); print('ran on')"

    def child(runner: int | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "APM_RUNNER_PID"}
        if runner is not None:
            env["APM_RUNNER_PID"] = str(runner)
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)

    assert child(dead.pid).returncode == -signal.SIGTERM
    for runner in (os.getpid(), 1, None):  # its parent; alive but not its parent; none
        p = child(runner)
        assert (p.returncode, p.stdout) == (0, "ran on\n"), (runner, p.stderr)


def test_two_jobs_train_at_once_on_split_cores_and_stop_together(tmp_path):
    """``apm glue --jobs 2``, real processes: RTE and MRPC start together, each with half the
    cores (``cpu (N threads)`` in its results). SIGTERM to the runner (sent by RTE's run at batch
    3) reaches both runs; the runner exits 143 with one line naming both logs and leaves no
    process. The same command resumes RTE from its last.ckpt and finishes both."""
    out = tmp_path / "out"
    killer = {"class_path": "apm_lightning.training.faults.KillAt"}
    killer["init_args"] = {"batch": 3, "sig": "TERM", "target": "parent"}
    args = ["glue", "--model", str(TINY), "--tasks", "rte,mrpc", "--seeds", "1", "--jobs", "2"]
    args += ["--data-dir", str(GLUE), "--out", str(out), "--max-train-samples", "64"]
    args += ["--max-eval-samples", "16", "--epochs", "1", "--no-submission", "--data.batch_size", "8"]
    args += ["--data.max_seq_length", "32", "--wandb_mode", "disabled", "--trainer.enable_progress_bar"]
    args += ["false", "--trainer.enable_model_summary", "false"]
    args += ["--override", f"rte:--trainer.callbacks+ {shlex.quote(json.dumps(killer))}"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    command = [sys.executable, "-m", "apm_lightning", *args]
    p = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 143, p.stderr[-3000:]
    rte, mrpc = out / "runs" / "rte" / "seed0", out / "runs" / "mrpc" / "seed0"
    lines = p.stdout.splitlines()
    assert lines[0] == f"apm glue: rte-seed0: training ({rte})"
    assert lines[1] == f"apm glue: mrpc-seed0: training ({mrpc})"  # before RTE ended
    stop = p.stderr.strip().splitlines()[-1]
    assert stop.startswith("apm: stopped by SIGTERM; the ") and stop.endswith(
        "; the same command continues where it stopped"
    )
    assert str(rte / "apm.log") in stop and str(mrpc / "apm.log") in stop
    assert 3 <= checkpoint(rte / "checkpoints" / "last.ckpt")["global_step"] < 8
    assert not (rte / "results.json").exists() and _processes_reading(out) == []

    p = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [x for x in (rte / "apm.log").read_text().splitlines() if x.startswith("$ apm fit")][1].endswith(
        "--ckpt_path last"
    )
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for run in (rte, mrpc):
        results = json.loads((run / "results.json").read_text())
        assert results["global_step"] == 8 and results["device"] == f"cpu ({threads} threads)"


def test_a_signal_stops_parallel_runs_and_starts_no_more(tmp_path, monkeypatch):
    """Three jobs, two at a time: SIGTERM (sent by the first run) reaches both runs in progress,
    the third never starts, and the runner returns at once with one line for both (it used to
    spin forever on the jobs left in its queue). The children are stand-in interpreters that
    end as ``apm fit`` does after a save."""
    from apm_lightning.runners import launch

    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        "trap 'echo \"apm: stopped by SIGTERM; last.ckpt was saved: resume with --ckpt_path last\"; exit 143' TERM\n"
        'if [ "$3" = first ]; then sleep 0.5; kill -TERM $PPID; fi\n'
        "i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n"  # 10 s unless it hears it
    )
    fake.chmod(0o755)
    monkeypatch.setattr(launch.sys, "executable", str(fake))
    logs = [tmp_path / f"{name}.log" for name in ("first", "second", "third")]
    jobs = [launch.Job([log.stem], log) for log in logs]
    started: list[int] = []

    def too_long(signum: int, frame: object) -> None:
        raise TimeoutError("the runner did not return after the signal")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(30)
    try:
        with pytest.raises(launch.RunStopped) as stop:
            launch.run_jobs(jobs, 2, on_start=started.append)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert started == [0, 1] and not logs[2].exists()
    assert str(stop.value) in (
        f"stopped by SIGTERM; the 2 runs in progress saved last.ckpt (logs: {a}, {b}); "
        "the same command continues where it stopped"
        for a, b in (logs[:2], logs[1::-1])
    )
