"""Run directories that keep their records: no run is lost or silently overwritten.

- A fresh ``apm fit`` (no ``--ckpt_path``) into a directory that already holds a run
  (``results.json`` or checkpoints) is refused with nothing changed; ``--ckpt_path last`` resumes
  it. What a run that saved no checkpoint left behind (its config, its metrics) is replaced.
- While a fit runs, ``RUN_DIR/.lock`` (holding its pid) is locked with ``flock``: a second process
  that wants the same directory is refused. The kernel drops the lock when its holder dies, so a
  lock left by ``kill -9`` blocks nothing. Only the launching process (global rank zero) takes it:
  the ranks Lightning's launcher starts share their parent's directory.
- A failed command removes the folders it created and left empty.
- The records of a run continue across resumes: ``csv/metrics.csv`` is appended to (rows of steps
  that a resume from an earlier checkpoint redoes are dropped first), ``config.yaml`` is written
  once training really starts and kept on resume (a resume with other settings writes
  ``config-resume-<n>.yaml`` beside it), and the W&B run id file is written then too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import lightning.pytorch as pl
import yaml
from lightning.pytorch.utilities import rank_zero_only

from apm_lightning.core.errors import APMError
from apm_lightning.core.files import write_text_atomic
from apm_lightning.training.csv_logger import AppendingWriter, ResumableCSVLogger
from apm_lightning.training.loggers import RUN_ID_FILE, _step_wandb_logger

try:  # POSIX; elsewhere runs go unlocked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


def is_launching_process() -> bool:
    """Global rank zero as the environment tells before any process group exists: false in the
    ranks that Lightning's launcher (LOCAL_RANK), torchrun (RANK) or srun start, and on other
    nodes (NODE_RANK)."""
    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") in ("", "0")


def run_records(root: str | Path) -> list[str]:
    """What makes ``root`` hold a run: its results and checkpoints (relative paths)."""
    root = Path(root)
    found = ["results.json"] if (root / "results.json").is_file() else []
    ckpts = root / "checkpoints"
    if ckpts.is_dir():
        found += sorted(f"checkpoints/{p.name}" for p in ckpts.iterdir() if not p.name.startswith("."))
    return found


def check_fresh_run_dir(root: str | Path, ckpt_path: str | None) -> None:
    """Refuse a fresh fit (no checkpoint to resume) into a directory that holds a run."""
    if ckpt_path:
        return
    found = run_records(root)
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise APMError(
            f"run dir {root} already holds a run ({shown}); resume it with --ckpt_path last, "
            "or start a new run with another --trainer.default_root_dir"
        )


class RunDirGuard:
    """The run directory of one command: the lock of a fit, and on failure the removal of the
    folders it created that stayed empty."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.created: list[Path] = []
        self._lock_fd: int | None = None
        self._stale_lock: bytes | None = None

    def start(self, root: str | Path, subcommand: str, ckpt_path: str | None) -> None:
        if not is_launching_process():
            return
        self.root = Path(root)
        # The folders this command will create (deepest first), before it writes anything.
        self.created = [p for p in (self.root, *self.root.parents) if not p.exists()]
        if subcommand != "fit":
            return
        check_fresh_run_dir(self.root, ckpt_path)
        self._lock()
        # Again under the lock: a run that ended between the first check and the lock.
        check_fresh_run_dir(self.root, ckpt_path)

    def _lock(self) -> None:
        if fcntl is None or self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise APMError(
                    f"{self.root} is in use by another apm process (pid {holder}); wait for it to end "
                    "or choose another --trainer.default_root_dir"
                ) from None
            # The holder before us removes the file when it ends: if it did so after we opened
            # it, we hold a lock on a file nobody else will see; take the one that is there.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)
        # A lock file left by a killed run: a refused command puts its text back as it was.
        self._stale_lock = os.pread(fd, 64, 0) if os.fstat(fd).st_size else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self, failed: bool) -> None:
        if self._lock_fd is not None and self.root is not None:
            if failed and self._stale_lock is not None:
                os.ftruncate(self._lock_fd, 0)
                os.pwrite(self._lock_fd, self._stale_lock, 0)
            else:  # removed while still held, so no other process can lock this file in between
                (self.root / LOCK_FILE).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None
        if failed and self.root is not None and self.root in self.created:
            _remove_empty_folders(self.root)
            for parent in self.created[1:]:
                with contextlib.suppress(OSError):
                    parent.rmdir()  # only when empty


def _remove_empty_folders(root: Path) -> None:
    if not root.is_dir():
        return
    for folder in sorted(
        (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    ):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


# --- records written once training really starts ---------------------------------------------------


def write_run_config(folder: Path, name: str, text: str, resuming: bool) -> Path:
    """``config.yaml`` of a run: written by a fresh run; a resume keeps it, and records settings
    that differ (other than ``ckpt_path``) as ``config-resume-<n>.yaml``."""
    path = folder / name
    if resuming and path.is_file():
        try:
            before = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            before = None
        now = yaml.safe_load(text) or {}
        if isinstance(before, dict) and _without_ckpt(before) == _without_ckpt(now):
            return path
        stem, suffix = os.path.splitext(name)
        n = 1
        while (folder / f"{stem}-resume-{n}{suffix}").exists():
            n += 1
        path = folder / f"{stem}-resume-{n}{suffix}"
    return write_text_atomic(path, text)


def _without_ckpt(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "ckpt_path"}


class RunRecords(pl.Callback):
    """At the start of training (after the checkpoint was restored, so a rejected resume wrote
    nothing): the CSV history is cut back to the resumed step, and the W&B run id is recorded."""

    def __init__(self, root: str | Path, wandb_run_id: str | None = None) -> None:
        self.root = Path(root)
        self.wandb_run_id = wandb_run_id

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, _step_wandb_logger()):  # its steps follow the optimizer steps
                logger.trainer = trainer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                # Rows are logged under the steps completed before them: a resume from global
                # step S redoes the rows of step S and later.
                logger.save()
                writer = logger.experiment
                if isinstance(writer, AppendingWriter):
                    writer.keep_before(trainer.global_step)
        if self.wandb_run_id:
            (self.root / RUN_ID_FILE).write_text(self.wandb_run_id + "\n")
