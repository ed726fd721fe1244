"""Benchmark tokenizing GLUE SST-2 (train: 67,349 sentences, plus the 872-row dev split) with
MiniLM's WordPiece tokenizer (max length 128, truncation, no padding): our ClassificationDataModule against
Hugging Face `datasets` used as run_glue.py does.

Peers (every run in a fresh interpreter, sequentially; each cache dir a fresh temporary folder):
  apm_cold   ClassificationDataModule(task="sst2", data_dir=GLUE, tokenizer="minilm").setup("fit") with
             APM_CACHE_DIR empty: read the TSVs, load the tokenizer, tokenize train + dev, write
             the cache entries (datasets save_to_disk) and load them back (memory-mapped)
  apm_warm   the same again on the filled cache (a hit: no tokenization)
  hf_cold    load_dataset("csv", TSVs, cache_dir=fresh) + AutoTokenizer + DatasetDict.map(
             tokenizer(sentence, truncation=True, max_length=128), batched=True): CSV -> Arrow
             conversion, tokenization, cache files written
  hf_warm    the same again with the same cache_dir (the Arrow files and the .map cache reused;
             the child checks that .map did not write a new cache file)
The clock runs inside the child around that work only: imports (torch, transformers, datasets,
apm_lightning) happen before it starts, as the startup benchmark measures them. The wall time
of the whole child process is reported beside it. Each measurement is the median of --repeat runs
(a cold run gets a new empty cache dir every time).

Ratios (time ratios, LOWER is better for us): apm_cold / hf_cold and apm_warm / hf_warm, reported
against 1.0 (no hard target). Exit 0 even when a ratio is above 1; 1 if a run crashed.
Smoke run (2,000 train rows, one repeat): --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    DATA_ROOT,
    PEER_ERRORS,
    hardware,
    make_ratio,
    peak_rss_mb,
    print_hardware,
    print_ratios,
    ratio,
    run_child,
    write_json,
)

BENCHMARK = "tokenize_sst2"
PEERS = ("apm_cold", "apm_warm", "hf_cold", "hf_warm")
SMOKE_ROWS = 2000


def preimport() -> None:
    """What either side imports, loaded before the clock starts."""
    import datasets
    import torch  # noqa: F401
    import transformers

    import apm_lightning.data.classification  # noqa: F401
    from apm_lightning.core.model_paths import resolve_tokenizer  # noqa: F401

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


def token_count(dataset) -> int:
    return sum(len(ids) for ids in dataset["input_ids"])


def run_apm(args: argparse.Namespace) -> dict[str, Any]:
    from apm_lightning.data.classification import ClassificationDataModule

    cache = Path(os.environ["APM_CACHE_DIR"])
    entries_before = len(list((cache / "tokenized").glob("*"))) if (cache / "tokenized").is_dir() else 0
    t0 = time.perf_counter()
    dm = ClassificationDataModule(
        task="sst2", data_dir=str(args.data_dir), tokenizer="minilm", max_train_samples=args.rows
    )
    dm.setup("fit")
    seconds = time.perf_counter() - t0
    train, dev = dm.datasets["train"], dm.datasets["validation"]
    return {
        "seconds": seconds,
        "train_rows": len(train),
        "dev_rows": len(dev),
        "train_tokens": token_count(train),
        "columns": sorted(train.column_names),
        "cache_hit": entries_before > 0,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_hf(args: argparse.Namespace) -> dict[str, Any]:
    import csv

    import datasets
    from transformers import AutoTokenizer

    from apm_lightning.core.model_paths import resolve_tokenizer

    folder = Path(args.data_dir) / "SST-2"
    t0 = time.perf_counter()
    start_wall = time.time()
    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer("minilm"))
    raw = datasets.load_dataset(
        "csv",
        data_files={"train": str(folder / "train.tsv"), "validation": str(folder / "dev.tsv")},
        delimiter="\t",
        quoting=csv.QUOTE_NONE,  # GLUE TSVs hold literal quote characters
        cache_dir=args.cache_dir,
    )
    if args.rows is not None:
        raw["train"] = raw["train"].select(range(min(args.rows, len(raw["train"]))))

    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        # run_glue.py's preprocess_function with padding=False (dynamic padding).
        return tokenizer(batch["sentence"], padding=False, max_length=128, truncation=True)

    out = raw.map(preprocess, batched=True)
    seconds = time.perf_counter() - t0
    files = [f["filename"] for split in out.values() for f in split.cache_files]
    # A hit rewrites nothing: every file the result reads predates this run.
    cache_hit = bool(files) and all(os.path.getmtime(f) < start_wall for f in files)
    return {
        "seconds": seconds,
        "train_rows": len(out["train"]),
        "dev_rows": len(out["validation"]),
        "train_tokens": token_count(out["train"]),
        "columns": sorted(out["train"].column_names),
        "cache_hit": cache_hit,
        "peak_rss_mb": peak_rss_mb(),
    }


def child_main(args: argparse.Namespace) -> None:
    preimport()
    result = run_apm(args) if args._child == "apm" else run_hf(args)
    print(json.dumps(result), flush=True)


def spawn(side: str, cache_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--_child", side, "--data-dir", str(args.data_dir)]
    cmd += ["--cache-dir", str(cache_dir)]
    if args.rows is not None:
        cmd += ["--rows", str(args.rows)]
    t0 = time.perf_counter()
    res = run_child(cmd, side, {"APM_CACHE_DIR": str(cache_dir)})
    res["process_seconds"] = time.perf_counter() - t0
    return res


def measure(side: str, args: argparse.Namespace, root: Path) -> dict[str, dict[str, Any]]:
    """--repeat (cold, warm) pairs, each pair on a new empty cache dir; medians."""
    runs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    for i in range(args.repeat):
        cache_dir = root / f"{side}-{i}"
        cache_dir.mkdir()
        for kind in ("cold", "warm"):
            res = spawn(side, cache_dir, args)
            print(
                f"  {side}_{kind} run {i + 1}: {res['seconds']:.2f}s (process {res['process_seconds']:.2f}s, "
                f"cache hit {res['cache_hit']})",
                flush=True,
            )
            runs[kind].append(res)
        shutil.rmtree(cache_dir, ignore_errors=True)
    out = {}
    for kind, items in runs.items():
        summary = dict(items[-1])
        summary["seconds"] = statistics.median(r["seconds"] for r in items)
        summary["process_seconds"] = statistics.median(r["process_seconds"] for r in items)
        summary["all_seconds"] = [r["seconds"] for r in items]
        summary["cache_hit"] = all(r["cache_hit"] for r in items)
        out[f"{side}_{kind}"] = summary
    return out


def report(results: dict[str, dict], errors: dict[str, str]) -> list[dict[str, Any]]:
    print(f"\n{'run':<12}{'seconds':>9}{'process s':>11}{'train rows':>12}{'dev rows':>10}", end="")
    print(f"{'train tokens':>14}{'cache hit':>11}{'RSS MB':>8}  columns")
    for peer in PEERS:
        if peer in errors:
            print(f"{peer:<12}  CRASHED: {errors[peer]}")
        elif peer in results:
            r = results[peer]
            print(
                f"{peer:<12}{r['seconds']:>9.2f}{r['process_seconds']:>11.2f}{r['train_rows']:>12}"
                f"{r['dev_rows']:>10}{r['train_tokens']:>14}{r['cache_hit']!s:>11}{r['peak_rss_mb']:>8.0f}"
                f"  {','.join(r['columns'])}"
            )

    def sec(peer: str) -> float | None:
        return results[peer]["seconds"] if peer in results else None

    ratios = [
        make_ratio(
            "tokenize: apm_cold / hf_cold seconds",
            ratio(sec("apm_cold"), sec("hf_cold")),
            1.0,
            "lower",
            hard=False,
        ),
        make_ratio(
            "tokenize: apm_warm / hf_warm seconds",
            ratio(sec("apm_warm"), sec("hf_warm")),
            1.0,
            "lower",
            hard=False,
        ),
    ]
    print_ratios(ratios)
    print("(time ratios: below 1 means apm is faster)")
    return ratios


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DATA_ROOT / "glue", help="GLUE root (SST-2/ in it)")
    p.add_argument("--rows", type=int, default=None, help="first N train rows (default all)")
    p.add_argument("--repeat", type=int, default=None, help="cold+warm pairs per side, median (3)")
    p.add_argument("--only", choices=["all", "apm", "hf"], default="all")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_ROWS} train rows, one repeat")
    p.add_argument("--json", type=Path, default=None, help="write rows and ratios as JSON")
    p.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_child", choices=["apm", "hf"], help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data_dir = args.data_dir.resolve()
    if args._child:
        child_main(args)
        return 0
    if args.smoke and args.rows is None:
        args.rows = SMOKE_ROWS
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 3

    info = hardware()
    print_hardware(info)
    print(
        f"workload: SST-2 train rows={args.rows or 'all'} + dev, MiniLM tokenizer, max length 128, "
        f"repeat={args.repeat}" + (" [SMOKE]" if args.smoke else ""),
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    sides = ("apm", "hf") if args.only == "all" else (args.only,)
    with tempfile.TemporaryDirectory(prefix="bench_tokenize_") as tmp:
        for side in sides:
            print(f"--- {side}", flush=True)
            try:
                results.update(measure(side, args, Path(tmp)))
            except PEER_ERRORS as e:
                errors[f"{side}_cold"] = errors[f"{side}_warm"] = f"{type(e).__name__}: {e}"

    ratios = report(results, errors)
    for side in sides:
        warm = results.get(f"{side}_warm")
        if warm is not None and not warm["cache_hit"]:
            print(f"warning: {side}_warm did not hit its cache: its time is a second cold run")
    if "apm_cold" in results and "hf_cold" in results:
        a, h = results["apm_cold"]["train_tokens"], results["hf_cold"]["train_tokens"]
        print(f"train tokens: apm {a}, hf {h} ({'same' if a == h else 'DIFFERENT'})")
    rows = [
        {"benchmark": BENCHMARK, "peer": peer, "value": r["seconds"], "unit": "s"}
        for peer, r in results.items()
    ]
    workload = {k: str(v) for k, v in vars(args).items() if k not in ("_child", "cache_dir")}
    write_json(
        args.json,
        {
            "benchmark": BENCHMARK,
            "smoke": args.smoke,
            "hardware": info,
            "workload": workload,
            "rows": rows,
            "ratios": ratios,
            "results": results,
            "errors": errors,
        },
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
