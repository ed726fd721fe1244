"""Benchmark MLM pretraining throughput (tokens/s) of `apm pretrain` against plain loops and the
Hugging Face Trainer.

Workload (every peer the same): a BERT built from a config (default hidden 256, 4 layers,
4 heads, intermediate 1024, max positions 512) over MiniLM's 30,522-token WordPiece vocabulary,
trained from scratch with MLM (15% of non-special tokens, 80/10/10), batch 32 blocks of 128
tokens packed from wikitext-2-raw valid by our CorpusDataModule (no padding), AdamW (fused
kernel), gradient clipping 1.0, fp32 on the CPU, the same torch thread count (OMP/MKL env vars
and torch.set_num_threads), seed 0, N optimizer steps (more than an epoch of 55 batches wraps).

Every peer runs sequentially in its own fresh interpreter:
  hf_full_head         plain PyTorch loop on transformers' BertForMaskedLM: our mask_tokens
                       (the same 80/10/10 masks as minimal_loop: keyed by (seed, step, block
                       index) where the module keys its masks, else torch's RNG) ->
                       model(input_ids, labels) (the LM head at every position) -> backward ->
                       clip -> AdamW(fused) -> zero_grad
  minimal_loop         the same loop on our PretrainingModule: compute(input_ids[, keys as apm's
                       training_step makes them], metrics=False where supported) (dynamic
                       masking, sparse head at the masked positions only) -> backward -> clip ->
                       AdamW(fused) -> zero_grad
  hf_trainer_collator  transformers.Trainer + DataCollatorForLanguageModeling(mlm_probability=0.15)
                       on the same packed blocks, BertForMaskedLM, max_steps N, no eval/saving/logging
  apm                  `apm pretrain -c experiments/pretrain/mlm_tiny.yaml` (subprocess) with the
                       same sizes; tokens/s = results.json `tokens_per_second`

Timing is the same for all: as apm's ThroughputCallback does, the clock starts at the start of the
(first) epoch, before the first batch is fetched, and the intervals between consecutive step ends
are summed (data loading + masking + forward/backward/clip/step, the first step included; the gap
between epochs is not counted). tokens/s = N * batch * block / that time. The in-process peers
also report tokens/s without their first step (information only: apm's results.json cannot).

Ratios: apm / hf_full_head >= 1.5 (sparse prediction), apm / minimal_loop >= 1.0 (framework
overhead: the GLUE-reproduction issue's target), apm / hf_trainer_collator >= 1.0 (reported).
Exit code 0 even when a target FAILs; 1 if a peer crashed. Tiny smoke run (seconds per peer): --smoke
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchlib import (
    DATA_ROOT,
    PEER_ERRORS,
    REPO,
    hardware,
    make_ratio,
    peak_rss_mb,
    print_hardware,
    print_ratios,
    ratio,
    require_bench_extras,
    run_child,
    write_json,
)

BENCHMARK = "pretrain_mlm"
CHILD_PEERS = ("hf_full_head", "minimal_loop", "hf_trainer_collator")
PEERS = (*CHILD_PEERS, "apm")
FULL = {
    "steps": 50,
    "batch_size": 32,
    "block_size": 128,
    "hidden": 256,
    "layers": 4,
    "heads": 4,
    "intermediate": 1024,
}
SMOKE = {
    "steps": 3,
    "batch_size": 8,
    "block_size": 64,
    "hidden": 64,
    "layers": 2,
    "heads": 2,
    "intermediate": 256,
}


def default_corpus() -> Path:
    return DATA_ROOT / "corpus" / "wikitext-2-raw" / "wiki.valid.raw"


def backbone_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model_type": "bert",
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "intermediate_size": args.intermediate,
        "max_position_embeddings": 512,
    }


# --------------------------------------------------------------------------- in-process peers


def corpus(args: argparse.Namespace):
    from apm_lightning.data.corpus import CorpusDataModule

    dm = CorpusDataModule(
        files=str(args.corpus), tokenizer="minilm", block_size=args.block_size, batch_size=args.batch_size
    )
    dm.setup("fit")
    return dm


def batches(dm) -> Iterator[dict[str, Any]]:
    """The training batches of our data module, epoch after epoch (as Lightning iterates them)."""
    loader = dm.train_dataloader()
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def block_ids(item: Any):
    """A PackedBlocks item: the block's ids (a tensor, or a dict holding them)."""
    return item["input_ids"] if isinstance(item, dict) else item


def masking_keys(batch: dict[str, Any], step: int):
    """What apm's training_step masks with: keys of (seed 0, step, block index) where the module
    has keyed masks and the batch carries block indices; else None (torch's generator)."""
    from apm_lightning.modules.objectives.keyed_random import row_keys

    if "index" not in batch:
        return None
    return row_keys(0, step, batch["index"])


