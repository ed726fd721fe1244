"""Weights & Biases in an ``auto`` mode, and the default logger set (W&B + CSV).

``auto`` goes online only when credentials exist and the server answers within two seconds;
otherwise the run is written offline to disk (``wandb sync`` uploads it later). A run never
blocks on a missing account or network.
"""

from __future__ import annotations

import netrc
import os
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

WANDB_MODES = ("auto", "online", "offline", "disabled")


def _wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def _wandb_host() -> str:
    return urlparse(_wandb_base_url()).hostname or "api.wandb.ai"


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(_wandb_host()) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_server_reachable(timeout: float = 2.0) -> bool:
    from apm_lightning.core.hub import url_reachable

    # WANDB_BASE_URL's own port, through HTTPS_PROXY when one is set.
    return url_reachable(_wandb_base_url(), timeout)


def resolve_wandb_mode(mode: str = "auto") -> str:
    """``WANDB_MODE`` in the environment wins; ``auto`` becomes online or offline."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env == "dryrun":
        env = "offline"
    if env in ("online", "offline", "disabled"):
        return env
    if mode not in WANDB_MODES:
        from apm_lightning.core.errors import APMError

        raise APMError(f"unknown W&B mode {mode!r}: choose one of {', '.join(WANDB_MODES)}")
    if mode != "auto":
        return mode
    return "online" if wandb_credentials_present() and wandb_server_reachable() else "offline"


RUN_ID_FILE = "wandb_run_id"


def wandb_run_id(root: str | Path, resume: bool, write: bool = True) -> str:
    """The W&B run id of a training run directory: kept in ``RUN_DIR/wandb_run_id`` so a resumed
    run continues the same W&B run; a fresh run gets a new one. Only rank zero writes it (other
    ranks log nothing to W&B); ``write=False`` leaves that to the caller (``RunRecords`` writes
    it once training starts)."""
    from lightning.pytorch.utilities import rank_zero_only

    path = Path(root) / RUN_ID_FILE
    if resume and path.is_file():
        return path.read_text().strip()
    # Under `wandb agent` the sweep created the run: log into it, not a new one.
    run_id = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
    run_id = run_id or secrets.token_hex(4)
    if write and rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id


def default_loggers(
    root: str | Path,
    wandb_mode: str,
    project: str,
    run_name: str | None,
    run_id: str | None = None,
    resumed: bool = False,
) -> list:
    """CSV always; W&B unless disabled. Both write under the run directory. ``run_id``: the W&B
    run to create or continue (see ``wandb_run_id``); ``resumed``: it continues a run that
    logged before (a resume from a checkpoint)."""
    from apm_lightning.training.csv_logger import ResumableCSVLogger

    root = Path(root)
    loggers: list = []
    mode = resolve_wandb_mode(wandb_mode)
    if mode != "disabled":
        import wandb

        from apm_lightning.core.redact import redact

        StepWandbLogger = _step_wandb_logger()

        root.mkdir(parents=True, exist_ok=True)
        # W&B records the command line; when it holds a secret, record no system metadata.
        settings = wandb.Settings(x_disable_meta=redact(sys.argv) != sys.argv)
        if resumed and mode == "offline":
            # Online, the server says whether the id is a resumed run; offline, nobody does, and
            # the run file would claim a new run that `wandb sync` cannot merge.
            settings = wandb.Settings(x_disable_meta=settings.x_disable_meta, resumed=True)
        loggers.append(
            StepWandbLogger(
                project=project,
                name=run_name,
                save_dir=str(root),
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
                settings=settings,
            )
        )
    loggers.append(ResumableCSVLogger(root, name="csv", version=""))
    return loggers


def _step_wandb_logger() -> type:
    """``StepWandbLogger``, defined on first use: importing this module stays light."""
    global _STEP_WANDB_LOGGER
    if _STEP_WANDB_LOGGER is None:
        from lightning.pytorch.loggers import WandbLogger
        from lightning.pytorch.utilities import rank_zero_only

        class StepWandbLogger(WandbLogger):
            """Logs each row at the trainer's step (W&B's ``_step``), not at the count of calls
            in this process: a resumed run continues its step count instead of restarting at 0
            in the same run id. With ``trainer`` set (``RunRecords`` does), a row of training
            counts as the optimizer step it belongs to: Lightning logs the k-th step's loss and
            learning rate under k - 1, so the first row of a resume from step k would land on
            the row of the final validation before it (logged under k), which W&B drops."""

            trainer: Any = None

            @rank_zero_only
            def log_metrics(self, metrics: Any, step: int | None = None) -> None:
                from apm_lightning.core import library_compat as compat

                if step is None or compat.wandb_init_args(self).get("sync_tensorboard"):
                    return super().log_metrics(metrics, step)
                metrics = compat.add_prefix(metrics, compat.logger_prefix(self), self.LOGGER_JOIN_CHAR)
                fitting = self.trainer is not None and self.trainer.state.fn == "fit"
                at = step + 1 if fitting else step
                self.experiment.log(dict(metrics, **{"trainer/global_step": step}), step=at)

        _STEP_WANDB_LOGGER = StepWandbLogger
    return _STEP_WANDB_LOGGER


_STEP_WANDB_LOGGER: type | None = None
