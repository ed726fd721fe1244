"""core/allocator.py: a freed 47 MB word-embedding gradient is reused, not faulted in anew.

Each arm runs in its own process (the setting is process-wide): a few training steps of a
MiniLM-sized embedding with AdamW, counting minor page faults per step."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc settings")

PROBE = """
import resource
import torch
from apm_lightning.core.allocator import keep_freed_memory
applied = keep_freed_memory()
torch.manual_seed(0)
emb, head = torch.nn.Embedding(30522, 384), torch.nn.Linear(384, 2)
opt = torch.optim.AdamW([*emb.parameters(), *head.parameters()])
def step():
    ids = torch.randint(0, 30522, (32, 16))
    torch.nn.functional.cross_entropy(head(emb(ids).mean(1)), torch.randint(0, 2, (32,))).backward()
    opt.step()
    opt.zero_grad()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def faults_per_step(**env: str) -> tuple[bool, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "APM_KEEP"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", float(out[1])


def test_freed_blocks_are_reused_instead_of_faulted_in_every_step():
    applied, kept = faults_per_step()
    assert applied
    off, system = faults_per_step(APM_KEEP_FREED_MEMORY="0")
    assert not off
    # Without the setting the gradient's 11,445 pages (4 KiB) are faulted in at every step; fewer
    # where the kernel backs them with huge pages, but never none.
    assert system > 0 and kept <= system / 20
    # A user's own glibc setting is left as it is.
    assert faults_per_step(MALLOC_MMAP_THRESHOLD_="1048576")[0] is False
