"""PNG plots of runs: learning curves from each run's CSV log, and dev scores per task and seed.

matplotlib ``Figure`` objects, never pyplot: no backend is chosen or switched (a notebook keeps
its own) and no display is needed; scores on the 0-100 scale as in the tables
(x100 for GLUE's 0-1 metrics, as they are for SQuAD's percentages).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from apm_lightning.reports.tables import score_scale


def read_csv_log(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``RUN_DIR/csv/metrics.csv`` -> metric -> [(step, value)], skipping empty cells (Lightning
    writes one row per logging call, each with only some columns filled)."""
    series: dict[str, list[tuple[float, float]]] = {}
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                step = float(row.get("step") or "nan")
            except ValueError:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    series.setdefault(key, []).append((step, float(value)))
                except ValueError:
                    pass
    return series


def _figure(**kwargs: Any):
    # A bare Figure renders with its own canvas on savefig: pyplot's global state and backend
    # (a notebook's inline one) are never touched.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig, out_png: str | Path) -> Path:
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png


def learning_curves(
    runs: Sequence[tuple[str, Path]], out_png: str | Path, title: str = "", scale: float = 100.0
) -> Path | None:
    """Training loss and dev score (times ``scale``) against the step, one line per run (label,
    run dir). Runs without a CSV log are left out (the caller names them)."""
    logs = [
        (label, read_csv_log(d / "csv" / "metrics.csv"))
        for label, d in runs
        if (Path(d) / "csv" / "metrics.csv").is_file()
    ]
    logs = [(label, s) for label, s in logs if s]
    if not logs:
        return None
    fig = _figure(figsize=(11, 4))
    loss_ax, score_ax = fig.subplots(1, 2)
    for label, series in logs:
        if "train/loss" in series:
            steps, values = zip(*series["train/loss"], strict=True)
            loss_ax.plot(steps, values, label=label, linewidth=1)
        if "val/main" in series:
            steps, values = zip(*series["val/main"], strict=True)
            score_ax.plot(steps, [scale * v for v in values], marker="o", label=label)
    loss_ax.set(xlabel="step", ylabel="training loss", title="train/loss")
    if not loss_ax.lines:  # Lightning logs every 50 steps by default
        loss_ax.text(0.5, 0.5, "no training loss logged\n(shorter than log_every_n_steps)", ha="center")
    score_ax.set(xlabel="step", ylabel="dev score (0-100)", title="val/main")
    if len(logs) <= 12:
        score_ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, out_png)


def scores_per_task(
    rows: Sequence[dict[str, Any]], out_png: str | Path, value: str = "main", key: Callable | None = None
) -> Path | None:
    """One column per task (or per ``key(row)``: the report keeps synthetic-data runs apart):
    each seed's score as a point, the median as a bar, on the 0-100 scale."""
    key = key or (lambda r: r["task"])
    tasks = list(dict.fromkeys(key(r) for r in rows if r.get(value) is not None))
    if not tasks:
        return None
    fig = _figure(figsize=(max(4, 1.2 * len(tasks) + 2), 4))
    ax = fig.subplots()
    for i, task in enumerate(tasks):
        members = [r for r in rows if key(r) == task and r.get(value) is not None]
        points = [score_scale(r.get("task"), value) * r[value] for r in members]
        ax.bar(i, statistics.median(points), color="#c7d7ea", width=0.6)
        offsets = [0.2 * (j / max(1, len(members) - 1) - 0.5) for j in range(len(members))]
        ax.scatter([i + o for o in offsets], points, color="#1f4e79", zorder=3)
        for o, r, y in zip(offsets, members, points, strict=True):
            if r.get("seed") is not None:
                ax.annotate(
                    str(r["seed"]),
                    (i + o, y),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set(ylabel="dev score, 0-100 (points: seeds, bars: median)", title="scores per task and seed")
    return _save(fig, out_png)


def validation_loss_vs_tokens(runs: Sequence[tuple[str, Path]], out_png: str | Path) -> Path | None:
    """Pretraining: each objective's validation loss against tokens seen, one panel each (the
    losses are on different scales: MLM and CLM cross-entropies, ELECTRA's weighted sum)."""
    panels = []
    for label, csv_path in runs:
        if not Path(csv_path).is_file():
            continue
        series = read_csv_log(csv_path)
        tokens = dict(series.get("val/tokens_seen", []))
        # One point per token count: the final scoring of the best checkpoint repeats the last.
        points = {tokens[step]: value for step, value in series.get("val/loss", []) if step in tokens}
        if points:
            panels.append((label, sorted(points.items())))
    if not panels:
        return None
    fig = _figure(figsize=(4.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (label, points) in zip(axes[0], panels, strict=True):
        xs, ys = zip(*points, strict=True)
        ax.plot([x / 1e6 for x in xs], ys, marker="o")
        ax.set(xlabel="tokens seen (millions)", ylabel="validation loss", title=label)
        ax.grid(alpha=0.3)
    fig.suptitle("validation loss against tokens seen")
    return _save(fig, out_png)


def downstream_by_objective(scores: dict[str, dict[str, list[float]]], out_png: str | Path) -> Path | None:
    """Fine-tuning scores per task, one bar per objective (the mean over seeds), the spread as
    an error bar (standard deviation) and every seed as a point."""
    tasks = list(dict.fromkeys(t for per_task in scores.values() for t, s in per_task.items() if s))
    if not tasks:
        return None
    objectives = list(scores)
    width = 0.8 / max(1, len(objectives))
    fig = _figure(figsize=(max(5, 1.8 * len(tasks) + 2), 4))
    ax = fig.subplots()
    for j, objective in enumerate(objectives):
        for i, task in enumerate(tasks):
            values = [100 * v for v in scores[objective].get(task, [])]
            if not values:
                continue
            x = i + (j - (len(objectives) - 1) / 2) * width
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.bar(
                x,
                statistics.mean(values),
                width * 0.9,
                yerr=spread,
                capsize=3,
                color=f"C{j}",
                alpha=0.55,
                label=objective if i == 0 else None,
            )
            ax.scatter([x] * len(values), values, color=f"C{j}", s=12, zorder=3)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set(
        ylabel="dev score x100 (bar: mean, error: sd, points: seeds)", title="downstream score per objective"
    )
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def score_vs_compute(
    curves: dict[str, list[tuple[float, float, float | None, float | None]]],
    out_png: str | Path,
    title: str = "",
) -> Path | None:
    """A study's score against training FLOPs, one line per objective: points
    ``(flops, mean, low, high)`` (the 95% interval as an error bar when there is one)."""
    curves = {name: sorted(points) for name, points in curves.items() if points}
    if not curves:
        return None
    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    for j, (name, points) in enumerate(curves.items()):
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        below = [p[1] - p[2] if p[2] is not None else 0.0 for p in points]
        above = [p[3] - p[1] if p[3] is not None else 0.0 for p in points]
        ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, color=f"C{j}", label=name)
    ax.set_xscale("log")
    ax.set(xlabel="training FLOPs (forward + backward)", ylabel="dev score x100 (mean, 95% CI)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)
