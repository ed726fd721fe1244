"""``apm report RUN_DIRS...``: gather ``results.json`` files into tables and plots.

    apm report runs/glue-minilm/runs --out reports/glue-minilm

A RUN_DIR is a run directory or any folder above some (searched for ``results.json``). Writes
OUT/report.md (every run, then median, mean and standard deviation per task), OUT/report.csv
(one row per run, scores as results.json has them), OUT/tasks.csv, OUT/plots/scores.png and one
OUT/plots/curves_<task>.png per task (from each run's ``csv/metrics.csv``; a run without one
is named in a warning and left out of the plot). Scores are shown on the 0-100 scale (GLUE's 0-1
metrics x100, SQuAD's as they are). Runs on apm's synthetic stand-in data (``apm demo`` offline)
are a group of their own, never pooled with runs on the real task. With W&B on
(``--wandb_mode``, as in ``apm fit``) the same tables and plots are logged to a W&B run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from apm_lightning.core.arguments import command_parser
from apm_lightning.core.errors import APMError
from apm_lightning.reports import plots
from apm_lightning.reports.tables import (
    SYNTHETIC,
    aggregate,
    group_key,
    load_rows,
    markdown_table,
    metric_columns,
    score_scale,
    write_csv,
)


def warn(message: str) -> None:
    print(f"apm report: warning: {message}", file=sys.stderr, flush=True)


def _data_column(rows: list[dict[str, Any]]) -> list[str]:
    # Shown only when some run used synthetic data, to say which group is which.
    return ["data"] if any(r.get("data") == SYNTHETIC for r in rows) else []


def task_columns(rows: list[dict[str, Any]]) -> list[str]:
    metrics = [m for m in metric_columns(rows) if m != "main"]
    head = ["task", *_data_column(rows), "n", "main_median", "main_mean", "main_std"]
    return [*head, *[f"{m}_median" for m in metrics]]


def _file_label(group: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", group).strip("_") or "task"


def write_report(rows: list[dict[str, Any]], out: Path, title: str = "Runs") -> dict[str, Any]:
    columns = [
        "run",
        "task",
        *_data_column(rows),
        "seed",
        "model",
        *metric_columns(rows),
        "examples_per_s",
        "train_s",
        "peak_rss_mb",
    ]
    tasks = aggregate(rows)
    agg_columns = task_columns(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "report.csv", rows, [*columns, "run_dir"])
    write_csv(out / "tasks.csv", tasks, agg_columns)
    pngs = [plots.scores_per_task(rows, out / "plots" / "scores.png", key=group_key)]
    for row in rows:
        if not (Path(row["run_dir"]) / "csv" / "metrics.csv").is_file():
            warn(f"{row['run']} has no csv/metrics.csv: no learning curve for it")
    for group in dict.fromkeys(map(group_key, rows)):
        members = [r for r in rows if group_key(r) == group]
        runs = [
            (f"seed {r['seed']}" if r.get("seed") is not None else r["run"], Path(r["run_dir"]))
            for r in members
        ]
        png = out / "plots" / f"curves_{_file_label(group)}.png"
        scale = score_scale(members[0].get("task"), "main")
        pngs.append(plots.learning_curves(runs, png, title=group, scale=scale))
    pngs = [p for p in pngs if p is not None]
    note = f"{len(rows)} runs; dev scores on the 0-100 scale (GLUE's x100, SQuAD's as the official scripts)."
    if _data_column(rows):
        note += f" Runs on {SYNTHETIC} stand-in data are their own group, never pooled with real ones."
    text = [f"# {title}", "", note, "", "## Per task", ""]
    text += [markdown_table(tasks, agg_columns), "## Runs", "", markdown_table(rows, columns), "## Plots", ""]
    text += [f"![{p.stem}](plots/{p.name})" for p in pngs]
    (out / "report.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    return {"columns": columns, "tasks": tasks, "task_columns": agg_columns, "plots": pngs}


def log_to_wandb(rows, report: dict[str, Any], out: Path, mode: str, project: str, title: str) -> str | None:
    """The report's tables and plots as one W&B run (job type ``report``); None when W&B is off."""
    from apm_lightning.training.loggers import resolve_wandb_mode

    mode = resolve_wandb_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    def table(records, columns):
        return wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in records])

    run = wandb.init(
        project=project, name=title, job_type="report", dir=str(out), mode=mode, reinit="finish_previous"
    )
    run.log(
        {
            "results": table(rows, report["columns"]),
            "tasks": table(report["tasks"], report["task_columns"]),
            **{f"plots/{p.stem}": wandb.Image(str(p)) for p in report["plots"]},
        }
    )
    run.finish()
    return mode


def report_main(argv: list[str]) -> dict[str, Any]:
    p = command_parser("apm report", __doc__)
    p.add_argument("runs", nargs="+", help="run directories, or folders above them")
    p.add_argument("--out", default="report", help="output folder")
    p.add_argument("--title", default=None)
    p.add_argument("--wandb_mode", default="auto", choices=("auto", "online", "offline", "disabled"))
    p.add_argument("--wandb_project", default="apm-lightning")
    args = p.parse_args(argv)
    rows = load_rows(args.runs, warn=warn)
    if not rows:
        raise APMError(
            f"no finished run in {' '.join(args.runs)} (no readable results.json in or below it); "
            "give the run directories of apm fit, or folders above them"
        )
    out = Path(args.out)
    title = args.title or f"report: {out.resolve().name}"
    report = write_report(rows, out, title)
    report["wandb"] = log_to_wandb(rows, report, out, args.wandb_mode, args.wandb_project, title)
    for name in ("report.md", "report.csv", "tasks.csv"):
        print((out / name).resolve())
    return report
