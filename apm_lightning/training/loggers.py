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
from urllib.parse import urlparse

WANDB_MODES = ("auto", "online", "offline", "disabled")


def _wandb_host() -> str:
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    return urlparse(base).hostname or "api.wandb.ai"


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(_wandb_host()) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_server_reachable(timeout: float = 2.0) -> bool:
    from apm_lightning.data.sources import tcp_reachable

    return tcp_reachable(_wandb_host(), 443, timeout)


def resolve_wandb_mode(mode: str = "auto") -> str:
    """``WANDB_MODE`` in the environment wins; ``auto`` becomes online or offline."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env == "dryrun":
        env = "offline"
    if env in ("online", "offline", "disabled"):
        return env
    if mode not in WANDB_MODES:
        from apm_lightning.errors import APMError

        raise APMError(f"unknown W&B mode {mode!r}: choose one of {', '.join(WANDB_MODES)}")
    if mode != "auto":
        return mode
    return "online" if wandb_credentials_present() and wandb_server_reachable() else "offline"


RUN_ID_FILE = "wandb_run_id"


def wandb_run_id(root: str | Path, resume: bool) -> str:
    """The W&B run id of a training run directory: kept in ``RUN_DIR/wandb_run_id`` so a resumed
    run continues the same W&B run; a fresh run gets a new one. Only rank zero writes it (other
    ranks log nothing to W&B)."""
    from lightning.pytorch.utilities import rank_zero_only

    path = Path(root) / RUN_ID_FILE
    if resume and path.is_file():
        return path.read_text().strip()
    # Under `wandb agent` the sweep created the run: log into it, not a new one.
    run_id = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
    run_id = run_id or secrets.token_hex(4)
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id


def default_loggers(
    root: str | Path, wandb_mode: str, project: str, run_name: str | None, run_id: str | None = None
) -> list:
    """CSV always; W&B unless disabled. Both write under the run directory. ``run_id``: the W&B
    run to create or continue (see ``wandb_run_id``)."""
    from lightning.pytorch.loggers import CSVLogger

    root = Path(root)
    loggers: list = []
    mode = resolve_wandb_mode(wandb_mode)
    if mode != "disabled":
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        from apm_lightning.redact import redact

        root.mkdir(parents=True, exist_ok=True)
        # W&B records the command line; when it holds a secret, record no system metadata.
        settings = wandb.Settings(x_disable_meta=redact(sys.argv) != sys.argv)
        loggers.append(
            WandbLogger(
                project=project,
                name=run_name,
                save_dir=str(root),
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
                settings=settings,
            )
        )
    loggers.append(CSVLogger(save_dir=str(root), name="csv", version=""))
    return loggers
