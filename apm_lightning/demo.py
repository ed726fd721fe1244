"""``apm demo``: fine-tune the pretrained MiniLM on SST-2 for a few minutes on a CPU and print a
results table.

Data: ``$APM_DATA_DIR/glue/SST-2`` when present, else the Hugging Face hub when it answers, else
a small synthetic task in the SST-2 layout that the package writes itself. It says which.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from apm_lightning.data import sources


def choose_source() -> tuple[list[str], str]:
    root = sources.data_root()
    if root is not None:
        for folder in (root / "glue" / "SST-2", root / "SST-2"):
            if (folder / "train.tsv").is_file():
                return [
                    "--data.source",
                    "local",
                    "--data.data_dir",
                    str(folder.parent),
                ], f"local files in {folder}"
    if sources.hub_reachable():
        return ["--data.source", "hub"], "the Hugging Face hub (nyu-mll/glue, sst2)"
    return ["--data.source", "synthetic"], "a synthetic SST-2-style task (no local data, hub unreachable)"


def demo_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="apm demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="run directory")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--eval-rows", type=int, default=872)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--backbone", default="minilm")
    args, extra = parser.parse_known_args(argv)
    source_args, description = choose_source()
    print(f"apm demo: SST-2 data from {description}", flush=True)
    from apm_lightning.training.cli import run_lightning_cli

    cli = run_lightning_cli(
        [
            "fit",
            "--model",
            "apm_lightning.tasks.classification.TransformerClassifier",
            "--model.backbone",
            args.backbone,
            "--model.learning_rate",
            "5e-5",
            "--data",
            "apm_lightning.data.glue.GLUEDataModule",
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
    results = json.loads((Path(args.out) / "results.json").read_text())
    print(
        f"apm demo: {results['task']} dev accuracy {results['metrics'].get('accuracy', float('nan')):.4f} "
        f"after {results['train_wall_seconds']:.0f} s of training on {description}",
        flush=True,
    )
    del cli
    print(Path(args.out, "results.json").resolve(), flush=True)
