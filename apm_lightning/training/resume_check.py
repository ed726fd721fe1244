"""A resume (``apm fit --ckpt_path ...``) must continue the run the checkpoint came from: with
other data settings (all rows instead of the first 1000, another sequence length or batch
size) it would silently train a different run. The checkpoint holds the data module's
hyper-parameters; the trainer settings come from the run's saved ``config.yaml``. Changing
``max_epochs`` / ``max_steps`` (train longer, or stop sooner) is what resuming is for: allowed,
and said in one line, since the learning-rate schedule follows the new length."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import yaml

from apm_lightning.core.checks import shorten
from apm_lightning.core.errors import APMError
from apm_lightning.core.redact import redact

# Data settings that do not change what is trained (where files go, evaluation batching,
# what `apm test` / `apm predict` read).
DATA_FREE = {
    "num_workers",
    "num_proc",  # corpus tokenization processes and shard size: the same tokens either way
    "shard_chars",
    "cache_dir",
    "eval_batch_size",
    "test_split",
    "predict_split",
    "max_predict_samples",
    "predict_file",
}
# Data settings naming files or folders: compared as resolved paths.
DATA_PATHS = {"data_dir", "train_file", "validation_file", "predict_file"}
# Trainer settings that change the training trajectory; devices, strategy, logging and the
# like may change on resume (another machine, another view).
TRAINER_FIXED = (
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "precision",
    "limit_train_batches",
    "limit_val_batches",
    "val_check_interval",
    "check_val_every_n_epoch",
)
TRAINER_LENGTH = ("max_epochs", "max_steps")


def _path_value(value: Any) -> Any:
    if isinstance(value, str) and value:
        return str(Path(value).expanduser().resolve())
    if isinstance(value, dict):
        return {k: _path_value(v) for k, v in value.items()}
    return value


def _precision(value: Any) -> Any:
    aliases = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
    return aliases.get(str(value), str(value)) if value is not None else None


def _limit(value: Any) -> float:
    """max_epochs / max_steps: None and -1 mean no limit."""
    return math.inf if value is None or value == -1 else float(value)


def data_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    if "task" in stored and "task" in current and stored["task"] != current["task"]:
        return []  # a checkpoint of another task: the model's own check says so, more plainly
    differences = []
    for key, before in stored.items():
        if key.startswith("_") or key in DATA_FREE or key not in current:
            continue
        now = current[key]
        if key in DATA_PATHS or key == "data_files":
            before, now = _path_value(before), _path_value(now)
        # The checkpoint holds its values with secrets masked (token=***): compare them so.
        before, now = redact(before), redact(now)
        if before != now:
            differences.append(f"data.{key} was {shorten(before, 80)}, now {shorten(now, 80)}")
    return differences


def trainer_differences(stored: dict[str, Any], current: Any) -> list[str]:
    differences = []
    for key in TRAINER_FIXED:
        if key not in stored:
            continue
        before, now = stored[key], current.get(key)
        if key == "precision":
            before, now = _precision(before), _precision(now)
        if before != now:
            differences.append(f"trainer.{key} was {before}, now {now}")
    return differences


def length_changes(stored: dict[str, Any], current: Any) -> list[str]:
    """The run-length settings (max_epochs / max_steps) a resume changes."""
    return [
        f"trainer.{key} was {stored[key]}, now {current.get(key)}"
        for key in TRAINER_LENGTH
        if key in stored and _limit(current.get(key)) != _limit(stored[key])
    ]


def saved_run_config(ckpt_path: str | Path) -> tuple[dict[str, Any], Path | None]:
    """The config the checkpoint's run saved (``RUN/checkpoints/x.ckpt`` -> ``RUN/**/config.yaml``)."""
    ckpt = Path(ckpt_path)
    if ckpt.parent.name != "checkpoints":
        return {}, None
    run = ckpt.parent.parent
    for candidate in (run / "config.yaml", *sorted(run.glob("*/config.yaml"))):
        try:
            config = yaml.safe_load(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(config, dict):
            return config, candidate
    return {}, None


def check_resume(
    checkpoint: dict[str, Any], ckpt_path: str | Path, datamodule: Any, trainer_config: Any
) -> None:
    """Refuse, in one line naming every differing option, a resume with other data or trainer
    settings than the checkpoint's run."""
    stored_data = checkpoint.get("datamodule_hyper_parameters") or {}
    current_data = dict(getattr(datamodule, "hparams", {}) or {})
    differences = []
    stored_kind, current_kind = stored_data.get("_class_path"), current_data.get("_class_path")
    if stored_kind is None or current_kind is None or stored_kind == current_kind:  # else: another check
        differences += data_differences(stored_data, current_data)
    saved, where = saved_run_config(ckpt_path)
    if isinstance(saved.get("trainer"), dict):
        differences += trainer_differences(saved["trainer"], trainer_config)
        for change in length_changes(saved["trainer"], trainer_config):
            print(
                f"apm: note: the resumed run's {change} (the schedule follows the new length)",
                file=sys.stderr,
            )
    if differences:
        see = f" (see {where})" if where else ""
        raise APMError(
            f"{ckpt_path} belongs to a run with other settings: {'; '.join(differences)}; resume with "
            f"the run's own values{see}, or start a new run in another --trainer.default_root_dir"
        )
