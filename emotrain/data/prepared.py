"""Prepared video: each clip decoded once at pack time and kept as JPEG frames at the model's size.

Why: a talking-face mp4 of ~5.7 s at 25 fps with x264's default keyframe interval has one
keyframe, so picking 8 frames decodes nearly all 142 of them, at the clip's own size, every epoch:
the loader's workers, not the GPU, set the pace of the video model. Packed with
``emotrain pack --prepare-video``, a clip is decoded once and ``frames`` of its frames (the centres
of ``frames`` equal segments, as :func:`~emotrain.data.media.frame_indices` picks them) are scaled to
``size`` x ``size`` and stored as baseline JPEG, 4:2:0. The loader then picks ``num_frames`` of those
(uniform in evaluation, one at random per segment in training; 8 of 16 stored frames picked
uniformly sit a quarter of a segment later in the clip than the mp4 path's 8 segment centres)
and decodes only them: libjpeg-turbo
(``simplejpeg``) in the workers, or, with ``data.video.jpeg_decode: device``, on the model's device
(nvJPEG through torchvision on CUDA), with only the compressed bytes through the worker queues.
(``benchmarks/cores_per_gpu.py`` measures both against the mp4 path.)

Shard members per utterance (the mp4 is not stored then):

- ``utt{index}.frames.mjpeg``: the frames' JPEG files back to back, oldest first (a Motion-JPEG
  stream: ``ffmpeg -f mjpeg`` and image viewers read it);
- ``utt{index}.frames.json``: ``{"sizes": [bytes of each JPEG], "source_frames": [the index in the
  mp4 of each], "source_frame_count": frames in the mp4}``.

What a split holds is recorded in its manifest (``Manifest.video``: a :class:`PreparedVideo`, or
None for mp4), and a model whose ``num_frames``/``image_size`` do not fit it is stopped before any
work (:func:`check_fits`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from emotrain.data.media import MediaError, frame_indices, read_frames, resize_frames
from emotrain.errors import UserError

FRAMES_SUFFIX = ".frames.mjpeg"
INDEX_SUFFIX = ".frames.json"


def frames_member(index: int) -> str:
    return f"utt{index}{FRAMES_SUFFIX}"


def frames_index_member(index: int) -> str:
    return f"utt{index}{INDEX_SUFFIX}"


@dataclass(frozen=True)
class PreparedVideo:
    """How ``pack --prepare-video`` stored the video of a split (the manifest's ``video``)."""

    frames: int = 16  # per clip, the centres of as many equal segments
    size: int = 224  # square side in pixels: the video encoder's image_size
    quality: int = 90  # JPEG quality
    format: Literal["jpeg"] = "jpeg"

    def validate(self) -> None:
        if not 1 <= self.frames <= 256:
            raise ValueError(f"frames must be in [1, 256], got {self.frames}")
        if not 16 <= self.size <= 1024 or self.size % 2:
            raise ValueError(f"size must be an even number in [16, 1024], got {self.size}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {self.quality}")

    def describe(self) -> str:
        return f"{self.frames} JPEG frames of {self.size}x{self.size} px per clip"


def check_fits(prepared: PreparedVideo, num_frames: int, image_size: int, where: str) -> str | None:
    """Why a loader wanting ``num_frames`` frames of ``image_size`` px cannot read these shards, or None."""
    if image_size == prepared.size and num_frames <= prepared.frames:
        return None
    return (f"the shards in {where} hold {prepared.describe()} (pack --prepare-video) but the model wants "
            f"{num_frames} frames of {image_size}x{image_size} (data.video.num_frames / image_size): pack again "
            f"with --video-frames {max(num_frames, prepared.frames)} --video-size {image_size}, or train a model "
            f"that fits")


# --- pack time -----------------------------------------------------------------------------------


def prepare_clip(data: bytes, spec: PreparedVideo) -> dict[str, bytes]:
    """The two shard members of one mp4's prepared frames (keyed by suffix); MediaError if it does not decode.

    The frames are scaled the way the mp4 path scales them in the loader (``resize_frames``:
    bilinear, antialiased when shrinking, to a square) so both give the model the same pixels
    but for JPEG's error.
    """
    import simplejpeg

    frames, wanted, count = read_frames(data, spec.frames, False, np.random.default_rng(0), fallback_size=spec.size)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)
    if tuple(video.shape[-2:]) != (spec.size, spec.size):
        video = resize_frames(video.float(), spec.size).round_().clamp_(0, 255).to(torch.uint8)
    pixels = video.permute(0, 2, 3, 1).contiguous().numpy()
    jpegs = [simplejpeg.encode_jpeg(frame, quality=spec.quality, colorspace="RGB", colorsubsampling="420")
             for frame in pixels]
    index = {"sizes": [len(j) for j in jpegs], "source_frames": wanted.tolist(), "source_frame_count": count}
    return {FRAMES_SUFFIX: b"".join(jpegs), INDEX_SUFFIX: json.dumps(index).encode("utf-8")}


