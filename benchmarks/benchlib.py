"""Shared pieces of the benchmark scripts: offline environment, hardware line, child runs,
target ratios and the JSON every benchmark writes with ``--json PATH``.

JSON layout (read by ``run_all.py``)::

    {"benchmark": NAME, "hardware": {...}, "workload": {...},
     "rows":   [{"benchmark", "peer", "value", "unit"}, ...],
     "ratios": [{"name", "value", "target", "direction", "hard", "pass", "verdict"}, ...],
     "errors": {peer: message}}

A ratio has a target (a bound, or none), a direction (``higher`` or ``lower`` is better) and is
``hard`` (PASS/FAIL) or only reported (verdict ``report``; ``pass`` still says whether the bound
was met).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# Offline and quiet before any Hugging Face import; children inherit the environment.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = (
    Path(os.environ["APM_DATA_DIR"]) if os.environ.get("APM_DATA_DIR") else REPO.parent / "shared" / "data"
)
# What a failed peer can raise in the parent: bad exit, missing file/command, bad JSON.
PEER_ERRORS = (RuntimeError, OSError, ValueError, KeyError, IndexError)


def hardware(torch_threads: int | None = None) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "torch_threads": torch_threads or torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def peak_rss_mb() -> float:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def print_hardware(info: dict[str, Any]) -> None:
    print("hardware/versions:", ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)


def run_child(cmd: list[str], name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` (a fresh interpreter); its last stdout line is a JSON object."""
    proc = subprocess.run(
        cmd, check=False, cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-2000:])
        raise RuntimeError(f"{name} exited with code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def make_ratio(
    name: str, value: float | None, target: float | None, direction: str = "higher", hard: bool = True
) -> dict[str, Any]:
    met = None
    if value is not None and target is not None:
        met = value >= target if direction == "higher" else value <= target
    if value is None:
        verdict = "n/a"
    elif hard and met is not None:
        verdict = "PASS" if met else "FAIL"
    else:
        verdict = "report"
    return {
        "name": name,
        "value": value,
        "target": target,
        "direction": direction,
        "hard": hard,
        "pass": met,
        "verdict": verdict,
    }


def target_text(r: dict[str, Any]) -> str:
    if r.get("target") is None:
        return "(lower better)" if r.get("direction") == "lower" else "(higher better)"
    return ("<=" if r.get("direction") == "lower" else ">=") + format(r["target"], "g")


def verdict_text(r: dict[str, Any]) -> str:
    if r["verdict"] == "report" and r.get("pass") is not None:
        return "report (met)" if r["pass"] else "report (not met)"
    return r["verdict"]


def print_ratios(ratios: list[dict[str, Any]], width: int = 46) -> None:
    print(f"\n{'ratio':<{width}}{'value':>9}{'target':>16}  verdict")
    for r in ratios:
        shown = "-" if r["value"] is None else f"{r['value']:.3f}"
        print(f"{r['name']:<{width}}{shown:>9}{target_text(r):>16}  {verdict_text(r)}")


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nwrote {path}", flush=True)


def require_bench_extras() -> None:
    """The Hugging Face Trainer peers need accelerate: say so before any peer runs, not after."""
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        sys.exit('benchmarks: the Hugging Face Trainer peers need accelerate: pip install -e ".[bench]"')


def trainer_length_grouping() -> dict[str, Any]:
    """The TrainingArguments that turn on the Trainer's length grouping: transformers 5 replaced
    ``group_by_length=True`` with ``train_sampling_strategy``."""
    import dataclasses

    from transformers import TrainingArguments

    if "group_by_length" in {f.name for f in dataclasses.fields(TrainingArguments)}:
        return {"group_by_length": True}
    return {"train_sampling_strategy": "group_by_length"}
