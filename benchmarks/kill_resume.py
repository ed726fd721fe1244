"""Kill-and-resume: does a run SIGKILLed at a random point, then resumed with --ckpt_path last,
end with the same weights (bit for bit) and the same dev metrics as a run that never stopped?

Workload: RTE (../shared/data/glue), tiny BERT from scratch (dropout on), 96 train rows in
batches of 8 (12 steps an epoch), 2 epochs, deterministic CPU, last.ckpt every 2 steps.

1. One uninterrupted run (the reference).
2. N runs, each killed once at a random point, then resumed to the end:
   --mode step  (default): SIGKILL at a random training batch, at a random place in it: before
                the batch, after its backward pass, in the validation after it, or in the middle
                of writing the next checkpoint; one in five is a SIGTERM (preemption) instead.
   --mode time: SIGKILL of the process after a random wall-clock delay (start-up, data loading,
                validation and the final scoring included).
3. A table, then "K of N identical" (weights bitwise, optimizer state and metrics equal).

    python benchmarks/kill_resume.py --runs 10 --seed 0
    python benchmarks/kill_resume.py --runs 10 --mode time
Exit code: 0 when all N are identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
WHERE = ("batch_start", "backward", "validation", "save")


def fit_command(run_dir: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "apm_lightning",
        "fit",
        "-c",
        str(REPO / "experiments/glue/rte.yaml"),
        "-c",
        str(REPO / "experiments/models/tiny_bert.yaml"),
        "--data.data_dir",
        str(args.data_dir),
        "--data.max_train_samples",
        str(args.train_rows),
        "--data.max_eval_samples",
        "32",
        "--data.batch_size",
        "8",
        "--data.max_seq_length",
        "32",
        "--trainer.max_epochs",
        str(args.epochs),
        "--trainer.deterministic",
        "true",
        "--checkpoint_every_n_steps",
        str(args.every),
        "--wandb_mode",
        "disabled",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
        str(run_dir),
        *extra,
    ]


def run(cmd: list[str], kill_after: float | None = None) -> tuple[int, float]:
    """Run to the end, or SIGKILL after ``kill_after`` seconds; (exit code, seconds)."""
    start = time.perf_counter()
    with open(os.devnull, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL, 128 + signal.SIGTERM):
        raise RuntimeError(f"{' '.join(cmd[-6:])} failed ({proc.returncode}):\n{err[-3000:]}")
    return proc.returncode, time.perf_counter() - start


def final_state(run_dir: Path) -> tuple[dict, dict]:
    import torch

    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    return ckpt, json.loads((run_dir / "results.json").read_text())


def identical(a: tuple[dict, dict], b: tuple[dict, dict]) -> tuple[bool, bool]:
    import torch

    (ca, ra), (cb, rb) = a, b
    weights = ca["state_dict"].keys() == cb["state_dict"].keys() and all(
        torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"]
    )
    optimizer = all(
        torch.equal(t, sb["state"][i][name])
        for sa, sb in zip(ca["optimizer_states"], cb["optimizer_states"], strict=True)
        for i, values in sa["state"].items()
        for name, t in values.items()
    )
    same_run = ca["global_step"] == cb["global_step"] and ca["lr_schedulers"] == cb["lr_schedulers"]
    return weights and optimizer and same_run, ra["metrics"] == rb["metrics"]


def kill_spec(rng: random.Random, total_batches: int) -> tuple[str, list[str]]:
    batch = rng.randint(1, total_batches)
    if rng.random() < 0.2:
        where, sig = "batch_start", "TERM"
    else:
        where, sig = rng.choice(WHERE), "KILL"
    spec = {
        "class_path": "apm_lightning.training.faults.KillAt",
        "init_args": {"batch": batch, "where": where, "sig": sig},
    }
    return f"SIG{sig} batch {batch} {where}", ["--trainer.callbacks+", json.dumps(spec)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=("step", "time"), default="step")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "glue")
    parser.add_argument("--train-rows", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--every", type=int, default=2, help="--checkpoint_every_n_steps")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    total_batches = args.train_rows // 8 * args.epochs
    root = args.out or Path(tempfile.mkdtemp(prefix="kill-resume-"))

    _, reference_seconds = run(fit_command(root / "reference", args))
    reference = final_state(root / "reference")
    print(
        f"reference: {reference[0]['global_step']} steps in {reference_seconds:.1f} s, metrics {reference[1]['metrics']}"
    )
    print(
        f"{'run':>3}  {'kill point':<34}{'exit':>6}{'resumed from':>14}{'weights':>9}{'metrics':>9}{'s':>7}"
    )
    same = 0
    for i in range(args.runs):
        run_dir = root / f"run{i:02d}"
        start = time.perf_counter()
        if args.mode == "time":
            delay = rng.uniform(0.0, reference_seconds)
            point, (code, _) = (
                f"SIGKILL after {delay:.1f} s",
                run(fit_command(run_dir, args), kill_after=delay),
            )
        else:
            point, extra = kill_spec(rng, total_batches)
            code, _ = run(fit_command(run_dir, args, *extra))
        last = run_dir / "checkpoints/last.ckpt"
        if code == 0:
            resumed = "(finished)"
        elif last.exists():
            import torch

            resumed = f"step {torch.load(last, map_location='cpu', weights_only=True)['global_step']}"
        else:
            resumed = "scratch"
        if code != 0:
            run(fit_command(run_dir, args, "--ckpt_path", "last"))
        weights, metrics = identical(reference, final_state(run_dir))
        same += weights and metrics
        print(
            f"{i:>3}  {point:<34}{code:>6}{resumed:>14}{'same' if weights else 'DIFF':>9}"
            f"{'same' if metrics else 'DIFF':>9}{time.perf_counter() - start:>7.1f}",
            flush=True,
        )
    print(f"{same} of {args.runs} identical (mode {args.mode}, seed {args.seed}; run dirs in {root})")
    return 0 if same == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
