"""Peak memory (RSS) of SQuAD fine-tuning and task-adaptive pretraining against GLUE fine-tuning.

Each workload is an ordinary `apm fit` / `apm pretrain` of the installed MiniLM, run for a few
steps in its own process (so peaks do not carry over), with a callback that records the resident
set size at each phase: after imports, after data setup (tokenization), at fit start (model
built), after the first training step, after training, after the first validation and at the
end. A sampling thread (every 10 ms) gives the peak inside each phase; ``ru_maxrss`` the peak so
far. Memory, unlike speed, can be measured on a busy machine.

Pairs are compared at the same batch size and sequence length:
  tapt      MLM on SST-2 text (experiments/pretrain/tapt_minilm_sst2.yaml), batch 32 x 128
  squad     SQuAD v1.1 (experiments/squad/v1.yaml), batch 16 x 384, evaluation batch 64
against ``finetune`` (experiments/glue/sst2.yaml) at the same batch, length and evaluation
batch. SST-2 pads each batch to its longest sentence (about 25-60 tokens), while TAPT blocks and
most SQuAD windows are full length, so ``finetune_full`` also pads SST-2 to the full length
(the same tokens per batch: what the model itself needs at that shape).

    python benchmarks/bench_memory.py              # the table (a few minutes on a CPU)
    python benchmarks/bench_memory.py --smoke      # seconds: tiny shapes, checks the script
    python benchmarks/bench_memory.py --only squad --steps 5
    python benchmarks/bench_memory.py --only squad --train-rows 0 --eval-rows 0   # whole splits
    python benchmarks/bench_memory.py --env MALLOC_MMAP_THRESHOLD_=1048576         # glibc setting
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import DATA_ROOT, REPO

_MIB = 2**20
PHASES = ("imports", "setup", "fit_start", "first_step", "training", "validation", "end")


# --------------------------------------------------------------------------- child side
def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / _MIB


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Sampler:
    """Current RSS every ``interval`` seconds; the peak since the last phase mark."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval, self.peak, self.phases = interval, 0.0, {}
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            now = rss_mb()
            with self._lock:
                self.peak = max(self.peak, now)
            time.sleep(self.interval)

    def mark(self, phase: str) -> None:
        if phase in self.phases:
            return  # the first time each phase ends
        now = rss_mb()
        with self._lock:
            peak, self.peak = max(self.peak, now), now
        self.phases[phase] = {"rss_mb": round(now, 1), "phase_peak_mb": round(peak, 1)}
        self.phases[phase]["max_rss_mb"] = round(max_rss_mb(), 1)


SAMPLER: Sampler | None = None


def _callback_class() -> type:
    import lightning.pytorch as pl

    class PhaseMemory(pl.Callback):
        def setup(self, trainer, pl_module, stage) -> None:
            SAMPLER.mark("setup")

        def on_fit_start(self, trainer, pl_module) -> None:
            SAMPLER.mark("fit_start")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            SAMPLER.mark("first_step")

        def on_validation_start(self, trainer, pl_module) -> None:
            # A validation at the last step runs before on_train_end: training ends here.
            if not trainer.sanity_checking:
                SAMPLER.mark("training")

        def on_train_end(self, trainer, pl_module) -> None:
            SAMPLER.mark("training")

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                SAMPLER.mark("validation")

    return PhaseMemory


def child(argv: list[str]) -> int:
    global SAMPLER
    SAMPLER = Sampler()
    import lightning.pytorch  # noqa: F401  (the imports phase: what every run pays first)
    import transformers  # noqa: F401

    from apm_lightning.training.cli import run_lightning_cli

    SAMPLER.mark("imports")
    # The callback is named by import path on the command line; make that path this module.
    sys.modules["bench_memory"] = sys.modules[__name__]
    globals()["PhaseMemory"] = _callback_class()
    run_lightning_cli([*argv, "--trainer.callbacks+=bench_memory.PhaseMemory"])
    SAMPLER.mark("end")
    print(json.dumps({"phases": SAMPLER.phases, "peak_rss_mb": round(max_rss_mb(), 1)}))
    return 0


# --------------------------------------------------------------------------- parent side
def pad_to_full_length(length: int) -> None:
    """``finetune_full``: SST-2 batches padded to ``length`` tokens (the tokens per batch of a
    full TAPT block or SQuAD window); a benchmark-only patch of the GLUE collator."""
    from apm_lightning.data import collate

    pad = collate.PadCollator.__call__

    def padded(self, examples):
        import torch.nn.functional as F

        batch = pad(self, examples)
        extra = length - batch["input_ids"].shape[1]
        for key, value in list(batch.items()):
            if extra > 0 and value.dim() == 2:
                batch[key] = F.pad(value, (0, extra), value=self.pad_values.get(key, 0))
        return batch

    collate.PadCollator.__call__ = padded


