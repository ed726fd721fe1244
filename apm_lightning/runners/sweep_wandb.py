"""``apm sweep --backend wandb``: the sweep file in W&B's vocabulary, for ``wandb sweep`` and
``wandb agent``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from apm_lightning.runners.sweep_spec import SweepSpec

# W&B has Bayesian optimisation, random and grid search: model-based samplers are "bayes".
WANDB_METHODS = {"tpe": "bayes", "gp": "bayes", "cmaes": "bayes", "random": "random", "qmc": "random"}


def wandb_parameters(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Our search space in W&B's sweep vocabulary."""
    params: dict[str, Any] = {}
    for name, d in space.items():
        if d["type"] == "categorical":
            params[name] = {"values": list(d["choices"])}
        elif d["type"] == "float":
            kind = "log_uniform_values" if d.get("log") else "uniform"
            params[name] = {"distribution": kind, "min": float(d["low"]), "max": float(d["high"])}
        else:
            kind = "q_log_uniform_values" if d.get("log") else "int_uniform"
            params[name] = {"distribution": kind, "min": int(d["low"]), "max": int(d["high"])}
            if d.get("log"):
                params[name]["q"] = 1
    return params


def wandb_sweep_config(spec: SweepSpec, out: Path, extra: list[str], project: str) -> dict[str, Any]:
    """A sweep whose program is ``apm fit`` with the trial's overrides. The agent runs it
    through ``sh`` so each run gets its own run directory named by W&B's run id."""
    fixed = ["python", "-m", "apm_lightning", "fit"]
    fixed += [a for c in spec.base_configs for a in ("-c", c)] + spec.overrides + extra
    fixed += ["--wandb_mode", "online", "--wandb_project", project]
    run_dir = shlex.quote(str(out.resolve()) + "/")
    script = f'exec {shlex.join(fixed)} --trainer.default_root_dir {run_dir}"$WANDB_RUN_ID" "$@"'
    config: dict[str, Any] = {
        "name": spec.name,
        "project": project,
        "program": "apm_lightning",
        "method": WANDB_METHODS.get(spec.sampler["name"], "bayes"),
        "metric": {"name": spec.metric, "goal": spec.direction},
        "parameters": wandb_parameters(spec.space),
        "command": ["${env}", "sh", "-c", script, "apm-sweep", "${args}"],
    }
    if spec.prunes:
        # W&B has no median rule; Hyperband is its early-termination rule.
        first = spec.pruner.get("min_resource", spec.pruner.get("n_warmup_steps", 0) + 1)
        config["early_terminate"] = {"type": "hyperband", "min_iter": int(first if first != "auto" else 1)}
    return config
