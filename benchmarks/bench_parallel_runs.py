"""Two training runs at once on split cores against one run on all of them (``apm glue --jobs``).

Fine-tuning steps of MiniLM (``AutoModelForSequenceClassification``, batch 32, random tokens of a
fixed length, fused AdamW, clipping at 1.0) in fresh processes, one after the other:

- ``one``: one process with every core (torch's threads = the cores);
- ``two``: two processes at once, each with half the cores;
- ``alone``: one process with half the cores, for scale.

Prints examples/s of each and the ratio two / one: what splitting the cores between two runs
gains in throughput. Small matrices use several threads poorly, so on 2 cores the two one-thread
processes together outrun one two-thread process.

  python benchmarks/bench_parallel_runs.py                 # lengths 16 (SST-2-like) and 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import hardware, make_ratio, print_hardware, print_ratios, write_json


def child(threads: int, steps: int, length: int) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from apm_lightning.core.model_paths import minilm_path

    torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_path()), num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    generator = torch.Generator().manual_seed(0)
    model.train()

    def step() -> None:
        x = torch.randint(1000, 20000, (32, length), generator=generator)
        y = torch.randint(0, 2, (32,), generator=generator)
        model(input_ids=x, attention_mask=torch.ones_like(x), labels=y).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):  # warm-up: first-call allocations
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    print(json.dumps({"examples_per_s": 32 * steps / (time.perf_counter() - start)}))


def spawn(threads: int, steps: int, length: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--_child", str(threads), str(steps), str(length)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def rate(process: subprocess.Popen) -> float:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"a training process failed (exit status {process.returncode})")
    return json.loads(out.strip().splitlines()[-1])["examples_per_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="16,64", help="sequence lengths, comma-separated")
    p.add_argument("--steps", type=int, default=40, help="timed steps per process (at length 16)")
    p.add_argument("--smoke", action="store_true", help="a few steps, to check it runs")
    p.add_argument("--json", type=Path, default=None, help="write rows and ratios here (run_all.py)")
    p.add_argument("--_child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        child(*args._child)
        return 0
    if args.smoke:
        args.lengths, args.steps = "16", 2
    cores = len(os.sched_getaffinity(0))
    half = max(1, cores // 2)
    info = hardware(cores)
    print_hardware(info)
    rows, ratios = [], []
    print(
        f"| length | one process, {cores} threads | two processes, {half} each (sum) | one, {half} alone | two / one |"
    )
    print("|---:|---:|---:|---:|---:|")
    for length in [int(x) for x in args.lengths.split(",")]:
        steps = max(2 if args.smoke else 10, args.steps * 16 // length)
        one = rate(spawn(cores, steps, length))
        pair = [spawn(half, steps, length), spawn(half, steps, length)]
        two = [rate(q) for q in pair]
        alone = rate(spawn(half, steps, length))
        shown = f"{two[0]:.1f} + {two[1]:.1f} = {sum(two):.1f}"
        print(f"| {length} | {one:.1f} | {shown} | {alone:.1f} | {sum(two) / one:.2f} |", flush=True)
        for peer, value in (("one_all_cores", one), ("two_split_cores", sum(two)), ("one_half_cores", alone)):
            rows.append({"benchmark": f"parallel_L{length}", "peer": peer, "value": value, "unit": "ex/s"})
        name = f"two runs on split cores / one on all, length {length}"
        ratios.append(make_ratio(name, sum(two) / one, 1.0, hard=False))
    print_ratios(ratios)
    write_json(
        args.json,
        {"benchmark": "parallel", "hardware": info, "workload": vars(args), "rows": rows, "ratios": ratios},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
