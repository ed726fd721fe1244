"""``apm sweep``: hyper-parameter search with Optuna over ordinary ``apm fit`` runs.

    apm sweep -c experiments/sweeps/sst2_minilm.yaml --n-trials 20 [--storage URL]

The sweep file names the fit configs, fixed overrides, the metric and its direction, the search
space, the sampler (TPE) and the pruner (median). Each trial is an ``apm fit`` in OUT/trial-NNNN
with its own ``results.json``; its value is the metric of the best checkpoint on dev, and the
pruner stops a weak trial after a validation (:class:`~apm_lightning.runners.pruning.OptunaPruning`).

The study lives in a database: SQLite in OUT by default, or any SQLAlchemy URL (PostgreSQL,
MySQL) that workers on many machines share. ``--n-trials`` is the study's total, not each
worker's: running the command again continues the study, and workers started at once share the
count. A trial that crashes or runs out of memory is recorded as failed and the study goes on;
each failure is one line (``APM_DEBUG=1`` adds Optuna's traceback). When no trial completes, the
command exits 2 with the first trial's error; two trials in a row failing the same way before
any completed stop the worker (the fault is in the options or data, not in the sampled values).

Options ``apm sweep`` does not know go to every trial's ``apm fit`` (``--data.data_dir DIR``).

``--backend wandb`` writes a W&B sweep file instead, for ``wandb sweep`` and ``wandb agent``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shlex
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apm_lightning.core.checks import check_output_dir
from apm_lightning.core.config_files import read_config_file
from apm_lightning.core.errors import APMError
from apm_lightning.core.files import write_json_atomic
from apm_lightning.core.recipes import find_recipe, resolve_config
from apm_lightning.core.redact import redact_text as redact_url
from apm_lightning.runners.launch import LAUNCHERS, RunFailed, run_apm

STORAGE_ENV = "APM_OPTUNA_STORAGE"  # the child's way to the study, kept out of saved configs
PRUNED_FILE = "pruned.json"  # written by the pruning callback in the trial's run dir
SPACE_TYPES = ("float", "int", "categorical")
HEARTBEAT_SECONDS = 60  # a worker's running trial beats this often; 3 beats missed: its worker is dead
MAX_RETRY = 2  # a trial whose worker died is run again this many times at most
SPEC_KEYS = {"name", "base_configs", "overrides", "metric", "direction", "space", "sampler", "pruner"}


@dataclass
class SweepSpec:
    name: str
    base_configs: list[str]
    space: dict[str, dict[str, Any]]
    overrides: list[str] = field(default_factory=list)
    metric: str = "val/main"
    direction: str = "maximize"
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict[str, Any] | None = field(default_factory=lambda: {"type": "median"})


def _find(path: str, sweep_file: Path) -> str:
    """A config path as written in the sweep file: relative to the working directory, else to
    a folder above the sweep file (so ``experiments/glue/rte.yaml`` works from anywhere)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.is_file():
        return str(candidate.resolve())
    for parent in sweep_file.resolve().parents:
        if (parent / candidate).is_file():
            return str(parent / candidate)
    if find_recipe(path) is not None:  # a shipped recipe (the package installed, no checkout)
        return str(find_recipe(path))
    raise APMError(f"{sweep_file}: base config {path} not found")


def _checked(config: str, sweep_file: Path) -> str:
    """A base config that every trial would fail on fails the sweep now, in one line."""
    read_config_file(config, f"{sweep_file}: base config")
    return config


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.exists():
        raise APMError(f"sweep file not found: {path}")
    data = read_config_file(path, "sweep file")  # not text, not YAML, not a mapping: one line
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise APMError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(SPEC_KEYS))})"
        )
    if not data.get("space"):
        raise APMError(f"{path}: 'space' is empty: nothing to search")
    for name, dist in data["space"].items():
        kind = (dist or {}).get("type")
        if kind not in SPACE_TYPES:
            raise APMError(f"{path}: space.{name}: type must be one of {', '.join(SPACE_TYPES)}")
        needed = ("choices",) if kind == "categorical" else ("low", "high")
        if any(k not in dist for k in needed):
            raise APMError(f"{path}: space.{name} ({kind}) needs {' and '.join(needed)}")
    if data.get("direction", "maximize") not in ("maximize", "minimize"):
        raise APMError(f"{path}: direction must be maximize or minimize")
    return SweepSpec(
        name=str(data.get("name") or path.stem),
        base_configs=[_checked(_find(c, path), path) for c in data.get("base_configs") or []],
        space=dict(data["space"]),
        # Overrides may be written as tokens or as option strings ("--data.batch_size 16").
        overrides=[t for item in data.get("overrides") or [] for t in shlex.split(str(item))],
        metric=data.get("metric", "val/main"),
        direction=data.get("direction", "maximize"),
        sampler=data.get("sampler") or {"type": "tpe"},
        pruner=data.get("pruner", {"type": "median"}),
    )


