"""Batching: dynamic padding per batch and an epoch-seeded (optionally length-grouped) sampler.

The sampler draws its order from ``seed + epoch`` alone, never from the global RNG, so a resumed
run sees the same batches as an uninterrupted one, and every rank of a distributed run agrees on
the order before taking its own share. ``ResumableLoader`` records how far into the epoch training
got, so a run resumed from a mid-epoch checkpoint continues with the next unseen batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


class PadCollator:
    """Pads every list-valued column to the longest row of the batch.

    ``pad_values`` gives the pad id per column (default 0). An ``attention_mask`` is built for
    ``input_ids``. Labels become float for regression, long otherwise.
    """

    def __init__(self, pad_values: dict[str, int] | None = None, regression: bool = False) -> None:
        self.pad_values = pad_values or {}
        self.regression = regression

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key in examples[0]:
            values = [ex[key] for ex in examples]
            if isinstance(values[0], list):
                width = max(1, max(len(v) for v in values))
                pad = self.pad_values.get(key, 0)
                batch[key] = torch.tensor([v + [pad] * (width - len(v)) for v in values])
                if key == "input_ids":
                    batch["attention_mask"] = torch.tensor(
                        [[1] * len(v) + [0] * (width - len(v)) for v in values]
                    )
            elif key == "label":
                batch[key] = torch.tensor(values, dtype=torch.float if self.regression else torch.long)
            else:
                batch[key] = torch.tensor(values)
        return batch


class EpochBatchSampler(Sampler[list[int]]):
    """Yields lists of indices.

    Training: a permutation seeded by ``seed + epoch``; with ``group_by_length`` the Hugging Face
    Trainer's order for the same seed: the permutation cut into mega-batches of up to 50 batches
    (fewer for small data), each sorted longest first, so a batch holds rows of similar length
    and pads little, with the longest row in the first batch. Evaluation (``shuffle=False``): rows sorted by length, longest first,
    which pads least; predictions carry their index, so order does not matter.
    With ``num_replicas > 1`` each rank takes every ``num_replicas``-th batch of the shared order:
    in training the uneven tail is dropped (every rank must run the same number of steps); in
    evaluation every row is kept, and batches shrink if needed so that every rank gets one
    (metrics are synced across ranks at the end, so ranks may differ by a batch).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool,
        group_by_length: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        # Batches of the current epoch to skip, once: set by ResumableLoader on a mid-epoch resume.
        self.start = 0
        # Lightning calls set_epoch on ``batch_sampler.sampler``; point it back at us.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _batch_size(self) -> int:
        if self.shuffle or self.num_replicas == 1:
            return self.batch_size
        # Evaluation across ranks: a rank without a batch would skip the epoch-end metric sync
        # that the others wait in (Lightning refuses such loaders anyway).
        return max(1, min(self.batch_size, -(-len(self.lengths) // self.num_replicas)))

    def _batches(self) -> list[list[int]]:
        n = len(self.lengths)
        size = self._batch_size()
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: -self.lengths[i])
        elif self.group_by_length:
            # The Hugging Face Trainer's own order (its function, so the two cannot drift):
            # a random permutation cut into mega-batches of up to 50 batches, each sorted longest
            # first and swept in that order, the longest row at the very start. Shuffling the
            # grouped batches instead looks harmless but is not: length tracks the kind of text
            # (STS-B's news pairs are longer than its captions, and score higher), so random
            # jumps between length groups swing the regression target's batch mean from step to
            # step, and STS-B Pearson fell from 0.78 to 0.58 at the same seed and batches.
            from transformers.trainer_pt_utils import get_length_grouped_indices

            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        else:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        batches = [order[s : s + size] for s in range(0, n, size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        if self.num_replicas > 1:
            # Training: every rank must run the same number of steps, so drop the uneven tail.
            usable = len(batches) - len(batches) % self.num_replicas if self.shuffle else len(batches)
            batches = batches[self.rank : usable : self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the order is drawn at the first batch, not when the iterator is made,
        # because a resumed Lightning run makes the iterator before it calls set_epoch.
        start, self.start = self.start, 0
        yield from self._batches()[start:]

    def __len__(self) -> int:
        n = len(self.lengths)
        size = self._batch_size()
        count = n // size if self.drop_last else -(-n // size)
        if self.num_replicas > 1:
            count = (
                count // self.num_replicas
                if self.shuffle
                else len(range(self.rank, count, self.num_replicas))
            )
        return count


class ResumableLoader(DataLoader):
    """The training loader: an ``EpochBatchSampler`` loader whose position is checkpointed.

    ``state_dict`` is (epoch, batches served in it); after ``load_state_dict`` (by Lightning, and
    by the CLI's ``LoaderPosition`` callback, which covers the cases Lightning misses) the
    sampler skips the batches already trained on, so a mid-epoch resume neither skips a row nor
    sees one twice.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, EpochBatchSampler):
            raise TypeError("ResumableLoader needs an EpochBatchSampler as batch_sampler")
        self._epoch = 0
        self._served = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        # A generator too: the epoch is read at the first batch, after Lightning set it.
        sampler = self.batch_sampler
        resume, self._resume = self._resume, None
        self._epoch = sampler.epoch
        # A checkpoint written at the end of an epoch resumes at the next epoch: nothing to skip.
        self._served = resume[1] if resume and resume[0] == sampler.epoch else 0
        sampler.start = self._served
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))
