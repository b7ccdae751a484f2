"""AdamW parameter groups and the warmup + cosine learning-rate schedule.

Pretrained encoders are fine-tuned with a smaller learning rate than the freshly initialised
fusion layers. The convention models follow: every parameter of a pretrained encoder has a name
starting with one of :data:`ENCODER_PREFIXES` (``model.text_encoder = BertModel(...)`` gives
``text_encoder.embeddings...``). Biases and normalisation weights (tensors with fewer than two
dimensions) get no weight decay. Frozen parameters are left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

ENCODER_PREFIXES = ("text_encoder.", "audio_encoder.", "video_encoder.")


def is_encoder_param(name: str) -> bool:
    return name.startswith(ENCODER_PREFIXES)


def param_groups(model: torch.nn.Module, lr: float, encoder_lr: float, weight_decay: float) -> list[dict]:
    """Up to four AdamW groups: (encoder | rest) x (decayed | not decayed), never an empty one.

    Empty groups are dropped because DeepSpeed removes them from the optimizer after the LR
    scheduler has counted them, which would misalign the scheduler's per-group base rates.
    Each group carries its ``param_names`` (torch saves them with the optimizer state): a ZeRO-0
    checkpoint's fp32 master copies are stored per group in this order and have no other names.
    """
    buckets: dict[tuple[bool, bool], list[tuple[str, torch.nn.Parameter]]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets.setdefault((is_encoder_param(name), param.ndim >= 2), []).append((name, param))
    groups = []
    for (encoder, decayed), named in sorted(buckets.items()):
        groups.append({
            "params": [param for _, param in named],
            "param_names": [name for name, _ in named],
            "lr": encoder_lr if encoder else lr,
            "weight_decay": weight_decay if decayed else 0.0,
            "name": f"{'encoder' if encoder else 'head'}{'' if decayed else '_no_decay'}",
        })
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warmup to 1, then cosine down to ``min_lr_ratio``.

    A plain function on purpose: ``LambdaLR.state_dict`` saves callable objects' attributes and would
    restore an old schedule on resume, while a function is rebuilt from the current config.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    encoder_lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """Plain ``torch.optim.AdamW`` and its schedule: DeepSpeed's fused Adam is a compiled op that a
    CPU-only machine cannot build, and ``torch.optim.AdamW`` runs the same under every ZeRO stage."""
    optimizer = torch.optim.AdamW(param_groups(model, lr, encoder_lr, weight_decay), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps, min_lr_ratio))
    return optimizer, schedule


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes this rank's optimizer holds: its (fp32 master) parameters and per-parameter state.

    Pass the AdamW handed to DeepSpeed: under ZeRO its groups hold this rank's flat fp32 partitions,
    without ZeRO the full fp32 master copy, so the figure shows what sharding saves per rank.
    """
    seen: set[int] = set()
    total = 0
    tensors = [p for group in optimizer.param_groups for p in group["params"]]
    tensors += [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    for tensor in tensors:
        if tensor.numel() and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total
