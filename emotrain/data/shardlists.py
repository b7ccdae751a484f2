"""Which shards each rank and dataloader worker reads.

Two rules, both from hangs and silent errors seen in multi-node WebDataset jobs:
- *Training*: every epoch the full shard list is shuffled with ``seed + epoch`` — the same
  permutation on every rank — and only then split by rank and by worker, so within an
  epoch ranks read disjoint shards and together read each shard once. The stream is
  endless (epoch after epoch); the training loop decides how many batches to take, so
  every rank runs the same number of steps however uneven the shards are.
- *Evaluation*: the sorted shard list is split by rank, then by worker, each shard read
  by exactly one (rank, worker). A worker with no shard simply yields nothing, which is
  safe because evaluation gathers once at the end instead of stepping in lock-step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch.utils.data


@dataclass(frozen=True)
class Slot:
    """Where this reader sits: rank / world and dataloader worker / workers."""

    rank: int
    world_size: int
    worker: int
    num_workers: int

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


def current_slot(rank: int, world_size: int, rotate: int = 0) -> Slot:
    """This process's reader slot; ``rotate`` shifts which share each loader worker reads (a resumed
    loader whose first batch must come from the reader that was next, see ``TurnBatches``)."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return Slot(rank, world_size, 0, 1)
    return Slot(rank, world_size, (info.id + rotate) % info.num_workers, info.num_workers)


def eval_shards(urls: list[str], slot: Slot) -> list[str]:
    """This reader's share of the sorted shard list: rank-major, then worker."""
    return sorted(urls)[slot.rank :: slot.world_size][slot.worker :: slot.num_workers]


def train_shards(urls: list[str], slot: Slot, seed: int, epoch: int) -> list[str]:
    """This reader's shards for one epoch of the shared seeded permutation.

    With fewer shards than readers a reader's share would be empty and it would spin
    forever; then each reader takes the shard at its index modulo the shard count (readers
    overlap, which is unavoidable and only happens with tiny corpora).
    """
    order = sorted(urls)
    random.Random(seed + epoch).shuffle(order)
    if len(order) < slot.count:
        return [order[(slot.index + epoch) % len(order)]]
    return order[slot.rank :: slot.world_size][slot.worker :: slot.num_workers]


class ShardSource(torch.utils.data.IterableDataset):
    """Yields ``{"url": ...}`` dicts for webdataset's tar reader, per the rules above."""

    def __init__(self, urls: list[str], rank: int, world_size: int, train: bool, seed: int = 0, rotate: int = 0):
        super().__init__()
        if not urls:
            raise ValueError("no shards to read")
        self.urls = list(urls)
        self.rank, self.world_size = rank, world_size
        self.train, self.seed, self.rotate = train, seed, rotate

    def __iter__(self) -> Iterator[dict[str, str]]:
        slot = current_slot(self.rank, self.world_size, self.rotate)
        if not self.train:
            for url in eval_shards(self.urls, slot):
                yield {"url": url}
            return
        epoch = 0
        while True:
            for url in train_shards(self.urls, slot, self.seed, epoch):
                yield {"url": url}
            epoch += 1
