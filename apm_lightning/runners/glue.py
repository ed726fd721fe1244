"""``apm glue``: one model over the GLUE tasks, several seeds per task, then the tables, the GLUE
score and a test-server submission.

    apm glue --model minilm --tasks cola,sst2,mrpc,rte,wnli --seeds 3 \\
        --data-dir ../shared/data/glue --out runs/glue-minilm

Each (task, seed) is an ordinary ``apm fit -c experiments/glue/<task>.yaml`` in
``OUT/runs/<task>/seed<S>``. A run whose ``results.json`` exists is kept, and an interrupted one
resumes from its ``last.ckpt``, so running the command again continues where it stopped. The
best seed of each task (by dev score) predicts the test split for the submission; AX is
predicted by the best MNLI checkpoint. Options the runner does not know (``--trainer.*``,
``--data.*``, ``--wandb_mode`` ...) go to every ``apm fit`` and ``apm predict``.

Writes OUT/results.md, OUT/results.csv (one row per run), OUT/tasks.csv (median, mean and
standard deviation per task), OUT/glue_score.json and OUT/submission.zip.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apm_lightning.core.checks import check_output_dir
from apm_lightning.core.errors import APMError
from apm_lightning.core.files import write_json_atomic
from apm_lightning.core.recipes import find_recipe, recipes_root, resolve_config_args
from apm_lightning.core.redact import redact_text
from apm_lightning.data import sources
from apm_lightning.data.tasks import get_task
from apm_lightning.metrics.glue_score import GLUE_SCORE_TASKS, glue_score, summarize, task_score
from apm_lightning.reports.tables import markdown_table, metric_columns, run_row, write_csv
from apm_lightning.runners import submission
from apm_lightning.runners.launch import LAUNCHERS, RunFailed, run_apm

ALL_TASKS = (*GLUE_SCORE_TASKS, "ax")
# Options handed to every apm fit/predict as they are (a config to compose, or dotted overrides).
PASS_THROUGH = (
    "--data.",
    "--trainer.",
    "--model.",
    "--wandb_",
    "--allow_unsafe_checkpoints",
    "-c",
    "--config",
)


@dataclass
class Run:
    task: str
    seed: int
    run_dir: Path
    status: str = "pending"  # done | failed
    error: str | None = None
    results: dict[str, Any] | None = None

    @property
    def score(self) -> float | None:
        return task_score(self.task, self.results["metrics"]) if self.results else None


@dataclass
class TaskSummary:
    task: str
    status: str  # ok | partial | failed | missing | not run
    reason: str = ""
    runs: list[Run] = field(default_factory=list)
    best: Run | None = None
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="apm glue",
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="minilm", help="backbone path/name, or a model config YAML")
    p.add_argument("--tasks", default=",".join(ALL_TASKS), help="comma-separated (default: all nine and ax)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per task: FIRST_SEED .. FIRST_SEED+K-1")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="GLUE in its distribution layout (else $APM_DATA_DIR)")
    p.add_argument("--out", default="runs/glue", help="output folder (re-running continues it)")
    p.add_argument(
        "--recipes", default=None, help="folder of <task>.yaml (default: the shipped glue recipes)"
    )
    p.add_argument("--max-train-samples", type=int, default=None, help="shorter recipes: train rows")
    p.add_argument("--max-eval-samples", type=int, default=None, help="dev rows (scores then not comparable)")
    p.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs for every task")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="[TASK:]OPTIONS",
        help="extra fit options, for one task with a prefix: 'sst2:--data.max_train_samples 2000'",
    )
    p.add_argument("--launcher", choices=LAUNCHERS, default="subprocess", help="where each run goes")
    p.add_argument("--no-submission", action="store_true", help="skip test predictions and the zip")
    return p


def parse_tasks(text: str) -> list[str]:
    tasks = list(dict.fromkeys(get_task(t).name for t in text.split(",") if t.strip()))
    # AX is predicted by the MNLI model, so it comes last.
    return sorted(tasks, key=lambda t: t == "ax")


def parse_overrides(values: list[str]) -> dict[str | None, list[str]]:
    """'sst2:--a 1' -> {'sst2': ['--a', '1']}; no prefix -> key None (every task)."""
    out: dict[str | None, list[str]] = {}
    for value in values:
        head, sep, rest = value.partition(":")
        task = None
        if sep and not head.startswith("-") and " " not in head.strip():
            task, value = get_task(head).name, rest
        out.setdefault(task, []).extend(shlex.split(value))
    return out


def model_args(model: str) -> list[str]:
    """A model config YAML (a file, or a shipped recipe such as ``models/tiny_bert.yaml``) is
    composed after the task recipe; anything else is a backbone."""
    if model.endswith((".yaml", ".yml")) and not Path(model).is_file() and find_recipe(model):
        return ["-c", str(find_recipe(model))]
    if model.endswith((".yaml", ".yml")) or Path(model).is_file():
        if not Path(model).is_file():
            raise APMError(f"model config not found: {model}")
        # abspath, not resolve: experiments/ is a link, and the path stays the one the user named.
        return ["-c", os.path.abspath(model)]
    return ["--model.backbone", model]


# --------------------------------------------------------------------------- data checks
def task_folder(task: str, data_dir: str | None) -> Path | None | bool:
    """The task's local folder; None when absent; True when the data comes from elsewhere (no
    data dir and no $APM_DATA_DIR: the hub), which only the run itself can check."""
    root = Path(data_dir).expanduser() if data_dir else sources.data_root()
    if root is None:
        return True
    spec = get_task(task)
    first = next(iter(spec.splits.values())).filename
    for folder in (root / spec.folder, root / "glue" / spec.folder):
        if (folder / first).is_file():
            return folder
    return None


def missing_files(task: str, folder: Path, splits: list[str]) -> list[str]:
    spec = get_task(task)
    return [spec.splits[s].filename for s in splits if not (folder / spec.splits[s].filename).is_file()]


def local_test_ids(task: str, folder: Path | bool | None) -> dict[str, list[int]]:
    """Server file name -> ids of the local test file, to check predictions against."""
    from apm_lightning.data.task_files import read_glue_tsv

    if not isinstance(folder, Path):
        return {}
    spec = get_task(task)
    ids = {}
    for name, (t, split) in submission.SERVER_FILES.items():
        path = folder / spec.splits[split].filename if t == spec.name else None
        if path is not None and path.is_file():
            ids[name] = read_glue_tsv(spec, path, labelled=False)["idx"]
    return ids


# --------------------------------------------------------------------------- the runner
class GlueRunner:
    def __init__(self, args: argparse.Namespace, extra: list[str]) -> None:
        self.args = args
        self.out = Path(args.out)
        # -c among the pass-through options may name a shipped recipe, as in apm fit.
        self.extra = resolve_config_args(extra)
        self.overrides = {k: resolve_config_args(v) for k, v in parse_overrides(args.override).items()}
        self.model = model_args(args.model)
        self.seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        self.tasks = parse_tasks(args.tasks)
        self.env = {"WANDB_RUN_GROUP": f"glue-{self.out.resolve().name}"}  # one W&B group per OUT

    def recipe(self, task: str) -> str:
        folder = Path(self.args.recipes) if self.args.recipes else recipes_root() / "glue"
        path = folder / f"{task}.yaml"
        if not path.is_file():
            raise APMError(f"no recipe for {task}: {path} (set --recipes DIR)")
        return str(path.resolve())

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
        """Refuse to mix runs of other settings into OUT (only tasks and seeds may grow)."""
        settings = {
            "model": self.model,
            "max_train_samples": self.args.max_train_samples,
            "max_eval_samples": self.args.max_eval_samples,
            "epochs": self.args.epochs,
            "overrides": self.args.override,
            "extra": self.extra,
        }
        path = self.out / "settings.json"
        if path.is_file():
            before = json.loads(path.read_text())
            changed = [k for k in settings if before.get(k) != settings[k]]
            if changed:
                raise APMError(
                    f"{self.out} holds runs made with other {', '.join(changed)} "
                    f"(see {path}); use another --out"
                )
        write_json_atomic(path, settings)

    def fit(self, task: str, seed: int) -> Run:
        run = Run(task, seed, self.out / "runs" / task / f"seed{seed}")
        results_file = run.run_dir / "results.json"
        if not results_file.is_file():
            args = ["fit", "-c", self.recipe(task), *self.common(task), "--seed_everything", str(seed)]
            args += ["--trainer.default_root_dir", str(run.run_dir), "--run_name", f"{task}-seed{seed}"]
            ckpts = sorted((run.run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
            if (run.run_dir / "checkpoints" / "last.ckpt").is_file():
                args += ["--ckpt_path", "last"]  # an interrupted run resumes exactly
            elif ckpts:  # stopped between its best and its last save: resume from the newest
                args += ["--ckpt_path", str(ckpts[-1])]
            started = time.perf_counter()
            print(f"apm glue: {task} seed {seed}: training ({run.run_dir})", flush=True)
            try:
                run_apm(args, run.run_dir / "apm.log", self.args.launcher, self.env)
            except RunFailed as err:
                run.status, run.error = "failed", redact_text(str(err))
                print(f"apm glue: {task} seed {seed}: FAILED: {run.error}", flush=True)
                return run
            print(f"apm glue: {task} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
        run.results = json.loads(results_file.read_text())
        run.status = "done"
        return run

    def predict(self, task: str, run: Run, data_task: str | None = None) -> Path | None:
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
        args = ["predict", "-c", self.recipe(task), *self.common(task)]
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
        for task in self.tasks:
            folder = task_folder(task, self.args.data_dir)
            if task == "ax":
                summaries[task] = self.run_ax(folder, summaries.get("mnli"), predictions, ids)
                continue
            spec = get_task(task)
            where = self.args.data_dir or "$APM_DATA_DIR"
            reason = f"no data: no {spec.folder}/ folder in {where}" if folder is None else ""
            if isinstance(folder, Path):
                gaps = missing_files(task, folder, ["train", *spec.validation_splits])
                reason = f"no data: {', '.join(gaps)} not in {folder}" if gaps else ""
            if reason:
                summaries[task] = TaskSummary(task, "missing", reason)
                print(f"apm glue: {task}: MISSING ({reason})", flush=True)
                continue
            summary = summarize_task(task, [self.fit(task, s) for s in self.seeds])
            summaries[task] = summary
            if summary.best is not None and not self.args.no_submission:
                if isinstance(folder, Path) and missing_files(task, folder, spec.test_splits):
                    continue  # no test file here: the submission lists the task as missing
                where = self.predict(task, summary.best)
                if where is not None:
                    for name in submission.server_names(task):
                        predictions[name] = where / submission.prediction_file(
                            task, submission.SERVER_FILES[name][1]
                        )
                    ids.update(local_test_ids(task, folder))
        return self.write_outputs(summaries, predictions, ids)

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

    # ----------------------------------------------------------------------- outputs
    def write_outputs(self, summaries: dict[str, TaskSummary], predictions: dict, ids: dict) -> dict:
        summaries = {t: summaries.get(t) or TaskSummary(t, "not run", "not in --tasks") for t in ALL_TASKS}
        scores = {t: s.stats.get("median") for t, s in summaries.items() if t != "ax"}
        glue = glue_score(scores)
        glue["missing"] = {t: summaries[t].reason or summaries[t].status for t in glue["missing"]}
        sub = None
        if not self.args.no_submission:
            sub = submission.write_submission(predictions, self.out / "submission.zip", ids)
        runs = [r for s in summaries.values() for r in s.runs]
        rows = [run_table_row(r) for r in runs]
        metrics = metric_columns(rows)
        run_columns = [
            "task",
            "seed",
            "status",
            "score",
            *metrics,
            "examples_per_s",
            "train_s",
            "peak_rss_mb",
        ]
        write_csv(self.out / "results.csv", rows, [*run_columns, "run_dir", "error"])
        task_rows = [task_table_row(s) for s in summaries.values()]
        task_columns = ["task", "status", "n", "score_median", "score_mean", "score_std", "score_min"]
        task_columns += ["score_max", "submission_seed", "note"]
        write_csv(self.out / "tasks.csv", task_rows, task_columns)
        record = {
            "model": self.args.model,
            "seeds": self.seeds,
            "statistic": "median over seeds of each task's score (mean of its metrics)",
            "glue": glue,
            "tasks": {
                t: {k: v for k, v in row.items() if k != "task"}
                for t, row in zip(summaries, task_rows, strict=True)
            },
            "submission": sub,
        }
        write_json_atomic(self.out / "glue_score.json", record)
        text = results_markdown(
            self.args.model, self.seeds, glue, task_rows, task_columns, rows, run_columns, sub
        )
        (self.out / "results.md").write_text(text, encoding="utf-8")
        print(text, flush=True)
        for name in ("results.md", "results.csv", "tasks.csv", "glue_score.json", "submission.zip"):
            if (self.out / name).is_file():
                print((self.out / name).resolve(), flush=True)
        return record


def summarize_task(task: str, runs: list[Run]) -> TaskSummary:
    done = [r for r in runs if r.status == "done"]
    status = "ok" if len(done) == len(runs) else "partial" if done else "failed"
    summary = TaskSummary(task, status, "" if done else (runs[0].error or "") if runs else "", runs)
    if done:
        summary.stats = summarize([r.score for r in done])
        summary.best = max(done, key=lambda r: r.score)  # the submission uses the best dev seed
    return summary


def run_table_row(run: Run) -> dict[str, Any]:
    row = run_row(run.results, run=f"{run.task}/seed{run.seed}") if run.results else {}
    row.update(task=run.task, seed=run.seed, status=run.status, score=run.score, error=run.error)
    row["run_dir"] = str(run.run_dir)
    return row


def task_table_row(summary: TaskSummary) -> dict[str, Any]:
    row: dict[str, Any] = {"task": summary.task, "status": summary.status, "note": summary.reason}
    for key, value in summary.stats.items():
        row["n" if key == "n" else f"score_{key}"] = value
    row["submission_seed"] = summary.best.seed if summary.best else None
    return row


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def results_markdown(model, seeds, glue, task_rows, task_columns, rows, run_columns, sub) -> str:
    lines = [f"# GLUE: {model}", "", f"Seeds {', '.join(map(str, seeds))}; dev scores x100."]
    lines.append("A task's score is the mean of its metrics; the GLUE score averages the median per task.")
    lines.append("")
    if glue["score"] is not None:
        lines.append(
            f"**GLUE score: {_pct(glue['score'])}** (without WNLI: {_pct(glue['score_without_wnli'])})"
        )
    else:
        lines.append(
            "**GLUE score: n/a** (tasks missing: "
            + ", ".join(f"{t} ({why})" for t, why in glue["missing"].items())
            + ")"
        )
        if glue["tasks_scored"]:
            lines.append(
                f"Average over the {len(glue['tasks_scored'])} tasks scored ({', '.join(glue['tasks_scored'])}): "
                f"{_pct(glue['partial_score'])} (without WNLI: {_pct(glue['partial_score_without_wnli'])})"
            )
    lines += ["", "## Tasks", "", markdown_table(task_rows, task_columns), "## Runs", ""]
    lines.append(markdown_table(rows, run_columns) if rows else "(no runs)\n")
    if sub is not None:
        lines += ["## Submission", "", f"`{sub['zip']}`: {len(sub['included'])} of {len(sub['files'])} files"]
        lines.append("" if sub["complete"] else "(incomplete: the GLUE server expects all eleven files)")
        for name, info in sub["files"].items():
            detail = "; ".join(info["problems"][:2])
            lines.append(f"- {name}: {info['status']}, {info['rows']} rows{': ' + detail if detail else ''}")
        lines += [f"- warning: {w}" for w in sub["warnings"]]
    return "\n".join(lines) + "\n"


def glue_main(argv: list[str]) -> dict[str, Any]:
    args, extra = build_parser().parse_known_args(argv)
    if args.seeds < 1:
        raise APMError("--seeds must be at least 1")
    check_output_dir(args.out, "--out")
    unknown = [
        a for a in extra if a.startswith("-") and not a[1:2].isdigit() and not a.startswith(PASS_THROUGH)
    ]
    if unknown:
        raise APMError(f"apm glue: unknown option(s) {' '.join(unknown)} (see apm glue --help)")
    return GlueRunner(args, extra).run()
