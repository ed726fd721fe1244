"""CPU tensor memory: keep freed blocks in the process, where the next step reuses them.

PyTorch has no caching allocator for CPU tensors: each one is malloc'ed and freed. glibc serves a
block above its mmap threshold (adaptive, at most 32 MiB) with fresh pages from the kernel and
unmaps it when freed, so a tensor that large made at every step costs its size in page faults at
every step. A BERT-style model's word-embedding gradient is one: autograd builds it anew at each
backward (MiniLM: 30,522 x 384 floats, 47 MB), about 13,000 page faults a step, 9-14% of a MiniLM
SST-2 step on 2 CPU cores (benchmarks/bench_glue_finetune.py runs apm with and without this).
Raising glibc's mmap and trim thresholds to 1 GiB keeps such blocks in the heap. PyTorch's CPU
tuning guide gets the same from jemalloc or tcmalloc through LD_PRELOAD; two ``mallopt`` calls
need neither a dependency nor a launcher.

Left alone: non-glibc systems (macOS, musl), a process whose user set glibc's own malloc
variables, and ``APM_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
THRESHOLD = 1 << 30  # 1 GiB: larger blocks (none in a training step) still get their own pages
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; whether they are set."""
    global _applied
    if _applied is None:
        _applied = False
        wanted = os.environ.get("APM_KEEP_FREED_MEMORY", "1") != "0"
        if wanted and platform.libc_ver()[0] == "glibc" and not any(k in os.environ for k in USER_SETTINGS):
            try:
                libc = ctypes.CDLL("libc.so.6")
                _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(
                    libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD)
                )
            except (OSError, AttributeError):
                pass
    return _applied
