"""SLURM requeue: what ``--ckpt_path last`` resumes from when Lightning's auto-requeue saved.

Under SLURM, Lightning's ``SLURMEnvironment(auto_requeue=True)`` (chosen by itself when it sees
``SLURM_NTASKS``) handles the signal that ``#SBATCH --signal=SIGUSR1@90`` sends before the time
limit: it writes ``<run dir>/hpc_ckpt_<N>.ckpt`` (through our ``AtomicCheckpointIO``) and calls
``scontrol requeue $SLURM_JOB_ID``. The requeued job runs the same command, ``--ckpt_path last``,
and must continue from that save when it is newer than ``checkpoints/last*.ckpt``.
"""

from __future__ import annotations

from pathlib import Path


def newest_resume_checkpoint(checkpoints: str | Path, run_dir: str | Path) -> Path | None:
    """The newest of ``checkpoints/last*.ckpt`` and ``run_dir/hpc_ckpt_*.ckpt``, or None."""
    found = list(Path(checkpoints).glob("last*.ckpt")) + list(Path(run_dir).glob("hpc_ckpt_*.ckpt"))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
