"""The sweep file of ``apm sweep``: its keys, the search space, the fit configs it names, and
how a trial's sampled values become ``apm fit`` options and its score is read back."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apm_lightning.core.config_files import read_config_file
from apm_lightning.core.errors import APMError
from apm_lightning.core.recipes import find_recipe
from apm_lightning.runners.sweep_samplers import check_pruner, check_sampler

STORAGE_ENV = "APM_OPTUNA_STORAGE"  # the child's way to the study, kept out of saved configs
PRUNED_FILE = "pruned.json"  # written by the pruning callback in the trial's run dir
SPACE_TYPES = ("float", "int", "categorical")
SPEC_KEYS = {"name", "base_configs", "overrides", "metric", "direction", "space", "sampler", "pruner"}


@dataclass
class SweepSpec:
    name: str
    base_configs: list[str]
    space: dict[str, dict[str, Any]]
    overrides: list[str] = field(default_factory=list)
    metric: str = "val/main"
    direction: str = "maximize"
    # {"name": ..., **options}, checked against the Optuna class (sweep_samplers.py).
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})

    @property
    def prunes(self) -> bool:
        return self.pruner["name"] != "none"


def _find(path: str, sweep_file: Path) -> str:
    """A config path as written in the sweep file: relative to the working directory, else to
    a folder above the sweep file (so ``experiments/glue/rte.yaml`` works from anywhere)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.is_file():
        return str(candidate.resolve())
    for parent in sweep_file.resolve().parents:
        if (parent / candidate).is_file():
            return str(parent / candidate)
    if find_recipe(path) is not None:  # a shipped recipe (the package installed, no checkout)
        return str(find_recipe(path))
    raise APMError(f"{sweep_file}: base config {path} not found")


def _checked(config: str, sweep_file: Path) -> str:
    """A base config that every trial would fail on fails the sweep now, in one line."""
    read_config_file(config, f"{sweep_file}: base config")
    return config


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.exists():
        raise APMError(f"sweep file not found: {path}")
    data = read_config_file(path, "sweep file")  # not text, not YAML, not a mapping: one line
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise APMError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(SPEC_KEYS))})"
        )
    if not data.get("space"):
        raise APMError(f"{path}: 'space' is empty: nothing to search")
    for name, dist in data["space"].items():
        kind = (dist or {}).get("type")
        if kind not in SPACE_TYPES:
            raise APMError(f"{path}: space.{name}: type must be one of {', '.join(SPACE_TYPES)}")
        needed = ("choices",) if kind == "categorical" else ("low", "high")
        if any(k not in dist for k in needed):
            raise APMError(f"{path}: space.{name} ({kind}) needs {' and '.join(needed)}")
    if data.get("direction", "maximize") not in ("maximize", "minimize"):
        raise APMError(f"{path}: direction must be maximize or minimize")
    pruner = data.get("pruner", {"name": "median"})  # written as null: no pruning
    return SweepSpec(
        name=str(data.get("name") or path.stem),
        base_configs=[_checked(_find(c, path), path) for c in data.get("base_configs") or []],
        space=dict(data["space"]),
        # Overrides may be written as tokens or as option strings ("--data.batch_size 16").
        overrides=[t for item in data.get("overrides") or [] for t in shlex.split(str(item))],
        metric=data.get("metric", "val/main"),
        direction=data.get("direction", "maximize"),
        sampler=check_sampler(data.get("sampler") or {"name": "tpe"}, str(path)),
        pruner=check_pruner(pruner if pruner is not None else {"name": "none"}, str(path)),
    )


def suggest(trial, name: str, dist: dict[str, Any]) -> Any:
    kind = dist["type"]
    if kind == "categorical":
        return trial.suggest_categorical(name, list(dist["choices"]))
    extra = {k: dist[k] for k in ("log", "step") if dist.get(k) is not None}
    if kind == "int":
        return trial.suggest_int(name, int(dist["low"]), int(dist["high"]), **extra)
    return trial.suggest_float(name, float(dist["low"]), float(dist["high"]), **extra)


def param_args(params: dict[str, Any]) -> list[str]:
    """{'model.learning_rate': 3e-05} -> ['--model.learning_rate', '3e-05'] (YAML spelling)."""
    out = []
    for name, value in params.items():
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
        out += [f"--{name}", text.removesuffix("\n...").strip()]
    return out


def metric_value(results: dict[str, Any], metric: str) -> float:
    key = metric.split("/", 1)[1] if metric.startswith("val/") else metric
    if key not in results["metrics"]:
        raise KeyError(f"results.json has no metric {key!r} (has {', '.join(results['metrics'])})")
    return float(results["metrics"][key])
