"""The pretrained backbones (BERT, Wav2Vec2, TimeSformer): where they come from and what trains.

An encoder is built from a hub name or a local folder (``from_pretrained``, which honours
``HF_HUB_OFFLINE`` and the local cache) or from a config dict (tiny encoders for tests and the
demo). Weights loaded here are never touched again by any init code: the fusion models
initialise only the layers they add (the seed project re-initialised pretrained BERT).

Freezing defaults follow one rule: only pretrained weights are frozen by default (BERT's
embeddings and first 6 layers, Wav2Vec2's convolutional feature encoder); an encoder trained
from scratch trains whole unless the spec says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from emotrain.data.media import resize_frames
from emotrain.config import path_field
from emotrain.errors import UserError
from emotrain.models.cpu_convs import use_float32_cpu_convs
from emotrain.models.layers import scatter_rows

EncoderKind = Literal["bert", "wav2vec2", "timesformer"]

# Frozen by default when the weights are pretrained (BERT only; see the module docstring).
DEFAULT_PRETRAINED_FROZEN_LAYERS = {"bert": 6, "wav2vec2": 0, "timesformer": 0}


@dataclass
class EncoderSpec:
    """Where an encoder's weights come from and which of them train.

    ``pretrained``: a hub name (``bert-base-uncased``) or a local folder; None builds from
    ``config`` with random weights. ``config``: config keys (``hidden_size: 32``); with
    ``pretrained`` they override the stored config (dropout, ``layerdrop``), so they must not
    change weight shapes. ``freeze``: the whole encoder (it then runs without autograd).
    ``freeze_layers``: the input embeddings and the first N transformer layers; None = 6 for a
    pretrained BERT, else 0. ``freeze_feature_encoder`` (Wav2Vec2 only): the convolutional
    feature encoder; None = frozen when pretrained.
    """

    pretrained: str | None = path_field("name_or_path", default=None)
    config: dict[str, Any] = field(default_factory=dict)
    freeze: bool = False
    freeze_layers: int | None = None
    freeze_feature_encoder: bool | None = None
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        if self.pretrained is not None and not self.pretrained.strip():
            raise ValueError("pretrained must name a model or a folder (or be null)")
        if self.freeze_layers is not None and self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {self.freeze_layers}")


def _classes(kind: EncoderKind) -> tuple[type, type]:
    """(config class, model class) per kind; imported lazily so the CLI starts fast."""
    if kind == "bert":
        from transformers import BertConfig, BertModel

        return BertConfig, BertModel
    if kind == "wav2vec2":
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        return Wav2Vec2Config, Wav2Vec2Model
    if kind == "timesformer":
        from transformers import TimesformerConfig, TimesformerModel

        return TimesformerConfig, TimesformerModel
    raise ValueError(f"unknown encoder kind {kind!r}")


def _check_config_keys(kind: EncoderKind, overrides: dict[str, Any]) -> None:
    """Reject keys the config class does not know: HF configs silently keep any typo."""
    config_cls, _ = _classes(kind)
    known = set(config_cls().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"{kind} encoder config: unknown key(s) {', '.join(unknown)}")


def encoder_config(kind: EncoderKind, spec: EncoderSpec, builtin_fallback: bool = False) -> Any:
    """The encoder's config: the pretrained one with ``spec.config`` applied, or built from it.

    With ``builtin_fallback`` a pretrained name whose config is not available locally falls
    back to the config class defaults (and is never looked up online), which equal the standard base models
    (``BertConfig()`` is bert-base-uncased, ``Wav2Vec2Config()`` wav2vec2-base,
    ``TimesformerConfig()`` timesformer-base): ``emotrain inspect`` counts parameters offline so.
    """
    from huggingface_hub.errors import StrictDataclassError

    _check_config_keys(kind, spec.config)
    config_cls, _ = _classes(kind)
    if spec.pretrained is not None:
        try:
            return config_cls.from_pretrained(spec.pretrained, local_files_only=builtin_fallback, **spec.config)
        except OSError as err:
            if not builtin_fallback:
                raise UserError(f"cannot load the {kind} config {spec.pretrained!r}: {_first_line(err)}") from None
        except (TypeError, ValueError, StrictDataclassError) as err:
            raise UserError(f"{kind} encoder config: {_first_line(err)}") from None
    try:
        return config_cls(**spec.config)
    except (TypeError, ValueError, StrictDataclassError) as err:
        # e.g. a float where the config class wants an int (TimesformerConfig.drop_path_rate)
        raise UserError(f"{kind} encoder config: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    """HF errors span many lines (and nest causes); the CLI shows one."""
    text = " ".join(str(err).split("\n")[:2]).strip()
    return text or type(err).__name__


def load_encoder(kind: EncoderKind, spec: EncoderSpec, load_weights: bool = True) -> nn.Module:
    """The Hugging Face model with freezing and gradient checkpointing applied.

    ``load_weights=False`` builds the same architecture without reading any weights (for
    counting parameters); see :func:`encoder_config` for how the config is found then.
    """
    _, model_cls = _classes(kind)
    extra = {"add_pooling_layer": False} if kind == "bert" else {}  # CLS from last_hidden_state; no unused pooler
    config = encoder_config(kind, spec, builtin_fallback=not load_weights)
    if spec.pretrained is not None and load_weights:
        try:
            # dtype fixed: transformers 5 otherwise keeps the checkpoint's dtype ("auto").
            model = model_cls.from_pretrained(spec.pretrained, config=config, dtype=torch.float32, **extra)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load the {kind} weights {spec.pretrained!r}: {_first_line(err)}") from None
    else:
        model = model_cls(config, **extra)
    _apply_freezing(kind, model, spec)
    use_float32_cpu_convs(model)
    if spec.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (reentrant checkpoints need an input with grad).
        kwargs = {"use_reentrant": False}
        enable = getattr(model, "activation_checkpointing_enable", None)  # the name in later transformers 5.x
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # transformers also makes a text model's embedding output require grad (what reentrant checkpoints
        # and PEFT need). The non-reentrant checkpoints used here need no such input, and with it autograd
        # runs backward through every frozen layer below the trainable ones: with BERT's 6 frozen layers,
        # 1.8x the text encoder's training FLOPs (emotrain/models/flops.py).
        if getattr(model, "_require_grads_hook", None) is not None:
            model.disable_input_require_grads()
    return model


def _input_side(kind: EncoderKind, model: nn.Module) -> list[nn.Module | nn.Parameter]:
    """What comes before the transformer layers (frozen together with the first layers)."""
    if kind == "wav2vec2":
        parts: list[nn.Module | nn.Parameter] = [model.feature_extractor, model.feature_projection, model.encoder.pos_conv_embed]
        if getattr(model, "masked_spec_embed", None) is not None:
            parts.append(model.masked_spec_embed)
        return parts
    return [model.embeddings]


def _layers(kind: EncoderKind, model: nn.Module) -> nn.ModuleList:
    return model.encoder.layers if kind == "wav2vec2" else model.encoder.layer


def _freeze(part: nn.Module | nn.Parameter) -> None:
    params = [part] if isinstance(part, nn.Parameter) else part.parameters()
    for p in params:
        p.requires_grad_(False)


def _apply_freezing(kind: EncoderKind, model: nn.Module, spec: EncoderSpec) -> None:
    if spec.freeze:
        _freeze(model)
        return
    pretrained = spec.pretrained is not None
    layers = _layers(kind, model)
    n = spec.freeze_layers
    if n is None:
        n = DEFAULT_PRETRAINED_FROZEN_LAYERS[kind] if pretrained else 0
    if n > len(layers):
        raise UserError(f"{kind} encoder: freeze_layers={n} but the model has only {len(layers)} layers")
    if n > 0:
        for part in _input_side(kind, model):
            _freeze(part)
        for layer in layers[:n]:
            _freeze(layer)
    freeze_conv = spec.freeze_feature_encoder if spec.freeze_feature_encoder is not None else pretrained
    if kind == "wav2vec2" and freeze_conv:
        model.freeze_feature_encoder()


def is_frozen(module: nn.Module) -> bool:
    """True when no parameter of ``module`` trains (it can then run without autograd)."""
    return not any(p.requires_grad for p in module.parameters())


class BertCLS(nn.Module):
    """BERT's [CLS] vector of each row of token ids (rows are whole texts).

    :meth:`encode_slots` takes the loader's layout, each distinct text of a batch once plus the
    row each slot reads, and gives one vector per slot.
    """

    def __init__(self, spec: EncoderSpec, load_weights: bool = True) -> None:
        super().__init__()
        self.model = load_encoder("bert", spec, load_weights)
        self.dim = self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Rows may carry more padding than their longest real row needs: trim it.
        length = int(attention_mask.sum(-1).max().clamp(min=1))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not is_frozen(self.model)):
            out = self.model(input_ids=input_ids[:, :length], attention_mask=attention_mask[:, :length])
        return out.last_hidden_state[:, 0]

    def encode_slots(self, token_ids: torch.Tensor, token_mask: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """[CLS] vectors of the distinct rows ``token_ids``/``token_mask`` [R, L], placed at ``row``.

        ``row`` (any shape, e.g. [B, U] utterance slots or [B] contexts) names the row of each
        slot, -1 for a padding slot, which gets the zero vector -> [*row.shape, D]. Each row is
        encoded once however many slots read it (turns of a conversation repeat its texts); the
        gradients of all those slots add up on it. In training, all slots reading a row share its
        one dropout mask (encoding a copy per slot drew a mask per copy).
        """
        vectors = self(token_ids, token_mask)
        where = row >= 0
        return scatter_rows(vectors[row[where]], where, vectors.new_zeros(self.dim))


class Wav2Vec2Pooled(nn.Module):
    """One vector per clip: Wav2Vec2 frames averaged over the clip's real samples only.

    Each clip is normalised to zero mean and unit variance over its real samples first, as
    Wav2Vec2's feature extractor does (``do_normalize``) for the models it was trained with;
    padding stays zero.
    """

    def __init__(self, spec: EncoderSpec, load_weights: bool = True) -> None:
        super().__init__()
        self.model = load_encoder("wav2vec2", spec, load_weights)
        config = self.model.config
        self.dim = config.hidden_size
        # Models with group-norm feature encoders (wav2vec2-base) were trained on zero-padded
        # batches without an attention mask; passing one degrades them (HF docs).
        self.pass_attention_mask = config.feat_extract_norm == "layer"
        # SpecAugment needs at least mask_time_length frames, whatever the clip lengths.
        frames = config.mask_time_length if config.apply_spec_augment and config.mask_time_prob > 0 else 1
        self.min_samples = samples_for_frames(frames, config.conv_kernel, config.conv_stride)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``waveforms`` [N, S] zero-padded after each clip's ``lengths`` [N] real samples -> [N, D]."""
        lengths = lengths.clamp(min=1)
        if not self.training and not self.pass_attention_mask and len(lengths) > 1:
            # A group-norm feature encoder normalises over the padding too, so a padded clip's vector depends
            # on the longest clip of its batch (up to 4e-3 in a tiny model's logits). Scored, each clip is
            # encoded at its own length (clips of one length together): a turn's probabilities then do not
            # depend on the turns it was batched with (evaluate, predict and the server agree whatever the
            # batch). Training keeps the padded batch, as these models were trained.
            groups = [(lengths == length).nonzero().squeeze(1) for length in torch.unique(lengths).tolist()]
            vectors = torch.cat([self._encode(waveforms[rows, : int(lengths[rows[0]])], lengths[rows]) for rows in groups])
            out = torch.empty_like(vectors)
            out[torch.cat(groups)] = vectors
            return out
        return self._encode(waveforms, lengths)

    def _encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Cut the padding shared by every clip, or zero-pad up to the minimum length.
        width = max(int(lengths.max()), self.min_samples)
        waveforms = nn.functional.pad(waveforms[:, :width].to(torch.float32), (0, max(0, width - waveforms.shape[1])))
        mask = (torch.arange(width, device=waveforms.device)[None, :] < lengths[:, None]).to(torch.float32)
        waveforms = waveforms * mask
        dtype = next(self.model.parameters()).dtype
        mean = waveforms.sum(-1, keepdim=True) / lengths[:, None]
        var = ((waveforms - mean) * mask).pow(2).sum(-1, keepdim=True) / lengths[:, None]
        waveforms = (waveforms - mean) * mask / (var + 1e-7).sqrt()
        kwargs = {"attention_mask": mask.long()} if self.pass_attention_mask else {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not is_frozen(self.model)):
            frames = self.model(input_values=waveforms.to(dtype), **kwargs).last_hidden_state
        frame_lengths = self.model._get_feat_extract_output_lengths(lengths).clamp(min=1, max=frames.shape[1])
        frame_mask = torch.arange(frames.shape[1], device=frames.device)[None, :] < frame_lengths[:, None]
        frame_mask = frame_mask.to(frames.dtype).unsqueeze(-1)
        return (frames * frame_mask).sum(1) / frame_mask.sum(1)


