"""A corpus tokenized in shards by worker processes, resumable, read back as one token stream.

The documents are cut, in order, into contiguous shards of about ``shard_chars`` characters
(the cut depends on the text alone, never on the number of workers). Each shard is tokenized
(fast tokenizer, batches of documents, no special tokens) into its own two files,
``train-00007.bin`` and ``validation-00007.bin``: every document goes to one of them by a seeded
draw, followed by the separator token. The draws are made in the parent, in document order, so
the split is the one a single process makes whatever the number of workers.

A shard is done when its ``shard-00007.json`` (token and document counts) is renamed into place
after its token files: a build that is killed leaves its done shards in ``<entry>.building/``,
and the next build (same text, tokenizer and split settings: the same entry) tokenizes only the
others. When every shard is done, ``meta.json`` is written and the folder is renamed to the
entry. Only one process builds an entry at a time (``flock`` on ``<entry>.lock``): the other
ranks of a distributed run wait for it and then read the finished entry.

Why hand-written processes rather than ``datasets.map(num_proc=...)``: ``map`` needs the whole
text converted to an Arrow table first (a second copy on disk, and a pass before any
tokenization) and cannot run ``num_proc`` workers over a streamed hub dataset; here the parent
streams documents from any source, a bounded number of shards is in flight (memory stays flat
as the corpus grows), and each worker appends its tokens to its files as it goes.
``benchmarks/bench_corpus.py`` measures both.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "validation")
SHARD_CHARS = 32 * 2**20  # ~32 MB of text per shard: ~1,300 shards for a 40 GB corpus
BATCH_DOCUMENTS = 1000  # documents per tokenizer call


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


def _done_name(index: int) -> str:
    return f"shard-{index:05d}.json"


def rust_tokenizer(tokenizer: Any) -> Any:
    """What the workers are given: the fast tokenizer's Rust ``tokenizers.Tokenizer`` (it gives
    the same ids as the transformers tokenizer that wraps it, and a worker then imports only
    ``tokenizers``, not transformers and torch: a second instead of several, and ~100 MB less);
    a slow (Python) tokenizer is used as it is."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()  # runtime state of the transformers tokenizer's last call
    copy.no_padding()
    return copy


def encode_batch(tokenizer: Any, batch: list[str]) -> list[list[int]]:
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return [e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False)]
    return tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]


def tokenize_shard(
    tokenizer: Any,
    documents: list[str],
    held_out: np.ndarray,
    index: int,
    out_dir: Path,
    sep: int,
    dtype: str,
) -> dict[str, Any]:
    """Tokenize one shard into its two token files, then mark it done (atomic rename)."""
    counts = {split: {"documents": 0, "tokens": 0} for split in SPLITS}
    tmp = {split: out_dir / f".{shard_name(split, index)}.tmp" for split in SPLITS}
    files = {split: open(tmp[split], "wb") for split in SPLITS}
    try:
        for start in range(0, len(documents), BATCH_DOCUMENTS):
            batch = documents[start : start + BATCH_DOCUMENTS]
            ids = encode_batch(tokenizer, batch)
            for doc, to_validation in zip(ids, held_out[start : start + BATCH_DOCUMENTS], strict=True):
                if not doc:
                    continue
                split = "validation" if to_validation else "train"
                # Written as they come: a worker holds one batch of tokens, never the shard's.
                np.asarray([*doc, sep], dtype=dtype).tofile(files[split])
                counts[split]["documents"] += 1
                counts[split]["tokens"] += len(doc) + 1
    finally:
        for f in files.values():
            f.close()
    for split in SPLITS:
        os.replace(tmp[split], out_dir / shard_name(split, index))
    done = {"index": index, **{f"{s}_{k}": v for s in SPLITS for k, v in counts[s].items()}}
    marker = out_dir / f".{_done_name(index)}.tmp"
    marker.write_text(json.dumps(done), encoding="utf-8")
    os.replace(marker, out_dir / _done_name(index))  # the shard is done from here on
    return done


# The worker processes' tokenizer, sent once when each starts (not with every shard).
_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _WORKER_TOKENIZER
    # One tokenizer thread per worker: N workers use N cores, instead of N Rust thread pools
    # fighting over them (read at every batch call; the parent's setting is left alone, so a
    # one-process build keeps its multi-threaded batches).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER = tokenizer


def _worker_shard(*args: Any) -> dict[str, Any]:
    return tokenize_shard(_WORKER_TOKENIZER, *args)


def shard_documents(documents: Iterator[str], shard_chars: int) -> Iterator[list[str]]:
    """Contiguous runs of documents of about ``shard_chars`` characters (the last one shorter)."""
    chunk: list[str] = []
    size = 0
    for doc in documents:
        chunk.append(doc)
        size += len(doc)
        if size >= shard_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@contextmanager
