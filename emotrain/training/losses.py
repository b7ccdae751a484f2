"""The training loss: cross-entropy with optional label smoothing, focal term and class weights.

AvaMERG's classes are imbalanced, so the loss can weight classes by inverse train frequency
(from the manifest's ``label_histogram``) or by a given list, and down-weight easy turns with
a focal term. One formula covers every option: the per-turn cross-entropy as torch computes it
(weights and smoothing included), times ``(1 - p_true) ** gamma``, averaged like torch's
weighted mean; so ``focal_gamma: 0`` is exactly ``F.cross_entropy``. Label -1 (unlabelled) is
ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from emotrain.data.schema import UNLABELLED

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LossConfig:
    label_smoothing: float = 0.0
    focal_gamma: float = 0.0  # 0 = plain cross-entropy
    class_weights: Literal["none", "inverse_frequency"] | list[float] = "none"

    def validate(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if isinstance(self.class_weights, list):
            if any(w < 0 for w in self.class_weights) or not any(w > 0 for w in self.class_weights):
                raise ValueError("class_weights must be >= 0 and not all 0")


def class_weight_vector(cfg: LossConfig, class_histogram: list[int]) -> torch.Tensor | None:
    """Per-class weights, or None for unweighted.

    ``inverse_frequency``: ``w_c = mean count / count_c`` over the classes present in train, so
    a balanced histogram gives all ones; a class absent from train gets 0 (it is never a target).
    """
    num_classes = len(class_histogram)
    if cfg.class_weights == "none":
        return None
    if cfg.class_weights == "inverse_frequency":
        counts = torch.tensor(class_histogram, dtype=torch.float64)
        if (counts < 0).any() or counts.sum() == 0:
            raise ValueError(f"class histogram {class_histogram} has no labelled turns")
        present = counts > 0
        weights = torch.zeros(num_classes, dtype=torch.float64)
        weights[present] = counts[present].mean() / counts[present]
        return weights.float()
    if len(cfg.class_weights) != num_classes:
        raise ValueError(f"class_weights has {len(cfg.class_weights)} entries for {num_classes} classes")
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


def build_loss(cfg: LossConfig, class_histogram: list[int]) -> LossFn:
    """``loss(logits [B, C], labels [B]) -> scalar``; ``class_histogram`` has one count per class."""
    weights = class_weight_vector(cfg, class_histogram)
    num_classes = len(class_histogram)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != num_classes:
            raise ValueError(f"logits have {logits.shape[-1]} classes, the histogram {num_classes}")
        logits = logits.float()  # bf16 log-softmax loses too much for small probabilities
        keep = labels != UNLABELLED
        if not keep.any():
            return logits.sum() * 0.0  # keeps the graph (every rank must call backward)
        logits, labels = logits[keep], labels[keep]
        w = weights.to(logits.device) if weights is not None else None
        per_turn = F.cross_entropy(logits, labels, weight=w, label_smoothing=cfg.label_smoothing, reduction="none")
        if cfg.focal_gamma > 0:
            p_true = logits.softmax(-1).gather(1, labels[:, None]).squeeze(1)
            per_turn = per_turn * (1.0 - p_true).pow(cfg.focal_gamma)
        denominator = w[labels].sum() if w is not None else torch.tensor(float(len(labels)), device=logits.device)
        return per_turn.sum() / denominator.clamp(min=torch.finfo(logits.dtype).tiny)

    return loss
