"""`apm sweep` on a real PostgreSQL server (pgserver's binaries, over TCP with a password), as
workers on several machines share a study: three workers at once, one killed in the middle of
a trial (Optuna's heartbeats fail it and the trial runs again), the best trial, the `optuna`
command line on the same study, and the password never printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from apm_lightning.cli import main
from apm_lightning.runners import sweep

REPO = Path(__file__).resolve().parents[1]
TINY_SWEEP = str(REPO / "experiments" / "sweeps" / "tiny_rte.yaml")
QUIET = ["--wandb_mode", "disabled"]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A PostgreSQL server for the module's tests; they skip (one line) where it cannot start."""
    try:
        import psycopg2  # noqa: F401

        from apm_lightning.runners.local_postgres import LocalPostgres

        server = LocalPostgres(tmp_path_factory.mktemp("pg")).start()
    except Exception as err:  # no pgserver/driver, or the server did not start
        pytest.skip(f"no local PostgreSQL server: {str(err).splitlines()[0] if str(err) else err!r}")
    yield server
    server.stop()


def study_states(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=url)
    return [t for t in study.get_trials() if not t.user_attrs.get("apm_skipped")]


def test_three_workers_one_killed_mid_trial(postgres, glue_dir, tmp_path):
    url, name, out = postgres.url, "pg3", tmp_path / "sweep"
    cmd = [sys.executable, "-m", "apm_lightning", "sweep", "-c", TINY_SWEEP, "--n-trials", "4"]
    cmd += ["--storage", url, "--study-name", name, "--out", str(out), "--launcher", "inprocess"]
    cmd += ["--heartbeat", "1", "--data.data_dir", str(glue_dir), *QUIET]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    # Each worker leads its own process group: killing it takes whatever it started along.
    workers = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        for _ in range(3)
    ]
    victim = workers[0]
    killed = None
    seen: dict[int, float] = {}  # trial number -> when first seen running on the victim
    try:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                trials = study_states(url, name)
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):
                # The study is not created yet, or this poll raced the workers creating the
                # tables (every RDBStorage creates them when missing): try again.
                continue
            for t in trials:
                if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{victim.pid}"):
                    # Optuna never fails a trial that has no heartbeat yet, and the worker's
                    # heartbeat thread may not have written its first one when the trial is
                    # first seen: kill once the trial has run for more than one interval (1 s).
                    if time.monotonic() - seen.setdefault(t.number, time.monotonic()) >= 1.5:
                        os.killpg(victim.pid, signal.SIGKILL)
                        killed = t
        assert killed is not None, "the first worker never ran a trial"
        logs = [w.communicate(timeout=240)[0].decode() for w in workers[1:]]
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
    victim.wait()
    # A failing worker's own last lines first: the whole of both logs gets cut in a CI report.
    failed = [
        f"worker {w.pid} exit {w.returncode}:\n{log[-3000:]}"
        for w, log in zip(workers[1:], logs, strict=True)
        if w.returncode
    ]
    assert not failed, "\n".join(failed)

    trials = study_states(url, name)
    by_number = {t.number: t for t in trials}
    dead = by_number[killed.number]
    assert dead.state.name == "FAIL"  # failed by the survivors, from its stale heartbeat
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.params == dead.params and retry.state.name in ("COMPLETE", "PRUNED")
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and len(sweep._counted(optuna.load_study(study_name=name, storage=url))) == 4
    assert len({t.user_attrs["worker"] for t in finished}) >= 2

    # The best trial: best.json (the last worker to finish), Optuna, and the optuna command line.
    study = optuna.load_study(study_name=name, storage=url)
    summary = json.loads((out / "best.json").read_text())
    assert summary["trials"] == {
        "COMPLETE": summary["trials"]["COMPLETE"],
        "PRUNED": 4 - summary["trials"]["COMPLETE"],
        "FAIL": 1,
        "RUNNING": 0,
    }
    assert (
        summary["best"]["trial"] == study.best_trial.number and summary["best"]["value"] == study.best_value
    )
    results = json.loads((Path(summary["best"]["run_dir"]) / "results.json").read_text())
    assert results["metrics"]["main"] == study.best_value
    cli = [str(Path(sys.executable).with_name("optuna")), "--storage", url, "--study-name", name]
    listed = subprocess.run(
        [*cli[:1], "trials", *cli[1:], "-f", "json"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    states = [t["state"] for t in json.loads(listed.stdout)]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4
    best = subprocess.run(
        [*cli[:1], "best-trial", *cli[1:], "-f", "json"], capture_output=True, text=True, timeout=60
    )
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout)["number"] == study.best_trial.number

    # The password is in the URL every worker was given, and in none of their output.
    assert postgres.password not in "".join(logs) + json.dumps(summary)
    assert f"{postgres.user}:***@127.0.0.1" in summary["storage"]


def test_a_wrong_password_is_one_line_without_it(postgres, tmp_path, capsys):
    wrong = postgres.url.replace(postgres.password, "not-the-password")
    args = ["sweep", "-c", TINY_SWEEP, "--n-trials", "1", "--storage", wrong, "--out", str(tmp_path / "o")]
    assert main([*args, *QUIET]) == 2
    err = capsys.readouterr().err
    assert "could not open study tiny_rte at postgresql+psycopg2://apm:***@127.0.0.1" in err
    assert "password authentication failed" in err and "not-the-password" not in err
    assert not (tmp_path / "o" / "trial-0000").exists()


def test_workers_starting_together_take_turns_creating_the_tables(postgres, monkeypatch):
    """Optuna creates its tables unguarded: four workers released at once on a new database
    collided in PostgreSQL's catalog (3 of 4 retried, and 3 rounds in 25 refused a worker with
    "relation already exists"). With the advisory lock none collides, so none retries."""
    import psycopg2

    from apm_lightning.runners import sweep_study

    schema = "fresh_tables"  # empty, so every worker finds the tables missing
    with psycopg2.connect(postgres.url.replace("postgresql+psycopg2", "postgresql")) as conn:
        conn.cursor().execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
    url = f"{postgres.url}?options=-csearch_path%3D{schema}"
    attempts = []  # one storage opened per attempt: a retry shows as a fifth
    open_storage = sweep_study.open_storage

    def counted_storage(*args, **kwargs):
        attempts.append(1)
        return open_storage(*args, **kwargs)

    monkeypatch.setattr(sweep_study, "open_storage", counted_storage)
    spec, workers = sweep.load_spec(TINY_SWEEP), 4
    barrier, errors = threading.Barrier(workers), []

    def worker() -> None:
        barrier.wait()
        try:
            sweep_study.open_study(spec, url, "together", None, 1)
        except Exception as err:  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and len(attempts) == workers
    study = optuna.load_study(study_name="together", storage=url)
    assert study.direction.name == "MAXIMIZE"