def build_lock(folder: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """One builder per cache entry across processes (the ranks of a run, two runs): ``flock``
    is released by the kernel when its holder dies, so a killed build never blocks the next."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_building(building: Path, plan: dict[str, Any]) -> set[int]:
    """The shards already done by an interrupted build of the same plan (else a fresh folder)."""
    plan_file = building / "plan.json"
    if building.is_dir():
        try:
            same = json.loads(plan_file.read_text(encoding="utf-8")) == plan
        except (OSError, ValueError):
            same = False
        if not same:  # another shard size: its shards do not line up with these
            shutil.rmtree(building)
    building.mkdir(parents=True, exist_ok=True)
    for stale in building.glob(".*.tmp"):  # half-written files of a killed worker
        stale.unlink()
    if not plan_file.is_file():
        plan_file.write_text(json.dumps(plan), encoding="utf-8")
    done = set()
    for marker in building.glob("shard-*.json"):
        index = int(marker.stem.split("-")[1])
        if all((building / shard_name(s, index)).is_file() for s in SPLITS):
            done.add(index)
    return done


def build_shards(
    documents: Iterator[str],
    tokenizer: Any,
    building: Path,
    *,
    sep: int,
    dtype: str,
    validation_fraction: float,
    split_seed: int,
    num_proc: int = 1,
    shard_chars: int = SHARD_CHARS,
    on_shard_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Tokenize ``documents`` into shards under ``building``; shards already done are kept.
    Returns every shard's counts, in order."""
    done = _prepare_building(building, {"shard_chars": shard_chars, "dtype": dtype, "separator_id": sep})
    rng = np.random.default_rng(split_seed)
    tokenizer = rust_tokenizer(tokenizer)
    results: dict[int, dict[str, Any]] = {}

    def finished(result: dict[str, Any]) -> None:
        results[result["index"]] = result
        if on_shard_done is not None:
            on_shard_done(result)

    pool = None
    if num_proc > 1:
        import multiprocessing

        # spawn: the parent may hold threads (torch, Lightning, the tokenizer's own pool) that
        # a fork would copy mid-state. Each worker tokenizes on one thread (see _init_worker).
        pool = ProcessPoolExecutor(
            num_proc,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(tokenizer,),
        )
    pending: set[Future] = set()
    try:
        for index, chunk in enumerate(shard_documents(documents, shard_chars)):
            # One draw per document, in document order, whether or not the shard is redone.
            held_out = rng.random(len(chunk)) < validation_fraction
            if index in done:
                results[index] = json.loads((building / _done_name(index)).read_text(encoding="utf-8"))
                continue
            args = (chunk, held_out, index, building, sep, dtype)
            if pool is None:
                finished(tokenize_shard(tokenizer, *args))
                continue
            # At most two shards per worker in flight: the text read ahead stays bounded.
            while len(pending) >= 2 * num_proc:
                complete, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in complete:
                    finished(future.result())
            pending.add(pool.submit(_worker_shard, *args))
        for future in pending:
            finished(future.result())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return [results[i] for i in sorted(results)]


class TokenStream:
    """Shard files read as one array of tokens: ``len``, slices and ``numpy.asarray``.

    Each shard is memory-mapped on first use; at most ``MAX_OPEN`` maps are kept (each holds a
    file descriptor), so a corpus of thousands of shards stays under the descriptor limit."""

    MAX_OPEN = 128

    def __init__(self, paths: list[Path], counts: list[int], dtype: str) -> None:
        kept = [(Path(p), int(c)) for p, c in zip(paths, counts, strict=True) if c > 0]
        self.paths = [p for p, _ in kept]
        self.dtype = np.dtype(dtype)
        self.offsets = np.cumsum([0] + [c for _, c in kept])  # shard i: offsets[i]..offsets[i+1]
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        # Loader workers reopen the maps themselves: never pickle the mapped bytes.
        return {**self.__dict__, "_maps": {}}

    def _map(self, shard: int) -> np.memmap:
        if shard not in self._maps:
            while len(self._maps) >= self.MAX_OPEN:
                self._maps.pop(next(iter(self._maps)))
            self._maps[shard] = np.memmap(self.paths[shard], dtype=self.dtype, mode="r")
        return self._maps[shard]

    def __getitem__(self, item: slice) -> np.ndarray:
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("a TokenStream is read by contiguous slices")
        start, stop, _ = item.indices(len(self))
        if stop <= start:
            return np.empty(0, dtype=self.dtype)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        shard = first
        while shard < len(self.paths) and self.offsets[shard] < stop:
            lo = max(start, self.offsets[shard]) - self.offsets[shard]
            hi = min(stop, self.offsets[shard + 1]) - self.offsets[shard]
            parts.append(self._map(shard)[lo:hi])
            shard += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[0 : len(self)]
        return whole if dtype is None else whole.astype(dtype)
