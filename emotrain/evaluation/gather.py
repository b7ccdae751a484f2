"""Collect per-rank predictions on rank 0, once per turn key.

Every rank scores only its own shards; rank 0 receives everything in one gather at the end
(no per-batch collectives, so ranks with fewer or no shards cannot hang the others). Results
travel as ``.npz`` bytes in uint8 tensors, not pickles (``all_gather_object`` unpickles what it
receives). Keys are unique by construction; a duplicate means the exactly-once contract broke,
so it is an error rather than something to average away.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from emotrain.errors import UserError


@dataclass
class Scored:
    keys: list[str]
    logits: np.ndarray  # float32 [N, C]
    labels: np.ndarray  # int64 [N]
    # bool [N]: whether the model's own medium (audio in its window, the turn's video) was there;
    # predict falls back to the other model where it was not. None: present everywhere.
    present: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.present is None:
            self.present = np.ones(len(self.keys), dtype=bool)

    @classmethod
    def empty(cls, num_classes: int) -> "Scored":
        return cls([], np.zeros((0, num_classes), np.float32), np.zeros(0, np.int64))

    def extend(self, keys: list[str], logits: np.ndarray, labels: np.ndarray, present: np.ndarray | None = None) -> None:
        self.keys.extend(keys)
        self.logits = np.concatenate([self.logits, logits.astype(np.float32)])
        self.labels = np.concatenate([self.labels, labels.astype(np.int64)])
        present = np.ones(len(keys), dtype=bool) if present is None else np.asarray(present, dtype=bool)
        self.present = np.concatenate([self.present, present])


def check_unique(keys: list[str]) -> None:
    """A key seen twice means the exactly-once contract broke: an error, never averaged away."""
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise RuntimeError(f"{len(dupes)} turn key(s) scored more than once, e.g. {dupes[0]}")


def merge(parts: list[Scored]) -> Scored:
    """Concatenate per-rank results sorted by key; duplicate keys are an error."""
    keys = [k for p in parts for k in p.keys]
    check_unique(keys)
    logits = np.concatenate([p.logits for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    present = np.concatenate([p.present for p in parts])
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return Scored([keys[i] for i in order], logits[order], labels[order], present[order])


def to_bytes(scored: Scored) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.asarray(scored.keys, dtype=np.str_), logits=scored.logits, labels=scored.labels,
             present=scored.present)
    return buffer.getvalue()


def from_bytes(data: bytes, num_classes: int) -> Scored:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        keys = [str(k) for k in npz["keys"]]
        logits = npz["logits"].reshape(len(keys), num_classes)
        return Scored(keys, logits.astype(np.float32), npz["labels"].astype(np.int64), npz["present"].astype(bool))


def _all_gather_bytes(payload: bytes, device: torch.device) -> list[bytes]:
    """Variable-length byte strings from every rank (sizes first, then padded payloads)."""
    world = dist.get_world_size()
    size = torch.tensor([len(payload)], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else padded[:0]
    received = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(received, padded)
    return [r[: int(s.item())].cpu().numpy().tobytes() for r, s in zip(received, sizes)]


def gather_to_rank0(local: Scored, device: torch.device | None = None) -> Scored | None:
    """All ranks' results merged on rank 0 (None elsewhere); works without a process group.

    ``device`` is where the collective's tensors live: CPU for gloo, this rank's GPU for NCCL.
    """
    num_classes = local.logits.shape[1]
    parts = gather_bytes_to_rank0(to_bytes(local), device)
    return None if parts is None else merge([from_bytes(p, num_classes) for p in parts])


def gather_bytes_to_rank0(payload: bytes, device: torch.device | None = None) -> list[bytes] | None:
    """Every rank's bytes, in rank order, on rank 0 (None elsewhere); ``[payload]`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [payload]
    parts = _all_gather_bytes(payload, device or torch.device("cpu"))
    return parts if dist.get_rank() == 0 else None


def check_complete(scored: Scored, expected: int, split: str) -> None:
    """The number of turns scored must equal the manifest's count for the split."""
    if len(scored.keys) != expected:
        raise UserError(
            f"{split}: scored {len(scored.keys)} turns but the manifest lists {expected}; "
            "the evaluation did not see every turn exactly once"
        )
