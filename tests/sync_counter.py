"""Counts the host-device synchronisations the training engine itself causes (for tests/toy_train.py).

A sync is a collective (``torch.distributed.all_reduce`` and friends) or a host read of a tensor
(``item``, ``tolist``, ``bool``, ``float``, ``int``, ``numpy``): on a GPU each makes the CPU wait for the
device. Only calls made by ``emotrain/training/engine.py`` count, directly or through its helpers
(``distributed.py``, ``step_sync.py``) and torch: DeepSpeed's own reductions, checkpointing and the
loader are not the engine's loop.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch

_TORCH = str(Path(torch.__file__).parent)
_HELPERS = ("emotrain/training/distributed.py", "emotrain/training/step_sync.py", __file__)
_ENGINE = "emotrain/training/engine.py"
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list", "barrier",
               "reduce_scatter_tensor", "all_gather_into_tensor", "gather_object")
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


class SyncCounter:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def _by_engine(self) -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if not (name.startswith(_TORCH) or name.endswith(_HELPERS)):
                return name.endswith(_ENGINE)
            frame = frame.f_back
        return False

    def _wrap(self, owner, attr: str, kind: str) -> None:
        original = getattr(owner, attr)

        def counted(*args, **kwargs):
            if self._by_engine():
                self.counts[kind] += 1
                self.counts[f"{kind}:{attr}"] += 1
            return original(*args, **kwargs)

        setattr(owner, attr, counted)

    def install(self) -> "SyncCounter":
        for name in COLLECTIVES:
            if hasattr(torch.distributed, name):
                self._wrap(torch.distributed, name, "collectives")
        for name in READS:
            self._wrap(torch.Tensor, name, "host_reads")
        return self
