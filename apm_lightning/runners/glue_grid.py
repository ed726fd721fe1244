"""The papers' protocol for ``apm glue``: a small grid of settings per task, every (task,
setting, seed) trained, and per task the setting with the best **median** dev score over seeds
selected (the BERT paper picks the best learning rate on dev; jiant and the papers report
medians over seeds). The selected setting's runs give the task's reported score and its
submission.

    apm glue --grid model.learning_rate=2e-5,3e-5,5e-5,1e-4 --grid data.batch_size=16,32 ...

Several ``--grid`` options form their product. A key is any dotted ``apm fit`` option (without
the leading dashes); values are passed to ``apm fit`` as they are written.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from apm_lightning.core.errors import APMError

# A dotted option of apm fit: model.x, data.x, trainer.x (nested keys allowed).
_KEY = re.compile(r"^(model|data|trainer)(\.[A-Za-z_][A-Za-z0-9_]*)+$")
# Run folders name the setting: keep them short and filesystem-safe.
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")

Setting = dict[str, str]


def parse_grid(values: Sequence[str]) -> list[Setting]:
    """``["model.learning_rate=2e-5,3e-5", "data.batch_size=16,32"]`` -> the 4 settings of their
    product, in the order written; no ``--grid``: one empty setting (today's single recipe)."""
    axes: dict[str, list[str]] = {}
    for value in values:
        key, sep, items = value.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not _KEY.match(key):
            raise APMError(
                f"--grid {value!r}: write a dotted apm fit option and its values, e.g. "
                "--grid model.learning_rate=2e-5,3e-5,5e-5"
            )
        choices = [v.strip() for v in items.split(",") if v.strip()]
        if not choices:
            raise APMError(f"--grid {value!r} lists no values")
        if key in axes:
            raise APMError(f"--grid names {key} twice; give all its values in one --grid")
        if len(set(choices)) != len(choices):
            raise APMError(f"--grid {key} repeats a value ({', '.join(choices)})")
        axes[key] = choices
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def grid_options(values: Sequence[str] | None) -> list[str]:
    """The options a grid varies, in order (``["model.learning_rate"]``), without its values: an
    OUT folder's grid may gain or lose values (each value has its own run folders), not options."""
    return list(parse_grid(values or [])[0])  # every setting has the same keys, in --grid order


def setting_label(setting: Setting) -> str:
    """A short, filesystem-safe name: ``learning_rate=3e-5,batch_size=16`` (last key parts)."""
    if not setting:
        return "recipe"
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in setting.items())


def setting_folder(setting: Setting) -> str:
    return _UNSAFE.sub("_", setting_label(setting))


def setting_args(setting: Setting) -> list[str]:
    return [arg for key, value in setting.items() for arg in (f"--{key}", value)]


def select(scores: Mapping[str, Sequence[float]]) -> str | None:
    """The setting (label) with the best median score over its seeds; ties go to the setting
    listed first. Settings without any finished run are skipped; None when none finished."""
    best, best_median = None, None
    for label, values in scores.items():
        if not values:
            continue
        median = statistics.median(values)
        if best_median is None or median > best_median:
            best, best_median = label, median
    return best


def grid_rows(
    per_task: Mapping[str, Mapping[str, Sequence[float]]], chosen: Mapping[str, str | None]
) -> list[dict[str, Any]]:
    """One row per (task, setting): seeds finished, median, mean, sd, and whether it was chosen."""
    rows = []
    for task, settings in per_task.items():
        for label, values in settings.items():
            rows.append(
                {
                    "task": task,
                    "setting": label,
                    "n": len(values),
                    "score_median": statistics.median(values) if values else None,
                    "score_mean": statistics.fmean(values) if values else None,
                    "score_std": statistics.stdev(values) if len(values) > 1 else None,
                    "chosen": "yes" if chosen.get(task) == label else "",
                }
            )
    return rows
