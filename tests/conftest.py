"""Shared test setup: offline by default, and where the test data is.

The environment variables are set at import time, before any test module imports ``datasets``
or ``transformers``, so nothing in the suite ever tries the network.

Data: the real benchmark files in ``../shared/data`` where that folder exists (our machines),
else a small generated tree in the same layout (tests/fixtures/fixture_data.py; GitHub's
runner), so fit, resume, pretraining and SQuAD tests run either way. ``APM_TEST_DATA=fixture``
picks the generated tree even where ../shared exists. Tests name ``DATA``/``GLUE``/``SQUAD``/
``CORPUS`` from here; the few that assert on the real files' content carry ``real_data_only``.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# A private cache for tokenized data, so tests neither read nor fill the user's cache.
os.environ.setdefault("APM_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"apm-test-cache-{os.getpid()}"))

# The README's command runs the suite in pytest-xdist workers, one per core. Each worker, and
# every process a test starts (they inherit this environment), computes on one thread: two
# processes with a thread per core each would oversubscribe the cores and slow each other 5-10x.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

# Lightning binds its log handler to sys.stderr when first imported; import it now, not inside
# a test whose captured stream is closed afterwards (that turns later log lines into errors).
import lightning.pytorch  # noqa: E402,F401

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared, read-only data folder sits beside the repository: ``../shared/data`` from the root.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
REAL_DATA = SHARED_DATA.is_dir() and os.environ.get("APM_TEST_DATA", "shared") != "fixture"


def _fixture_module():
    """tests/fixtures/fixture_data.py, loaded by path: ``fixtures`` is also a PyPI package name."""
    name = "apm_test_fixture_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).parent / "fixtures" / "fixture_data.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _generated_data() -> Path:
    """The generated tree, written once per test process (a fraction of a second) and removed
    at exit; subprocesses that tests start get its paths as arguments."""
    root = Path(tempfile.mkdtemp(prefix="apm-test-data-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return _fixture_module().write_fixture_data(root)


DATA = SHARED_DATA if REAL_DATA else _generated_data()
GLUE = DATA / "glue"
SQUAD = DATA / "squad"
CORPUS = DATA / "corpus"

# Rows per GLUE file as read (headers left out): the real files' (../shared/data/README.md) or
# the generated ones'. Tests name these instead of literal counts, so a count is checked on both.
REAL_GLUE_ROWS = {
    ("cola", "train"): 8551,
    ("cola", "validation"): 1043,
    ("cola", "test"): 1063,
    ("sst2", "train"): 67349,
    ("sst2", "validation"): 872,
    ("sst2", "test"): 1821,
    ("mrpc", "train"): 3668,
    ("mrpc", "validation"): 408,
    ("mrpc", "test"): 1725,
    ("rte", "train"): 2490,
    ("rte", "validation"): 277,
    ("rte", "test"): 3000,
    ("wnli", "train"): 635,
    ("wnli", "validation"): 71,
    ("wnli", "test"): 146,
    ("stsb", "train"): 5749,
    ("stsb", "validation"): 1500,
    ("stsb", "test"): 1379,
    ("ax", "test"): 1104,
}
GLUE_ROWS = REAL_GLUE_ROWS if REAL_DATA else _fixture_module().GLUE_ROWS
# SQuAD questions: v1.1 dev; the v2.0 subset (all, answerable, unanswerable); its articles 7-11.
REAL_SQUAD_COUNTS = {
    "v1_questions": 10570,
    "v2_questions": 5147,
    "v2_answerable": 4799,
    "v2_unanswerable": 348,
    "v2_after_six_articles": 2243,
}
SQUAD_COUNTS = REAL_SQUAD_COUNTS if REAL_DATA else _fixture_module().squad_counts()

# For the few assertions that are about the real files themselves (their sentences, label
# counts, published numbers): they have no meaning on generated rows.
real_data_only = pytest.mark.skipif(not REAL_DATA, reason="asserts on the real files in ../shared/data")


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """Each test gets the session's private tokenization cache and no $APM_DATA_DIR, so data
    comes only from where the test points."""
    monkeypatch.setenv("APM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "apm-cache"))
    monkeypatch.delenv("APM_DATA_DIR", raising=False)
    # An in-process run starts a W&B service and names it in WANDB_SERVICE; runs in later
    # subprocesses would share it, and a killed one's run would stay open there.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored after: tiny models run fastest that way (more
    threads on a busy shared CPU only spin), and one thread fixes the reduction order."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``../shared/data``, or the generated tree in its layout where that is absent."""
    return DATA


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """``<data>/glue`` in the original GLUE distribution layout."""
    return GLUE
