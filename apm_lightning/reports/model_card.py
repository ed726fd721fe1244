"""The model card (``README.md``) that ``apm export`` writes beside the weights: what the model
was trained for and on, with which recipe, how it scored on dev, and with which packages.

Everything comes from the run that wrote the checkpoint (``RUN_DIR/results.json`` and
``RUN_DIR/csv/config.yaml``, when the checkpoint sits in ``RUN_DIR/checkpoints/``) and from the
checkpoint's own hyper-parameters; secrets are masked. The front matter follows the Hugging Face
hub's model-card metadata (``library_name``, ``tags``, ``base_model``, ``pipeline_tag``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from apm_lightning.core.redact import redact
from apm_lightning.training.results import package_versions

PIPELINE_TAGS = {
    "TransformerClassifier": "text-classification",
    "QuestionAnsweringModule": "question-answering",
    "PretrainingModule": "fill-mask",
    "TextToTextClassifier": "text2text-generation",
    "GenerativeQAModule": "text2text-generation",
}


def run_records(checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results.json, config.yaml) of the run that wrote ``checkpoint``; empty when absent or
    unreadable (a checkpoint copied elsewhere still exports, with a shorter card)."""
    run_dir = checkpoint.resolve().parent.parent
    results: dict[str, Any] = {}
    config: dict[str, Any] = {}
    try:
        loaded = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        results = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass
    try:
        loaded = yaml.safe_load((run_dir / "csv" / "config.yaml").read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, dict) else {}
    except (OSError, yaml.YAMLError):
        pass
    return results, config


def _table(rows: dict[str, Any]) -> list[str]:
    lines = ["| setting | value |", "|---|---|"]
    for key, value in rows.items():
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        lines.append(f"| `{key}` | {text.replace('|', '/')} |")
    return lines


def model_card(module: Any, checkpoint: Path) -> str:
    """The README.md text for ``module``, exported from ``checkpoint``."""
    results, config = run_records(checkpoint)
    kind = type(module).__qualname__
    hparams = redact({k: v for k, v in dict(module.hparams).items() if not k.startswith("_")})
    task = results.get("task") or getattr(module, "results_label", None) or "unknown"
    backbone = hparams.get("backbone")
    front: dict[str, Any] = {"library_name": "transformers", "tags": ["apm-lightning", str(task)]}
    if kind in PIPELINE_TAGS:
        front["pipeline_tag"] = PIPELINE_TAGS[kind]
    if isinstance(backbone, str) and backbone.count("/") == 1 and not Path(backbone).exists():
        front["base_model"] = backbone  # a hub id; local folders are not hub references
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    lines += [f"# {task} ({kind}, trained with apm-lightning)", ""]
    lines += [
        f"- **Task:** {task}",
        f"- **Data:** {redact(results.get('data_source', 'not recorded'))}",
        f"- **Backbone:** {backbone if backbone else 'trained from a config (backbone_config)'}",
        f"- **Checkpoint:** `{checkpoint.name}`"
        + (f", step {results['global_step']}" if "global_step" in results else ""),
        "",
    ]
    metrics = results.get("metrics") or {}
    lines += ["## Dev scores", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, int | float)]
    else:
        lines.append("Not recorded (no results.json beside the checkpoint's run directory).")
    lines += ["", "## Recipe", "", "Model:", "", *_table(hparams), ""]
    data = redact((config.get("data") or {}).get("init_args") or {})
    if data:
        lines += ["Data:", "", *_table(data), ""]
    trainer = {
        k: v
        for k, v in redact(config.get("trainer") or {}).items()
        if k in ("max_epochs", "max_steps", "precision", "accumulate_grad_batches", "gradient_clip_val")
    }
    if trainer:
        lines += ["Trainer:", "", *_table(trainer), ""]
    if "seed_everything" in config:
        lines += [f"Seed: {config['seed_everything']}", ""]
    versions = results.get("versions") or package_versions()
    lines += ["## Versions", "", *(f"- {k} {v}" for k, v in versions.items() if v), ""]
    if results.get("git_commit"):
        lines += [f"apm-lightning commit: `{results['git_commit']}`", ""]
    loader = {
        "text-classification": "AutoModelForSequenceClassification",
        "question-answering": "AutoModelForQuestionAnswering",
        "text2text-generation": "AutoModelForSeq2SeqLM",
    }.get(front.get("pipeline_tag", ""), "AutoModel")
    lines += [
        "## Use",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {loader}",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
        f'model = {loader}.from_pretrained("THIS_FOLDER")',
        "```",
        "",
    ]
    return "\n".join(lines)
