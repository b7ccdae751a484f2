"""The two early-fusion models (A: audio + text, B: video + text) and their encoders."""

from emotrain.models.build import build_model
from emotrain.models.model_config import ModelConfig
from emotrain.models.encoders import EncoderSpec

__all__ = ["EncoderSpec", "ModelConfig", "build_model"]
