"""Batching: dynamic padding per batch and an epoch-seeded (optionally length-grouped) sampler.

The sampler draws its order from ``seed + epoch`` alone, never from the global RNG, so a resumed
run sees the same batches as an uninterrupted one, and every rank of a distributed run agrees on
the order before taking its own share.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


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

    Training: a permutation seeded by ``seed + epoch``; with ``group_by_length`` the permutation
    is cut into mega-batches of 50 batches, each sorted by length, so a batch holds rows of
    similar length and pads little (the scheme of the Hugging Face Trainer's
    ``group_by_length``). Evaluation (``shuffle=False``): rows sorted by length, longest first,
    which pads least; predictions carry their index, so order does not matter.
    With ``num_replicas > 1`` each rank takes every ``num_replicas``-th batch of the shared order.
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
        # Lightning calls set_epoch on ``batch_sampler.sampler``; point it back at us.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: -self.lengths[i])
        else:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
            if self.group_by_length:
                # Mega-batches of up to 50 batches, fewer for small datasets (the Hugging Face
                # Trainer's rule): sorting a larger share of the data at once makes batches
                # more uniform in length, which saves padding but costs accuracy.
                mega = min(max(1, n // (4 * self.batch_size)), 50) * self.batch_size
                order = [
                    i
                    for start in range(0, n, mega)
                    for i in sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
                ]
        batches = [order[s : s + self.batch_size] for s in range(0, n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle and self.group_by_length and len(batches) > 1:
            # Shuffle the grouped batches (no long-to-short sweep through each mega-batch), then
            # put the longest first: peak memory shows at step one, and the allocator's first
            # blocks fit every later batch.
            generator = torch.Generator().manual_seed(self.seed + self.epoch + 1_000_003)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
            batches.insert(0, batches.pop(longest))
        if self.num_replicas > 1:
            # Every rank must run the same number of steps, so drop the uneven tail.
            usable = len(batches) - len(batches) % self.num_replicas
            batches = batches[self.rank : usable : self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the order is drawn at the first batch, not when the iterator is made,
        # because a resumed Lightning run makes the iterator before it calls set_epoch.
        yield from self._batches()

    def __len__(self) -> int:
        n = len(self.lengths)
        count = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        if self.num_replicas > 1:
            count //= self.num_replicas
        return count
