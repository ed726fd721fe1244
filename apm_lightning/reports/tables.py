"""Tables over runs: ``results.json`` files -> rows -> Markdown and CSV (no torch, no pandas).

A row is a flat dict (run, task, data, seed, model, the dev metrics, throughput, memory). Scores
stay in CSV as ``results.json`` has them (GLUE's in 0-1, SQuAD's in 0-100 as the official scripts
print them) and are shown in Markdown on the 0-100 scale: x100 for a 0-1 metric, as they are for
one that already is a percentage (:func:`score_scale`).

Runs on apm's synthetic stand-in data (``apm demo`` offline) are kept apart from runs on the
real task: the row's ``data`` is ``synthetic`` and :func:`group_key` puts them in their own group.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from apm_lightning.core.errors import APMError
from apm_lightning.core.files import write_text_atomic
from apm_lightning.metrics.glue_score import summarize

# Metric columns in a stable order; anything else a run reports follows them.
METRICS = (
    "mcc",
    "accuracy",
    "exact",
    "f1",
    "pearson",
    "spearman",
    "accuracy_matched",
    "accuracy_mismatched",
)
# Tasks whose scores results.json already holds in 0-100 (the official SQuAD scripts' scale).
PERCENT_TASK_PREFIXES = ("squad",)
SYNTHETIC = "synthetic"
RUN_FIELDS = ("examples_per_s", "train_s", "peak_rss_mb")


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """``results.json`` of each run directory given, or of every run below a directory."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file() and path.name == "results.json":
            found.append(path)
        elif (path / "results.json").is_file():
            found.append(path / "results.json")
        elif path.is_dir():
            found.extend(sorted(path.rglob("results.json")))
        else:
            raise APMError(f"{path}: not a run directory (no results.json in or below it)")
    return list(dict.fromkeys(p.resolve() for p in found))


def model_name(config: dict[str, Any]) -> str:
    """A short model label from a run's config: the backbone, or the class and its preset."""
    model = config.get("model") or {}
    args = model.get("init_args") or {}
    cls = str(model.get("class_path", "?")).rsplit(".", 1)[-1]
    if args.get("backbone"):
        return str(args["backbone"])
    if args.get("backbone_config"):
        arch = args["backbone_config"]
        return f"{arch.get('model_type', 'model')}-{arch.get('num_hidden_layers', '?')}x{arch.get('hidden_size', '?')}"
    return f"{cls}({args['preset']})" if args.get("preset") else cls


def run_row(results: dict[str, Any], run: str | None = None) -> dict[str, Any]:
    config = results.get("config") or {}
    row: dict[str, Any] = {
        "run": run if run is not None else results.get("run_dir", ""),
        "task": results.get("task"),
        "data": data_kind(results.get("data_source")),
        "seed": config.get("seed_everything"),
        "model": model_name(config),
    }
    row.update(results.get("metrics") or {})
    row["examples_per_s"] = results.get("train_examples_per_second")
    row["train_s"] = results.get("train_wall_seconds")
    row["peak_rss_mb"] = results.get("peak_rss_mb")
    row["run_dir"] = results.get("run_dir")
    return row


def data_kind(source: str | None) -> str | None:
    """``synthetic`` for apm's synthetic stand-in task (``source_description`` of the data
    module starts with it), else None: hub and local files are the same real data."""
    return SYNTHETIC if str(source or "").lower().startswith(SYNTHETIC) else None


def group_key(row: dict[str, Any]) -> str:
    """The label a run is pooled under: its task, apart when its data was synthetic."""
    task = str(row.get("task"))
    return f"{task} ({SYNTHETIC} data)" if row.get("data") == SYNTHETIC else task


def score_scale(task: Any, column: str) -> float:
    """The factor that puts ``column`` of a ``task`` run on the 0-100 scale: 1 for SQuAD's
    scores (already percentages), 100 for the 0-1 GLUE metrics, 1 for anything else."""
    if not _is_score(column):
        return 1.0
    return 1.0 if str(task or "").startswith(PERCENT_TASK_PREFIXES) else 100.0


def load_rows(paths: Iterable[str | Path], warn=None) -> list[dict[str, Any]]:
    """One row per readable ``results.json``; an unreadable one is skipped and named through
    ``warn`` (one line each) when given, else refused."""
    rows = []
    for path in find_results(paths):
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(results, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            message = f"{_short(path)}: unreadable results.json ({str(err).splitlines()[0]})"
            if warn is None:
                raise APMError(f"{message}; remove it or re-run that run") from None
            warn(f"{message}; skipped")
            continue
        row = run_row(results, run=_short(path.parent))
        row["run_dir"] = str(path.parent)  # where it is now, if the run was moved
        rows.append(row)
    return rows


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Metric columns present in ``rows``: the known ones in order, then ``main``."""
    present = {k for row in rows for k in row}
    return [m for m in METRICS if m in present] + (["main"] if "main" in present else [])


def aggregate(
    rows: Sequence[dict[str, Any]], value: str = "main", by: str | Sequence[str] = ("task", "data")
) -> list[dict[str, Any]]:
    """Per group (task, and kind of data: synthetic runs never pool with real ones): n and the
    median, mean and standard deviation of each metric."""
    keys = (by,) if isinstance(by, str) else tuple(by)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get(value) is not None:
            groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = {**dict(zip(keys, key, strict=True)), "n": len(members)}
        for metric in metric_columns(members):
            stats = summarize([r[metric] for r in members if r.get(metric) is not None])
            for stat in ("median", "mean", "std"):
                entry[f"{metric}_{stat}"] = stats[stat]
        out.append(entry)
    return out


def _is_score(column: str) -> bool:
    base = (
        column.rsplit("_", 1)[0] if column.endswith(("_median", "_mean", "_std", "_min", "_max")) else column
    )
    base = base.rsplit("/", 1)[-1]  # val/main
    return base in METRICS or base in ("main", "score")


def format_value(column: str, value: Any, scale: float = 100.0) -> str:
    """A cell: a score times ``scale`` (see :func:`score_scale`) with two decimals."""
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        if _is_score(column):
            return f"{scale * value:.2f}"
        return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4g}"  # 1.2e-05, 123.4, 2345.6
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub Markdown table; scores on the 0-100 scale (:func:`score_scale`, by the row's
    task) with two decimals, other numbers with one."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|",
    ]
    for row in rows:
        cells = [
            format_value(c, row.get(c), score_scale(row.get("task"), c)).replace("|", "\\|") for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Plain values (scores in 0-1), written atomically: several sweep workers may write the
    same table at the same moment, so each goes through a temporary file of its own."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return write_text_atomic(path, text.getvalue())