def masking_kind(dm) -> str:
    return "keyed (row_keys)" if masking_keys(next(batches(dm)), 0) is not None else "torch global RNG"


def timed_loop(args: argparse.Namespace, step_fn, dm) -> dict[str, Any]:
    """N steps, each ``step_fn(batch, step) -> loss``, timed like ThroughputCallback."""
    it = batches(dm)
    times, losses = [], []
    last = time.perf_counter()
    for step in range(args.steps):
        loss = step_fn(next(it), step)
        now = time.perf_counter()
        times.append(now - last)
        last = now
        losses.append(float(loss))
    return {"step_seconds": times, "losses": losses, "masking": masking_kind(dm)}


def summarize(
    peer: str, args: argparse.Namespace, times: list[float], extra: dict[str, Any]
) -> dict[str, Any]:
    import torch

    per_step = args.batch_size * args.block_size
    seconds = sum(times)
    rest = times[1:]
    return {
        "peer": peer,
        "steps": len(times),
        "train_tokens": per_step * len(times),
        "train_seconds": seconds,
        "tokens_per_second": per_step * len(times) / seconds,
        "first_step_seconds": times[0],
        "tokens_per_second_excl_first": per_step * len(rest) / sum(rest) if rest else None,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
        **extra,
    }


def special_lookup(tokenizer, size: int):
    import torch

    special = torch.zeros(size, dtype=torch.bool)
    special[tokenizer.all_special_ids] = True
    return special


def run_hf_full_head(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, BertForMaskedLM

    from apm_lightning.modules.objectives.masking import mask_tokens

    dm = corpus(args)
    tok = dm.tokenizer
    settings = dict(backbone_config(args))
    settings.pop("model_type")
    config = AutoConfig.for_model("bert", vocab_size=len(tok), pad_token_id=tok.pad_token_id, **settings)
    model = BertForMaskedLM(config).train()
    special = special_lookup(tok, len(tok))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, fused=True)

    def step(batch, index):
        # The masks minimal_loop and apm draw (same rule, same keys): only the head differs.
        keys = masking_keys(batch, index)
        extra = () if keys is None else (keys,)
        inputs, labels = mask_tokens(batch["input_ids"], special, tok.mask_token_id, len(tok), 0.15, *extra)
        loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss.detach()

    out = timed_loop(args, step, dm)
    extra = {"attn_implementation": config._attn_implementation, "first_loss": out["losses"][0]}
    extra |= {"last_loss": out["losses"][-1], "masking": out["masking"]}
    return summarize("hf_full_head", args, out["step_seconds"], extra)


