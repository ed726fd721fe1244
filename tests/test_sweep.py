"""`apm sweep`: Optuna studies of tiny-model trials (a crashing trial, resuming, two workers on
one SQLite study, pruning), every sweep file for one trial, and the W&B sweep file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from conftest import GLUE

from apm_lightning.cli import main
from apm_lightning.core.redact import redact_text as redact_url
from apm_lightning.runners import sweep
from apm_lightning.runners.launch import describe_exit, exit_and_reason

REPO = Path(__file__).resolve().parents[1]
TINY_SWEEP = str(REPO / "experiments" / "sweeps" / "tiny_rte.yaml")
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))
QUIET = ["--wandb_mode", "disabled"]


# Tiny models run fastest on one thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def load(out: Path, name: str = "tiny_rte") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if not t.user_attrs.get("apm_skipped")]


def test_redaction_and_exit_descriptions():
    assert (
        redact_url("postgresql://user:s3cret@db.example:5432/optuna")
        == "postgresql://user:***@db.example:5432/optuna"
    )
    assert redact_url("mysql+pymysql://u:p@h/db?x=1") == "mysql+pymysql://u:***@h/db?x=1"
    assert redact_url("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"
    assert redact_url("postgresql://host:5432/db") == "postgresql://host:5432/db"
    assert describe_exit(-9) == "killed by SIGKILL (out of memory?)" and describe_exit(2) == "exit status 2"
    # A child killed during start-up wrote no line: nothing dangles after the exit.
    assert exit_and_reason(-15, "") == "killed by SIGTERM"
    assert exit_and_reason(2, "apm: error: x") == "exit status 2: apm: error: x"


def test_sweep_files_parse():
    for path in SWEEPS:
        spec = sweep.load_spec(path)
        assert spec.metric == "val/main" and spec.direction == "maximize"
        assert all(Path(c).is_file() for c in spec.base_configs)
        assert all(name.startswith(("model.", "data.", "trainer.")) for name in spec.space)
    spec = sweep.load_spec(REPO / "experiments/sweeps/sst2_minilm.yaml")
    assert spec.overrides[:2] == ["--data.max_train_samples", "2000"]
    assert sweep.param_args({"model.learning_rate": 3e-05, "data.batch_size": 16, "x.flag": True}) == [
        "--model.learning_rate",
        "3.0e-05",
        "--data.batch_size",
        "16",
        "--x.flag",
        "true",
    ]


def test_bad_sweep_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_configs: []\nspace: {model.learning_rate: {type: loguniform, low: 1, high: 2}}\n")
    assert main(["sweep", "-c", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "type must be one of float, int, categorical" in capsys.readouterr().err


def test_wandb_backend_writes_a_sweep_file(tmp_path):
    sst2 = str(REPO / "experiments/sweeps/sst2_minilm.yaml")
    assert (
        main(["sweep", "-c", sst2, "--backend", "wandb", "--out", str(tmp_path), "--data.data_dir", "D"]) == 0
    )
    config = yaml.safe_load((tmp_path / "wandb_sweep.yaml").read_text())
    assert config["method"] == "bayes" and config["metric"] == {"name": "val/main", "goal": "maximize"}
    assert config["parameters"]["model.learning_rate"] == {
        "distribution": "log_uniform_values",
        "min": 1e-05,
        "max": 1e-04,
    }
    assert config["parameters"]["data.batch_size"] == {"values": [16, 32]}
    command = config["command"]
    assert command[:3] == ["${env}", "sh", "-c"] and command[-1] == "${args}"
    script = command[3]
    assert "python -m apm_lightning fit -c " in script and "--data.max_train_samples 2000" in script
    assert (
        "--data.data_dir D" in script and f"{tmp_path.resolve()}/" in script and '"$WANDB_RUN_ID"' in script
    )


def test_pruning_callback_stops_a_weak_trial(tmp_path, monkeypatch):
    from apm_lightning.runners.pruning import OptunaPruning

    url = f"sqlite:///{tmp_path / 'study.db'}"
    pruner = {"type": "median", "n_startup_trials": 1}
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    good = study.ask()
    good.report(0.9, step=1)
    study.tell(good, 0.9)
    weak = study.ask()
    monkeypatch.setenv(sweep.STORAGE_ENV, url)
    callback = OptunaPruning("s", weak._trial_id, pruner=pruner)
    trainer = SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        callback_metrics={"val/main": 0.2},
        is_global_zero=True,
        world_size=1,
        default_root_dir=str(tmp_path / "run"),
    )
    with pytest.raises(optuna.TrialPruned):
        callback.on_validation_end(trainer, None)
    assert json.loads((tmp_path / "run" / sweep.PRUNED_FILE).read_text())["step"] == 1
    assert study.trials[1].intermediate_values == {1: 0.2}
    # A trial above the median goes on.
    better = study.ask()
    trainer.callback_metrics = {"val/main": 0.95}
    OptunaPruning("s", better._trial_id, pruner=pruner).on_validation_end(trainer, None)


def test_killed_trials_are_failed_and_the_study_goes_on(tmp_path, monkeypatch):
    """The default launcher runs each trial in a child; one killed by the OOM killer (SIGKILL)
    is a failed trial. The child here is a stand-in interpreter that kills itself."""
    from apm_lightning.runners import launch

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'loading ...'\nkill -9 $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(launch.sys, "executable", str(fake))
    out = tmp_path / "sweep"
    # No trial completed: exit 2 (issue 10), the study keeps both failures.
    assert main(["sweep", "-c", TINY_SWEEP, "--n-trials", "2", "--out", str(out), *QUIET]) == 2
    trials = counted(load(out))
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    error = trials[0].user_attrs["error"]
    assert (
        error.startswith("killed by SIGKILL (out of memory?): loading ...") and "trial-0000/apm.log" in error
    )
    assert (out / "trial-0001" / "apm.log").read_text().startswith("$ apm fit -c ")


def test_a_stopped_worker_queues_its_trial_again_and_the_retry_continues_it(tmp_path, monkeypatch, capsys):
    """SIGTERM to a sweep worker stops its trial's run (which saves last.ckpt) and the worker;
    the trial's parameters are queued again, so the study still owes that trial, and the retry
    continues the stopped run from its last.ckpt. The child is a stand-in interpreter: the first
    writes last.ckpt, signals its parent and ends as ``apm fit`` does; the second fails."""
    from apm_lightning.runners import launch

    stopping = tmp_path / "stopping"
    stopping.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do [ "$1" = "--trainer.default_root_dir" ] && dir=$2; shift; done\n'
        'mkdir -p "$dir/checkpoints" && : > "$dir/checkpoints/last.ckpt"\n'
        "trap 'echo \"apm: stopped by SIGTERM; last.ckpt was saved\"; exit 143' TERM\n"
        "kill -TERM $PPID\n"
        "i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n"
    )
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'apm: error: a stand-in'\nexit 2\n")
    for fake in (stopping, failing):
        fake.chmod(0o755)
    monkeypatch.setattr(launch.sys, "executable", str(stopping))
    out = tmp_path / "sweep"
    cmd = ["sweep", "-c", TINY_SWEEP, "--n-trials", "2", "--out", str(out), *QUIET]
    assert main(cmd) == 143
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith("apm: stopped by SIGTERM; the run in progress saved last.ckpt")
    )
    trials = load(out).get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].params == trials[0].params and "queued again" in trials[0].user_attrs["error"]
    assert "error" not in trials[1].user_attrs
    assert sweep._counted(load(out)) == []  # the stopped trial does not count; its queued copy will

    # The same command: the queued copy runs first, in the stopped trial's folder, from last.ckpt.
    monkeypatch.setattr(launch.sys, "executable", str(failing))
    assert main(cmd) == 2
    commands = [x for x in (out / "trial-0000" / "apm.log").read_text().splitlines() if x.startswith("$ apm")]
    assert len(commands) == 2 and " --ckpt_path last " in commands[1] and "--ckpt_path" not in commands[0]
    assert not (out / "trial-0001").exists()
    assert "continues trial 0000 from its last.ckpt" in capsys.readouterr().out


def test_sweep_survives_a_crashed_trial_and_resumes(tmp_path, monkeypatch):
    from apm_lightning.modules.classification import ClassifierModule

    real = sweep.run_apm

    def crash_trial_1(args, *rest):
        if args[args.index("--trainer.default_root_dir") + 1].endswith("trial-0001"):
            with monkeypatch.context() as patch:

                def out_of_memory(self, batch, batch_idx):
                    raise MemoryError("out of memory (simulated)")

                patch.setattr(ClassifierModule, "training_step", out_of_memory)
                return real(args, *rest)
        return real(args, *rest)

    monkeypatch.setattr(sweep, "run_apm", crash_trial_1)
    out = tmp_path / "sweep"
    cmd = [
        "sweep",
        "-c",
        TINY_SWEEP,
        "--out",
        str(out),
        "--launcher",
        "inprocess",
        "--data.data_dir",
        str(GLUE),
    ]
    assert main([*cmd, "--n-trials", "3", *QUIET]) == 0
    trials = counted(load(out))
    assert [t.state.name for t in trials][1] == "FAIL" and len(trials) == 3
    assert "out of memory" in trials[1].user_attrs["error"]
    for t in (trials[0], trials[2]):
        assert t.state.name in ("COMPLETE", "PRUNED")
        if t.state.name == "COMPLETE":
            results = json.loads((Path(t.user_attrs["run_dir"]) / "results.json").read_text())
            assert t.value == results["metrics"]["main"]
    summary = json.loads((out / "best.json").read_text())
    assert summary["trials"]["FAIL"] == 1 and summary["storage"].startswith("sqlite:///")
    assert len((out / "trials.csv").read_text().splitlines()) == 4

    # The same command again: the study is complete, nothing runs. A larger total continues it.
    assert main([*cmd, "--n-trials", "3", *QUIET]) == 0
    assert len(counted(load(out))) == 3
    assert main([*cmd, "--n-trials", "4", *QUIET]) == 0
    trials = counted(load(out))
    assert len(trials) == 4 and trials[3].state.name in ("COMPLETE", "PRUNED")
    assert (out / "trial-0003" / "csv" / "metrics.csv").is_file()


def test_two_workers_share_one_sqlite_study(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "apm_lightning", "sweep", "-c", TINY_SWEEP, "--n-trials", "4"]
    cmd += ["--out", str(out), "--launcher", "inprocess", "--data.data_dir", str(GLUE), *QUIET]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}  # a core each
    workers = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for _ in range(2)
    ]
    logs = [w.communicate(timeout=300)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(logs)
    trials = counted(load(out))
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials), [t.state for t in trials]
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "one worker ran every trial"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_file_runs_one_tiny_trial(path, tmp_path):
    """Each sweep file runs a trial end to end, with the tiny model and a few rows."""
    out = tmp_path / "sweep"
    quick = ["--data.max_train_samples", "16", "--data.max_eval_samples", "16", "--data.max_seq_length", "32"]
    quick += ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    args = ["sweep", "-c", str(path), "--n-trials", "1", "--out", str(out), "--launcher", "inprocess"]
    args += ["--model", str(REPO / "experiments/models/tiny_bert.yaml"), "--data.data_dir", str(GLUE)]
    assert main([*args, *quick, *QUIET]) == 0
    (trial,) = counted(load(out, sweep.load_spec(path).name))
    assert trial.state.name == "COMPLETE"
    results = json.loads((out / "trial-0000" / "results.json").read_text())
    assert results["config"]["trainer"]["max_epochs"] == 1 and trial.value == results["metrics"]["main"]
    assert results["config"]["model"]["init_args"]["backbone"] is None  # the tiny model


def test_a_wandb_agent_run_logs_into_the_run_its_sweep_created(tmp_path, monkeypatch):
    from apm_lightning.training.loggers import wandb_run_id

    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun")
    assert wandb_run_id(tmp_path / "a", resume=False) == "agentrun"
    assert (tmp_path / "a" / "wandb_run_id").read_text().strip() == "agentrun"
    monkeypatch.delenv("WANDB_SWEEP_ID")  # outside a sweep, a stray WANDB_RUN_ID is not reused
    assert wandb_run_id(tmp_path / "b", resume=False) != "agentrun"
