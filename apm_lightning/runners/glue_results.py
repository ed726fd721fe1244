"""What ``apm glue`` makes of its runs: one record per (task, seed), a summary per task (median,
mean and spread of its score, the best seed), the GLUE score, and the files OUT/results.md,
results.csv, tasks.csv, glue_score.json and submission.zip."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apm_lightning.core.files import write_json_atomic
from apm_lightning.metrics.glue_score import glue_score, summarize, task_score
from apm_lightning.reports.tables import markdown_table, metric_columns, run_row, write_csv
from apm_lightning.runners import submission
from apm_lightning.runners.glue_args import ALL_TASKS


@dataclass
class Run:
    task: str
    seed: int
    run_dir: Path
    status: str = "pending"  # done | failed
    error: str | None = None
    results: dict[str, Any] | None = None
    setting: str = ""  # the grid setting's label (empty without --grid)

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


def write_outputs(
    args: argparse.Namespace,
    out: Path,
    seeds: list[int],
    tasks: list[str],
    summaries: dict[str, TaskSummary],
    predictions: dict,
    ids: dict,
    grid: dict[str, Any] | None = None,
) -> dict:
    """Write the tables, the GLUE score and the submission of ``summaries``; print results.md.
    With ``--grid``, ``grid`` holds its rows (task, setting, seeds, median...) and the chosen
    setting per task: OUT/grid.csv, and the tables show it."""
    # GLUE's ten always have a row (the score names the missing ones); other tasks run follow.
    order = [*ALL_TASKS, *(t for t in tasks if t not in ALL_TASKS)]
    summaries = {t: summaries.get(t) or TaskSummary(t, "not run", "not in --tasks") for t in order}
    scores = {t: s.stats.get("median") for t, s in summaries.items() if t != "ax"}
    glue = glue_score(scores)
    glue["missing"] = {t: summaries[t].reason or summaries[t].status for t in glue["missing"]}
    sub = None
    if not args.no_submission:
        sub = submission.write_submission(predictions, out / "submission.zip", ids)
    runs = [r for s in summaries.values() for r in s.runs]
    rows = [run_table_row(r) for r in runs]
    metrics = metric_columns(rows)
    run_columns = [
        "task",
        *(["setting"] if grid else []),
        "seed",
        "status",
        "score",
        *metrics,
        "examples_per_s",
        "train_s",
        "peak_rss_mb",
    ]
    write_csv(out / "results.csv", rows, [*run_columns, "run_dir", "error"])
    task_rows = [task_table_row(s) for s in summaries.values()]
    task_columns = ["task", "status", "n", "score_median", "score_mean", "score_std", "score_min"]
    task_columns += ["score_max", "submission_seed", "note"]
    write_csv(out / "tasks.csv", task_rows, task_columns)
    record = {
        "model": args.model,
        "seeds": seeds,
        "statistic": "median over seeds of each task's score (mean of its metrics)",
        "glue": glue,
        "tasks": {
            t: {k: v for k, v in row.items() if k != "task"}
            for t, row in zip(summaries, task_rows, strict=True)
        },
        "submission": sub,
    }
    grid_text = ""
    if grid:
        columns = ["task", "setting", "n", "score_median", "score_mean", "score_std", "chosen"]
        write_csv(out / "grid.csv", grid["rows"], columns)
        record["grid"] = grid
        record["statistic"] += "; per task, the grid setting with the best median"
        grid_text = "## Grid (median dev score per setting; the chosen one is reported above)\n\n"
        grid_text += markdown_table(grid["rows"], columns)
    write_json_atomic(out / "glue_score.json", record)
    text = results_markdown(args.model, seeds, glue, task_rows, task_columns, rows, run_columns, sub)
    if grid_text:
        text = text.replace("## Runs\n", grid_text + "\n## Runs\n", 1)
    (out / "results.md").write_text(text, encoding="utf-8")
    print(text, flush=True)
    for name in ("results.md", "results.csv", "tasks.csv", "grid.csv", "glue_score.json", "submission.zip"):
        if (out / name).is_file():
            print((out / name).resolve(), flush=True)
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
    row["setting"] = run.setting
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
