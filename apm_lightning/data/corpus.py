"""Raw text for pretraining: tokenized once, cached as flat token arrays, packed into blocks.

The documents of a ``TextSource`` are tokenized in batches (fast tokenizer, no special tokens)
and written, in order, to two flat token files, ``train.bin`` and ``validation.bin``: each
document goes to one of them (a seeded draw per document, so validation text is never trained
on), followed by a separator token (``[SEP]``, or ``</s>``/``<|endoftext|>``). The files are
read through ``numpy.memmap``, so a corpus larger than RAM works, and the cache entry is written
to a temporary folder and renamed into place.

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
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from apm_lightning.core.cache import default_cache_dir
from apm_lightning.core.checks import require_positive, require_sample_limit
from apm_lightning.core.errors import APMError
from apm_lightning.core.library_compat import skip_datamodule_hparams_logging
from apm_lightning.core.redact import redact_text
from apm_lightning.data.collate import EpochBatchSampler, ResumableLoader
from apm_lightning.data.text_encoding import check_encoding_name
from apm_lightning.data.text_sources import TextSource

SPLITS = ("train", "validation")
FORMAT_VERSION = 1


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


def build_token_files(
    source: TextSource,
    tokenizer: Any,
    out_dir: Path,
    validation_fraction: float,
    split_seed: int = 0,
    chunk_documents: int = 1000,
) -> dict[str, Any]:
    """Tokenize ``source`` into ``out_dir/{train,validation}.bin`` and ``meta.json``."""
    sep = separator_id(tokenizer)
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
    rng = np.random.default_rng(split_seed)
    counts = {split: {"documents": 0, "tokens": 0} for split in SPLITS}
    files = {split: open(out_dir / f"{split}.bin", "wb") for split in SPLITS}

    def flush(batch: list[str]) -> None:
        ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        to_validation = rng.random(len(batch)) < validation_fraction
        for doc, held_out in zip(ids, to_validation, strict=True):
            if not doc:
                continue
            split = "validation" if held_out else "train"
            np.asarray([*doc, sep], dtype=dtype).tofile(files[split])
            counts[split]["documents"] += 1
            counts[split]["tokens"] += len(doc) + 1

    try:
        batch: list[str] = []
        for document in source.documents():
            batch.append(document)
            if len(batch) == chunk_documents:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    finally:
        for f in files.values():
            f.close()
    meta = {
        "format": FORMAT_VERSION,
        "dtype": np.dtype(dtype).name,
        "separator_id": sep,
        "source": redact_text(source.describe()),
        **{f"{split}_{key}": value for split in SPLITS for key, value in counts[split].items()},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


class PackedBlocks(Dataset):
    """Fixed-length blocks over a memory-mapped token stream (one ``LongTensor`` per block)."""

    def __init__(self, path: Path, dtype: str, block_size: int, prefix_id: int | None = None) -> None:
        self.tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r") if path.stat().st_size else np.empty(0)
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


class CorpusDataModule(pl.LightningDataModule):
    """Raw text for pretraining (MLM, CLM, ELECTRA).

    Args:
        files: text files or globs (``.jsonl``/``.json``: one document per record).
        text_field: the JSONL field / dataset column holding the text.
        document_split: how a plain text file is cut into documents: ``paragraph`` (blank
            lines), ``line`` or ``file``.
        dataset: a ``datasets`` folder (``save_to_disk``) or a hub dataset (``name[:config]``).
        dataset_split: the split of ``dataset`` to read.
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
    """

    def __init__(
        self,
        files: str | list[str] | None = None,
        text_field: str = "text",
        document_split: str = "paragraph",
        dataset: str | None = None,
        dataset_split: str = "train",
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
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        skip_datamodule_hparams_logging(self)  # the CLI logs the whole config
        if block_size < 8:
            raise APMError(f"block_size={block_size} is too short (use 8 or more)")
        require_positive("data.batch_size", batch_size)
        require_positive("data.eval_batch_size", eval_batch_size, optional=True)
        require_sample_limit("data.max_documents", max_documents)
        require_sample_limit("data.max_validation_blocks", max_validation_blocks)
        check_encoding_name(encoding)
        if not 0.0 < validation_fraction < 1.0:
            raise APMError(f"validation_fraction must be between 0 and 1, not {validation_fraction}")
        self.source = TextSource(
            files=[files] if isinstance(files, str) else list(files or []),
            text_field=text_field,
            document_split=document_split,
            dataset=dataset,
            dataset_split=dataset_split,
            glue_task=glue_task,
            glue_data_dir=data_dir,
            max_documents=max_documents,
            encoding=encoding,
        )
        self.tokenizer_name = tokenizer
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.validation_fraction = validation_fraction
        self.max_validation_blocks = max_validation_blocks
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.tokenizer = None
        self.meta: dict[str, Any] = {}
        self.datasets: dict[str, PackedBlocks] = {}
        self.source_description = ""

    # ------------------------------------------------------------------ tokens on disk
    def check(self, stage: str) -> None:
        """Fail before training on text that is not there (globs that match nothing)."""
        self.source_description = self.source.describe()
        rank_zero_info(redact_text(f"corpus: {self.source_description}"))

    def _load_tokenizer(self):
        if self.tokenizer_name:
            from transformers import AutoTokenizer

            from apm_lightning.core.model_paths import resolve_tokenizer

            return AutoTokenizer.from_pretrained(resolve_tokenizer(self.tokenizer_name))
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not hasattr(module, "load_tokenizer"):
            raise APMError("CorpusDataModule needs a tokenizer: set --data.tokenizer or use an apm model")
        return module.load_tokenizer()

    def token_folder(self) -> Path:
        """The cache entry of this text + tokenizer + split, built on first use."""
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
        folder = self.cache_dir / "corpus" / hashlib.sha256(key.encode()).hexdigest()[:20]
        if (folder / "meta.json").is_file():
            return folder
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build_token_files(self.source, self.tokenizer, tmp, self.validation_fraction, self.split_seed)
            os.replace(tmp, folder)
        except OSError:
            # Another process (a rank of the same run) finished first: keep its entry.
            if not (folder / "meta.json").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer()
        if not self.source_description:
            self.source_description = self.source.describe()
        folder = self.token_folder()
        self.meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        prefix = block_prefix_id(self.tokenizer)
        for split in SPLITS:
            blocks = PackedBlocks(folder / f"{split}.bin", self.meta["dtype"], self.block_size, prefix)
            if len(blocks) == 0:
                raise APMError(
                    f"the corpus gives no {split} block of {self.block_size} tokens "
                    f"({self.meta[f'{split}_tokens']} tokens in {self.meta[f'{split}_documents']} "
                    f"documents); add text, lower block_size or change validation_fraction"
                )
            self.datasets[split] = blocks
        rank_zero_info(
            redact_text(
                f"corpus: {self.meta['train_tokens']:,} train tokens ({len(self.datasets['train']):,} "
                f"blocks), {self.meta['validation_tokens']:,} validation tokens, in {folder}"
            )
        )

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        count = len(dataset)
        if not train and self.max_validation_blocks is not None:
            count = min(count, self.max_validation_blocks)
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        sampler = EpochBatchSampler(
            [self.block_size] * count,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=torch.initial_seed() % (2**31) if train else 0,
            # Full batches only in training: every step sees the same number of tokens.
            drop_last=train and count >= self.batch_size,
            num_replicas=world,
            rank=rank,
        )
        return (ResumableLoader if train else DataLoader)(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_blocks,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)