def samples_for_frames(frames: int, kernels: list[int], strides: list[int]) -> int:
    """The fewest samples from which a conv stack yields ``frames`` frames (its inverse)."""
    samples = frames
    for kernel, stride in zip(reversed(kernels), reversed(strides)):
        samples = (samples - 1) * stride + kernel
    return samples


class TimesformerFrames(nn.Module):
    """One vector per video frame: the mean of that frame's patch tokens in TimeSformer's output.

    Takes the loader's uint8 frames and normalises them here, on the model's device, with the
    RGB statistics its weights were trained with: ``(x / 255 - mean) / std``, in float32.
    """

    def __init__(self, spec: EncoderSpec, pixel_mean: list[float], pixel_std: list[float],
                 load_weights: bool = True) -> None:
        super().__init__()
        self.model = load_encoder("timesformer", spec, load_weights)
        config = self.model.config
        self.dim = config.hidden_size
        self.num_frames = config.num_frames
        self.image_size = square_size(config.image_size, "image_size")
        # Python floats, not buffers: DeepSpeed's bf16 would round buffers to bf16.
        self.pixel_scale = [1.0 / (255.0 * s) for s in pixel_std]
        self.pixel_shift = [m / s for m, s in zip(pixel_mean, pixel_std)]

    def normalise(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] -> float32, ``(x / 255 - mean) / std`` per channel."""
        if video.dtype != torch.uint8:
            raise ValueError(f"video frames must be uint8 RGB (the loader's batch contract), got {video.dtype}")
        scale = torch.tensor(self.pixel_scale, device=video.device).view(3, 1, 1)
        shift = torch.tensor(self.pixel_shift, device=video.device).view(3, 1, 1)
        return video.to(torch.float32).mul_(scale).sub_(shift)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video`` uint8 [N, T, 3, H, W] -> [N, T, D]; frames of another size are scaled to ``image_size``.

        The loader sends clips smaller than ``image_size`` at their own size: scaling them up
        here, on the model's device, is cheaper than moving the upsampled bytes.
        """
        n, t, c, h, w = video.shape
        if t != self.num_frames:
            # TimeSformer's layers reshape by config.num_frames: a mismatch would give garbage or a
            # cryptic reshape error deep inside.
            raise UserError(
                f"video clips are {t} frames but the TimeSformer expects {self.num_frames}: set the loader's "
                "video.num_frames to match"
            )
        dtype = next(self.model.parameters()).dtype
        pixels = self.normalise(video)
        if (h, w) != (self.image_size, self.image_size):
            pixels = resize_frames(pixels, self.image_size)
        pixels = pixels.to(dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not is_frozen(self.model)):
            tokens = self.model(pixel_values=pixels).last_hidden_state
        # Tokens after CLS are ordered patch-major: index 1 + patch * T + frame.
        return tokens[:, 1:].reshape(n, -1, t, self.dim).mean(1)


def square_size(value: int | list[int] | tuple[int, int], name: str) -> int:
    """A config's image size as one int (the loader makes square frames)."""
    if isinstance(value, int):
        return value
    height, width = value
    if height != width:
        raise UserError(f"TimeSformer {name} {value} is not square; the loader makes square frames")
    return int(height)
