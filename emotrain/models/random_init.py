"""A model config's architecture with random weights: full-size models without downloading anything.

The GPU check (``benchmarks/gpu_check.sh``, ``tests/test_gpu.py``) and ``benchmarks/gpu_throughput.py``
run the full-size models on machines that may have no internet and no Hugging Face cache. What they
measure (memory, speed, that training runs) depends on the architecture and on what trains, not on
the weights' values, so a pretrained encoder is replaced by the same architecture built from its
config class defaults (the base models, as ``emotrain inspect`` counts offline) plus the config's own
keys, and frozen exactly as the pretrained one would have been (the freezing defaults differ
between pretrained and random encoders, :mod:`emotrain.models.encoders`).
"""

from __future__ import annotations

from dataclasses import replace

from emotrain.models.model_config import ModelConfig
from emotrain.models.encoders import DEFAULT_PRETRAINED_FROZEN_LAYERS, EncoderSpec

_KINDS = {"text": "bert", "audio": "wav2vec2", "video": "timesformer"}


def _random(kind: str, spec: EncoderSpec) -> EncoderSpec:
    if spec.pretrained is None:
        return spec
    freeze_layers = DEFAULT_PRETRAINED_FROZEN_LAYERS[kind] if spec.freeze_layers is None else spec.freeze_layers
    changes = {"pretrained": None, "freeze_layers": freeze_layers}
    if kind == "wav2vec2":
        changes["freeze_feature_encoder"] = True if spec.freeze_feature_encoder is None else spec.freeze_feature_encoder
    return replace(spec, **changes)


def random_weights(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with every pretrained encoder replaced by its architecture with random weights, frozen alike."""
    changes = {field: _random(kind, getattr(cfg, field)) for field, kind in _KINDS.items() if getattr(cfg, field) is not None}
    return replace(cfg, **changes)
