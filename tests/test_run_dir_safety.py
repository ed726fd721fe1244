"""No run is lost or silently overwritten: a fresh fit into a used run dir is refused, a run dir
in use is locked, resumes append to the metrics and keep the config, evaluation and prediction
write only their own outputs, ``export --overwrite`` replaces only an earlier export, Ctrl-C
saves ``last.ckpt`` and a resumed W&B run continues its steps. On tiny_bert and a few rows of
RTE: real ``apm`` processes wherever a process dies, is signalled or holds the lock, and ``main``
in this process for the rest (the same code path, without 5-9 s of start-up per run).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_options import QUIET, one_line_error

from apm_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
RTE = str(REPO / "experiments" / "glue" / "rte.yaml")
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")

# 24 rows in batches of 8: 3 steps an epoch.
SMALL = ["--data.max_train_samples", "24", "--data.max_eval_samples", "8", "--data.batch_size", "8"]
SMALL += ["--data.max_seq_length", "32", "--data.max_predict_samples", "8"]
SMALL += ["--trainer.deterministic", "true", "--trainer.log_every_n_steps", "1"]


def base(glue: Path) -> list[str]:
    return ["-c", RTE, "-c", TINY, "--data.data_dir", str(glue), *SMALL, *QUIET]


def apm(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "apm_lightning", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=env, preexec_fn=sigint_default
    )


def sigint_default() -> None:
    """A shell's background job (``cmd &`` without job control) starts with SIGINT ignored, and
    Python then ignores Ctrl-C too: the Ctrl-C test's run would never stop (a CI launched that
    way failed so). Each apm run here gets the default, as a terminal's foreground job has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_at(batch: int, sig: str = "KILL") -> list[str]:
    spec = {"class_path": "apm_lightning.training.faults.KillAt", "init_args": {"batch": batch, "sig": sig}}
    return ["--trainer.callbacks+", json.dumps(spec)]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def last_error(p: subprocess.CompletedProcess) -> str:
    return p.stderr.strip().splitlines()[-1]