# --------------------------------------------------------------------------- optuna objects
def build_sampler(settings: dict[str, Any], seed: int | None = None):
    import optuna

    settings = dict(settings)
    kind = settings.pop("type", "tpe")
    if seed is not None:
        settings["seed"] = seed
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    if kind not in samplers:
        raise APMError(f"unknown sampler {kind!r}: choose one of {', '.join(samplers)}")
    return samplers[kind](**settings)


def build_pruner(settings: dict[str, Any] | None):
    import optuna

    settings = dict(settings or {"type": "none"})
    kind = settings.pop("type", "median")
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind != "median":
        raise APMError(f"unknown pruner {kind!r}: choose median or none")
    return optuna.pruners.MedianPruner(**settings)


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


def open_study(
    spec: SweepSpec,
    url: str,
    study_name: str,
    sampler_seed: int | None = None,
    heartbeat_interval: int = HEARTBEAT_SECONDS,
):
    """Create the study or join it; workers starting together may race to create the tables
    and the study, so a failed attempt is retried."""
    import optuna

    sampler, pruner = build_sampler(spec.sampler, sampler_seed), build_pruner(spec.pruner)
    for attempt in range(6):
        try:
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
            # Only lock and uniqueness conflicts are races; a bad URL or driver fails at once.
            racing = type(err).__name__ in ("OperationalError", "IntegrityError", "DuplicatedStudyError")
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


def suggest(trial, name: str, dist: dict[str, Any]) -> Any:
    kind = dist["type"]
    if kind == "categorical":
        return trial.suggest_categorical(name, list(dist["choices"]))
    extra = {k: dist[k] for k in ("log", "step") if dist.get(k) is not None}
    if kind == "int":
        return trial.suggest_int(name, int(dist["low"]), int(dist["high"]), **extra)
    return trial.suggest_float(name, float(dist["low"]), float(dist["high"]), **extra)


def param_args(params: dict[str, Any]) -> list[str]:
    """{'model.learning_rate': 3e-05} -> ['--model.learning_rate', '3e-05'] (YAML spelling)."""
    out = []
    for name, value in params.items():
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
        out += [f"--{name}", text.removesuffix("\n...").strip()]
    return out


def metric_value(results: dict[str, Any], metric: str) -> float:
    key = metric.split("/", 1)[1] if metric.startswith("val/") else metric
    if key not in results["metrics"]:
        raise KeyError(f"results.json has no metric {key!r} (has {', '.join(results['metrics'])})")
    return float(results["metrics"][key])


# --------------------------------------------------------------------------- the worker
class StudyFull(Exception):
    """Another worker took the last trial between our count and our ask."""


