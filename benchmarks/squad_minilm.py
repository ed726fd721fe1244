"""SQuAD with the pretrained MiniLM, on the files we have offline, split by article.

v1.1: train on the first 24 articles of dev-v1.1.json (in file order), evaluate on the other 24.
v2.0: the same on train-v2.0.first11articles.json: the first 5 articles train, the other 6
evaluate. All 348 unanswerable questions sit in articles 5 and 6 (Zelda, Spectre), so this is
the split that puts unanswerable questions on both sides (after 6 articles, none are left).
Each run is an ordinary `apm fit`; this script times it and prints EM/F1 with the wall time.

    python benchmarks/squad_minilm.py [--epochs 1] [--only v1|v2] [--out runs/squad_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SQUAD = Path(os.environ.get("APM_DATA_DIR", REPO.parent / "shared" / "data")) / "squad"
RUNS = {
    "v1": (SQUAD / "v1.1" / "dev-v1.1.json", 24),
    "v2": (SQUAD / "v2.0" / "train-v2.0.first11articles.json", 5),
}


def run(version: str, epochs: int, out: Path, extra: list[str]) -> dict:
    train_file, articles = RUNS[version]
    run_dir = out / f"squad_{version}"
    cmd = [
        sys.executable,
        "-m",
        "apm_lightning",
        "fit",
        "-c",
        f"experiments/squad/{version}.yaml",
        "--data.train_file",
        str(train_file),
        "--data.split_by_article",
        str(articles),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.default_root_dir",
        str(run_dir),
        "--seed_everything",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(
        cmd, cwd=REPO, check=True, env={**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    )
    wall = time.perf_counter() - start
    results = json.loads((run_dir / "results.json").read_text())
    return {"version": version, "train_articles": articles, "wall_seconds": wall, **results}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--only", choices=["v1", "v2"], default=None)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "squad_bench")
    parser.add_argument("--apm-args", default="", help="extra args for apm fit")
    args = parser.parse_args()
    rows = [run(v, args.epochs, args.out, args.apm_args.split()) for v in (args.only,) if v] or [
        run(v, args.epochs, args.out, args.apm_args.split()) for v in RUNS
    ]
    print(f"\n{'run':<10}{'EM':>8}{'F1':>8}{'train s':>10}{'wall s':>9}{'ex/s':>8}  extra")
    for r in rows:
        m = r["metrics"]
        extra = (
            ""
            if r["version"] == "v1"
            else (
                f"HasAns F1 {m.get('HasAns_f1', float('nan')):.2f}  NoAns F1 {m.get('NoAns_f1', float('nan')):.2f}  "
                f"threshold {m.get('null_threshold', float('nan')):.3f}"
            )
        )
        print(
            f"squad_{r['version']:<4}{m['exact']:>8.2f}{m['f1']:>8.2f}{r['train_wall_seconds']:>10.0f}"
            f"{r['wall_seconds']:>9.0f}{r['train_examples_per_second']:>8.2f}  {extra}"
        )
    (args.out / "squad_bench.json").write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
