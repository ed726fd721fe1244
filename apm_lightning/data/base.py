"""What every apm data module shares: the encoder handshake with the model, tokenized splits
built once per stage, and loaders whose batch order survives a resume.

A data module says which splits a stage needs (``stage_splits``), how one split becomes a
tokenized dataset (``build_split``) and how a batch is collated (``collate``); the rest is here.

The handshake: with ``tokenizer`` set, the data module loads it itself; otherwise the model
supplies its encoder (``build_encoder``), so that the text is tokenized exactly as the model
expects (a BERT pair encoder, the BiLSTM's word vocabulary...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from apm_lightning.core.cache import default_cache_dir
from apm_lightning.core.checks import require_positive
from apm_lightning.core.errors import APMError
from apm_lightning.core.seeds import run_seed
from apm_lightning.data.collate import EpochBatchSampler, ResumableLoader


class TextDataModule(pl.LightningDataModule):
    """Base of the GLUE-style, SQuAD and corpus data modules.

    Args:
        tokenizer: a tokenizer path or hub name; by default the model supplies its own.
        batch_size / eval_batch_size: rows per training / evaluation batch.
        num_workers: loader worker processes.
        cache_dir: where tokenized splits are cached (default: apm's cache folder).
    """

    def __init__(
        self,
        tokenizer: str | None,
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int,
        cache_dir: str | None,
    ) -> None:
        super().__init__()
        # Subclasses call save_hyperparameters(logger=False): the run's full config (data
        # included) is logged by the CLI, and merging a data module's hparams into the model's
        # would clash on shared names such as 'tokenizer'.
        require_positive("data.batch_size", batch_size)
        require_positive("data.eval_batch_size", eval_batch_size, optional=True)
        self.tokenizer_name = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.encoder: Any = None
        self.datasets: dict[str, Any] = {}
        self.source_description = ""

    # --- what a data module provides -------------------------------------------------------
    def stage_splits(self, stage: str) -> list[str]:
        """The splits ``stage`` (fit, validate, test, predict) reads."""
        raise NotImplementedError

    def build_split(self, split: str) -> Any:
        """The tokenized dataset of ``split`` (with ``self.encoder`` set)."""
        raise NotImplementedError

    def collate(self, train: bool) -> Any:
        """The collate function of a training or an evaluation batch."""
        raise NotImplementedError

    # --- the encoder handshake -------------------------------------------------------------
    def load_tokenizer(self) -> Any:
        """The tokenizer named by ``tokenizer`` (a folder, a hub name, ``minilm``)."""
        from transformers import AutoTokenizer

        from apm_lightning.core.model_paths import resolve_tokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer(self.tokenizer_name))
        if tokenizer.pad_token is None:  # GPT-style tokenizers have no pad token
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def encoder_from_tokenizer(self, tokenizer: Any) -> Any:
        from apm_lightning.data.encoders import JointPairEncoder

        return JointPairEncoder(tokenizer)

    def encoder_from_model(self, module: pl.LightningModule) -> Any:
        return module.build_encoder(self)

    def make_encoder(self) -> Any:
        if self.tokenizer_name:
            return self.encoder_from_tokenizer(self.load_tokenizer())
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not hasattr(module, "build_encoder"):
            raise APMError(
                f"{type(self).__name__} needs a tokenizer: set --data.tokenizer or use an apm model"
            )
        return self.encoder_from_model(module)

    def setup(self, stage: str) -> None:
        if self.encoder is None:
            self.encoder = self.make_encoder()
        for split in self.stage_splits(stage):
            if split not in self.datasets:
                self.datasets[split] = self.build_split(split)

    # --- loaders -----------------------------------------------------------------------
    def batch_loader(
        self,
        dataset: Any,
        lengths: list[int],
        train: bool,
        *,
        group_by_length: bool = False,
        drop_last: bool = False,
        shard_evaluation: bool = True,
    ) -> DataLoader:
        """Training: a resumable loader over an epoch-seeded (optionally length-grouped) order,
        each rank taking its share. Evaluation: rows longest first; sharded across ranks unless
        scoring needs every row on every rank (``shard_evaluation=False``)."""
        shard = train or shard_evaluation
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        sampler = EpochBatchSampler(
            lengths,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            group_by_length=train and group_by_length,
            seed=run_seed() if train else 0,
            drop_last=drop_last,
            num_replicas=world if shard else 1,
            rank=rank if shard else 0,
        )
        return (ResumableLoader if train else DataLoader)(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.collate(train),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def predict_loader(self, dataset: Any, lengths: list[int]) -> DataLoader:
        """Lightning rebuilds prediction loaders around a plain sampler, so no custom batch
        sampler here: the rows are put in length order up front instead (less padding);
        predictions carry their index, so the order does not matter."""
        ordered = dataset.select(sorted(range(len(lengths)), key=lambda i: -lengths[i]))
        return DataLoader(
            ordered,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collate(False),
            num_workers=self.num_workers,
        )
