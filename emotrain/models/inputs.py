"""What a model sees of a batch: the one definition, used by training, validation, evaluation and tests.

A batch (the loader's contract, see :mod:`emotrain.data.stream`) also carries what must never
reach a model: the turn ``keys`` (bookkeeping for the exactly-once gather), the ``labels`` (the
answer) and the loader's ``skipped`` counters. :func:`model_inputs` removes them and moves the
rest to the compute device in one place, so training and evaluation cannot feed a model
different things.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from emotrain.data.prepared import decode_on_device

NOT_INPUTS = frozenset({"keys", "labels", "skipped"})
JPEG_FIELDS = frozenset({"video_jpeg", "video_jpeg_sizes", "video_jpeg_side"})


def model_inputs(batch: Mapping[str, Any], device: torch.device, float_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The batch minus keys, labels and counters, its tensors on ``device``.

    ``float_dtype`` casts floating tensors (audio) as well: DeepSpeed's ``bf16.enabled`` turns the
    weights into bf16 but is no autocast, so a bf16 engine needs bf16 inputs. Integer and boolean
    tensors (token ids, masks, uint8 frames) keep their dtype. Undecoded JPEG frames
    (``video_jpeg``: prepared shards read with ``jpeg_decode: device``) become ``video`` here.
    """
    moved = {}
    if "video_jpeg" in batch:  # prepared frames still as JPEG: decoded here, on the device (nvJPEG on CUDA)
        moved["video"] = decode_on_device(batch["video_jpeg"], batch["video_jpeg_sizes"], batch["video_jpeg_side"],
                                          device)
    for key, value in batch.items():
        if key in NOT_INPUTS or key in JPEG_FIELDS:
            continue
        if isinstance(value, torch.Tensor):
            dtype = float_dtype if float_dtype is not None and value.is_floating_point() else None
            value = value.to(device=device, dtype=dtype, non_blocking=device.type == "cuda")  # from pinned memory
        moved[key] = value
    return moved
