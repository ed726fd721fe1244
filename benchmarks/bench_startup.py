"""Benchmark CLI start-up: wall time of `apm --help` against what a naive Lightning CLI pays
before it can print anything (`python -c "import lightning.pytorch"`) and a bare interpreter
(`python -c pass`).

Every command runs K times, each a fresh process (stdout/stderr discarded), the commands
interleaved round by round so that background load hits them alike, after one untimed round
(disk caches). Reported: the median and the minimum of the K wall times.
  apm_help         `apm --help` (the console script on PATH; else `python -m apm_lightning --help`)
  apm_module_help  `python -m apm_lightning --help` (information)
  apm_fit_help     `apm fit --help` (information: a subcommand's help builds the LightningCLI
                   parser, so it pays the Lightning import too)
  import_lightning `python -c "import lightning.pytorch"`
  python_pass      `python -c pass`

Ratios (LOWER is better for us; reported, no hard target): apm_help / import_lightning, and
the same net of interpreter start-up ((apm_help - python_pass) / (import_lightning -
python_pass)), plus apm_fit_help / import_lightning (information). Exit 0; 1 if a command
failed. Smoke run (3 rounds): --smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import REPO, hardware, make_ratio, print_hardware, print_ratios, ratio, write_json

BENCHMARK = "startup"


def commands() -> dict[str, list[str]]:
    apm = shutil.which("apm")
    return {
        "apm_help": [apm, "--help"] if apm else [sys.executable, "-m", "apm_lightning", "--help"],
        "apm_module_help": [sys.executable, "-m", "apm_lightning", "--help"],
        "apm_fit_help": [apm, "fit", "--help"]
        if apm
        else [sys.executable, "-m", "apm_lightning", "fit", "--help"],
        "import_lightning": [sys.executable, "-c", "import lightning.pytorch"],
        "python_pass": [sys.executable, "-c", "pass"],
    }


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with code {proc.returncode}: {proc.stderr[-500:]!r}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", "-k", type=int, default=None, help="timed runs per command (10)")
    p.add_argument("--smoke", action="store_true", help="3 runs per command")
    p.add_argument("--json", type=Path, default=None, help="write rows and ratios as JSON")
    args = p.parse_args()
    if args.runs is None:
        args.runs = 3 if args.smoke else 10

    info = hardware()
    print_hardware(info)
    cmds = commands()
    for name, cmd in cmds.items():
        print(f"{name:<18}$ {' '.join(cmd)}")
    errors: dict[str, str] = {}
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for round_ in range(args.runs + 1):  # round 0 is untimed (disk caches, .pyc files)
        for name, cmd in cmds.items():
            if name in errors:
                continue
            try:
                seconds = wall(cmd)
            except (RuntimeError, OSError) as e:
                errors[name] = f"{type(e).__name__}: {e}"
                continue
            if round_:
                times[name].append(seconds)
        print(f"round {round_}{' (untimed)' if not round_ else ''} done", flush=True)

    results: dict[str, dict[str, Any]] = {}
    print(f"\n{'command':<18}{'median s':>10}{'min s':>8}{'runs':>6}")
    for name in cmds:
        if name in errors:
            print(f"{name:<18}  FAILED: {errors[name]}")
            continue
        values = times[name]
        results[name] = {
            "median_seconds": statistics.median(values),
            "min_seconds": min(values),
            "all": values,
        }
        print(f"{name:<18}{results[name]['median_seconds']:>10.3f}{min(values):>8.3f}{len(values):>6}")

    def med(name: str) -> float | None:
        return results[name]["median_seconds"] if name in results else None

    net = None
    if med("apm_help") is not None and med("import_lightning") is not None and med("python_pass") is not None:
        net = ratio(med("apm_help") - med("python_pass"), med("import_lightning") - med("python_pass"))
    ratios = [
        make_ratio(
            "startup: apm --help / import lightning.pytorch",
            ratio(med("apm_help"), med("import_lightning")),
            1.0,
            "lower",
            hard=False,
        ),
        make_ratio(
            "startup: same, net of python -c pass",
            net,
            1.0,
            "lower",
            hard=False,
        ),
        make_ratio(
            "startup: apm fit --help / import lightning.pytorch",
            ratio(med("apm_fit_help"), med("import_lightning")),
            None,
            "lower",
            hard=False,
        ),
    ]
    print_ratios(ratios)
    print("(time ratios: below 1 means `apm --help` starts faster than importing Lightning)")
    rows = [
        {"benchmark": BENCHMARK, "peer": name, "value": r["median_seconds"], "unit": "s"}
        for name, r in results.items()
    ]
    write_json(
        args.json,
        {
            "benchmark": BENCHMARK,
            "smoke": args.smoke,
            "hardware": info,
            "workload": {"runs": args.runs, "commands": {k: " ".join(v) for k, v in cmds.items()}},
            "rows": rows,
            "ratios": ratios,
            "results": results,
            "errors": errors,
        },
    )
    return 1 if errors else 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
