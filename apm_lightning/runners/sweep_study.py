"""The study of ``apm sweep`` in its database: the storage (SQLite lock waits, heartbeats), the
study created or joined by racing workers, and the summary files (``trials.csv``,
``best.json``) written from it."""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apm_lightning.core.errors import APMError
from apm_lightning.core.files import write_json_atomic
from apm_lightning.core.redact import redact_text as redact_url
from apm_lightning.runners.sweep_samplers import build_pruner, build_sampler
from apm_lightning.runners.sweep_spec import SweepSpec

HEARTBEAT_SECONDS = 60  # a worker's running trial beats this often; 3 beats missed: its worker is dead
MAX_RETRY = 2  # a trial whose worker died is run again this many times at most


def open_storage(url: str, heartbeat: bool = True, heartbeat_interval: int = HEARTBEAT_SECONDS):
    """An RDB storage. SQLite waits for locks instead of failing (several local workers), and
    with heartbeats a trial whose worker died (killed, machine lost) is marked failed once its
    heartbeat is ``3 x heartbeat_interval`` old, and run again with the same parameters."""
    import optuna

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and stable enough
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        beat: dict[str, Any] = {}
        if heartbeat:
            beat = {"heartbeat_interval": heartbeat_interval, "grace_period": 3 * heartbeat_interval}
            # The retry is a new trial; the failed one then no longer counts (see _counted).
            # Optuna 4.9 renamed the callback and its argument.
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
                beat["heartbeat_stale_trial_callback"] = retry
            else:
                beat["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat)


RACES = (
    "OperationalError",
    "IntegrityError",
    "ProgrammingError",
    "DuplicatedStudyError",
    "StorageInternalError",
)
SCHEMA_LOCK_KEY = 0x61706D5F7377  # "apm_sw": the advisory lock apm sweep workers share


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, hold an advisory lock while the storage is opened. Optuna creates its
    tables when they are missing, unguarded; workers doing so at once collide in PostgreSQL's
    catalog (a duplicate key, or "relation already exists" when one commits between another's
    check and its CREATE), and 3 of 4 workers released together did. Taking turns, each finds
    the tables of the one before. SQLite serialises its writers itself."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY}
                )
    finally:
        engine.dispose()


def open_study(
    spec: SweepSpec,
    url: str,
    study_name: str,
    sampler_seed: int | None = None,
    heartbeat_interval: int = HEARTBEAT_SECONDS,
):
    """Create the study or join it. Workers starting together all find the tables missing and
    create them at once; on PostgreSQL they take turns (:func:`_schema_lock`), and an attempt
    that still collides (with another program creating the tables) is retried."""
    import optuna

    sampler, pruner = build_sampler(spec.sampler, sampler_seed), build_pruner(spec.pruner)
    for attempt in range(6):
        try:
            with _schema_lock(url):
                study = optuna.create_study(
                    storage=open_storage(url, heartbeat_interval=heartbeat_interval),
                    study_name=study_name,
                    direction=spec.direction,
                    load_if_exists=True,
                    sampler=sampler,
                    pruner=pruner,
                )
            break
        except Exception as err:
            # Only lock, uniqueness and "already exists" conflicts are races (Optuna wraps some
            # in StorageInternalError); a bad URL or driver fails at once.
            racing = type(err).__name__ in RACES
            if attempt == 5 or not racing:
                raise APMError(
                    f"could not open study {study_name} at {redact_url(url)}: {redact_url(str(err))}"
                ) from None
            time.sleep(0.3 + random.random())
    if study.direction.name.lower() != spec.direction:
        raise APMError(
            f"study {study_name} exists with direction {study.direction.name.lower()}, not {spec.direction}"
        )
    return study


def trial_rows(study, metric: str) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("apm_skipped"):
            continue
        row = {"trial": t.number, "state": t.state.name, metric: t.value}
        row.update(t.params)
        row["run_dir"] = t.user_attrs.get("run_dir")
        row["error"] = t.user_attrs.get("error")
        rows.append(row)
    return rows


def write_summary(study, spec: SweepSpec, out: Path, url: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    from apm_lightning.reports.tables import markdown_table, write_csv

    rows = trial_rows(study, spec.metric)
    columns = ["trial", "state", spec.metric, *spec.space, "run_dir", "error"]
    write_csv(out / "trials.csv", rows, columns)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = None
    if complete:
        pick = max if spec.direction == "maximize" else min
        trial = pick(complete, key=lambda t: t.value)
        best = {
            "trial": trial.number,
            "value": trial.value,
            "params": trial.params,
            "run_dir": trial.user_attrs.get("run_dir"),
        }
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    summary = {
        "study": study.study_name,
        "storage": redact_url(url),
        "metric": spec.metric,
        "direction": spec.direction,
        "trials": counts,
        "best": best,
    }
    write_json_atomic(out / "best.json", summary)
    print(markdown_table(rows, columns[:-1]), flush=True)
    print(f"apm sweep: {study.study_name}: {counts}; best: {best}", flush=True)
    return summary
