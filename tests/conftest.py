"""Shared test setup: offline by default, and the location of the shared benchmark data.

The environment variables are set at import time, before any test module imports ``datasets``
or ``transformers``, so nothing in the suite ever tries the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared, read-only data folder sits beside the repository: ``../shared/data`` from the root.
DATA = REPO_ROOT.parent / "shared" / "data"
GLUE = DATA / "glue"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``<shared>/data``; tests needing it skip when it is absent."""
    if not DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {DATA} (see ../shared/data/README.md)")
    return DATA


@pytest.fixture(scope="session")
def glue_dir(data_root: Path) -> Path:
    """``<shared>/data/glue`` in the original GLUE distribution layout."""
    if not GLUE.is_dir():
        pytest.skip(f"GLUE data not found at {GLUE} (see ../shared/data/README.md)")
    return GLUE
