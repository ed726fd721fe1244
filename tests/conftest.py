"""Shared test setup: offline by default, and the location of the shared benchmark data.

The environment variables are set at import time, before any test module imports ``datasets``
or ``transformers``, so nothing in the suite ever tries the network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# A private cache for tokenized data, so tests neither read nor fill the user's cache.
os.environ.setdefault("APM_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"apm-test-cache-{os.getpid()}"))

# Lightning binds its log handler to sys.stderr when first imported; import it now, not inside
# a test whose captured stream is closed afterwards (that turns later log lines into errors).
import lightning.pytorch  # noqa: E402,F401

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared, read-only data folder sits beside the repository: ``../shared/data`` from the root.
DATA = REPO_ROOT.parent / "shared" / "data"
GLUE = DATA / "glue"


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """Each test gets the session's private tokenization cache and no $APM_DATA_DIR, so data
    comes only from where the test points."""
    monkeypatch.setenv("APM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "apm-cache"))
    monkeypatch.delenv("APM_DATA_DIR", raising=False)
    # An in-process run starts a W&B service and names it in WANDB_SERVICE; runs in later
    # subprocesses would share it, and a killed one's run would stay open there.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


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
