"""Benchmark building a pretraining corpus's token cache: our CorpusDataModule with 1 and 2
worker processes (``data.num_proc``) against Hugging Face ``datasets`` ``.map(num_proc=...)``
on the same text, the peak memory as the corpus grows, and the time to the first training step.

The corpus is generated (deterministic, seed 0, never committed, in a temporary folder): random
sentences drawn from WikiText-2 raw and the Gutenberg books in ../shared/data/corpus (a real word
distribution), 3-8 per paragraph, one paragraph per line, paragraphs separated by blank lines,
up to the requested size. Both sides read the same documents (apm: ``document_split
paragraph``; datasets: the ``text`` builder with ``sample_by="paragraph"``) and tokenize them
with MiniLM's WordPiece tokenizer (fast, no special tokens).

Peers (each in a fresh interpreter, sequentially, with a fresh empty cache folder):
  apm_np1, apm_np2   CorpusDataModule(files=corpus, tokenizer=minilm, num_proc=N).token_folder():
                     read, tokenize, write the shard files and meta.json (at both corpus sizes)
  hf_np1, hf_np2     load_dataset("text", sample_by="paragraph", cache_dir=fresh) +
                     .map(tokenizer(text, add_special_tokens=False), batched=True, num_proc=N)
                     (at the larger size): text -> Arrow conversion, tokenization, cache files
  first_step         `apm pretrain -c experiments/pretrain/mlm_tiny.yaml` (hidden 32, 2 layers),
                     --data.num_proc 2, --trainer.max_steps 1, no validation, cold cache, on the
                     smaller corpus: seconds from launch to the end of the process (the build,
                     then one step); and the same again on the warm cache (not in --smoke)
tokens/s = tokens written (train + validation, separators included for apm) / seconds, the clock
inside the child around the build only (imports and the tokenizer's loading before it). Peak
memory (PSS, sampled every 0.2 s with psutil during the build): the child's own, its workers'
together, and the two added ("total").

Ratios (reported): apm_np2 / apm_np1 tokens/s (parallel speed-up), apm_npN / hf_npN tokens/s;
hard: apm_np2 peak total memory at the larger size / at the smaller <= 1.25 (memory stays flat).
Full run: --sizes-mb 512,1024 (the default). Smoke run (2 and 4 MB, small shards): --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import (
    DATA_ROOT,
    PEER_ERRORS,
    REPO,
    hardware,
    make_ratio,
    print_hardware,
    print_ratios,
    ratio,
    run_child,
    write_json,
)

BENCHMARK = "corpus_build"
SOURCES = [
    "corpus/wikitext-2-raw/wiki.valid.raw",
    "corpus/wikitext-2-raw/wiki.test.raw",
    "corpus/nltk-gutenberg",
]


# --------------------------------------------------------------------------- the corpus
def sentences(data_root: Path) -> list[str]:
    """Every sentence of the source texts (WikiText headings and short fragments left out)."""
    found: list[str] = []
    for rel in SOURCES:
        root = data_root / rel
        for path in sorted(root.glob("*.txt")) if root.is_dir() else [root]:
            text = path.read_text(encoding="utf-8", errors="replace")
            for line in text.splitlines():
                line = line.strip()
                if not line or line.startswith("="):
                    continue
                found += [s.strip() for s in re.split(r"(?<=[.!?])\s+", line) if len(s.split()) >= 4]
    return found


def generate(path: Path, size_mb: float, pool: list[str], seed: int = 0) -> int:
    """Write about ``size_mb`` MB of paragraphs; returns the paragraph count."""
    rng = random.Random(seed)
    target = int(size_mb * 2**20)
    written = paragraphs = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            lines = []
            for _ in range(1000):
                lines.append(" ".join(rng.choices(pool, k=rng.randint(3, 8))))
            block = "\n\n".join(lines) + "\n\n"
            f.write(block)
            written += len(block.encode("utf-8"))
            paragraphs += len(lines)
    return paragraphs


# --------------------------------------------------------------------------- children
class TreeRSS:
    """Peak PSS (a page shared by k processes counts 1/k in each: forked datasets.map workers
    are not charged the parent's pages again) of this process and its workers, sampled every
    0.2 s (psutil). Not ``RUSAGE_CHILDREN``: a spawned child's ``ru_maxrss`` includes the
    parent's pages at the fork before its exec."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = {"self_rss_mb": 0.0, "workers_rss_mb": 0.0, "total_rss_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def sample(self) -> None:
        import psutil

        def mb(process: psutil.Process) -> float:
            try:
                info = process.memory_full_info()
                return getattr(info, "pss", info.rss) / 2**20
            except psutil.Error:  # it ended between the listing and the reading
                return 0.0

        own = mb(self.me)
        workers = sum(mb(child) for child in self.me.children(recursive=True))
        for key, value in (
            ("self_rss_mb", own),
            ("workers_rss_mb", workers),
            ("total_rss_mb", own + workers),
        ):
            self.peak[key] = max(self.peak[key], value)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sample()

    def __enter__(self) -> TreeRSS:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def child_apm(args: argparse.Namespace) -> dict[str, Any]:
    from apm_lightning.data.corpus import CorpusDataModule

    dm = CorpusDataModule(
        files=str(args.corpus),
        tokenizer="minilm",
        num_proc=args.num_proc,
        shard_chars=int(args.shard_mb * 2**20),
        cache_dir=str(args.cache_dir),
    )
    dm.encoder = dm.make_encoder()
    with TreeRSS() as rss:
        t0 = time.perf_counter()
        folder = dm.token_folder()
        seconds = time.perf_counter() - t0
    meta = json.loads((folder / "meta.json").read_text())
    return {
        "seconds": seconds,
        "tokens": meta["train_tokens"] + meta["validation_tokens"],
        "documents": meta["train_documents"] + meta["validation_documents"],
        "shards": len(meta["shards"]["train"]),
        **rss.peak,
    }


def child_hf(args: argparse.Namespace) -> dict[str, Any]:
    import datasets
    from transformers import AutoTokenizer

    from apm_lightning.core.model_paths import resolve_tokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer("minilm"))  # before the clock, as apm's

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], add_special_tokens=False)

    with TreeRSS() as rss:
        t0 = time.perf_counter()
        raw = datasets.load_dataset(
            "text",
            data_files=str(args.corpus),
            sample_by="paragraph",
            split="train",
            cache_dir=str(args.cache_dir),
        )
        out = raw.map(tokenize, batched=True, num_proc=args.num_proc if args.num_proc > 1 else None)
        out = out.remove_columns([c for c in out.column_names if c != "input_ids"])
        seconds = time.perf_counter() - t0
    # Counted after the clock: read back in slices from the memory-mapped Arrow files.
    tokens = documents = 0
    for start in range(0, len(out), 10_000):
        ids = out[start : start + 10_000]["input_ids"]
        tokens += sum(len(x) for x in ids)
        documents += sum(1 for x in ids if x)
    return {"seconds": seconds, "tokens": tokens, "documents": documents, "shards": None, **rss.peak}


