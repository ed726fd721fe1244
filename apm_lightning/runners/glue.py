"""``apm glue``: one model over the GLUE tasks, several seeds per task, then the tables, the GLUE
score and a test-server submission.

    apm glue --model minilm --tasks cola,sst2,mrpc,rte,wnli --seeds 3 \\
        --data-dir ../shared/data/glue --out runs/glue-minilm

Each (task, seed) is an ordinary ``apm fit -c experiments/glue/<task>.yaml`` in
``OUT/runs/<task>/seed<S>``. A run whose ``results.json`` exists is kept, and an interrupted one
resumes from its ``last.ckpt``, so running the command again continues where it stopped. The
best seed of each task (by dev score) predicts the test split for the submission; AX is
predicted by the best MNLI checkpoint. Options the runner does not know (``--trainer.*``,
``--data.*``, ``--wandb_mode`` ...) go to every ``apm fit`` and ``apm predict``. Every run is
planned first; ``--jobs N`` trains N at once, the CPU cores split between them.

A task outside GLUE is a task file (``--tasks my_pairs.yaml``, docs/extending.md): it trains with
``glue/default.yaml`` (or ``--recipes DIR``'s ``<task>.yaml`` or ``default.yaml``), appears in the
tables, and has no part in the GLUE score or the submission.

Writes OUT/results.md, OUT/results.csv (one row per run), OUT/tasks.csv (median, mean and
standard deviation per task), OUT/glue_score.json and OUT/submission.zip.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from apm_lightning.core.checks import check_output_dir
from apm_lightning.core.errors import APMError
from apm_lightning.core.files import write_json_atomic
from apm_lightning.core.recipes import recipes_root, resolve_config_args
from apm_lightning.core.redact import redact_text
from apm_lightning.data.tasks import get_task, task_file
from apm_lightning.runners import submission
from apm_lightning.runners.glue_args import (
    build_parser,
    model_args,
    parse_overrides,
    parse_tasks,
    protocol_argv,
    unknown_options,
)
from apm_lightning.runners.glue_data import local_test_ids, missing_files, missing_reason, task_folder
from apm_lightning.runners.glue_grid import (
    Setting,
    grid_options,
    grid_rows,
    parse_grid,
    select,
    setting_args,
    setting_folder,
    setting_label,
)
from apm_lightning.runners.glue_results import Run, TaskSummary, summarize_task, write_outputs
from apm_lightning.runners.launch import Job, RunFailed, run_apm, run_jobs


class GlueRunner:
    def __init__(self, args: argparse.Namespace, extra: list[str]) -> None:
        self.args = args
        self.out = Path(args.out)
        # -c among the pass-through options may name a shipped recipe, as in apm fit.
        self.extra = resolve_config_args(extra)
        self.tasks = parse_tasks(args.tasks)  # first: a task file's name may prefix an override
        self.overrides = {k: resolve_config_args(v) for k, v in parse_overrides(args.override).items()}
        self.model = model_args(args.model)
        self.seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        self.grid = parse_grid(args.grid)  # [{}] without --grid: the recipes as they are
        self.chosen: dict[str, str | None] = {}
        self.grid_table: list[dict[str, Any]] = []
        self.env = {"WANDB_RUN_GROUP": f"glue-{self.out.resolve().name}"}  # one W&B group per OUT

    def recipe(self, task: str) -> str:
        folder = Path(self.args.recipes) if self.args.recipes else recipes_root() / "glue"
        path = folder / f"{task}.yaml"
        if not path.is_file() and task_file(task) is not None:
            # A task file's task: the folder's default recipe, else the shipped one.
            path = folder / "default.yaml"
            if not path.is_file():
                path = recipes_root() / "glue" / "default.yaml"
        if not path.is_file():
            raise APMError(f"no recipe for {task}: {path} (set --recipes DIR)")
        return str(path.resolve())

    def task_args(self, task: str) -> list[str]:
        """The recipe, and for a task file's task the file (recipes name GLUE tasks themselves)."""
        declared = task_file(task)
        return ["-c", self.recipe(task), *(["--data.task", str(declared)] if declared else [])]

    def common(self, task: str) -> list[str]:
        a = self.args
        out = [*self.model]
        if a.data_dir:
            out += ["--data.data_dir", str(Path(a.data_dir).expanduser().resolve())]
        if a.max_train_samples is not None:
            out += ["--data.max_train_samples", str(a.max_train_samples)]
        if a.max_eval_samples is not None:
            out += ["--data.max_eval_samples", str(a.max_eval_samples)]
        if a.epochs is not None:
            out += ["--trainer.max_epochs", str(a.epochs)]
        return out + self.overrides.get(None, []) + self.overrides.get(task, []) + self.extra

    def check_settings(self) -> None:
        """Refuse to mix runs of other settings into OUT (tasks, seeds and grid values may change)."""
        settings = {
            "model": self.model,
            "max_train_samples": self.args.max_train_samples,
            "max_eval_samples": self.args.max_eval_samples,
            "epochs": self.args.epochs,
            "overrides": self.args.override,
            "extra": self.extra,
            # Absent from OUT folders written before --grid existed, so None when unused.
            "grid": self.args.grid or None,
        }
        path = self.out / "settings.json"
        if path.is_file():
            before = json.loads(path.read_text())
            changed = [k for k in settings if k != "grid" and before.get(k) != settings[k]]
            # A grid may grow (a value added at its edge) or shrink: each value trains in its own
            # folders, so only a change of the options it varies would mix runs.
            if grid_options(before.get("grid")) != grid_options(settings["grid"]):
                changed.append("grid options")
            if "overrides" in changed:
                # A task's own --override may change while that task has no runs here (SST-2 at
                # one epoch added after CoLA's grid finished): nothing of another setting is mixed.
                ran = self._tasks_with_runs(before.get("overrides") or [])
                changed[changed.index("overrides")] = f"overrides (for {', '.join(ran)})" if ran else ""
                changed = [k for k in changed if k]
            if changed:
                raise APMError(
                    f"{self.out} holds runs made with other {', '.join(changed)} "
                    f"(see {path}); use another --out"
                )
        write_json_atomic(path, settings)

    def _tasks_with_runs(self, overrides_before: list[str]) -> list[str]:
        """Tasks with runs in OUT whose --override options differ from ``overrides_before``'s."""
        before, now = parse_overrides(overrides_before), parse_overrides(self.args.override)
        differ = {task for task in before.keys() | now.keys() if before.get(task) != now.get(task)}
        ran = {p.name for p in (self.out / "runs").glob("*") if p.is_dir()}
        return sorted(ran if None in differ else ran & differ)

    def plan(self, task: str, seed: int, setting: Setting) -> tuple[Run, list[str] | None, str]:
        """The run of (task, seed, grid setting), the ``apm fit`` options that train it (None when
        its ``results.json`` exists) and its name."""
        folder = self.out / "runs" / task / (setting_folder(setting) if setting else "")
        run = Run(task, seed, folder / f"seed{seed}", setting=setting_label(setting) if setting else "")
        name = f"{task}-{setting_folder(setting)}-seed{seed}" if setting else f"{task}-seed{seed}"
        if (run.run_dir / "results.json").is_file():
            return run, None, name
        args = ["fit", *self.task_args(task), *self.common(task), *setting_args(setting)]
        args += ["--seed_everything", str(seed)]
        args += ["--trainer.default_root_dir", str(run.run_dir), "--run_name", name]
        ckpts = sorted((run.run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        if (run.run_dir / "checkpoints" / "last.ckpt").is_file():
            args += ["--ckpt_path", "last"]  # an interrupted run resumes exactly
        elif ckpts:  # stopped between its best and its last save: resume from the newest
            args += ["--ckpt_path", str(ckpts[-1])]
        return run, args, name

    def fit_all(self, tasks: list[str]) -> dict[tuple[str, str, int], Run]:
        """Every (task, grid setting, seed) run of ``tasks``, by (task, setting label, seed):
        finished ones are read, the others trained, ``--jobs`` at a time."""
        runs: dict[tuple[str, str, int], Run] = {}
        todo: list[tuple[Run, list[str], str]] = []
        for task in tasks:
            for setting in self.grid:
                for seed in self.seeds:
                    run, args, name = self.plan(task, seed, setting)
                    runs[task, run.setting, seed] = run
                    if args is not None:
                        todo.append((run, args, name))
        started: dict[int, float] = {}

        def on_start(i: int) -> None:
            run, _, name = todo[i]
            started[i] = time.perf_counter()
            print(f"apm glue: {name}: training ({run.run_dir})", flush=True)

        def on_end(i: int, failure: RunFailed | None) -> None:
            run, _, name = todo[i]
            if failure is not None:
                run.status, run.error = "failed", redact_text(str(failure))
                print(f"apm glue: {name}: FAILED: {run.error}", flush=True)
            else:
                print(f"apm glue: {name}: {time.perf_counter() - started[i]:.0f} s", flush=True)

        if self.args.launcher == "subprocess":  # one loop for all runs: a signal between two is caught
            jobs = [Job(args, run.run_dir / "apm.log", self.env) for run, args, _ in todo]
            run_jobs(jobs, self.args.jobs, on_start, on_end)
        else:  # in this process, one at a time
            for i, (run, args, _) in enumerate(todo):
                on_start(i)
                try:
                    run_apm(args, run.run_dir / "apm.log", self.args.launcher, self.env)
                except RunFailed as err:
                    on_end(i, err)
                else:
                    on_end(i, None)
        for run in runs.values():
            if run.status != "failed":
                run.results = json.loads((run.run_dir / "results.json").read_text())
                run.status = "done"
        return runs

    def predict(
        self, task: str, run: Run, data_task: str | None = None, setting: Setting | None = None
    ) -> Path | None:
        """Test predictions of ``run``'s best checkpoint (of ``data_task`` when it differs: AX)."""
        data_task = data_task or task
        root = (
            run.run_dir / "predict"
            if data_task == task
            else self.out / "runs" / data_task / f"{task}-seed{run.seed}"
        )
        spec = get_task(data_task)
        wanted = [root / "predictions" / submission.prediction_file(data_task, s) for s in spec.test_splits]
        if all(p.is_file() for p in wanted):
            return root / "predictions"
        args = ["predict", *self.task_args(task), *self.common(task), *setting_args(setting or {})]
        if data_task != task:
            args += ["--data.task", data_task]
        args += ["--ckpt_path", run.results["best_checkpoint"] or run.results["last_checkpoint"]]
        args += ["--trainer.default_root_dir", str(root), "--trainer.logger", "false"]
        print(f"apm glue: {data_task}: predicting the test split with {task} seed {run.seed}", flush=True)
        try:
            run_apm(args, root / "apm.log", self.args.launcher, self.env)
        except RunFailed as err:
            print(f"apm glue: {data_task}: test predictions FAILED: {redact_text(str(err))}", flush=True)
            return None
        return root / "predictions"

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.check_settings()
        summaries: dict[str, TaskSummary] = {}
        predictions: dict[str, Path] = {}  # server file name -> TSV
        ids: dict[str, list[int]] = {}
        folders = {task: task_folder(task, self.args.data_dir) for task in self.tasks}
        missing: dict[str, str] = {}  # said before any training starts
        for task in self.tasks:
            reason = None if task == "ax" else missing_reason(task, folders[task], self.args.data_dir)
            if reason:
                missing[task] = reason
                print(f"apm glue: {task}: MISSING ({reason})", flush=True)
        runs = self.fit_all([t for t in self.tasks if t != "ax" and t not in missing])
        for task in self.tasks:
            folder = folders[task]
            if task == "ax":
                summaries[task] = self.run_ax(folder, summaries.get("mnli"), predictions, ids)
                continue
            spec = get_task(task)
            if task in missing:
                summaries[task] = TaskSummary(task, "missing", missing[task])
                continue
            summary, setting = self.train_task(task, runs)
            summaries[task] = summary
            # Only GLUE's tasks go to the test server (a task file's task has no server file).
            if summary.best is not None and not self.args.no_submission and submission.server_names(task):
                if isinstance(folder, Path) and missing_files(task, folder, spec.test_splits):
                    continue  # no test file here: the submission lists the task as missing
                where = self.predict(task, summary.best, setting=setting)
                if where is not None:
                    for name in submission.server_names(task):
                        predictions[name] = where / submission.prediction_file(
                            task, submission.SERVER_FILES[name][1]
                        )
                    ids.update(local_test_ids(task, folder))
        grid = None
        if self.args.grid:
            grid = {
                "settings": [setting_label(g) for g in self.grid],
                "chosen": self.chosen,
                "rows": self.grid_table,
            }
        outputs = write_outputs(
            self.args, self.out, self.seeds, self.tasks, summaries, predictions, ids, grid
        )
        failed = [run for run in runs.values() if run.status == "failed"]
        if runs and len(failed) == len(runs):  # nothing to report: a script must not read it as done
            raise APMError(
                f"apm glue: all {len(runs)} runs failed, the first with {failed[0].error}; fix that and "
                f"run the same command again (the tables: {self.out / 'results.md'})"
            )
        return outputs

    def train_task(self, task: str, runs: dict[tuple[str, str, int], Run]) -> tuple[TaskSummary, Setting]:
        """Every seed of every grid setting (``runs``, from ``fit_all``); the task's summary is the
        chosen setting's (by the median dev score over seeds), and so are its test predictions."""
        per_setting = {
            setting_label(g): (
                g,
                summarize_task(task, [runs[task, setting_label(g) if g else "", s] for s in self.seeds]),
            )
            for g in self.grid
        }
        if len(per_setting) == 1 and not self.args.grid:
            return next(iter(per_setting.values()))[1], {}
        scores = {
            label: [r.score for r in summary.runs if r.status == "done"]
            for label, (_, summary) in per_setting.items()
        }
        label = select(scores)
        self.chosen[task] = label
        self.grid_table += grid_rows({task: scores}, {task: label})
        if label is None:  # no run of any setting finished: report them all as failed
            runs = [r for _, summary in per_setting.values() for r in summary.runs]
            return summarize_task(task, runs), {}
        setting, summary = per_setting[label]
        summary.reason = f"grid: {label} chosen (best median of {len(per_setting)} settings)"
        summary.runs = [r for _, other in per_setting.values() for r in other.runs]  # every run in the tables
        print(f"apm glue: {task}: grid chose {label}", flush=True)
        return summary, setting

    def run_ax(self, folder, mnli: TaskSummary | None, predictions: dict, ids: dict) -> TaskSummary:
        if folder is None or (isinstance(folder, Path) and missing_files("ax", folder, ["test"])):
            return TaskSummary("ax", "missing", "no data: diagnostic/diagnostic.tsv not found")
        if mnli is None or mnli.best is None:
            return TaskSummary("ax", "missing", "AX is predicted by an MNLI model, and there is none")
        if self.args.no_submission:
            return TaskSummary("ax", "not run", "--no-submission")
        where = self.predict("mnli", mnli.best, data_task="ax")
        if where is None:
            return TaskSummary("ax", "failed", "test predictions failed")
        predictions["AX.tsv"] = where / submission.prediction_file("ax", "test")
        ids.update(local_test_ids("ax", folder))
        return TaskSummary("ax", "ok", f"test only: predicted by mnli seed {mnli.best.seed}")


def glue_main(argv: list[str]) -> dict[str, Any]:
    parser = build_parser(__doc__)
    args, extra = parser.parse_known_args(argv)
    if args.protocol:
        args, extra = parser.parse_known_args(protocol_argv(parser, args.protocol, argv))
    if args.seeds < 1:
        raise APMError("--seeds must be at least 1")
    if args.jobs < 1:
        raise APMError("--jobs must be at least 1")
    if args.jobs > 1 and args.launcher != "subprocess":
        raise APMError("--jobs above 1 runs each training in its own process: use --launcher subprocess")
    check_output_dir(args.out, "--out")
    unknown = unknown_options(extra)
    if unknown:
        raise APMError(f"apm glue: unknown option(s) {' '.join(unknown)} (see apm glue --help)")
    return GlueRunner(args, extra).run()