def _counted(study) -> list:
    """Trials that count towards --n-trials: all but queued ones, our race markers, and failed
    trials of dead workers that were queued again (their retry counts instead)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history") or ()}
    return [
        t
        for t in trials
        if t.state != TrialState.WAITING
        and not t.user_attrs.get("apm_skipped")
        and not (t.state == TrialState.FAIL and t.number in retried)
    ]


class SweepWorker:
    def __init__(self, spec: SweepSpec, study, url: str, out: Path, launcher: str, extra: list[str]) -> None:
        self.spec, self.study, self.url, self.out = spec, study, url, out
        self.launcher, self.extra = launcher, extra
        self.n_trials = 0  # the study's total, set by run()
        self.full = False
        self.ran = 0
        self.failures: list[tuple[int, str]] = []  # (trial number, one-line reason) of this worker's
        self.stopped: str | None = None  # why this worker stopped before --n-trials

    def trial_args(self, trial, params: dict[str, Any], run_dir: Path) -> list[str]:
        args = [
            "fit",
            *[a for c in self.spec.base_configs for a in ("-c", c)],
            *self.spec.overrides,
            *self.extra,
        ]
        args += param_args(params)
        args += [
            "--trainer.default_root_dir",
            str(run_dir),
            "--run_name",
            f"{self.study.study_name}-{run_dir.name}",
        ]
        if self.spec.pruner and self.spec.pruner.get("type", "median") != "none":
            args += [
                "--trainer.callbacks+=apm_lightning.runners.pruning.OptunaPruning",
                f"--trainer.callbacks.study_name={self.study.study_name}",
                f"--trainer.callbacks.trial_id={trial._trial_id}",  # Optuna's storage key of the trial
                f"--trainer.callbacks.monitor={self.spec.metric}",
                f"--trainer.callbacks.pruner={json.dumps(self.spec.pruner)}",
            ]
        return args

    def objective(self, trial) -> float:
        import optuna

        if sum(1 for t in _counted(self.study) if t.number < trial.number) >= self.n_trials:
            trial.set_user_attr("apm_skipped", "the study already had its trials")
            self.full = True
            raise StudyFull()
        params = {name: suggest(trial, name, dist) for name, dist in self.spec.space.items()}
        run_dir = self.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        self.ran += 1
        print(f"apm sweep: trial {trial.number} {params} -> {run_dir}", flush=True)
        env = {STORAGE_ENV: self.url, "WANDB_RUN_GROUP": self.study.study_name}
        try:
            run_apm(self.trial_args(trial, params, run_dir), run_dir / "apm.log", self.launcher, env)
        except RunFailed as err:
            if (run_dir / PRUNED_FILE).is_file():
                raise optuna.TrialPruned(json.loads((run_dir / PRUNED_FILE).read_text())["reason"]) from None
            reason = redact_url(str(err))
            trial.set_user_attr("error", reason[:500])
            print(f"apm sweep: trial {trial.number} FAILED: {reason}", flush=True)
            self._failed(trial.number, reason, run_dir)
            raise
        self.failures.clear()  # only failures in a row, before any success, stop the worker
        results = json.loads((run_dir / "results.json").read_text())
        trial.set_user_attr("results", str((run_dir / "results.json").resolve()))
        return metric_value(results, self.spec.metric)

    def _failed(self, number: int, reason: str, run_dir: Path) -> None:
        """Stop after two failures in a row with the same reason while no trial of the study
        has completed: the next trials would fail the same way."""
        from optuna.trial import TrialState

        # The reasons name the trial's own folder and log; compare them without it.
        same = re.sub(r"trial-\d+", "trial-N", reason.replace(str(run_dir), "RUN_DIR"))
        self.failures.append((number, same))
        if len(self.failures) >= 2 and self.failures[-1][1] == self.failures[-2][1]:
            done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if not done:
                self.stopped = (
                    f"trials {self.failures[-2][0]} and {number} failed the same way and none has completed"
                )

    def run(self, n_trials: int) -> None:
        self.n_trials = n_trials
        while True:
            while not self.full and not self.stopped and len(_counted(self.study)) < n_trials:
                # One trial per call, so the count is read again before each: workers share it.
                self.study.optimize(self.objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            if self.stopped or not self._wait_for_running():
                return
            self.full = False

    def _wait_for_running(self) -> bool:
        """Wait while other workers' trials run: when one of those workers died, its trial is
        failed once its heartbeat is stale and queued again, and this worker runs it (True).
        False when no trial runs any more: the study has its trials."""
        import optuna
        from optuna.trial import TrialState

        storage = self.study._storage
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        if not interval:
            return False
        while any(t.state == TrialState.RUNNING for t in _counted(self.study)):
            time.sleep(min(interval, 2))
            optuna.storages.fail_stale_trials(self.study)
            if len(_counted(self.study)) < self.n_trials:
                return True
        return False


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


# --------------------------------------------------------------------------- W&B sweeps
def wandb_parameters(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Our search space in W&B's sweep vocabulary."""
    params: dict[str, Any] = {}
    for name, d in space.items():
        if d["type"] == "categorical":
            params[name] = {"values": list(d["choices"])}
        elif d["type"] == "float":
            kind = "log_uniform_values" if d.get("log") else "uniform"
            params[name] = {"distribution": kind, "min": float(d["low"]), "max": float(d["high"])}
        else:
            kind = "q_log_uniform_values" if d.get("log") else "int_uniform"
            params[name] = {"distribution": kind, "min": int(d["low"]), "max": int(d["high"])}
            if d.get("log"):
                params[name]["q"] = 1
    return params


def wandb_sweep_config(spec: SweepSpec, out: Path, extra: list[str], project: str) -> dict[str, Any]:
    """A sweep whose program is ``apm fit`` with the trial's overrides. The agent runs it
    through ``sh`` so each run gets its own run directory named by W&B's run id."""
    fixed = ["python", "-m", "apm_lightning", "fit"]
    fixed += [a for c in spec.base_configs for a in ("-c", c)] + spec.overrides + extra
    fixed += ["--wandb_mode", "online", "--wandb_project", project]
    run_dir = shlex.quote(str(out.resolve()) + "/")
    script = f'exec {shlex.join(fixed)} --trainer.default_root_dir {run_dir}"$WANDB_RUN_ID" "$@"'
    method = {"tpe": "bayes", "random": "random"}.get(spec.sampler.get("type", "tpe"), "bayes")
    config: dict[str, Any] = {
        "name": spec.name,
        "project": project,
        "program": "apm_lightning",
        "method": method,
        "metric": {"name": spec.metric, "goal": spec.direction},
        "parameters": wandb_parameters(spec.space),
        "command": ["${env}", "sh", "-c", script, "apm-sweep", "${args}"],
    }
    if spec.pruner and spec.pruner.get("type", "median") != "none":
        # W&B has no median rule; Hyperband is its early-termination rule.
        config["early_terminate"] = {
            "type": "hyperband",
            "min_iter": int(spec.pruner.get("n_warmup_steps", 0)) + 1,
        }
    return config