# --- load time -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedClip:
    """The JPEG bytes of the frames a turn uses, as picked from a clip's prepared frames."""

    jpegs: tuple[memoryview, ...]


def _cut(data: memoryview, sizes: list[int]) -> list[memoryview]:
    """Consecutive pieces of ``data`` of the given byte sizes (JPEG files back to back), without copying."""
    ends = np.cumsum(sizes).tolist()
    return [data[end - size : end] for end, size in zip(ends, sizes)]


def split_frames(data: bytes, index_json: bytes, spec: PreparedVideo) -> list[memoryview]:
    """The JPEG of each prepared frame of one clip, checked against its index member."""
    try:
        index: Any = json.loads(index_json)
        sizes = [int(s) for s in index["sizes"]]
    except (ValueError, TypeError, KeyError) as err:
        raise MediaError(f"malformed prepared-frame index ({type(err).__name__})") from None
    if len(sizes) != spec.frames or min(sizes, default=0) < 4 or sum(sizes) != len(data):
        raise MediaError(f"prepared frames do not match their index ({len(sizes)} sizes, {sum(sizes)} of "
                         f"{len(data)} bytes; the manifest says {spec.frames} frames)")
    return _cut(memoryview(data), sizes)


def pick_frames(frames: list[memoryview], num_frames: int, jitter: bool, rng: np.random.Generator) -> PreparedClip:
    """``num_frames`` of a clip's prepared frames, one per equal segment (random within it when jittering)."""
    return PreparedClip(tuple(frames[i] for i in frame_indices(len(frames), num_frames, jitter, rng)))


def decode_into(clip: PreparedClip, out: np.ndarray) -> None:
    """Decode a clip's JPEGs into ``out`` (uint8 [T, H, W, 3], e.g. a view of a shared-memory batch):
    no intermediate copies. A JPEG that does not decode, or not at ``out``'s size, is a MediaError."""
    import simplejpeg

    for jpeg, frame in zip(clip.jpegs, out):
        try:
            decoded = simplejpeg.decode_jpeg(jpeg, colorspace="RGB", buffer=frame)
        except ValueError as err:
            raise MediaError(f"undecodable JPEG frame: {err}") from None
        if decoded.shape != frame.shape:  # a smaller image decodes into the buffer's first bytes
            raise MediaError(f"a prepared frame is {decoded.shape[1]}x{decoded.shape[0]}, not "
                             f"{frame.shape[1]}x{frame.shape[0]} as the manifest says")


def decode_on_device(jpeg_bytes: torch.Tensor, sizes: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """uint8 [B, T, 3, size, size] on ``device`` from a batch's JPEG bytes (``video_jpeg`` and
    ``video_jpeg_sizes``, see :mod:`emotrain.data.stream`); a clip whose sizes are 0 is all zeros.

    On CUDA the JPEGs are decoded there in one batched nvJPEG call (torchvision's ``decode_jpeg``):
    the workers then only move compressed bytes, a few percent of the frames'. Elsewhere they are decoded
    here with libjpeg-turbo, as the workers would have.
    """
    batch, frames = sizes.shape
    counts = sizes.flatten().tolist()
    jpegs = _cut(memoryview(jpeg_bytes.cpu().numpy()), counts)  # one per frame slot; empty where missing
    present = [all(counts[i * frames : (i + 1) * frames]) for i in range(batch)]
    if device.type == "cuda":
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            raise UserError("data.video.jpeg_decode=device on a CUDA device needs torchvision (pip install "
                            "'emotrain[gpu]', the torchvision build matching your torch), or set it to worker") from None
        wanted = [torch.frombuffer(j, dtype=torch.uint8) for j, n in zip(jpegs, counts) if n]
        out = torch.zeros(batch, frames, 3, size, size, dtype=torch.uint8, device=device)
        if wanted:
            decoded = torch.stack(decode_jpeg(wanted, mode=ImageReadMode.RGB, device=device))
            decoded = decoded.view(-1, frames, 3, size, size)
            out[torch.tensor(present, device=device)] = decoded
        return out
    pixels = np.zeros((batch, frames, size, size, 3), dtype=np.uint8)
    for i in range(batch):
        if present[i]:
            decode_into(PreparedClip(tuple(jpegs[i * frames : (i + 1) * frames])), pixels[i])
    return torch.from_numpy(pixels).permute(0, 1, 4, 2, 3).to(device)
