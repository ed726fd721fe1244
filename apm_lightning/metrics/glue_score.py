"""The GLUE score as the GLUE paper computes it, on plain dicts (no torch).

A task with two metrics scores their unweighted mean (MRPC and QQP: F1 and accuracy; STS-B:
Pearson and Spearman; MNLI: matched and mismatched accuracy); the GLUE score is the unweighted
mean of the nine task scores. AX is diagnostic only and is not part of it. WNLI's dev and test
sets are adversarial (most systems predict the majority class), so the score is also reported
without it. A task without a score makes the score ``None``: it is never averaged away.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from apm_lightning.data.tasks import get_task

GLUE_SCORE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def score_metrics(task: str) -> tuple[str, ...]:
    """The metrics (as ``results.json`` names them) averaged into the task's score."""
    spec = get_task(task)
    suffixes = [split[len("validation") :] for split in spec.validation_splits]
    return tuple(metric + suffix for suffix in suffixes for metric in spec.score_metrics)


def task_score(task: str, metrics: Mapping[str, float]) -> float:
    """A task's score from its metrics: the mean when it has two (MRPC, QQP, STS-B, MNLI)."""
    names = score_metrics(task)
    absent = [n for n in names if n not in metrics]
    if absent:
        raise KeyError(f"{task}: the metrics lack {', '.join(absent)} (have {', '.join(metrics)})")
    return sum(float(metrics[n]) for n in names) / len(names)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, median, mean, sample standard deviation (None below two values), min, max."""
    values = [float(v) for v in values]
    if not values:
        return {"n": 0, "median": None, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def glue_score(
    task_scores: Mapping[str, float | None], tasks: Sequence[str] = GLUE_SCORE_TASKS
) -> dict[str, object]:
    """The GLUE score (with and without WNLI) from one score per task.

    ``score`` is None unless every task in ``tasks`` has a score; ``partial_score`` averages the
    tasks that have one and ``missing`` names the others, so a partial table is never mistaken
    for the benchmark's score.
    """
    present = {t: float(task_scores[t]) for t in tasks if task_scores.get(t) is not None}
    missing = [t for t in tasks if t not in present]
    without_wnli = [v for t, v in present.items() if t != "wnli"]
    complete = not missing
    return {
        "score": _mean(list(present.values())) if complete else None,
        "score_without_wnli": _mean(without_wnli) if complete else None,
        "partial_score": _mean(list(present.values())),
        "partial_score_without_wnli": _mean(without_wnli),
        "tasks_scored": list(present),
        "missing": missing,
    }


def glue_score_from_table(table: Mapping[str, Mapping[str, float]]) -> dict[str, object]:
    """The GLUE score of a table task -> metrics (e.g. a paper's row)."""
    return glue_score({task: task_score(task, metrics) for task, metrics in table.items()})
