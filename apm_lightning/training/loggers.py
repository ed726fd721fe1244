"""Weights & Biases in an ``auto`` mode, and the default logger set (W&B + CSV).

``auto`` goes online only when credentials exist and the server answers within two seconds;
otherwise the run is written offline to disk (``wandb sync`` uploads it later). A run never
blocks on a missing account or network.
"""

from __future__ import annotations

import netrc
import os
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


def default_loggers(root: str | Path, wandb_mode: str, project: str, run_name: str | None) -> list:
    """CSV always; W&B unless disabled. Both write under the run directory."""
    from lightning.pytorch.loggers import CSVLogger

    root = Path(root)
    loggers: list = []
    mode = resolve_wandb_mode(wandb_mode)
    if mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        (root / "wandb").parent.mkdir(parents=True, exist_ok=True)
        loggers.append(WandbLogger(project=project, name=run_name, save_dir=str(root), mode=mode))
    loggers.append(CSVLogger(save_dir=str(root), name="csv", version=""))
    return loggers
