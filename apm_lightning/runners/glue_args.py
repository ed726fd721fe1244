"""``apm glue``'s command line: its options, the task list, per-task overrides and the model."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from apm_lightning.core.arguments import command_parser
from apm_lightning.core.errors import APMError
from apm_lightning.core.recipes import find_recipe
from apm_lightning.data.tasks import get_task
from apm_lightning.metrics.glue_score import GLUE_SCORE_TASKS
from apm_lightning.runners.launch import LAUNCHERS

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


def build_parser(description: str | None) -> argparse.ArgumentParser:
    p = command_parser("apm glue", description)
    p.add_argument(
        "--protocol",
        default=None,
        metavar="YAML",
        help="a file of these options (tasks, seeds, grid, ...), e.g. experiments/glue_protocols/"
        "minilm_grid.yaml; options given here replace the file's",
    )
    p.add_argument("--model", default="minilm", help="backbone path/name, or a model config YAML")
    p.add_argument(
        "--tasks",
        default=",".join(ALL_TASKS),
        help="comma-separated task names or task YAML files (default: GLUE's nine and ax)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per task: FIRST_SEED .. FIRST_SEED+K-1")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="GLUE in its distribution layout (else $APM_DATA_DIR)")
    p.add_argument("--out", default="runs/glue", help="output folder (re-running continues it)")
    p.add_argument(
        "--recipes",
        default=None,
        help="folder of <task>.yaml, and default.yaml for other tasks (default: the shipped glue recipes)",
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
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="OPTION=V1,V2,...",
        help="the papers' protocol: train every value (several --grid: their product) and report, per "
        "task, the value with the best median dev score, e.g. --grid model.learning_rate=2e-5,3e-5,5e-5",
    )
    p.add_argument("--launcher", choices=LAUNCHERS, default="subprocess", help="where each run goes")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="trainings at once (subprocess launcher); the CPU cores are split between them, and "
        "several GPUs in $CUDA_VISIBLE_DEVICES are dealt out one per job",
    )
    p.add_argument("--no-submission", action="store_true", help="skip test predictions and the zip")
    return p


def protocol_argv(parser: argparse.ArgumentParser, path: str, argv: list[str]) -> list[str]:
    """``--protocol FILE``'s options as command-line words, placed before ``argv`` so that an
    option given there wins (a repeatable one, --grid or --override, replaces the file's list).
    The file is data: only ``apm glue``'s own options are read from it."""
    import yaml

    from apm_lightning.core.recipes import resolve_config

    path = resolve_config(path)  # a user's file, else the shipped one it names
    if not Path(path).is_file():
        raise APMError(f"--protocol: {path} not found (a YAML file of apm glue options)")
    try:
        options = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise APMError(f"--protocol: {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(options, dict):
        raise APMError(f"--protocol: {path} must map option names to values (tasks: cola,rte ...)")
    # Each option's default tells its kind: a flag (False), repeatable (a list), or a value.
    defaults = {k: v for k, v in vars(parser.parse_known_args([])[0]).items() if k != "protocol"}
    words: list[str] = []
    for key, value in options.items():
        dest = str(key).replace("-", "_")
        if dest not in defaults:
            known = ", ".join(sorted(name.replace("_", "-") for name in defaults))
            raise APMError(f"--protocol: {path} sets {key!r}, which is not an apm glue option ({known})")
        flag, default = "--" + dest.replace("_", "-"), defaults[dest]
        if default is False:
            words += [flag] if value is True else []
        elif isinstance(default, list):
            given = any(a == flag or a.startswith(flag + "=") for a in argv)
            values = value if isinstance(value, list) else [value]
            words += [] if given else [w for v in values for w in (flag, str(v))]
        else:
            words += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return words + argv


def parse_tasks(text: str) -> list[str]:
    """Task names (a task file is read and registered under its name); unknown ones are refused."""
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


def unknown_options(extra: list[str]) -> list[str]:
    """Options neither ``apm glue`` nor the pass-through list knows (negative numbers are values)."""
    return [a for a in extra if a.startswith("-") and not a[1:2].isdigit() and not a.startswith(PASS_THROUGH)]