def spawn(side: str, corpus: Path, num_proc: int, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--_child", side, "--corpus", str(corpus), "--num-proc", str(num_proc)]
    cmd += ["--cache-dir", str(cache), "--shard-mb", str(args.shard_mb)]
    res = run_child(cmd, f"{side}_np{num_proc}", {"TOKENIZERS_PARALLELISM": "false"})
    res["tokens_per_second"] = res["tokens"] / res["seconds"]
    return res


def first_step(corpus: Path, cache: Path, run_dir: Path, num_proc: int) -> float:
    tiny = REPO / "experiments/pretrain/mlm_tiny.yaml"
    cmd = [sys.executable, "-m", "apm_lightning", "pretrain", "-c", str(tiny), "--trainer.max_steps=1"]
    cmd += ["--model.backbone_config.hidden_size=32", "--model.backbone_config.intermediate_size=64"]
    cmd += ["--data.files", str(corpus), f"--data.num_proc={num_proc}", "--trainer.limit_val_batches=0"]
    cmd += ["--trainer.default_root_dir", str(run_dir), "--wandb_mode=disabled"]
    cmd += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, "APM_CACHE_DIR": str(cache)}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"apm pretrain exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- the run
def measure(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, dict], dict[str, str], dict[str, Any]]:
    pool = sentences(args.data_root)
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    corpora = {}
    for size in args.sizes:
        corpora[size] = tmp / f"corpus-{size:g}mb.txt"
        count = generate(corpora[size], size, pool)
        print(f"generated {corpora[size].name}: {count:,} paragraphs", flush=True)
    small, large = min(args.sizes), max(args.sizes)
    plan = [("apm", size, n) for size in args.sizes for n in (1, 2)] + [("hf", large, n) for n in (1, 2)]
    for i, (side, size, n) in enumerate(plan):
        peer = f"{side}_np{n}@{size:g}MB"
        try:
            results[peer] = spawn(side, corpora[size], n, tmp / f"cache-{i}", args)
            r = results[peer]
            print(
                f"  {peer:<18}{r['seconds']:>9.2f}s {r['tokens_per_second']:>12,.0f} tok/s "
                f"peak PSS {r['self_rss_mb']:.0f} + workers {r['workers_rss_mb']:.0f} MB",
                flush=True,
            )
        except PEER_ERRORS as e:
            errors[peer] = f"{type(e).__name__}: {e}"
    steps: dict[str, Any] = {}
    try:
        cache = tmp / "cache-first-step"
        steps["cold_seconds"] = first_step(corpora[small], cache, tmp / "run-cold", 2)
        if not args.smoke:  # the warm run shows the start-up alone
            steps["warm_seconds"] = first_step(corpora[small], cache, tmp / "run-warm", 2)
        print(f"  first step @{small:g}MB (num_proc 2): {steps}")
    except PEER_ERRORS as e:
        errors["first_step"] = f"{type(e).__name__}: {e}"
    return results, errors, steps