# --------------------------------------------------------------------------- command line
FIT_OPTIONS_HELP = """fit options:
  Any option apm sweep does not know is passed to every trial's apm fit (after the sweep
  file's overrides, before the sampled values), e.g. where the data is:
    apm sweep -c experiments/sweeps/tiny_rte.yaml --n-trials 4 --data.data_dir ../shared/data/glue
  (--model is the sweep's own: a model config YAML or a backbone, as in apm glue.)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="apm sweep",
        usage="apm sweep -c SWEEP.yaml [options] [fit options, e.g. --data.data_dir DIR]",
        description=__doc__,
        epilog=FIT_OPTIONS_HELP,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", required=True, help="sweep file (experiments/sweeps/*.yaml)")
    p.add_argument("--n-trials", type=int, default=20, help="the study's total number of trials")
    p.add_argument("--storage", default=None, help="database URL (default: sqlite:///OUT/study.db)")
    p.add_argument("--study-name", default=None, help="default: the sweep's name")
    p.add_argument("--out", default=None, help="trial run dirs (default: runs/sweeps/<name>)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="subprocess", help="where each run goes")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=HEARTBEAT_SECONDS,
        help="seconds between a running trial's heartbeats; a trial whose worker missed 3 is failed "
        f"and run again (at most {MAX_RETRY} times)",
    )
    p.add_argument("--sampler-seed", type=int, default=None, help="seed the sampler (one worker only)")
    p.add_argument("--model", default=None, help="a model config YAML to compose, or a backbone")
    p.add_argument("--backend", choices=("optuna", "wandb"), default="optuna")
    p.add_argument("--wandb-project", default="apm-lightning", help="project of a W&B sweep")
    return p


def sweep_main(argv: list[str]) -> dict[str, Any]:
    args, extra = build_parser().parse_known_args(argv)
    spec = load_spec(resolve_config(args.config))
    if args.model:
        from apm_lightning.runners.glue_args import model_args

        extra = [*model_args(args.model), *extra]
    out = Path(args.out or Path("runs") / "sweeps" / spec.name)
    check_output_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    if args.backend == "wandb":
        path = out / "wandb_sweep.yaml"
        config = wandb_sweep_config(spec, out, extra, args.wandb_project)
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        print(
            f"apm sweep: wrote {path}\n  wandb sweep {path}\n  wandb agent ENTITY/{args.wandb_project}/SWEEP_ID"
        )
        return {"wandb_sweep": str(path)}
    if args.n_trials < 1:
        raise APMError("--n-trials must be at least 1")
    url = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = args.study_name or spec.name
    with _quiet_optuna():
        if args.heartbeat < 1:
            raise APMError("--heartbeat must be at least 1 (seconds)")
        study = open_study(spec, url, name, args.sampler_seed, args.heartbeat)
        print(
            f"apm sweep: study {name} in {redact_url(url)}: {len(_counted(study))} of {args.n_trials} trials",
            flush=True,
        )
        worker = SweepWorker(spec, study, url, out, args.launcher, extra)
        worker.run(args.n_trials)
    print(f"apm sweep: this worker ran {worker.ran} trial(s)", flush=True)
    summary = write_summary(study, spec, out, url)
    check_outcome(study, worker)
    return summary


def check_outcome(study, worker: SweepWorker) -> None:
    """Refuse (exit 2) a sweep in which no trial completed, naming the first trial's error: a
    study of failures is no result, whatever the table above says."""
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("apm_skipped")]
    mine_failed = worker.ran > 0 and len(worker.failures) == worker.ran
    if any(t.state in finished for t in trials) and not mine_failed:
        return
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if not failed:
        return  # nothing ran yet, or trials of other workers are still running
    if mine_failed:
        first = next(t for t in failed if t.number == worker.failures[0][0])
        why = worker.stopped or f"all {worker.ran} trial(s) this worker ran failed"
    else:
        first = failed[0]
        why = f"{len(failed)} trial(s) failed, none completed"
        if worker.ran == 0:
            why += " (failed trials count toward --n-trials: raise it, or give a new --study-name)"
    error = first.user_attrs.get("error") or "no error recorded"
    raise APMError(f"sweep {study.study_name}: {why}; trial {first.number}: {error}")


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every failed trial with its traceback; our one line per trial says it, so
    its log is kept to errors unless APM_DEBUG is set."""
    import optuna

    level = optuna.logging.get_verbosity()
    if os.environ.get("APM_DEBUG", "") in ("", "0"):
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
