"""Run every benchmark, sequentially, each in its own process, and print one table of all the
ratios against the peers measured in this same run (name, value, target, PASS/FAIL/report);
the table, the raw measurements and the hardware go to a Markdown file (--out).

  glue      bench_glue_finetune.py   `apm fit` vs the HF Trainer (SST-2 fine-tuning ex/s, accuracy)
  pretrain  bench_pretrain.py        `apm pretrain` MLM tokens/s vs plain loops and the HF Trainer
  tokenize  bench_tokenize.py        ClassificationDataModule tokenization vs datasets .map, cold and warm
  startup   bench_startup.py         `apm --help` vs `import lightning.pytorch` and `python -c pass`
  corpus    bench_corpus.py          corpus token cache, 1 and 2 processes, vs datasets .map; peak RSS
  parallel  bench_parallel_runs.py   two training runs on split cores vs one on all (apm glue --jobs)

Full run (defaults; glue compares dev accuracy over 3 seeds: --glue-args to change):
  python benchmarks/run_all.py --out benchmarks/results/summary.md
Smoke run (every benchmark in its tiny mode, a few minutes on 2 cores):
  python benchmarks/run_all.py --smoke

Exit code 0 when every benchmark ran (whatever the verdicts), 1 when one crashed or wrote no JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import REPO, print_ratios, require_bench_extras, target_text, verdict_text

HERE = Path(__file__).resolve().parent
# name -> (script, args of the full run, args of the smoke run)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "glue": (
        "bench_glue_finetune.py",
        ["--accuracy-seeds", "3"],
        ["--rows", "64", "--eval-rows", "64", "--max-length", "32", "--accuracy-seeds", "1"],
    ),
    "pretrain": ("bench_pretrain.py", [], ["--smoke"]),
    "tokenize": ("bench_tokenize.py", [], ["--smoke"]),
    "startup": ("bench_startup.py", [], ["--smoke"]),
    "corpus": ("bench_corpus.py", [], ["--smoke"]),
    "parallel": ("bench_parallel_runs.py", [], ["--smoke"]),
}


def glue_to_common(data: dict[str, Any]) -> dict[str, Any]:
    """bench_glue_finetune.py's JSON (results per peer, benchlib ratios) -> rows/ratios."""
    rows = []
    for peer, r in data.get("results", {}).items():
        rows.append(
            {"benchmark": "glue_sst2", "peer": peer, "value": r["train_examples_per_second"], "unit": "ex/s"}
        )
        rows.append(
            {"benchmark": "glue_sst2", "peer": peer, "value": 100 * r["accuracy"], "unit": "dev acc %"}
        )
    ratios = [{**r, "name": f"glue: {r['name']}"} for r in data.get("ratios", [])]
    return {
        "rows": rows,
        "ratios": ratios,
        "errors": data.get("errors", {}),
        "hardware": data.get("hardware"),
    }


def run_one(name: str, args: argparse.Namespace, json_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    script, full, smoke = BENCHMARKS[name]
    out = json_dir / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / script), *(smoke if args.smoke else full)]
    cmd += shlex.split(getattr(args, f"{name}_args")) + ["--json", str(out)]
    print(f"\n{'=' * 30} {name}\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, check=False)
    seconds = time.perf_counter() - t0
    print(f"{'=' * 30} {name}: exit {proc.returncode}, {seconds:.0f}s", flush=True)
    if not out.is_file():
        return None, f"exit code {proc.returncode}, no JSON written"
    data = json.loads(out.read_text())
    if name == "glue":
        data = {**data, **glue_to_common(data)}
    data["wall_seconds"] = seconds
    problem = None
    if proc.returncode != 0:
        problem = f"exit code {proc.returncode}: " + "; ".join(f"{k}: {v}" for k, v in data["errors"].items())
    return data, problem


def markdown(args: argparse.Namespace, done: dict[str, dict], problems: dict[str, str]) -> str:
    lines = [f"# Benchmarks{' (SMOKE: tiny workloads, not the real numbers)' if args.smoke else ''}", ""]
    lines.append(
        f"Run {time.strftime('%Y-%m-%d %H:%M:%S %z')}; `python benchmarks/run_all.py {' '.join(sys.argv[1:])}`."
    )
    hw = next((d["hardware"] for d in done.values() if d.get("hardware")), None)
    if hw:
        lines += ["", "Hardware/versions: " + ", ".join(f"{k}={v}" for k, v in hw.items())]
    lines += ["", "## Ratios (each against peers measured in this run)", ""]
    lines += ["| benchmark | ratio | value | target | verdict |", "|---|---|---:|---|---|"]
    for name, data in done.items():
        for r in data["ratios"]:
            value = "-" if r["value"] is None else f"{r['value']:.3f}"
            lines.append(f"| {name} | {r['name']} | {value} | {target_text(r)} | {verdict_text(r)} |")
    lines += ["", "## Measurements", "", "| benchmark | peer | value | unit |", "|---|---|---:|---|"]
    for data in done.values():
        for row in data["rows"]:
            lines.append(f"| {row['benchmark']} | {row['peer']} | {row['value']:.4g} | {row['unit']} |")
    lines += ["", "## Benchmark runs", "", "| benchmark | wall s | status |", "|---|---:|---|"]
    for name in args.names:
        if name in done:
            status = problems.get(name, "ok")
            lines.append(f"| {name} | {done[name]['wall_seconds']:.0f} | {status} |")
        else:
            lines.append(f"| {name} | - | {problems.get(name, 'not run')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    require_bench_extras()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="every benchmark in its smoke mode")
    p.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated, of {','.join(BENCHMARKS)}")
    p.add_argument("--out", type=Path, default=None, help="Markdown summary (default benchmarks/results/)")
    p.add_argument(
        "--json-dir", type=Path, default=None, help="where each benchmark's JSON goes (--out's folder)"
    )
    for name, (script, _, _) in BENCHMARKS.items():
        p.add_argument(f"--{name}-args", default="", help=f"extra args for {script}")
    args = p.parse_args()
    args.names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")
    if args.out is None:
        args.out = HERE / "results" / ("summary-smoke.md" if args.smoke else "summary.md")
    json_dir = args.json_dir or args.out.parent / (args.out.stem + "-json")
    json_dir.mkdir(parents=True, exist_ok=True)

    done: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for name in args.names:
        data, problem = run_one(name, args, json_dir)
        if data is not None:
            done[name] = data
        if problem:
            problems[name] = problem

    print(f"\n{'=' * 30} summary{' (SMOKE)' if args.smoke else ''}")
    print_ratios([r for data in done.values() for r in data["ratios"]], width=52)
    for name, problem in problems.items():
        print(f"{name}: {problem}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(args, done, problems))
    print(f"\nwrote {args.out} (JSON in {json_dir})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
