"""Training FLOPs per turn of a model, computed from its config (no weights, no GPU).

A benchmark sizes the CPU side of a GPU node with it: cores per GPU = (GPU FLOP/s / training
FLOPs per turn) / (loader turns/s per core). So the count must follow what the models really run
on a turn (:mod:`emotrain.models.audio_text`, :mod:`emotrain.models.video_text`), padding included:

- BERT: each *distinct* utterance of the batch once, padded to the batch's longest, and each
  distinct context once (``use_context``), padded to the batch's longest context.
- Wav2Vec2: each *distinct* clip of the batch once, all padded to the batch's longest clip.
- TimeSformer: the current utterance's clip, at the config's ``num_frames`` and ``image_size``
  (the model scales smaller frames up on its device).

Counted: 2 FLOPs per multiply-add of the matmuls and convolutions, which is what
``torch.utils.flop_counter.FlopCounterMode`` counts and what dominates a GPU step: the dense
layers (QKV, output projection, FFN; TimeSformer's ``temporal_dense``), the attention score and
value matmuls (quadratic in the sequence: per row for BERT, per clip for Wav2Vec2, per patch over
the frames and per frame over the patches + CLS for TimeSformer's divided space-time attention),
Wav2Vec2's conv feature encoder, feature projection and positional conv, TimeSformer's patch
embedding. Not counted: layer norms, softmax, GELU, embedding lookups, Wav2Vec2's ``layerdrop``
(every layer is counted) and the fusion layers (LSTMs, cross attention, MLPs: about 0.1 GFLOP a
training turn for model A and 0.3 for model B, under 1% of either total).

Backward follows autograd: a matmul's input gradient costs its forward once, its weight
gradient once more, so a layer that trains and whose input needs a gradient costs 2x its forward
(its attention matmuls have no weights but two gradient inputs: 2x as well). Frozen parts below
everything that trains cost no backward at all; the lowest trainable part skips the input
gradient of the matmuls reading its (gradient-free) input. A fully frozen encoder (``freeze``)
runs without autograd: forward only. Gradient checkpointing replays the forward of every
checkpointed layer (transformer and conv layers) that takes part in backward. Two HF habits
make frozen layers take part: a Wav2Vec2 feature encoder not frozen by
``freeze_feature_encoder`` marks the waveform as needing grad; Wav2Vec2's (post-LN) encoder
LayerNorm before the layers is never frozen. Each was checked against FlopCounterMode. (A third,
a BERT's embedding output made to need grad under checkpointing, ``enable_input_require_grads``,
is undone by :func:`~emotrain.models.encoders.load_encoder`.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from emotrain.data.schema import SAMPLE_RATE
from emotrain.models.model_config import ModelConfig
from emotrain.models.encoders import (
    DEFAULT_PRETRAINED_FROZEN_LAYERS, EncoderKind, EncoderSpec, encoder_config, samples_for_frames, square_size,
)


@dataclass(frozen=True)
class TurnWorkload:
    """What the loader delivers per turn, as the encoders see it (means over batches).

    Defaults are the real AvaMERG corpus with the default data config: conversations of 1-4
    turns (the synthetic corpus' ``TURN_COUNT_P``), turn k holding 2k+1 utterances, give 3.04
    utterance slots per turn, 1.7 slots per distinct utterance within a batch (the same ratio as
    for clips: each utterance has one text and one clip), so 1.79 distinct utterance rows per turn;
    19 padded tokens per row (about 58 per turn over the slots, as measured); 0.42 distinct
    contexts per turn (one per conversation of a batch of 8, as measured on the synthetic corpus)
    of two dozen padded tokens (a one-sentence situation); 1.79 clips per turn, padded to the 6 s cap
    (``AudioConfig.max_seconds``) that a batch's longest clip reaches; model B's one clip per turn.
    ``video_frames`` / ``video_image_size``: None = what the model's TimeSformer takes
    (``ModelConfig.video_frames()`` / ``video_image_size()``); set, they ask "what if".
    """

    utterance_rows: float = 1.79
    utterance_tokens: float = 19.0
    context_rows: float = 0.42
    context_tokens: float = 24.0
    audio_clips: float = 1.79
    audio_seconds: float = 6.0
    video_clips: float = 1.0
    video_frames: int | None = None
    video_image_size: int | None = None

    @classmethod
    def from_batch(cls, batch: dict[str, Any]) -> TurnWorkload:
        """The workload of one collated batch (the loader's contract), trimmed as the encoders trim it."""
        utt_mask = batch["utt_mask"]
        turns = utt_mask.shape[0]
        rows = batch["utt_token_mask"]  # each distinct utterance of the batch once: what BERT encodes
        fields: dict[str, float] = {
            "utterance_rows": rows.shape[0] / turns,
            "utterance_tokens": float(rows.sum(-1).max()) if len(rows) else 0.0,
            "context_rows": batch["ctx_token_mask"].shape[0] / turns,
            "context_tokens": float(batch["ctx_token_mask"].sum(-1).max()),
            "audio_clips": 0.0, "video_clips": 0.0,
        }
        if "audio" in batch and bool((batch["audio_present"] & utt_mask).any()):
            fields["audio_clips"] = batch["audio"].shape[0] / turns
            fields["audio_seconds"] = float(batch["audio_lengths"].max()) / SAMPLE_RATE
        if "video" in batch or "video_jpeg" in batch:  # decoded frames, or JPEGs left to the device
            fields["video_clips"] = int(batch["video_present"].sum()) / turns
        return cls(**fields)


@dataclass(frozen=True)
class EncoderFlops:
    """One encoder's FLOPs per turn: ``training`` = forward + backward + checkpoint replay."""

    name: str
    forward: float
    backward: float
    recompute: float

    @property
    def training(self) -> float:
        return self.forward + self.backward + self.recompute


@dataclass(frozen=True)
class TurnFlops:
    """Per-encoder FLOPs of one training turn (the fusion layers are left out, see the module doc)."""

    encoders: tuple[EncoderFlops, ...]

    @property
    def forward(self) -> float:
        return sum(e.forward for e in self.encoders)

    @property
    def training(self) -> float:
        return sum(e.training for e in self.encoders)

    def gflop(self) -> dict[str, float]:
        """Training GFLOP per turn per encoder and ``total`` (for a report or JSON)."""
        return {**{e.name: e.training / 1e9 for e in self.encoders}, "total": self.training / 1e9}


@dataclass(frozen=True)
class _Stage:
    """A part of an encoder (bottom to top): FLOPs of its weighted matmuls (``dense``), of its
    weight-free attention matmuls, of the weighted matmuls reading the stage's input directly
    (``first``), and of a last matmul whose output backward never reads (``tail``: a checkpoint's
    replay stops before it)."""

    dense: float
    attn: float = 0.0
    first: float = 0.0
    trains: bool = True
    checkpointed: bool = False
    tail: float = 0.0


def _layer(tokens: float, d: int, ff: int) -> float:
    """Dense FLOPs of a transformer layer: QKV + output projection (4 d^2) + FFN (2 d ff) per token."""
    return 2 * tokens * (4 * d * d + 2 * d * ff)


def _bert_stages(config: Any, groups: list[tuple[float, float]], frozen: int) -> list[_Stage]:
    """``groups``: (rows, tokens per row) of each BERT call. Embeddings are lookups (0 FLOPs)."""
    d, ff = config.hidden_size, config.intermediate_size
    dense = sum(_layer(rows * length, d, ff) for rows, length in groups)
    attn = sum(2 * rows * 2 * length * length * d for rows, length in groups)  # QK^T and AV
    qkv = sum(2 * rows * length * 3 * d * d for rows, length in groups)  # post-LN: QKV read the layer input
    layers = [_Stage(dense, attn, qkv, i >= frozen, True) for i in range(config.num_hidden_layers)]
    return [_Stage(0.0, trains=frozen == 0), *layers]


def _wav2vec2_stages(config: Any, clips: float, seconds: float, frozen: int, conv_frozen: bool) -> list[_Stage]:
    """Conv feature encoder, feature projection, positional conv, transformer layers, per turn."""
    kernels, strides = list(config.conv_kernel), list(config.conv_stride)
    spec_frames = config.mask_time_length if config.apply_spec_augment and config.mask_time_prob > 0 else 1
    length = max(round(seconds * SAMPLE_RATE), samples_for_frames(spec_frames, kernels, strides))  # Wav2Vec2Pooled
    stages, c_in = [], 1
    for c_out, k, s in zip(config.conv_dim, kernels, strides):
        length = (length - k) // s + 1
        conv = 2 * clips * length * k * c_in * c_out
        stages.append(_Stage(conv, first=conv, trains=not conv_frozen and frozen == 0, checkpointed=True))
        c_in = c_out
    d, ff, k = config.hidden_size, config.intermediate_size, config.num_conv_pos_embeddings
    stages.append(_Stage(2 * clips * length * c_in * d, trains=frozen == 0))  # its LayerNorm first: input grad
    pos = 2 * clips * (length + 2 * (k // 2) - k + 1) * k * (d // config.num_conv_pos_embedding_groups) * d
    stages.append(_Stage(pos, first=pos, trains=frozen == 0))
    stable = config.do_stable_layer_norm  # pre-LN layers; else post-LN ones after the encoder's LayerNorm
    if not stable:
        stages.append(_Stage(0.0))  # that LayerNorm (never frozen): its output needs grad
    attn = 2 * clips * 2 * length * length * d
    qkv, tail = (0.0, 2 * clips * length * ff * d) if stable else (2 * clips * length * 3 * d * d, 0.0)
    layer = _layer(clips * length, d, ff)
    return stages + [_Stage(layer, attn, qkv, i >= frozen, True, tail) for i in range(config.num_hidden_layers)]


def _timesformer_stages(config: Any, clips: float, frozen: int) -> list[_Stage]:
    """Patch embedding conv, then the layers (pre-LN: every layer input passes a LayerNorm first)."""
    d, ff, t = config.hidden_size, config.intermediate_size, config.num_frames
    patch = square_size(config.patch_size, "patch_size")
    p = (square_size(config.image_size, "image_size") // patch) ** 2
    conv = 2 * clips * t * p * config.num_channels * patch * patch * d
    if config.attention_type == "divided_space_time":
        # temporal attention + temporal_dense over the P*T patch tokens, spatial over T*(P+1) (CLS
        # repeated per frame), FFN over 1 + P*T tokens
        dense = 2 * clips * (p * t * 5 * d * d + t * (p + 1) * 4 * d * d + (1 + p * t) * 2 * d * ff)
        attn = 2 * clips * 2 * d * (p * t * t + t * (p + 1) ** 2)
    elif config.attention_type == "joint_space_time":
        dense, attn = _layer(clips * (1 + p * t), d, ff), 2 * clips * 2 * d * (1 + p * t) ** 2
    else:  # space_only: each frame on its own, with its CLS
        dense, attn = _layer(clips * t * (p + 1), d, ff), 2 * clips * 2 * d * t * (p + 1) ** 2
    tail = 2 * clips * (1 + p * t) * ff * d  # the FFN output matmul, then only a residual add
    layers = [_Stage(dense, attn, 0.0, i >= frozen, True, tail) for i in range(config.num_hidden_layers)]
    return [_Stage(conv, first=conv, trains=frozen == 0), *layers]


def bert_forward_flops(config: Any, rows: float, tokens: float) -> float:
    """Forward FLOPs of a ``BertConfig`` over ``rows`` rows of ``tokens`` (padded) tokens each."""
    return sum(s.dense + s.attn for s in _bert_stages(config, [(rows, tokens)], 0))


def wav2vec2_forward_flops(config: Any, clips: float, seconds: float) -> float:
    """Forward FLOPs of a ``Wav2Vec2Config`` over ``clips`` clips of ``seconds`` (padded) at 16 kHz."""
    return sum(s.dense + s.attn for s in _wav2vec2_stages(config, clips, seconds, 0, False))


def timesformer_forward_flops(config: Any, clips: float = 1.0) -> float:
    """Forward FLOPs of a ``TimesformerConfig`` over ``clips`` clips of its num_frames x image_size."""
    return sum(s.dense + s.attn for s in _timesformer_stages(config, clips, 0))


def _frozen_layers(kind: EncoderKind, spec: EncoderSpec) -> int:
    """Input side + first N layers frozen, as ``encoders._apply_freezing`` resolves ``freeze_layers``."""
    if spec.freeze_layers is not None:
        return spec.freeze_layers
    return DEFAULT_PRETRAINED_FROZEN_LAYERS[kind] if spec.pretrained is not None else 0


def _encoder_flops(name: str, stages: list[_Stage], spec: EncoderSpec, input_grad: bool = False) -> EncoderFlops:
    """Forward, backward and checkpoint replay of ``stages`` under autograd's rules (module doc)."""
    forward = sum(s.dense + s.attn for s in stages)
    if spec.freeze:  # runs under no_grad
        return EncoderFlops(name, forward, 0.0, 0.0)
    backward = recompute = 0.0
    needs_grad = input_grad  # does the current stage's input carry a gradient?
    for s in stages:
        if not (needs_grad or s.trains):
            continue
        backward += 2 * s.attn + (s.dense if s.trains else 0.0) + (s.dense if needs_grad else s.dense - s.first)
        if spec.gradient_checkpointing and s.checkpointed:
            recompute += s.dense + s.attn - s.tail
        needs_grad = True
    return EncoderFlops(name, forward, backward, recompute)


def training_flops_per_turn(model_cfg: ModelConfig, workload: TurnWorkload | None = None) -> TurnFlops:
    """FLOPs of one training turn (forward + backward) of the model ``model_cfg`` describes.

    Configs come offline: a pretrained name not in the local cache falls back to the config
    class defaults (the base models), as ``emotrain inspect`` counts parameters.
    """
    w = workload or TurnWorkload()
    text = model_cfg.text
    groups = [(w.utterance_rows, w.utterance_tokens)]
    if model_cfg.use_context:
        groups.append((w.context_rows, w.context_tokens))
    bert = encoder_config("bert", text, builtin_fallback=True)
    stages = _bert_stages(bert, groups, _frozen_layers("bert", text))
    encoders = [_encoder_flops("text", stages, text, input_grad=False)]
    if (audio := model_cfg.audio) is not None:
        config = encoder_config("wav2vec2", audio, builtin_fallback=True)
        conv_frozen = audio.freeze_feature_encoder
        conv_frozen = audio.pretrained is not None if conv_frozen is None else conv_frozen
        frozen = _frozen_layers("wav2vec2", audio)
        stages = _wav2vec2_stages(config, w.audio_clips, w.audio_seconds, frozen, conv_frozen)
        encoders.append(_encoder_flops("audio", stages, audio, input_grad=not conv_frozen))  # an HF habit (module doc)
    if (video := model_cfg.video) is not None:
        config = copy.deepcopy(encoder_config("timesformer", video, builtin_fallback=True))
        config.num_frames = w.video_frames or config.num_frames
        config.image_size = w.video_image_size or config.image_size
        stages = _timesformer_stages(config, w.video_clips, _frozen_layers("timesformer", video))
        encoders.append(_encoder_flops("video", stages, video))
    return TurnFlops(tuple(encoders))


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity; FP32 accumulation, what bf16 training uses) from the
# vendors' data sheets, matched against ``torch.cuda.get_device_name()`` in this order (first match wins).
# MFU (benchmarks/gpu_throughput.py) = achieved training FLOP/s (the counts above) / this peak.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("A100", 312.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("RTX 3060", 25.0),
)  # other GPUs: benchmarks/gpu_throughput.py --peak-tflops


def bf16_peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a GPU named ``device_name``, or None when it is not in the table."""
    for fragment, tflops in BF16_PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return tflops * 1e12
    return None


__all__ = [
    "BF16_PEAK_TFLOPS", "EncoderFlops", "TurnFlops", "TurnWorkload", "bert_forward_flops", "bf16_peak_flops",
    "timesformer_forward_flops", "training_flops_per_turn", "wav2vec2_forward_flops",
]
