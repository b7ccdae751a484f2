"""The one function that turns a model config into a module."""

from __future__ import annotations

from torch import nn

from emotrain.models.model_config import ModelConfig


def build_model(cfg: ModelConfig, num_classes: int, meta_vocab_sizes: dict[str, int], load_weights: bool = True) -> nn.Module:
    """The model for ``cfg``: maps a collated batch dict to logits [B, num_classes].

    ``load_weights=False`` builds the architecture without reading pretrained weights
    (``emotrain inspect``); training always loads them.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if cfg.kind == "audio_text":
        from emotrain.models.audio_text import AudioTextModel

        return AudioTextModel(cfg, num_classes, meta_vocab_sizes, load_weights)
    from emotrain.models.video_text import VideoTextModel

    return VideoTextModel(cfg, num_classes, meta_vocab_sizes, load_weights)
