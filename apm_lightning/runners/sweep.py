"""``apm sweep``: hyper-parameter search with Optuna over ordinary ``apm fit`` runs.

    apm sweep -c experiments/sweeps/sst2_minilm.yaml --n-trials 20 [--storage URL]

The sweep file names the fit configs, fixed overrides, the metric and its direction, the search
space, the sampler (``{name: tpe|random|gp|cmaes|qmc, <options>}``; TPE with constant liar and
multivariate by default) and the pruner (``{name: median|percentile|successive_halving|hyperband|
threshold|none, <options>}``), options as Optuna's classes take them. Each trial is an ``apm fit``
in OUT/trial-NNNN with its own ``results.json``; its value is the metric of the best checkpoint on
dev, and the pruner stops a weak trial after a validation
(:class:`~apm_lightning.runners.pruning.OptunaPruning`).

The study lives in a database: SQLite in OUT by default, or any SQLAlchemy URL (PostgreSQL,
MySQL) that workers on many machines share; ``optuna-dashboard`` and the ``optuna`` CLI open it.
``--n-trials`` is the study's total, not each worker's: running the command again continues the
study, and workers started at once share the count. A trial that crashes or runs out of memory
is recorded as failed and the study goes on; each failure is one line (``APM_DEBUG=1`` adds
Optuna's traceback). When no trial completes, the command exits 2 with the first trial's error;
two trials in a row failing the same way before any completed stop the worker (the fault is in
the options or data, not in the sampled values).

Options ``apm sweep`` does not know go to every trial's ``apm fit`` (``--data.data_dir DIR``).

``--backend wandb`` writes a W&B sweep file instead, for ``wandb sweep`` and ``wandb agent``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from apm_lightning.core import library_compat as compat
from apm_lightning.core.checks import check_output_dir
from apm_lightning.core.errors import APMError
from apm_lightning.core.recipes import resolve_config
from apm_lightning.core.redact import redact_text as redact_url
from apm_lightning.runners.launch import LAUNCHERS, RunFailed, RunStopped, run_apm

# The sweep's parts, importable from here as before the split.
from apm_lightning.runners.sweep_samplers import build_pruner, build_sampler  # noqa: F401
from apm_lightning.runners.sweep_spec import (  # noqa: F401
    PRUNED_FILE,
    STORAGE_ENV,
    SweepSpec,
    load_spec,
    metric_value,
    param_args,
    suggest,
)
from apm_lightning.runners.sweep_study import (  # noqa: F401
    HEARTBEAT_SECONDS,
    MAX_RETRY,
    open_storage,
    open_study,
    trial_rows,
    write_summary,
)
from apm_lightning.runners.sweep_wandb import wandb_parameters, wandb_sweep_config  # noqa: F401


# --------------------------------------------------------------------------- the worker
class StudyFull(Exception):
    """Another worker took the last trial between our count and our ask."""


def _counted(study) -> list:
    """Trials that count towards --n-trials: all but queued ones, our race markers, and failed
    trials of dead workers that were queued again (their retry counts instead)."""
    import optuna
    from optuna.trial import TrialState

    retry = _retry_callback()
    trials = study.get_trials(deepcopy=False)
    with warnings.catch_warnings():  # "experimental" since Optuna 3.0, and unchanged since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = {n for t in trials for n in retry.retry_history(t)}
    return [
        t
        for t in trials
        if t.state != TrialState.WAITING
        and not t.user_attrs.get("apm_skipped")
        and not (t.state == TrialState.FAIL and t.number in retried)
    ]


def _retry_callback():
    """Optuna's heartbeat retry callback class (renamed in Optuna 4.9): it queues a dead worker's
    trial again and reads a trial's retry history."""
    import optuna

    return (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        or optuna.storages.RetryFailedTrialCallback
    )


class SweepWorker:
    def __init__(self, spec: SweepSpec, study, url: str, out: Path, launcher: str, extra: list[str]) -> None:
        self.spec, self.study, self.url, self.out = spec, study, url, out
        self.launcher, self.extra = launcher, extra
        self.n_trials = 0  # the study's total, set by run()
        self.full = False
        self.ran = 0
        self.failures: list[tuple[int, str]] = []  # (trial number, one-line reason) of this worker's
        self.stopped: str | None = None  # why this worker stopped before --n-trials

    def _frozen(self, trial):
        return compat.study_storage(self.study).get_trial(compat.trial_storage_id(trial))

    def _earlier_attempt(self, trial) -> Path | None:
        """A retried trial (its worker was stopped, or died) continues the newest earlier attempt
        of it in this --out from that run's last.ckpt; without one it starts in its own folder."""
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            history = _retry_callback().retry_history(self._frozen(trial))
        for number in reversed(history):
            folder = self.out / f"trial-{number:04d}"
            if (folder / "checkpoints" / "last.ckpt").is_file() and not (folder / "results.json").is_file():
                return folder
        return None

    def trial_args(self, trial, params: dict[str, Any], run_dir: Path, resume: bool = False) -> list[str]:
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
        if resume:
            args += ["--ckpt_path", "last"]  # an earlier attempt of this trial (_earlier_attempt)
        if self.spec.prunes:
            args += [
                "--trainer.callbacks+=apm_lightning.runners.pruning.OptunaPruning",
                f"--trainer.callbacks.study_name={self.study.study_name}",
                f"--trainer.callbacks.trial_id={compat.trial_storage_id(trial)}",
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
        earlier = self._earlier_attempt(trial)
        run_dir = earlier or self.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        self.ran += 1
        again = (
            f" (continues trial {run_dir.name.removeprefix('trial-')} from its last.ckpt)" if earlier else ""
        )
        print(f"apm sweep: trial {trial.number} {params} -> {run_dir}{again}", flush=True)
        env = {STORAGE_ENV: self.url, "WANDB_RUN_GROUP": self.study.study_name}
        try:
            args = self.trial_args(trial, params, run_dir, resume=earlier is not None)
            run_apm(args, run_dir / "apm.log", self.launcher, env)
        except RunStopped as stop:
            # Stopped, not failed: queue the parameters again as Optuna does for a trial whose
            # worker died, so that the study keeps its count and the same command continues them.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                _retry_callback()(max_retry=MAX_RETRY)(self.study, self._frozen(trial))
            trial.set_user_attr("error", f"{stop}; queued again"[:500])  # not copied to the retry
            raise
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

        storage = compat.study_storage(self.study)
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        if not interval:
            return False
        while any(t.state == TrialState.RUNNING for t in _counted(self.study)):
            time.sleep(min(interval, 2))
            optuna.storages.fail_stale_trials(self.study)
            if len(_counted(self.study)) < self.n_trials:
                return True
        return False


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
    p.add_argument(
        "--sampler-seed",
        type=int,
        default=None,
        help="seed the sampler, over the sweep file's seed (reproducible with one worker only)",
    )
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