def run_minimal_loop(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from apm_lightning.modules.pretraining import PretrainingModule

    dm = corpus(args)
    module = PretrainingModule(
        objective="mlm", backbone_config=backbone_config(args), tokenizer="minilm", learning_rate=args.lr
    ).train()
    opt = torch.optim.AdamW(module.parameters(), lr=args.lr, weight_decay=0.01, fused=True)
    # Newer modules skip the accuracy argmax on steps that log nothing; a bare loop logs nothing.
    kw = {"metrics": False} if "metrics" in inspect.signature(module.compute).parameters else {}

    def step(batch, index):
        keys = masking_keys(batch, index)  # as apm's training_step
        extra = () if keys is None else (keys,)
        loss = module.compute(batch["input_ids"], *extra, **kw)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss.detach()

    out = timed_loop(args, step, dm)
    extra = {"attn_implementation": module.net.config._attn_implementation, "first_loss": out["losses"][0]}
    extra |= {"last_loss": out["losses"][-1], "masking": out["masking"]}
    return summarize("minimal_loop", args, out["step_seconds"], extra)


def run_hf_trainer_collator(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers
    from torch.utils.data import Dataset
    from transformers import (
        AutoConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    dm = corpus(args)
    tok = dm.tokenizer
    blocks = dm.datasets["train"]

    class Blocks(Dataset):
        def __len__(self) -> int:
            return len(blocks)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": block_ids(blocks[i])}  # the collator masks; no block index

    settings = dict(backbone_config(args))
    settings.pop("model_type")
    config = AutoConfig.for_model("bert", vocab_size=len(tok), pad_token_id=tok.pad_token_id, **settings)
    model = BertForMaskedLM(config)

    class Timer(TrainerCallback):
        """ThroughputCallback's clock: from epoch start, intervals between step ends."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.last: float | None = None

        def on_epoch_begin(self, *a: Any, **k: Any) -> None:
            self.last = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now

    timer = Timer()
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_hf_") as out_dir:
        training_args = TrainingArguments(
            output_dir=out_dir,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            weight_decay=0.01,
            max_grad_norm=1.0,
            warmup_steps=0,
            seed=0,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_drop_last=True,
            use_cpu=not torch.cuda.is_available(),
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=Blocks(),
            data_collator=DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15),
            callbacks=[timer],
        )
        output = trainer.train()
    runtime = float(output.metrics["train_runtime"])
    extra = {
        "attn_implementation": config._attn_implementation,
        "optim": str(training_args.optim),
        "trainer_train_runtime": runtime,
        "trainer_runtime_tokens_per_second": args.steps * args.batch_size * args.block_size / runtime,
        "last_loss": float(output.training_loss),  # mean over the run (logging is off)
    }
    return summarize("hf_trainer_collator", args, timer.times, extra)


CHILD_RUNNERS = {
    "hf_full_head": run_hf_full_head,
    "minimal_loop": run_minimal_loop,
    "hf_trainer_collator": run_hf_trainer_collator,
}


def child_main(peer: str, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(json.dumps(CHILD_RUNNERS[peer](args)), flush=True)


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def spawn_child(peer: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--_child", peer, "--corpus", str(args.corpus)]
    for key in (
        "steps",
        "batch_size",
        "block_size",
        "hidden",
        "layers",
        "heads",
        "intermediate",
        "lr",
        "threads",
    ):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return run_child(cmd, peer, thread_env(args.threads))


# --------------------------------------------------------------------------- apm peer


def run_apm(args: argparse.Namespace) -> dict[str, Any]:
    """`apm pretrain` as a subprocess; tokens/s from the results.json it writes."""
    import subprocess

    run_dir = Path(tempfile.mkdtemp(prefix="bench_pretrain_apm_"))
    cmd = [*shlex.split(args.apm_cmd), "pretrain", "-c", "experiments/pretrain/mlm_tiny.yaml"]
    cmd += ["--data.files", str(args.corpus)]
    cmd += ["--data.block_size", str(args.block_size), "--data.batch_size", str(args.batch_size)]
    cmd += ["--data.max_validation_blocks", str(args.batch_size)]  # one cheap validation batch
    cmd += ["--model.backbone_config.hidden_size", str(args.hidden)]
    cmd += ["--model.backbone_config.num_hidden_layers", str(args.layers)]
    cmd += ["--model.backbone_config.num_attention_heads", str(args.heads)]
    cmd += ["--model.backbone_config.intermediate_size", str(args.intermediate)]
    cmd += ["--model.learning_rate", str(args.lr)]
    cmd += ["--trainer.max_steps", str(args.steps)]
    cmd += ["--trainer.val_check_interval", str(args.steps + 1)]  # no validation while timing
    cmd += ["--trainer.default_root_dir", str(run_dir), "--wandb_mode", "disabled"]
    cmd += ["--seed_everything", "0"]
    cmd += shlex.split(args.apm_args)
    print("$", shlex.join(cmd), flush=True)
    try:
        proc = subprocess.run(
            cmd,
            check=False,
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **thread_env(args.threads)},
        )
        sys.stdout.write(proc.stdout[-1500:])  # keep the tail of apm's own log visible
        if proc.returncode != 0:
            raise RuntimeError(f"apm exited with code {proc.returncode}")
        res = json.loads((run_dir / "results.json").read_text())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints and the HF export
    return {
        "peer": "apm",
        "steps": int(res["global_step"]),
        "train_tokens": int(res["train_tokens"]),
        "train_seconds": float(res["train_wall_seconds"]),
        "tokens_per_second": float(res["tokens_per_second"]),
        "first_step_seconds": None,
        "tokens_per_second_excl_first": None,
        "torch_threads": args.threads,
        "peak_rss_mb": float(res["peak_rss_mb"]),
    }


# --------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def report(results: dict[str, dict], errors: dict[str, str]) -> list[dict[str, Any]]:
    head = f"\n{'peer':<22}{'tokens/s':>10}{'excl 1st':>10}{'train s':>9}{'1st step s':>11}"
    print(head + f"{'steps':>7}{'threads':>8}{'RSS MB':>8}  notes")
    for peer in PEERS:
        if peer in errors:
            print(f"{peer:<22}  CRASHED: {errors[peer]}")
        elif peer in results:
            r = results[peer]
            notes = []
            if r.get("first_loss") is not None:
                notes.append(f"loss {r['first_loss']:.2f}->{r['last_loss']:.2f}")
            if r.get("trainer_runtime_tokens_per_second"):
                notes.append(f"Trainer train_runtime: {r['trainer_runtime_tokens_per_second']:.0f} tok/s")
            print(
                f"{peer:<22}{fmt(r['tokens_per_second'], '.0f'):>10}"
                f"{fmt(r['tokens_per_second_excl_first'], '.0f'):>10}{fmt(r['train_seconds'], '.2f'):>9}"
                f"{fmt(r['first_step_seconds'], '.2f'):>11}{r['steps']:>7}{r['torch_threads']:>8}"
                f"{fmt(r['peak_rss_mb'], '.0f'):>8}  {'; '.join(notes)}"
            )

    def tps(peer: str) -> float | None:
        return results[peer]["tokens_per_second"] if peer in results else None

    ratios = [
        make_ratio("pretrain: apm / hf_full_head tokens/s", ratio(tps("apm"), tps("hf_full_head")), 1.5),
        make_ratio("pretrain: apm / minimal_loop tokens/s", ratio(tps("apm"), tps("minimal_loop")), 1.0),
        make_ratio(
            "pretrain: apm / hf_trainer_collator tokens/s",
            ratio(tps("apm"), tps("hf_trainer_collator")),
            1.0,
            hard=False,
        ),
    ]
    print_ratios(ratios)
    return ratios


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="all", help=f"comma-separated peers out of {','.join(PEERS)}")
    p.add_argument("--corpus", type=Path, default=default_corpus())
    p.add_argument("--steps", type=int, default=None, help=f"measured optimizer steps ({FULL['steps']})")
    p.add_argument("--batch-size", type=int, default=None, help=f"blocks per batch ({FULL['batch_size']})")
    p.add_argument("--block-size", type=int, default=None, help=f"tokens per block ({FULL['block_size']})")
    p.add_argument("--hidden", type=int, default=None, help=f"hidden size ({FULL['hidden']})")
    p.add_argument("--layers", type=int, default=None, help=f"encoder layers ({FULL['layers']})")
    p.add_argument("--heads", type=int, default=None, help=f"attention heads ({FULL['heads']})")
    p.add_argument("--intermediate", type=int, default=None, help=f"FFN size ({FULL['intermediate']})")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--apm-cmd", default="apm", help="e.g. 'python -m apm_lightning'")
    p.add_argument("--apm-args", default="", help="extra args appended to `apm pretrain`")
    p.add_argument("--warmup-run", action="store_true", help="an untimed 2-step run of every peer first")
    p.add_argument("--smoke", action="store_true", help=f"tiny workload: {SMOKE}")
    p.add_argument("--json", type=Path, default=None, help="write rows and ratios as JSON")
    p.add_argument("--_child", choices=CHILD_PEERS, help=argparse.SUPPRESS)
    args = p.parse_args()
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.corpus = args.corpus.resolve()
    return args


def main() -> int:
    require_bench_extras()
    args = parse_args()
    if args._child:
        child_main(args._child, args)
        return 0

    import torch

    if args.threads is None:
        args.threads = torch.get_num_threads()
    only = PEERS if args.only == "all" else tuple(args.only.split(","))
    unknown = set(only) - set(PEERS)
    if unknown:
        raise SystemExit(f"unknown peer(s): {', '.join(sorted(unknown))}")
    peers = [peer for peer in PEERS if peer in only]
    info = hardware(args.threads)
    print_hardware(info)
    print(
        f"workload: MLM BERT hidden={args.hidden} layers={args.layers} heads={args.heads} "
        f"intermediate={args.intermediate} vocab=MiniLM WordPiece, batch={args.batch_size} "
        f"block={args.block_size}, steps={args.steps}, fp32 CPU, threads={args.threads}"
        + (" [SMOKE]" if args.smoke else "")
    )
    print(f"corpus: {args.corpus}", flush=True)

    def run_peer(peer: str, a: argparse.Namespace) -> dict[str, Any]:
        return run_apm(a) if peer == "apm" else spawn_child(peer, a)

    if args.warmup_run:
        tiny = argparse.Namespace(**{**vars(args), "steps": 2})
        for peer in peers:
            print(f"--- warmup {peer}", flush=True)
            try:
                run_peer(peer, tiny)
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
        print(f"--- {peer} took {time.perf_counter() - t0:.1f}s incl. startup", flush=True)

    ratios = report(results, errors)
    rows = [
        {"benchmark": BENCHMARK, "peer": peer, "value": r["tokens_per_second"], "unit": "tokens/s"}
        for peer, r in results.items()
    ]
    workload = {k: str(v) for k, v in vars(args).items() if k != "_child"}
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
