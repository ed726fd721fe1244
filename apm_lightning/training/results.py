"""The results contract: every run writes ``results.json`` in its run directory.

Runners, sweeps and reports read these files and nothing else, so the keys are stable:
``task``, ``metrics`` (dev metrics plus ``main``), ``train_examples_per_second``,
``train_wall_seconds``, ``peak_rss_mb``, ``best_checkpoint``, ``config``, ``versions``,
``git_commit``.
"""

from __future__ import annotations

import importlib.metadata
import platform
import resource
import subprocess
import sys
from pathlib import Path

PACKAGES = (
    "apm-lightning",
    "torch",
    "lightning",
    "torchmetrics",
    "transformers",
    "tokenizers",
    "datasets",
    "wandb",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the run's working directory (the checkout a researcher runs from), or None
    outside a git repository. Never the package's location: an installed package has no commit."""
    where = Path.cwd()
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