def workload_args(name: str, a: argparse.Namespace, cache: Path, run_dir: Path) -> list[str]:
    glue = str(DATA_ROOT / "glue")
    train_rows = a.steps * a.batch_size if a.train_rows is None else a.train_rows
    limit = {
        "--data.max_train_samples": str(train_rows) if train_rows else "null",
        "--data.max_eval_samples": str(a.eval_rows) if a.eval_rows else "null",
    }
    limits = [x for kv in limit.items() for x in kv]
    common = [
        "--trainer.max_steps", str(a.steps), "--trainer.val_check_interval", str(a.steps),
        "--trainer.check_val_every_n_epoch", "null", "--trainer.max_epochs", "-1",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
        "--seed_everything", "0", "--data.batch_size", str(a.batch_size),
        "--data.eval_batch_size", str(a.eval_batch_size), "--data.cache_dir", str(cache),
    ]  # fmt: skip
    if name in ("finetune", "finetune_full"):
        return [
            "fit", "-c", "experiments/glue/sst2.yaml", "--data.data_dir", glue,
            *limits, "--data.max_seq_length", str(a.max_length), *common,
        ]  # fmt: skip
    if name == "squad":
        stride = min(128, (a.max_length - 64 - 3) // 2)  # the recipe's 128 at 384 tokens
        return [
            "fit", "-c", "experiments/squad/v1.yaml",
            "--data.train_file", str(DATA_ROOT / "squad" / "v1.1" / "dev-v1.1.json"),
            "--data.split_by_article", "24", *limits, "--data.max_seq_length", str(a.max_length),
            "--data.doc_stride", str(stride), *common,
        ]  # fmt: skip
    if name == "tapt":
        documents = ["--data.max_documents", str(a.documents)] if a.documents else []
        return [
            "fit", "-c", "experiments/pretrain/tapt_minilm_sst2.yaml", "--data.data_dir", glue,
            "--data.block_size", str(a.max_length),
            "--data.max_validation_blocks", str(a.eval_rows or "null"), *documents, *common,
        ]  # fmt: skip
    raise ValueError(name)


def spawn(name: str, a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench_memory_{name}_") as tmp:
        argv = workload_args(name, a, Path(tmp) / "cache", Path(tmp) / "run")
        cmd = [sys.executable, __file__, "--_child"]
        if name == "finetune_full":
            cmd += ["--_pad", str(a.max_length)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env.update({k: v for k, v in (s.split("=", 1) for s in a.env)})
        print("$", " ".join(cmd + argv), flush=True)
        proc = subprocess.run(cmd + ["--", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} exited with code {proc.returncode}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'workload':<15}{'batch':>9}" + "".join(f"{p:>11}" for p in PHASES) + f"{'peak':>9}{'ratio':>7}"
    lines = [head, "(phase peaks, MiB; ratio = peak / finetune peak at the same shape)"]
    for r in rows:
        cells = "".join(f"{r['phases'].get(p, {}).get('phase_peak_mb', float('nan')):>11.0f}" for p in PHASES)
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        lines.append(f"{r['workload']:<15}{r['shape']:>9}{cells}{r['peak_rss_mb']:>9.0f}{ratio:>7}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["squad", "tapt"], default=None)
    p.add_argument("--steps", type=int, default=8, help="training steps per run (peaks show early)")
    p.add_argument("--eval-rows", type=int, default=400, help="validation rows / questions / blocks (0: all)")
    p.add_argument(
        "--train-rows",
        type=int,
        default=None,
        help="training rows / questions (0: all; default: steps x batch)",
    )
    p.add_argument("--documents", type=int, default=None, help="TAPT: first N SST-2 sentences")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the children")
    p.add_argument("--no-baseline", action="store_true", help="run only the workload (no fine-tuning peers)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and rows: checks the script")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    a = p.parse_args()
    # (workload, batch, length, evaluation batch): each pair shares its shape.
    shapes = {"tapt": (32, 128, 128), "squad": (16, 384, 64)}
    if a.smoke:
        shapes = {"tapt": (4, 32, 8), "squad": (4, 96, 8)}
        a.steps, a.eval_rows, a.documents = 2, 16, a.documents or 200
    rows: list[dict[str, Any]] = []
    for target in [a.only] if a.only else list(shapes):
        batch, length, eval_batch = shapes[target]
        run = argparse.Namespace(**vars(a), batch_size=batch, max_length=length, eval_batch_size=eval_batch)
        names = (target,) if a.no_baseline else ("finetune", "finetune_full", target)
        results = {name: spawn(name, run) for name in names}
        base = results["finetune"]["peak_rss_mb"] if "finetune" in results else None
        for name, result in results.items():
            ratio = result["peak_rss_mb"] / base if base else None
            rows.append({"workload": name, "shape": f"{batch}x{length}", "ratio": ratio, **result})
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        rest = sys.argv[2:]
        if rest[:1] == ["--_pad"]:
            pad_to_full_length(int(rest[1]))
            rest = rest[2:]
        sys.exit(child(rest[1:] if rest[:1] == ["--"] else rest))
    sys.exit(main())
