"""Shared-memory frame buffers that loader workers reuse once the training process has let go of them.

Why: a worker decodes a batch's JPEG frames (about 1.2 MB a turn) straight into shared memory, which
reaches the training process without a copy; but a fresh segment per batch costs the worker its
creation and a page fault (a zeroed page from the kernel) for every 4 KiB it writes, about a fifth
of its time per turn on prepared shards (``benchmarks/cores_per_gpu.py --profile``). Reusing a
segment is safe only once no tensor of the training process uses it any more, so:

- the training process creates :class:`FrameSlots` (a small shared table: one "in use" flag per
  worker and slot) before the workers start; they inherit it with the dataset;
- a worker takes a free slot of its own for a batch's frames (:func:`frames_buffer`), marks it in
  use and names it in the batch (``frame_slot``); with no slot free it allocates a fresh segment,
  as before, so it never waits;
- the training process (:class:`emotrain.data.stream.TurnLoader`) removes ``frame_slot`` from the
  batch, keeps a weak reference to the frames' storage, and frees the slot when that storage is
  gone: every tensor sharing it (views, slices, a list of kept batches) has been dropped, or the
  DataLoader copied the batch to pinned memory.

A slot's frames are written in full for each batch (missing clips explicitly zeroed), so a sample
never depends on what the slot held before. A batch tensor without a slot (audio, text, frames when no
slot is free) is a fresh segment from :func:`media_zeros`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef

SLOTS_PER_WORKER = 8  # more than the batches a worker has in flight (prefetch_factor 4) plus those being used

_installed: FrameSlots | None = None


class FrameSlots:
    """The in-use table, shared by the training process and its loader workers (see the module doc)."""

    def __init__(self, workers: int, slots: int = SLOTS_PER_WORKER) -> None:
        self.in_use = torch.zeros(workers, slots, dtype=torch.uint8).share_memory_()
        self._storages: dict[int, torch.UntypedStorage] = {}  # worker side: slot -> its segment
        self._held: list[tuple[StorageWeakRef, int, int]] = []  # training process: (frames, worker, slot)
        self.reused = 0  # training process: batches that arrived in a slot used before

    def __getstate__(self) -> dict[str, Any]:
        return {"in_use": self.in_use}

    def __setstate__(self, state: dict[str, Any]) -> None:  # in a worker: the shared table, nothing else
        self.in_use, self._storages, self._held, self.reused = state["in_use"], {}, [], 0

    # --- worker side ---------------------------------------------------------------------------------

    def take(self, worker: int, nbytes: int) -> tuple[torch.UntypedStorage, int, bool] | None:
        """A free slot's segment of at least ``nbytes`` (marked in use), its index and whether it is a
        reused one; None when every slot of this worker is in use."""
        flags = self.in_use[worker]
        for slot in range(flags.numel()):
            if flags[slot]:
                continue
            storage = self._storages.get(slot)
            reused = storage is not None and storage.nbytes() >= nbytes
            if not reused:
                storage = self._storages[slot] = torch.UntypedStorage._new_shared(nbytes)
            flags[slot] = 1
            return storage, slot, reused
        return None

    # --- training-process side -----------------------------------------------------------------------

    def arrived(self, batch: dict[str, Any]) -> None:
        """Take a worker batch's ``frame_slot`` out and watch its frames; free slots whose frames are gone."""
        self.release_unused()
        where = batch.pop("frame_slot", None)
        if where is None:
            return
        worker, slot, reused = (int(v) for v in where)
        self.reused += reused
        self._held.append((StorageWeakRef(batch["video"].untyped_storage()), worker, slot))

    def release_unused(self) -> None:
        keep = []
        for ref, worker, slot in self._held:
            if ref.expired():
                self.in_use[worker, slot] = 0
            else:
                keep.append((ref, worker, slot))
        self._held = keep


def media_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed batch tensor, allocated in shared memory when built in a loader worker.

    A worker's tensors reach the main process through shared memory; one allocated elsewhere is
    copied there when the batch is sent (what ``default_collate`` avoids the same way). A new
    shared-memory segment already reads as zeros (a new file grown by ``ftruncate``), so it is
    not zeroed a second time. Allocating it costs time in proportion to its size (about 0.5 ms
    per MB here), one reason the audio is sent one row per distinct clip.
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.zeros(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def install(slots: FrameSlots | None) -> None:
    """Called in a loader worker as its dataset starts: :func:`frames_buffer` uses these slots."""
    global _installed
    _installed = slots


def frames_buffer(shape: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray | None]:
    """A uint8 tensor of ``shape`` for a batch's frames, and the ``frame_slot`` to send with it (None: a
    fresh buffer, see :func:`media_zeros`). A reused slot's bytes are stale: the caller writes every element."""
    info = torch.utils.data.get_worker_info()
    if _installed is None or info is None:
        return media_zeros(shape, torch.uint8), None
    nbytes = math.prod(shape)
    taken = _installed.take(info.id, nbytes)
    if taken is None:
        return media_zeros(shape, torch.uint8), None
    storage, slot, reused = taken
    tensor = torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)
    return tensor, np.array([info.id, slot, int(reused)], dtype=np.int64)
