"""What ``apm compare`` writes: a row per (objective, budget) with each task's mean, sd, 95%
confidence interval and seeds; ``results.csv`` and ``results.md`` (the FLOPs measured per token,
the table, whether each pair of objectives is separated at the largest budget, the order found
next to the papers' order); score-vs-FLOPs curves per task and the plots of the largest budget;
a W&B table when W&B is on."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from apm_lightning.core.files import write_text_atomic
from apm_lightning.reports.intervals import interval, separation_lines
from apm_lightning.reports.tables import markdown_table, write_csv
from apm_lightning.runners.compare_budget import Budget

PRETRAIN_METRICS = (
    "masked_accuracy",
    "perplexity",
    "replaced_accuracy",
    "next_token_accuracy",
    "target_accuracy",
)
# The published orders the study's is set beside (results.md).
ANCHORS = (
    "ELECTRA paper (Clark et al. 2020, table 1): ELECTRA-Small 79.9 > BERT-Small 75.1 GLUE dev score, "
    "at equal pretraining compute.",
    "T5 paper (Raffel et al. 2020, tables 4-5): span corruption >= BERT-style MLM > prefix LM on GLUE.",
)


def seed_scores(task_dir: Path) -> list[float]:
    """Each seed's main dev score (0-1) of one task's ``apm glue`` runs."""
    scores = []
    for results in sorted(task_dir.glob("seed*/results.json")):
        main = json.loads(results.read_text(encoding="utf-8"))["metrics"].get("main")
        if main is not None:
            scores.append(main)
    return scores


def parameter_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            count = 1
            for size in f.get_slice(key).get_shape():
                count *= size
            total += count
    return total


def budget_name(budget: Budget) -> str:
    return budget.label or f"tokens-{budget.value:g}"


def study_row(
    runner: Any,
    objective: str,
    budget: Budget,
    measured: dict[str, Any],
    pretrained: dict[str, Any],
    glue: dict[str, Any],
    finetuned: Path,
) -> dict[str, Any]:
    """One (objective, budget): the pretraining run's numbers and each task's statistics (x100)."""
    per_token = measured["train_flops_per_token"]
    row: dict[str, Any] = {
        "objective": objective,
        "budget": budget_name(budget),
        "steps": pretrained.get("global_step"),
        "parameters": parameter_count(Path(pretrained["hf_export"])),
        "tokens_seen": pretrained["tokens_seen"],
        "flops_per_token": round(per_token),
        "train_flops": float(pretrained["tokens_seen"] * per_token),
        "pretrain_s": round(pretrained["train_wall_seconds"], 1),
        "tokens_per_s": round(pretrained["tokens_per_second"], 1),
        "val_loss": pretrained["val_loss"],
    }
    for key in PRETRAIN_METRICS:
        if key in pretrained["metrics"]:
            row[key] = pretrained["metrics"][key]
    means = []
    for task in runner.study["finetune"]["tasks"]:
        seeds = [100 * s for s in seed_scores(finetuned / "runs" / task)]
        cell = interval(seeds)
        row[f"{task}_n"] = len(seeds)
        row[f"{task}_mean"] = round(cell.mean, 2) if cell else None
        row[f"{task}_std"] = round(cell.sd, 2) if cell and cell.sd is not None else None
        row[f"{task}_ci_low"] = round(cell.low, 2) if cell and cell.low is not None else None
        row[f"{task}_ci_high"] = round(cell.high, 2) if cell and cell.high is not None else None
        row[f"{task}_seeds"] = " ".join(f"{s:.1f}" for s in seeds) or glue["tasks"].get(task, {}).get(
            "note", ""
        )
        row[f"_{task}_scores"] = seeds  # unrounded, for the intervals of results.md
        if cell:
            means.append(cell.mean)
    row["average"] = round(statistics.mean(means), 2) if means else None
    row["run_dir"] = str(runner.folder("pretrain", objective, budget))
    row["_finetune_dir"] = str(finetuned)
    return row


def _flops(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _task_cell(row: dict[str, Any], task: str) -> tuple[str, str]:
    cell = interval(row[f"_{task}_scores"])
    if cell is None:
        return "-", "-"
    spread = f" ± {cell.sd:.2f}" if cell.sd is not None else ""
    ci = f"[{cell.low:.2f}, {cell.high:.2f}]" if cell.low is not None else "-"
    return f"{cell.mean:.2f}{spread}", ci


def markdown_rows(rows: list[dict[str, Any]], tasks: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    columns = ["objective", "budget", "steps", "tokens_seen", "train FLOPs", "pretrain_s", "val_loss"]
    out = []
    for row in rows:
        shown = {**row, "train FLOPs": _flops(row["train_flops"])}
        for task in tasks:
            shown[f"{task} mean ± sd"], shown[f"{task} 95% CI"] = _task_cell(row, task)
            shown[f"{task} n"] = row[f"{task}_n"]
            shown[f"{task} seeds"] = row[f"{task}_seeds"]
        out.append(shown)
    for task in tasks:
        columns += [f"{task} mean ± sd", f"{task} 95% CI", f"{task} n", f"{task} seeds"]
    return out, columns


def largest_budget_lines(rows: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    """Per task: a line per pair of objectives (separated or not) and the order of the means."""
    largest = rows[-1]["budget"]
    top = [r for r in rows if r["budget"] == largest]
    lines = [f"## Separation at the largest budget ({largest})", ""]
    lines.append(
        "Separated: the two 95% confidence intervals (Student t over the fine-tuning seeds) do not overlap."
    )
    for task in tasks:
        cells = {r["objective"]: interval(r[f"_{task}_scores"]) for r in top}
        lines += ["", f"**{task}**", ""]
        lines += [f"- {line}" for line in separation_lines(cells)]
        ranked = sorted(((c.mean, o) for o, c in cells.items() if c is not None), reverse=True)
        if ranked:
            lines.append("- order of the means: " + " > ".join(f"{o} {m:.2f}" for m, o in ranked))
    lines += ["", "The published order, for comparison:", "", *(f"- {a}" for a in ANCHORS)]
    return lines


def score_curves(runner: Any, rows: list[dict[str, Any]], tasks: list[str]) -> list[Path]:
    from apm_lightning.reports.plots import score_vs_compute

    plots = []
    for task in tasks:
        curves: dict[str, list[tuple[float, float, float | None, float | None]]] = {}
        for row in rows:
            cell = interval(row[f"_{task}_scores"])
            if cell is not None:
                curves.setdefault(row["objective"], []).append(
                    (row["train_flops"], cell.mean, cell.low, cell.high)
                )
        title = f"{task}: dev score against pretraining compute"
        plot = score_vs_compute(curves, runner.out / f"score_vs_flops_{task}.png", title)
        if plot is not None:
            plots.append(plot)
    return plots


def write_report(
    runner: Any, rows: list[dict[str, Any]], measured: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    from apm_lightning.reports.plots import downstream_by_objective, validation_loss_vs_tokens

    study = runner.study
    tasks = list(study["finetune"]["tasks"])
    columns = ["objective", "budget", "steps", "parameters", "tokens_seen", "flops_per_token", "train_flops"]
    columns += ["pretrain_s", "tokens_per_s", "val_loss"]
    columns += [c for c in PRETRAIN_METRICS if any(c in r for r in rows)]
    for task in tasks:
        columns += [
            f"{task}_mean",
            f"{task}_std",
            f"{task}_ci_low",
            f"{task}_ci_high",
            f"{task}_n",
            f"{task}_seeds",
        ]
    columns.append("average")
    write_csv(runner.out / "results.csv", rows, [*columns, "run_dir"])
    largest = [r for r in rows if r["budget"] == rows[-1]["budget"]]
    curves = validation_loss_vs_tokens(
        [(r["objective"], Path(r["run_dir"]) / "csv" / "metrics.csv") for r in largest],
        runner.out / "val_loss_vs_tokens.png",
    )
    bars = downstream_by_objective(
        {r["objective"]: {t: [s / 100 for s in r[f"_{t}_scores"]] for t in tasks} for r in largest},
        runner.out / "downstream.png",
    )
    plots = [*score_curves(runner, rows, tasks), *(p for p in (curves, bars) if p is not None)]
    base = measured[runner.objectives[0]]["train_flops_per_token"]
    flops_rows = [
        {
            "objective": o,
            "training FLOPs per token": f"{m['train_flops_per_token']:,.0f}",
            f"x {runner.objectives[0]}": f"{m['train_flops_per_token'] / base:.2f}",
            "trainable parameters": f"{m['trainable_parameters']:,}",
        }
        for o, m in measured.items()
    ]
    kind = runner.budgets[0].kind
    corpus = study["corpus"].get("files") or [runner.text_options.get("dataset", "")]
    md_rows, md_columns = markdown_rows(rows, tasks)
    text = [
        f"# Pretraining objectives compared: {study.get('name', 'study')}",
        "",
        f"Same corpus ({', '.join(corpus)}), tokenizer ({study['tokenizer'].get('kind', 'wordpiece')}, "
        f"{study['tokenizer'].get('vocab_size', 8000)} tokens) and batches of {runner.batch_size} x "
        f"{runner.block_size} tokens"
        + (f" on each of {runner.processes} processes" if runner.processes > 1 else "")
        + f". Budgets: equal {'training FLOPs' if kind == 'flops' else 'tokens'} "
        f"per objective ({', '.join(f'{b.value:.3g}' for b in runner.budgets)}); training FLOPs are "
        "forward + backward matrix products per token, measured on each objective's model (below). "
        f"Fine-tuning: {', '.join(tasks)}, {study['finetune'].get('seeds', 3)} seeds; dev scores x100: "
        "mean ± sd, 95% confidence interval (Student t), n seeds, each seed. Each (objective, budget) "
        "is pretrained once: the intervals are the fine-tuning seeds' spread, not pretraining's. "
        "`val_loss` is each objective's own validation loss (not comparable across objectives).",
        "",
        "## Training FLOPs per token (measured)",
        "",
        markdown_table(flops_rows, list(flops_rows[0])),
        "## Results",
        "",
        markdown_table(md_rows, md_columns),
        *largest_budget_lines(rows, tasks),
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
    ]
    write_text_atomic(runner.out / "results.md", "\n".join(text) + "\n")
    log_wandb(runner, rows, columns, plots)
    print("\n".join(text), flush=True)
    for name in ("results.md", "results.csv", *(p.name for p in plots)):
        print((runner.out / name).resolve(), flush=True)
    return {"rows": rows, "columns": columns, "flops": measured, "plots": [str(p) for p in plots]}


def log_wandb(runner: Any, rows: list[dict[str, Any]], columns: list[str], plots: list[Path]) -> None:
    from apm_lightning.training.loggers import resolve_wandb_mode

    mode = resolve_wandb_mode(runner.wandb_mode)
    if mode == "disabled":
        return
    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "apm-lightning"),
        name=f"compare-{runner.study.get('name', 'study')}",
        job_type="compare",
        dir=str(runner.out),
        mode=mode,
        reinit="finish_previous",
    )
    table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    run.log({"results": table, **{f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}})
    run.finish()
