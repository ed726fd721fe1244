"""Task-adaptive pretraining (Gururangan et al., 2020) of MiniLM on SST-2, against none.

1. `apm pretrain -c experiments/pretrain/tapt_minilm_sst2.yaml`: MLM on SST-2's own training text
   (the package ships no MLM head: one is created, tied to the embeddings).
2. `apm glue --tasks sst2` over the same seeds twice: from the installed MiniLM and from the TAPT
   export (RUN/hf). Same recipe, same rows, same seeds: only the starting weights differ.
3. A table of dev accuracy per seed, median/mean/std per arm and the difference, whatever it is.

    python benchmarks/tapt_sst2.py --seeds 3 --max-train-samples 2000 --epochs 1 --out runs/tapt_bench

Re-running continues (each part is an ordinary apm run directory that is kept once finished).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchlib import DATA_ROOT, REPO  # also sets the offline environment the children inherit

from apm_lightning.metrics.glue_score import summarize


def apm(*args: str) -> float:
    """Run `apm ARGS` in a child process; its wall seconds."""
    print("$ apm", " ".join(args), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "apm_lightning", *args], cwd=REPO, check=True)
    return time.perf_counter() - start


def glue_arm(name: str, backbone: str, args: argparse.Namespace) -> dict:
    out = args.out / f"glue_{name}"
    wall = apm(
        "glue", "--model", backbone, "--tasks", "sst2", "--seeds", str(args.seeds),
        "--data-dir", str(args.data_dir), "--out", str(out), "--no-submission",
        "--max-train-samples", str(args.max_train_samples), "--epochs", str(args.epochs),
        "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    accuracies = []
    for seed in range(args.seeds):
        results = json.loads((out / "runs" / "sst2" / f"seed{seed}" / "results.json").read_text())
        accuracies.append(100 * results["metrics"]["accuracy"])
    return {"arm": name, "backbone": backbone, "accuracy": accuracies, "wall_seconds": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-train-samples", type=int, default=2000, help="fine-tuning rows")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    p.add_argument("--pretrain-steps", type=int, default=150, help="TAPT optimizer steps (batch 32 x 128)")
    p.add_argument("--data-dir", type=Path, default=DATA_ROOT / "glue")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "tapt_bench")
    args = p.parse_args()

    tapt_dir = args.out / "tapt"
    pretrain_wall = 0.0
    if not (tapt_dir / "results.json").is_file():
        pretrain_wall = apm(
            "pretrain", "-c", "experiments/pretrain/tapt_minilm_sst2.yaml",
            "--data.data_dir", str(args.data_dir), "--trainer.max_steps", str(args.pretrain_steps),
            "--trainer.default_root_dir", str(tapt_dir), "--seed_everything", "0",
            "--trainer.enable_progress_bar", "false",
        )  # fmt: skip
    pretrain = json.loads((tapt_dir / "results.json").read_text())
    arms = [glue_arm("minilm", "minilm", args), glue_arm("tapt", str(tapt_dir / "hf"), args)]

    print(
        f"\nTAPT: {pretrain.get('tokens_seen')} tokens of SST-2 text, "
        f"{pretrain.get('tokens_per_second', float('nan')):.0f} tokens/s, "
        f"val loss {pretrain.get('val_loss', float('nan')):.3f}"
        + (f", {pretrain_wall:.0f} s" if pretrain_wall else "")
    )
    print(f"{'arm':<8}{'per seed (dev acc %)':<28}{'median':>8}{'mean':>8}{'std':>7}")
    for arm in arms:
        arm.update(summarize(arm["accuracy"]))
        std = "-" if arm["std"] is None else f"{arm['std']:.2f}"
        print(
            f"{arm['arm']:<8}{' '.join(f'{a:.2f}' for a in arm['accuracy']):<28}"
            f"{arm['median']:>8.2f}{arm['mean']:>8.2f}{std:>7}"
        )
    delta = arms[1]["mean"] - arms[0]["mean"]
    print(f"TAPT - none (mean dev accuracy): {delta:+.2f} points")
    summary = {"pretrain": pretrain, "arms": arms, "delta_mean_points": delta, "settings": vars(args)}
    (args.out / "tapt_bench.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
