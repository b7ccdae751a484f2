"""The model section of a run config: which of the two models, its encoders and its sizes, validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from emotrain.models.encoders import EncoderSpec, encoder_config, square_size

ModelKind = Literal["audio_text", "video_text"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _default_text() -> EncoderSpec:
    return EncoderSpec(pretrained="bert-base-uncased")


@dataclass
class ModelConfig:
    """One of the two early-fusion models and its sizes.

    ``text`` is BERT, ``audio`` Wav2Vec2 (audio_text only), ``video`` TimeSformer (video_text
    only). ``hidden`` is the per-direction size of every Bi-LSTM; ``meta_dim`` the total size of
    the metadata embeddings, split evenly over the metadata columns. ``use_context`` feeds the
    turn's context text (situation / chain fields chosen in the data config) through BERT.
    ``pixel_mean`` / ``pixel_std`` (video_text): the RGB statistics the video encoder's weights
    were trained with; the model normalises the loader's uint8 frames with them on its device,
    as Wav2Vec2Pooled normalises its waveforms (detectron2 keeps them in the model too).
    """

    kind: ModelKind
    text: EncoderSpec = field(default_factory=_default_text)
    audio: EncoderSpec | None = None
    video: EncoderSpec | None = None
    hidden: int = 256
    lstm_layers: int = 2
    attention_heads: int = 8
    role_dim: int = 16
    meta_dim: int = 256
    mlp_hidden: int = 256
    dropout: float = 0.1
    use_context: bool = True
    pixel_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    pixel_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def validate(self) -> None:
        if self.kind == "audio_text" and (self.audio is None or self.video is not None):
            raise ValueError("kind audio_text needs an `audio` encoder spec and no `video`")
        if self.kind == "video_text" and (self.video is None or self.audio is not None):
            raise ValueError("kind video_text needs a `video` encoder spec and no `audio`")
        for name in ("hidden", "lstm_layers", "attention_heads", "role_dim", "mlp_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (2 * self.hidden) % self.attention_heads:
            raise ValueError(f"2 * hidden ({2 * self.hidden}) must be divisible by attention_heads ({self.attention_heads})")
        if self.meta_dim < 10:
            raise ValueError(f"meta_dim must be >= 10 (one dim per metadata column at least), got {self.meta_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError("pixel_mean and pixel_std need 3 values (RGB)")
        if any(s <= 0 for s in self.pixel_std):
            raise ValueError("pixel_std values must be > 0")

    @property
    def needs_audio(self) -> bool:
        return self.kind == "audio_text"

    @property
    def needs_video(self) -> bool:
        return self.kind == "video_text"

    def video_frames(self) -> int:
        """Frames per clip the TimeSformer expects (the loader's video.num_frames must match)."""
        return int(self._video_config().num_frames)

    def video_image_size(self) -> int:
        """Frame side the TimeSformer expects (the loader's video.image_size must match)."""
        return square_size(self._video_config().image_size, "image_size")

    def _video_config(self):  # noqa: ANN202 - a transformers TimesformerConfig
        if self.video is None:
            raise ValueError(f"a {self.kind} model has no video encoder")
        return encoder_config("timesformer", self.video)
