"""``apm demo``: fine-tune the pretrained MiniLM on SST-2 for a few minutes on a CPU and print a
results table.

Data: ``$APM_DATA_DIR/glue/SST-2`` when present, else the Hugging Face hub when it answers, else
the SST-2 sample shipped inside the package (the first 3,000 training rows and the full dev set;
see apm_lightning/demo_data/PROVENANCE.md), so it trains on real data on an offline machine too.
The last lines say which data and pretrained model it used, then a results table.
"""

from __future__ import annotations

import argparse
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from apm_lightning.core import hub
from apm_lightning.data import sources

SOURCES = ("auto", "local", "hub", "sample")
SAMPLE_DESCRIPTION = (
    "the SST-2 sample shipped with apm (3,000 of 67,349 train rows, the full 872-row dev set)"
)


def sample_root() -> Path:
    """The shipped sample, a GLUE data folder holding ``SST-2/``."""
    return Path(str(files("apm_lightning").joinpath("demo_data", "glue")))


def _local_folder() -> Path | None:
    root = sources.data_root()
    if root is None:
        return None
    for folder in (root / "glue" / "SST-2", root / "SST-2"):
        if (folder / "train.tsv").is_file():
            return folder
    return None


def choose_source(kind: str = "auto") -> tuple[list[str], str]:
    """The data options for ``apm fit`` and what they mean, in words."""
    folder = _local_folder() if kind in ("auto", "local") else None
    if folder is not None:
        return ["--data.source", "local", "--data.data_dir", str(folder.parent)], f"local files in {folder}"
    if kind == "local":
        from apm_lightning.core.errors import APMError

        raise APMError("--source local: set $APM_DATA_DIR to a folder holding glue/SST-2/train.tsv")
    if kind == "hub" or (kind == "auto" and hub.hub_reachable()):
        return ["--data.source", "hub"], "the Hugging Face hub (nyu-mll/glue, sst2)"
    if kind == "synthetic":  # for tests of the machinery only: not SST-2
        return ["--data.source", "synthetic"], "a synthetic SST-2-style task (tests only)"
    sample = sample_root()
    return ["--data.source", "local", "--data.data_dir", str(sample)], f"{SAMPLE_DESCRIPTION} in {sample}"


def describe_backbone(name: str) -> str:
    """The pretrained model ``name`` resolves to; raises the usual one-line error when it cannot
    be had (before any data is read)."""
    from apm_lightning.modules.hf_export import resolve_backbone

    resolved = resolve_backbone(name)
    return name if resolved == name else f"{name} ({resolved})"


def results_table(results: dict[str, Any], rows: list[tuple[str, str]]) -> str:
    metrics = results.get("metrics", {})
    lines = [*rows]
    for key in ("accuracy", "f1", "main"):
        if key in metrics and (key != "main" or "accuracy" not in metrics):
            lines.append((f"dev {key}", f"{metrics[key]:.4f}"))
    if results.get("val_loss") is not None:
        lines.append(("dev loss", f"{results['val_loss']:.4f}"))
    lines += [
        ("train examples", str(results.get("train_examples", "-"))),
        ("train time", f"{results.get('train_wall_seconds', float('nan')):.0f} s"),
        ("fine-tuned checkpoint", str(results.get("best_checkpoint") or "-")),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in lines)


def demo_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="apm demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="run directory")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--eval-rows", type=int, default=872)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument(
        "--source",
        default="auto",
        choices=(*SOURCES, "synthetic"),
        help="where SST-2 comes from: auto ($APM_DATA_DIR, else the hub, else the shipped sample), "
        "local, hub or sample",
    )
    args, extra = parser.parse_known_args(argv)
    source_args, description = choose_source(args.source)
    backbone = describe_backbone(args.backbone)
    print(f"apm demo: SST-2 data from {description}", flush=True)
    from apm_lightning.training.cli import run_lightning_cli

    cli = run_lightning_cli(
        [
            "fit",
            "--model",
            "apm_lightning.modules.classification.TransformerClassifier",
            "--model.backbone",
            args.backbone,
            "--model.learning_rate",
            "5e-5",
            "--data",
            "apm_lightning.data.classification.ClassificationDataModule",
            "--data.task",
            "sst2",
            *source_args,
            "--data.max_train_samples",
            str(args.train_rows),
            "--data.max_eval_samples",
            str(args.eval_rows),
            "--data.batch_size",
            "32",
            "--data.group_by_length",
            "true",
            "--trainer.max_epochs",
            str(args.epochs),
            "--trainer.default_root_dir",
            args.out,
            "--trainer.num_sanity_val_steps",
            "0",
            *extra,
        ]
    )
    del cli
    results = json.loads((Path(args.out) / "results.json").read_text())
    rows = [
        ("task", str(results.get("task"))),
        ("data", description),
        ("dev examples", f"at most {args.eval_rows} (--eval-rows)"),
        ("pretrained model", backbone),
    ]
    print(f"\napm demo: SST-2 fine-tuning results\n{results_table(results, rows)}", flush=True)
    print(Path(args.out, "results.json").resolve(), flush=True)