def metrics_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(glue_dir, tmp_path_factory) -> Path:
    """A finished two-epoch run (6 steps)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert (
        main(["fit", *base(glue_dir), "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run)])
        == 0
    )
    return run


def test_fresh_fit_into_a_used_run_dir_is_refused(trained, glue_dir, capsys):
    before = snapshot(trained)
    assert main(["fit", *base(glue_dir), "--trainer.default_root_dir", str(trained)]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"apm: error: run dir {trained} already holds a run (results.json, checkpoints/"), (
        err
    )
    assert "--ckpt_path last" in err and "--trainer.default_root_dir" in err
    assert snapshot(trained) == before


LOCKER = """
import sys, time
from apm_lightning.training.run_dir import RunDirGuard
RunDirGuard().start(sys.argv[1], "fit", "last")
print("locked", flush=True)
time.sleep(300)
"""


def test_a_live_lock_refuses_a_second_process_and_a_stale_one_does_not(trained, glue_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    resume = ["fit", *base(glue_dir), "--trainer.max_epochs", "2", "--ckpt_path", "last"]
    resume += ["--trainer.default_root_dir", str(run)]
    # Another live process holds the run dir (as a running `apm fit` does).
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        assert (run / ".lock").read_text().strip() == str(locker.pid)
        before = snapshot(run)
        assert main(resume) == 2
        assert one_line_error(capsys) == (
            f"apm: error: {run} is in use by another apm process (pid {locker.pid}); wait for it to "
            "end or choose another --trainer.default_root_dir"
        )
        assert snapshot(run) == before
    finally:
        locker.kill()  # SIGKILL: its lock file stays behind, naming a dead process
        locker.wait()
    assert (run / ".lock").read_text().strip() == str(locker.pid)
    assert main(resume) == 0  # nothing left to train: scores the best checkpoint again
    assert not (run / ".lock").exists()


def test_resumes_append_to_the_metrics_and_keep_the_config(trained, glue_dir, tmp_path):
    run = tmp_path / "run"
    fit = ["fit", *base(glue_dir), "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run)]
    # SIGKILL before batch 6: last.ckpt is from the end of epoch 0 (step 3), the rows of
    # batches 4 and 5 (logged under steps 3 and 4) are already in metrics.csv.
    p = apm(*fit, *kill_at(6))
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 3
    assert {r["step"] for r in metrics_rows(run) if r["train/loss"]} >= {"3", "4"}
    config = (run / "csv" / "config.yaml").read_bytes()

    # A resume refused by its data check changes nothing.
    before = snapshot(run)
    empty = tmp_path / "no-data"
    empty.mkdir()
    p = apm(*fit, "--ckpt_path", "last", "--data.data_dir", str(empty))
    assert p.returncode == 2 and last_error(p).startswith("apm: error:"), p.stderr[-3000:]
    assert snapshot(run) == before

    p = apm(*fit, "--ckpt_path", "last")
    assert p.returncode == 0, p.stderr[-3000:]
    # The redone steps' rows were dropped before appending: the history is that of the run
    # that never stopped, row for row (the resume is bitwise exact).
    assert metrics_rows(run) == metrics_rows(trained)
    # config.yaml is the original; the resume's other settings (no KillAt) are kept beside it.
    assert (run / "csv" / "config.yaml").read_bytes() == config
    resumed = (run / "csv" / "config-resume-1.yaml").read_text()
    assert "KillAt" in config.decode() and "KillAt" not in resumed


# SIGINT (what Ctrl-C sends) comes from KillAt at a chosen batch, so the stop always lands at the
# same place: a real signal, at a known point. An epoch has 3 batches: a stop after 2 steps is
# mid-epoch; after 3 it is at the epoch's end (after its validation), where the resumed run once
# logged its steps one late (rows 0, 1, 2, 4, 5; found when the timing-based version of this test
# sent its Ctrl-C there).
@pytest.mark.parametrize("batch", [2, 3])
def test_ctrl_c_saves_last_checkpoint_and_the_run_resumes(batch, glue_dir, tmp_path):
    run = tmp_path / "run"
    fit = ["fit", *base(glue_dir), "--trainer.max_epochs", "-1", "--checkpoint_every_n_steps", "1"]
    fit += ["--trainer.default_root_dir", str(run)]
    stopped = apm(*fit, "--trainer.max_steps", "500", *kill_at(batch, "INT"))
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        "apm: stopped by Ctrl-C; last.ckpt was saved: resume with --ckpt_path last"
    )
    last = run / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    assert step == batch
    p = apm(*fit, "--ckpt_path", "last", "--trainer.max_steps", str(step + 2))
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["global_step"] == step + 2
    rows = [(r["step"], r["train/loss"]) for r in metrics_rows(run) if r["train/loss"]]
    assert [int(s) for s, _ in rows] == list(range(step + 2))  # every step once, none lost


def test_evaluation_and_prediction_write_only_their_own_outputs(
    trained, glue_dir, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = snapshot(run)
    best = json.loads((run / "results.json").read_text())["best_checkpoint"]
    best = str(run / "checkpoints" / Path(best).name)
    for command in ("validate", "test", "predict"):
        assert (
            main([command, *base(glue_dir), "--ckpt_path", best, "--trainer.default_root_dir", str(run)]) == 0
        )
    after = snapshot(run)
    assert {k: after[k] for k in before} == before  # the training run's records, untouched
    new = sorted(set(after) - set(before))
    assert [n.split("-")[0] for n in new if not n.startswith("predictions/")] == ["test", "validate"]
    assert [n for n in new if n.startswith("predictions/")], new
    scores = json.loads((run / next(n for n in new if n.startswith("validate-"))).read_text())
    assert scores["command"] == "validate" and scores["ckpt_path"] == best and "val/main" in scores["metrics"]

    # A fit that fails its data check leaves no empty run folder behind.
    empty = tmp_path / "no-data"
    empty.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["fit", *base(glue_dir), "--data.data_dir", str(empty)]) == 2
    one_line_error(capsys)
    assert list(work.iterdir()) == []


def test_export_overwrite_replaces_only_an_earlier_export(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ckpt = run / "checkpoints" / "last.ckpt"
    before = snapshot(run)
    # The run dir holds the checkpoint being read (and more): never replaced.
    assert main(["export", str(ckpt), str(run), "--overwrite"]) == 2
    assert "holds the checkpoint being exported" in capsys.readouterr().err
    assert snapshot(run) == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine\n")
    assert main(["export", str(ckpt), str(other), "--overwrite"]) == 2
    assert "has no .apm-export marker" in capsys.readouterr().err
    assert (other / "todo.txt").read_text() == "mine\n"

    out = tmp_path / "hf"
    assert main(["export", str(ckpt), str(out)]) == 0
    assert (out / ".apm-export").is_file() and (out / "config.json").is_file()
    assert main(["export", str(ckpt), str(out)]) == 2  # not empty, no --overwrite
    assert main(["export", str(ckpt), str(out), "--overwrite"]) == 0  # an earlier export
    (out / "README.md").write_text("my notes\n")
    assert main(["export", str(ckpt), str(out), "--overwrite"]) == 2
    assert "also holds README.md" in capsys.readouterr().err
    assert (out / "README.md").read_text() == "my notes\n"


def wandb_records(path: Path):
    """The records of a W&B run file (LevelDB log blocks of ``wandb_internal_pb2.Record``)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, chunk = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little left in the block for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def test_a_resumed_wandb_run_continues_its_steps(glue_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    fit = ["fit", *base(glue_dir), "--wandb_mode", "offline", "--trainer.default_root_dir", str(run)]
    p = apm(*fit, "--trainer.max_epochs", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    p = apm(*fit, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert p.returncode == 0, p.stderr[-3000:]
    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2, files
    seen = []
    for path in files:
        runs = [r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run"]
        steps = [r.history.step.num for r in wandb_records(path) if r.WhichOneof("record_type") == "history"]
        seen.append((runs[0].run_id, runs[0].resumed, steps))
    (id1, resumed1, steps1), (id2, resumed2, steps2) = seen
    assert id1 == id2 == (run / "wandb_run_id").read_text().strip()
    assert (resumed1, resumed2) == (False, True)
    # The steps are the trainer's: the resume goes on after the first run's last row.
    assert steps1 and steps2 and max(steps1) == 3 and min(steps2) > 3 and max(steps2) == 6
