"""Raw text for pretraining: tokenized once, cached as flat token arrays, packed into blocks.

The documents of a ``TextSource`` are tokenized in batches (fast tokenizer, no special tokens)
by ``data.num_proc`` worker processes, each writing the shards it is given
(``corpus_shards``): every document goes to the train or the validation stream (a seeded draw
per document, so validation text is never trained on), followed by a separator token
(``[SEP]``, or ``</s>``/``<|endoftext|>``). The shards of a split, in order, are its stream:
read through ``numpy.memmap``, so a corpus larger than RAM works. The cache entry is keyed by
text, tokenizer and split settings (not by the number of processes: the tokens are the same),
built by one process at a time, resumable shard by shard, and renamed into place when complete.

A block is ``block_size`` consecutive tokens of the stream (after a leading ``[CLS]`` for
tokenizers that have one, as BERT expects): no padding, separators wherever documents meet,
and every token of the stream in exactly one block per epoch (the last partial block is left
out). Training batches come from the epoch-seeded, resumable sampler the GLUE data uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from apm_lightning.core.checks import require_positive, require_sample_limit
from apm_lightning.core.errors import APMError
from apm_lightning.core.redact import redact_text
from apm_lightning.data.base import TextDataModule
from apm_lightning.data.corpus_shards import (
    SHARD_CHARS,
    SPLITS,
    TokenStream,
    build_lock,
    build_shards,
    shard_name,
)
from apm_lightning.data.text_encoding import check_encoding_name
from apm_lightning.data.text_sources import TextSource

FORMAT_VERSION = 2  # 2: shard files listed in meta.json


def separator_id(tokenizer: Any) -> int:
    """The token put between documents: SEP for BERT-style vocabularies, else EOS."""
    for token_id in (tokenizer.sep_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise APMError("the tokenizer has neither a sep nor an eos token to separate documents")


def block_prefix_id(tokenizer: Any) -> int | None:
    """``[CLS]`` where the tokenizer has one distinct from the separator (BERT-style)."""
    cls = tokenizer.cls_token_id
    if cls is None or cls == separator_id(tokenizer):
        return None
    return int(cls)


def token_dtype(tokenizer: Any) -> str:
    return "uint16" if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else "uint32"


def resolve_num_proc(num_proc: int | str) -> int:
    """``data.num_proc``: a number of worker processes, or ``auto`` (the CPUs this process may use)."""
    if num_proc == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        count = int(num_proc)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or str(num_proc).strip() != str(count):
        raise APMError(f"data.num_proc must be a number of processes (1 or more) or 'auto', not {num_proc!r}")
    return count


def build_token_files(
    source: TextSource,
    tokenizer: Any,
    out_dir: Path,
    validation_fraction: float,
    split_seed: int = 0,
    num_proc: int = 1,
    shard_chars: int = SHARD_CHARS,
    on_shard_done: Any = None,
) -> dict[str, Any]:
    """Tokenize ``source`` into shards under ``out_dir`` (resuming the shards an interrupted
    build left there) and write ``meta.json``, which lists them in stream order."""
    sep = separator_id(tokenizer)
    dtype = token_dtype(tokenizer)
    shards = build_shards(
        source.documents(),
        tokenizer,
        out_dir,
        sep=sep,
        dtype=dtype,
        validation_fraction=validation_fraction,
        split_seed=split_seed,
        num_proc=num_proc,
        shard_chars=shard_chars,
        on_shard_done=on_shard_done,
    )
    meta = {
        "format": FORMAT_VERSION,
        "dtype": dtype,
        "separator_id": sep,
        "source": redact_text(source.describe()),
        **{
            f"{split}_{key}": sum(s[f"{split}_{key}"] for s in shards)
            for split in SPLITS
            for key in ("documents", "tokens")
        },
        # Stream order: the shard files of each split, with their token counts.
        "shards": {
            split: [[shard_name(split, s["index"]), s[f"{split}_tokens"]] for s in shards] for split in SPLITS
        },
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


class PackedBlocks(Dataset):
    """Fixed-length blocks over a token stream (one ``LongTensor`` per block): one memory-mapped
    file, or several shard files read as one stream (``TokenStream``)."""

    def __init__(
        self,
        path: Path | list[Path],
        dtype: str,
        block_size: int,
        prefix_id: int | None = None,
        counts: list[int] | None = None,
    ) -> None:
        paths = [path] if isinstance(path, Path) else list(path)
        if counts is None:
            counts = [p.stat().st_size // np.dtype(dtype).itemsize for p in paths]
        stream = TokenStream(paths, counts, dtype)
        if len(stream.paths) == 1:
            self.tokens: Any = np.memmap(stream.paths[0], dtype=np.dtype(dtype), mode="r")
        else:
            self.tokens = stream if len(stream) else np.empty(0, dtype=np.dtype(dtype))
        self.prefix_id = prefix_id
        self.span = block_size - (1 if prefix_id is not None else 0)  # stream tokens per block
        self.num_blocks = len(self.tokens) // self.span

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_blocks:
            raise IndexError(index)
        chunk = torch.from_numpy(self.tokens[index * self.span : (index + 1) * self.span].astype(np.int64))
        if self.prefix_id is not None:
            chunk = torch.cat([torch.tensor([self.prefix_id]), chunk])
        return {"input_ids": chunk, "index": index}


def collate_blocks(blocks: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    # Every block is full: no padding, so no attention mask either. The block's index keys its
    # random mask (see tasks/pretraining.py).
    return {
        "input_ids": torch.stack([b["input_ids"] for b in blocks]),
        "index": torch.tensor([b["index"] for b in blocks], dtype=torch.int64),
    }


class CorpusDataModule(TextDataModule):
    """Raw text for pretraining (MLM, CLM, ELECTRA).

    Args:
        files: text files or globs (``.jsonl``/``.json``: one document per record).
        text_field: the JSONL field / dataset column holding the text.
        document_split: how a plain text file is cut into documents: ``paragraph`` (blank
            lines), ``line`` or ``file``.
        dataset: a ``datasets`` folder (``save_to_disk``) or a hub dataset (``name[:config]``);
            with ``streaming``, also a data file or a folder of data files (json, csv, parquet, text).
        dataset_split: the split of ``dataset`` to read.
        streaming: read ``dataset`` record by record (``load_dataset(..., streaming=True)``),
            never downloading or converting the whole of it first.
        glue_task: read the training text of this GLUE task (task-adaptive pretraining).
        data_dir: where that GLUE task's files are (else ``$APM_DATA_DIR``, then the hub).
        tokenizer: a tokenizer folder or name; by default the model's.
        block_size: tokens per training example.
        batch_size / eval_batch_size: blocks per batch.
        validation_fraction: share of documents held out for validation.
        max_documents: read at most this many documents.
        max_validation_blocks: evaluate on the first N validation blocks only.
        split_seed: seed of the document-level train/validation draw.
        encoding: of the text files; ``auto``: UTF-8, else Latin-1 for a file that is not UTF-8.
        num_proc: worker processes tokenizing shards of the corpus (``auto``: one per CPU); the
            tokens, and so the cache entry, are the same for any number.
        shard_chars: characters of text per shard (the unit of work and of resumption).
    """

    def __init__(
        self,
        files: str | list[str] | None = None,
        text_field: str = "text",
        document_split: str = "paragraph",
        dataset: str | None = None,
        dataset_split: str = "train",
        streaming: bool = False,
        glue_task: str | None = None,
        data_dir: str | None = None,
        tokenizer: str | None = None,
        block_size: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        validation_fraction: float = 0.05,
        max_documents: int | None = None,
        max_validation_blocks: int | None = None,
        split_seed: int = 0,
        encoding: str = "auto",
        num_proc: int | str = 1,
        shard_chars: int = SHARD_CHARS,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        if block_size < 8:
            raise APMError(f"block_size={block_size} is too short (use 8 or more)")
        super().__init__(tokenizer, batch_size, eval_batch_size, num_workers, cache_dir)
        self.save_hyperparameters(logger=False)  # the CLI logs the whole config (see TextDataModule)
        require_sample_limit("data.max_documents", max_documents)
        require_sample_limit("data.max_validation_blocks", max_validation_blocks)
        require_positive("data.shard_chars", shard_chars)
        check_encoding_name(encoding)
        if not 0.0 < validation_fraction < 1.0:
            raise APMError(f"validation_fraction must be between 0 and 1, not {validation_fraction}")
        self.num_proc = resolve_num_proc(num_proc)
        self.source = TextSource(
            files=[files] if isinstance(files, str) else list(files or []),
            text_field=text_field,
            document_split=document_split,
            dataset=dataset,
            dataset_split=dataset_split,
            streaming=streaming,
            glue_task=glue_task,
            glue_data_dir=data_dir,
            max_documents=max_documents,
            encoding=encoding,
        )
        self.block_size = block_size
        self.validation_fraction = validation_fraction
        self.max_validation_blocks = max_validation_blocks
        self.split_seed = split_seed
        self.shard_chars = shard_chars
        self.meta: dict[str, Any] = {}
        self._folder: Path | None = None

    @property
    def tokenizer(self) -> Any:
        """The corpus is tokenized by the model's tokenizer itself: it is the encoder."""
        return self.encoder

    # ------------------------------------------------------------------ the encoder handshake
    def encoder_from_tokenizer(self, tokenizer: Any) -> Any:
        return tokenizer

    def encoder_from_model(self, module: pl.LightningModule) -> Any:
        if not hasattr(module, "load_tokenizer"):
            raise APMError("CorpusDataModule needs a tokenizer: set --data.tokenizer or use an apm model")
        return module.load_tokenizer()

    # ------------------------------------------------------------------ tokens on disk
    def check(self, stage: str) -> None:
        """Fail before training on text that is not there (globs that match nothing)."""
        self.source_description = self.source.describe()
        self.source.check_dataset()
        rank_zero_info(redact_text(f"corpus: {self.source_description}"))

    def cache_key(self) -> str:
        """Text + tokenizer + split settings (+ format): never the number of processes."""
        from apm_lightning.data.encoders import tokenizer_fingerprint

        key = json.dumps(
            [
                FORMAT_VERSION,
                self.source.fingerprint(),
                tokenizer_fingerprint(self.tokenizer),
                self.validation_fraction,
                self.split_seed,
            ]
        )
        return hashlib.sha256(key.encode()).hexdigest()[:20]

    def token_folder(self, on_shard_done: Any = None) -> Path:
        """The cache entry of this text + tokenizer + split, built on first use: by one process
        (the others, such as the other ranks of the run, wait for it), resuming the shards an
        interrupted build finished."""
        folder = self.cache_dir / "corpus" / self.cache_key()
        if (folder / "meta.json").is_file():
            return folder

        def waiting() -> None:
            print(f"corpus: waiting for another process to finish {folder}", file=sys.stderr, flush=True)

        with build_lock(folder, on_wait=waiting):
            if (folder / "meta.json").is_file():  # built while this process waited
                return folder
            building = folder.with_name(folder.name + ".building")
            rank_zero_info(f"corpus: tokenizing with {self.num_proc} process(es) into {building}")
            build_token_files(
                self.source,
                self.tokenizer,
                building,
                self.validation_fraction,
                self.split_seed,
                num_proc=self.num_proc,
                shard_chars=self.shard_chars,
                on_shard_done=on_shard_done,
            )
            shutil.rmtree(folder, ignore_errors=True)  # a damaged entry without meta.json
            os.replace(building, folder)
        return folder

    # ------------------------------------------------------------------ splits
    def stage_splits(self, stage: str) -> list[str]:
        return list(SPLITS) if stage == "fit" else ["validation"]

    def build_split(self, split: str) -> PackedBlocks:
        if self._folder is None:
            if not self.source_description:
                self.source_description = self.source.describe()
            self._folder = self.token_folder()
            self.meta = json.loads((self._folder / "meta.json").read_text(encoding="utf-8"))
            rank_zero_info(
                redact_text(
                    f"corpus: {self.meta['train_tokens']:,} train tokens, "
                    f"{self.meta['validation_tokens']:,} validation tokens, in {self._folder}"
                )
            )
        names, counts = (
            zip(*self.meta["shards"][split], strict=True) if self.meta["shards"][split] else ((), ())
        )
        blocks = PackedBlocks(
            [self._folder / n for n in names],
            self.meta["dtype"],
            self.block_size,
            block_prefix_id(self.tokenizer),
            counts=list(counts),
        )
        if len(blocks) == 0:
            raise APMError(
                f"the corpus gives no {split} block of {self.block_size} tokens "
                f"({self.meta[f'{split}_tokens']} tokens in {self.meta[f'{split}_documents']} "
                f"documents); add text, lower block_size or change validation_fraction"
            )
        return blocks

    def collate(self, train: bool) -> Any:
        return collate_blocks

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, train: bool) -> DataLoader:
        count = len(self.datasets[split])
        if not train and self.max_validation_blocks is not None:
            count = min(count, self.max_validation_blocks)
        # Full batches only in training: every step sees the same number of tokens.
        drop_last = train and count >= self.batch_size
        return self.batch_loader(self.datasets[split], [self.block_size] * count, train, drop_last=drop_last)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)
