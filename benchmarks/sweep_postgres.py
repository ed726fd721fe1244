"""A sweep shared through a real PostgreSQL server, as workers on several machines share one:
start a local server (pgserver's binaries, TCP, a password), run 3 ``apm sweep`` workers at
once on experiments/sweeps/tiny_rte.yaml (tiny BERT, 32 RTE rows), SIGKILL one in the middle of
its first trial, then print the trials COMPLETE / PRUNED / FAIL, the best value and the wall time.

The killed worker's trial is failed by the others once its heartbeat is 3 beats old and run
again; the study still reaches --n-trials COMPLETE + PRUNED.

    python benchmarks/sweep_postgres.py --n-trials 6 [--json out.json]
Exit code: 0 when the study reached --n-trials finished trials and the killed one is FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import DATA_ROOT, REPO

from apm_lightning.core.redact import redact_text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-trials", type=int, default=6)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--heartbeat", type=int, default=1, help="seconds between heartbeats (grace: 3 beats)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args()

    import optuna
    import sqlalchemy.exc

    from apm_lightning.runners.local_postgres import LocalPostgres

    work = Path(tempfile.mkdtemp(prefix="apm-sweep-pg-"))
    start = time.perf_counter()
    with LocalPostgres(work / "pg") as pg:
        server_s = time.perf_counter() - start
        print(f"server: {redact_text(pg.url)} (started in {server_s:.1f} s)", flush=True)
        cmd = [
            sys.executable,
            "-m",
            "apm_lightning",
            "sweep",
            "-c",
            str(REPO / "experiments/sweeps/tiny_rte.yaml"),
        ]
        cmd += ["--n-trials", str(args.n_trials), "--storage", pg.url, "--study-name", "bench"]
        cmd += ["--out", str(work / "sweep"), "--launcher", "inprocess", "--heartbeat", str(args.heartbeat)]
        cmd += ["--data.data_dir", str(DATA_ROOT / "glue"), "--wandb_mode", "disabled"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        t0 = time.perf_counter()
        workers = [
            subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
            )
            for _ in range(args.workers)
        ]
        victim, killed = workers[0], None
        while killed is None and victim.poll() is None:
            time.sleep(0.5)
            try:
                trials = optuna.load_study(study_name="bench", storage=pg.url).get_trials(deepcopy=False)
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):
                # No study yet, or this poll raced the workers creating Optuna's tables (they
                # retry such conflicts themselves: runners/sweep_study.py).
                continue
            for t in trials:
                if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{victim.pid}"):
                    os.killpg(victim.pid, signal.SIGKILL)
                    killed = t.number
        codes = [w.wait() for w in workers[1:]]
        wall = time.perf_counter() - t0
        study = optuna.load_study(study_name="bench", storage=pg.url)
        trials = [t for t in study.get_trials() if not t.user_attrs.get("apm_skipped")]
        counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
        best = study.best_value if counts["COMPLETE"] else None
    shutil.rmtree(work, ignore_errors=True)
    killed_state = next((t.state.name for t in trials if t.number == killed), None)
    result = {
        "benchmark": "sweep_postgres",
        "workers": args.workers,
        "killed_trial": killed,
        "killed_trial_state": killed_state,
        "trials": counts,
        "best_value": best,
        "server_start_s": round(server_s, 2),
        "wall_s": round(wall, 1),
        "survivor_exit_codes": codes,
    }
    print(f"trials: COMPLETE {counts['COMPLETE']}  PRUNED {counts['PRUNED']}  FAIL {counts['FAIL']}")
    print(f"killed worker's trial {killed}: {killed_state}; best value {best}; wall time {wall:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    ok = (
        counts["COMPLETE"] + counts["PRUNED"] == args.n_trials
        and killed_state == "FAIL"
        and codes == [0] * len(codes)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