def report(args: argparse.Namespace, results: dict[str, dict], steps: dict[str, Any]) -> list[dict[str, Any]]:
    print(f"\n{'peer':<18}{'seconds':>9}{'tokens':>14}{'tok/s':>12}{'docs':>11}{'shards':>7}", end="")
    print(f"{'PSS MB':>8}{'workers':>8}{'total':>8}")
    for peer, r in results.items():
        print(
            f"{peer:<18}{r['seconds']:>9.2f}{r['tokens']:>14,}{r['tokens_per_second']:>12,.0f}{r['documents']:>11,}"
            f"{r['shards'] if r['shards'] is not None else '-':>7}{r['self_rss_mb']:>8.0f}"
            f"{r['workers_rss_mb']:>8.0f}{r['total_rss_mb']:>8.0f}"
        )
    small, large = min(args.sizes), max(args.sizes)

    def tps(peer: str) -> float | None:
        return results[peer]["tokens_per_second"] if peer in results else None

    def rss(peer: str) -> float | None:
        return results[peer]["total_rss_mb"] if peer in results else None

    at = f"@{large:g}MB"
    ratios = [
        make_ratio(
            "corpus: apm np2 / np1 tokens/s", ratio(tps(f"apm_np2{at}"), tps(f"apm_np1{at}")), 1.6, hard=False
        ),
        make_ratio(
            "corpus: apm np1 / datasets.map np1 tokens/s",
            ratio(tps(f"apm_np1{at}"), tps(f"hf_np1{at}")),
            1.0,
            hard=False,
        ),
        make_ratio(
            "corpus: apm np2 / datasets.map np2 tokens/s",
            ratio(tps(f"apm_np2{at}"), tps(f"hf_np2{at}")),
            1.0,
            hard=False,
        ),
        make_ratio(
            f"corpus: apm np2 peak memory {large:g}MB / {small:g}MB",
            ratio(rss(f"apm_np2{at}"), rss(f"apm_np2@{small:g}MB")),
            1.25,
            "lower",
            hard=True,
        ),
    ]
    print_ratios(ratios, width=52)
    apm, hf = results.get(f"apm_np1{at}"), results.get(f"hf_np1{at}")
    if apm and hf:
        same = apm["documents"] == hf["documents"]
        print(
            f"documents: apm {apm['documents']:,}, datasets {hf['documents']:,} ({'same' if same else 'DIFFERENT'})"
        )
        print(f"tokens: apm {apm['tokens']:,} (with one separator per document), datasets {hf['tokens']:,}")
    if steps:
        print(f"time to the first step (apm pretrain, num_proc 2, {small:g} MB): {steps}")
    return ratios


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-mb", default=None, help="two corpus sizes in MB (default 512,1024)")
    p.add_argument(
        "--shard-mb", type=float, default=None, help="text per shard in MB (default the module's, 32)"
    )
    p.add_argument("--data-root", type=Path, default=DATA_ROOT, help="../shared/data (corpus/ in it)")
    p.add_argument("--smoke", action="store_true", help="2 and 4 MB, 0.25 MB shards")
    p.add_argument(
        "--json", "--out", dest="json", type=Path, default=None, help="write rows and ratios as JSON"
    )
    p.add_argument("--_child", choices=["apm", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--num-proc", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.shard_mb is None:
        args.shard_mb = 0.25 if args.smoke else 32
    if args._child:
        print(json.dumps(child_apm(args) if args._child == "apm" else child_hf(args)), flush=True)
        return 0
    args.sizes = [float(s) for s in (args.sizes_mb or ("2,4" if args.smoke else "512,1024")).split(",")]

    info = hardware()
    print_hardware(info)
    print(
        f"workload: generated corpora of {args.sizes} MB, MiniLM tokenizer"
        + (" [SMOKE]" if args.smoke else "")
    )
    with tempfile.TemporaryDirectory(prefix="bench_corpus_") as tmp:
        results, errors, steps = measure(args, Path(tmp))
    ratios = report(args, results, steps)
    for peer, message in errors.items():
        print(f"{peer}: CRASHED: {message}")
    rows = [
        {"benchmark": BENCHMARK, "peer": peer, "value": r["tokens_per_second"], "unit": "tok/s"}
        for peer, r in results.items()
    ]
    rows += [
        {"benchmark": BENCHMARK, "peer": peer, "value": r["total_rss_mb"], "unit": "peak PSS MB"}
        for peer, r in results.items()
    ]
    rows += [
        {"benchmark": BENCHMARK, "peer": f"first_step_{k}", "value": v, "unit": "s"} for k, v in steps.items()
    ]
    workload = {
        k: str(v) for k, v in vars(args).items() if k not in ("_child", "corpus", "cache_dir", "num_proc")
    }
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
            "first_step": steps,
            "errors": errors,
        },
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
