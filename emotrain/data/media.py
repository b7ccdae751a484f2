"""Audio and video clips from raw bytes: decode, resample, crop, sample frames, normalise.

Why this module exists: webdataset's built-in media decoders are gone (``torchaudio.load``
needs torchcodec, ``torchvision.io.read_video`` was removed), so wav is read with soundfile and
mp4 with decord, both straight from the bytes a shard holds. Every failure to decode, whatever
the library raises, comes out as one :class:`MediaError` with a short reason, so the packer
can record the clip as skipped and the loader can count it and carry on.

Some damaged inputs take the process down instead of raising, so they are caught first:

- decord (C++ over ffmpeg) crashed (SIGSEGV, SIGABRT) on 9 of 600 randomly damaged copies of a
  small mp4, always through damaged sample tables (``stsz``, ``stco``, ``stts``); damage to the
  compressed frames only ever raised. :func:`check_mp4` walks the box tree and checks that
  every sample of every track lies inside the file before decord sees the bytes (0 crashes on
  1,600 damaged copies). Truncated, zero-byte and non-mp4 bytes fail that check too.
- A wav header damaged to an odd sample rate (say 22089 Hz) makes torchaudio's resampler
  allocate gigabytes (its kernel has ``rate / gcd(rate, 16000)`` phases): such rates are refused.
- libsndfile reads a truncated wav as a shorter one without complaint: the RIFF data size is
  compared with the bytes present.
"""

from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
import soundfile
import torch

from emotrain.data.schema import SAMPLE_RATE


class MediaError(ValueError):
    """A clip's bytes cannot be decoded; the message is a short reason (for skip records)."""


# --- configs -------------------------------------------------------------------------------------


@dataclass
class AudioConfig:
    """How a wav becomes a fixed-length 16 kHz waveform; ``augment`` applies in training only."""

    max_seconds: float = 6.0
    augment: bool = False
    gain_db: float = 6.0  # training gain drawn uniformly from [-gain_db, +gain_db]
    noise_snr_db: tuple[float, float] = (20.0, 40.0)  # additive white noise, SNR drawn in this range

    def validate(self) -> None:
        if not self.max_seconds > 0:
            raise ValueError("max_seconds must be > 0")
        if self.gain_db < 0:
            raise ValueError("gain_db must be >= 0")
        low, high = self.noise_snr_db
        if not low <= high:
            raise ValueError("noise_snr_db must be [low, high] with low <= high")

    @property
    def max_samples(self) -> int:
        return int(round(self.max_seconds * SAMPLE_RATE))


@dataclass
class VideoConfig:
    """Which frames of a clip the video model sees, at what size (the model normalises them)."""

    num_frames: int = 8
    image_size: int = 224
    jitter: bool = False  # training: a random frame within each of the num_frames segments
    decode_threads: int = 1  # decord threads per clip; loader workers already run in parallel
    # Prepared shards only (pack --prepare-video): where their JPEG frames are decoded. "device": on
    # the model's device (nvJPEG on CUDA), so the workers only move compressed bytes.
    jpeg_decode: Literal["worker", "device"] = "worker"

    def validate(self) -> None:
        if self.num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        if self.image_size < 2:
            raise ValueError("image_size must be >= 2")
        if self.decode_threads < 0:
            raise ValueError("decode_threads must be >= 0 (0 = decord's default)")


# --- audio ---------------------------------------------------------------------------------------


def _wav_truncation(data: bytes) -> str | None:
    """Why a RIFF/WAVE file is shorter than its header says, or None.

    A data size of 0 or 0xFFFFFFFF means "unknown" (streamed wavs) and is not checked.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk == b"data":
            available = len(data) - pos - 8
            if size not in (0, 0xFFFFFFFF) and size > available:
                return f"truncated wav ({available} of {size} data bytes)"
            return None
        pos += 8 + size + (size & 1)
    return "truncated wav (no data chunk)"


def _implausible_rate(rate: int) -> bool:
    """Whether a sample rate is out of range or too odd to resample (a corrupt header, in practice).

    Phases of torchaudio's resampling kernel: 441 for 44.1 kHz, 22,089 for 22089 Hz. Every
    common rate (8 k, 11.025 k, 22.05 k, 24 k, 32 k, 44.1 k, 48 k, 88.2 k, 96 k, 192 k) needs
    at most 441.
    """
    return not 1_000 <= rate <= 384_000 or rate // math.gcd(rate, SAMPLE_RATE) > 1_000


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the sample rate of a wav (or any libsndfile format) in bytes."""
    if not data:
        raise MediaError("zero-byte audio")
    reason = _wav_truncation(data)
    if reason:
        raise MediaError(reason)
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, ValueError) as err:
        raise MediaError(f"unreadable audio: {str(err).split(': ', 1)[-1]}") from None
    if _implausible_rate(rate):
        raise MediaError(f"implausible sample rate {rate} Hz (corrupt header?)")
    if samples.shape[0] == 0:
        raise MediaError("audio has no samples")
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if not np.isfinite(mono).all():
        raise MediaError("audio has non-finite samples")
    return np.ascontiguousarray(mono), int(rate)


def resample_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Band-limited resampling to 16 kHz (torchaudio's windowed sinc); a no-op at 16 kHz."""
    if rate == SAMPLE_RATE:
        return samples
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(samples), orig_freq=rate, new_freq=SAMPLE_RATE)
    return out.numpy().astype(np.float32, copy=False)


def load_wav_16k(data: bytes) -> np.ndarray:
    """Mono 16 kHz float32 samples from wav bytes at any rate and channel count."""
    samples, rate = read_wav(data)
    return resample_16k(samples, rate)


def encode_wav_16k(samples: np.ndarray) -> bytes:
    """PCM16 wav bytes of 16 kHz mono samples (clipped to [-1, 1]: libsndfile would wrap)."""
    buf = io.BytesIO()
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    soundfile.write(buf, clipped, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def probe_wav(data: bytes) -> tuple[bool, str]:
    """Whether wav bytes decode in full, and why not (for the packer's skip records)."""
    try:
        read_wav(data)
    except MediaError as err:
        return False, str(err)
    return True, ""


def crop(samples: np.ndarray, max_samples: int, train: bool, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_samples`` of the clip: a random window in training, the centre one in evaluation.

    The seed project only ever heard each clip's first second. Shorter clips come back whole;
    padding is the collator's job (to the longest clip of the batch, not to ``max_samples``).
    """
    n = len(samples)
    if n <= max_samples:
        return np.ascontiguousarray(samples, dtype=np.float32)
    start = int(rng.integers(0, n - max_samples + 1)) if train else (n - max_samples) // 2
    return np.ascontiguousarray(samples[start : start + max_samples], dtype=np.float32)


def augment_audio(samples: np.ndarray, cfg: AudioConfig, rng: np.random.Generator) -> np.ndarray:
    """Random gain, then white noise at a random SNR (torchaudio), drawn from ``rng``."""
    import torchaudio.functional as AF

    if len(samples) == 0:
        return samples
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None]
    wave = AF.gain(wave, float(rng.uniform(-cfg.gain_db, cfg.gain_db)))
    noise = torch.from_numpy(rng.standard_normal(wave.shape[-1]).astype(np.float32))[None]
    snr = torch.tensor([rng.uniform(*cfg.noise_snr_db)], dtype=torch.float32)
    if float(wave.square().sum()) > 0:
        wave = AF.add_noise(wave, noise, snr)
    return np.clip(wave[0].numpy(), -1.0, 1.0)


def decode_audio(data: bytes, cfg: AudioConfig, train: bool, rng: np.random.Generator) -> np.ndarray:
    """What the loader wants per wav: at most ``max_seconds`` of 16 kHz audio, augmented in training."""
    clip = crop(load_wav_16k(data), cfg.max_samples, train, rng)
    if train and cfg.augment:
        clip = augment_audio(clip, cfg, rng)
    return clip


# --- mp4 structure -------------------------------------------------------------------------------

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"mvex"}
_TABLES = (b"stsz", b"stco", b"co64", b"stsc", b"stts", b"ctts", b"stss", b"hdlr")


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in ``data[start:end]``."""
    boxes = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise MediaError(f"truncated mp4 ({kind.decode('latin-1')!r} box header)")
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header:
            raise MediaError(f"corrupt mp4 (box {kind!r} of size {size})")
        if pos + size > end:
            what = "truncated" if end == len(data) else "corrupt"
            raise MediaError(f"{what} mp4 ({kind.decode('latin-1')!r} box runs past its parent)")
        boxes.append((kind, pos + header, pos + size))
        pos += size
    return boxes


def _find(data: bytes, start: int, end: int, found: dict[bytes, list[tuple[int, int]]]) -> None:
    for kind, lo, hi in _boxes(data, start, end):
        if kind in _CONTAINERS:
            _find(data, lo, hi, found)
        elif kind in _TABLES:
            found.setdefault(kind, []).append((lo, hi))


def _table(data: bytes, box: tuple[int, int], fields: int, width: int = 4, skip: int = 0) -> np.ndarray:
    """Entries of a full box table: version/flags, ``skip`` bytes, a count, ``count x fields`` ints."""
    lo, hi = box
    if hi - lo < 8 + skip:
        raise MediaError("corrupt mp4 (short sample table)")
    (count,) = struct.unpack_from(">I", data, lo + 4 + skip)
    body = lo + 8 + skip
    if hi - body != count * fields * width:
        raise MediaError("corrupt mp4 (sample table size does not match its entry count)")
    dtype = ">u8" if width == 8 else ">u4"
    return np.frombuffer(data, dtype=dtype, count=count * fields, offset=body).astype(np.int64).reshape(count, fields)


def _sample_sizes(data: bytes, box: tuple[int, int]) -> np.ndarray:
    """Byte size of every sample (``stsz``: one size for all, or a table)."""
    lo, hi = box
    if hi - lo < 12:
        raise MediaError("corrupt mp4 (short stsz)")
    uniform, count = struct.unpack_from(">II", data, lo + 4)
    if not uniform:
        return _table(data, box, 1, skip=4)[:, 0]
    if uniform * count > len(data):
        raise MediaError("corrupt mp4 (stsz sizes exceed the file)")
    return np.full(count, uniform, dtype=np.int64)


def _sample_starts(sizes: np.ndarray, chunk_offsets: np.ndarray, stsc: np.ndarray) -> np.ndarray:
    """File offset of every sample: its chunk's offset plus the sizes of the samples before it in the chunk."""
    count, chunks = len(sizes), len(chunk_offsets)
    first = stsc[:, 0]  # 1-based first chunk of each run of chunks with the same samples-per-chunk
    if len(first) == 0 or first[0] != 1 or np.any(np.diff(first) <= 0) or first[-1] > chunks or np.any(stsc[:, 1] < 1):
        raise MediaError("corrupt mp4 (stsc)")
    per_chunk = np.repeat(stsc[:, 1], np.diff(np.append(first, chunks + 1)))
    through = np.cumsum(per_chunk)  # samples in chunks 0..c
    if through[-1] < count:
        raise MediaError("corrupt mp4 (chunks hold fewer samples than stsz lists)")
    chunk_of = np.searchsorted(through, np.arange(count), side="right")
    before = np.cumsum(sizes) - sizes  # bytes of all samples before each sample
    return chunk_offsets[chunk_of] + before - before[(through - per_chunk)[chunk_of]]


def _check_track(data: bytes, tables: dict[bytes, list[tuple[int, int]]], mdat_ranges: list[tuple[int, int]]) -> bool:
    """Validate one track's sample tables; True when it is a video track with samples."""
    if not {b"stsz", b"stsc", b"stts"} <= tables.keys() or not {b"stco", b"co64"} & tables.keys():
        raise MediaError("corrupt mp4 (track without sample tables)")
    sizes = _sample_sizes(data, tables[b"stsz"][0])
    if b"stco" in tables:
        offsets = _table(data, tables[b"stco"][0], 1)[:, 0]
    else:
        offsets = _table(data, tables[b"co64"][0], 1, width=8)[:, 0]
    stsc = _table(data, tables[b"stsc"][0], 3)
    count = len(sizes)
    if int(_table(data, tables[b"stts"][0], 2)[:, 0].sum()) != count:
        raise MediaError("corrupt mp4 (stts does not cover the samples)")
    if b"ctts" in tables and int(_table(data, tables[b"ctts"][0], 2)[:, 0].sum()) > count:
        raise MediaError("corrupt mp4 (ctts covers more than the samples)")
    if b"stss" in tables:
        sync = _table(data, tables[b"stss"][0], 1)[:, 0]
        if len(sync) and (sync.min() < 1 or sync.max() > count):
            raise MediaError("corrupt mp4 (sync sample out of range)")
    if count == 0:
        return False
    starts = _sample_starts(sizes, offsets, stsc)
    inside = np.zeros(count, dtype=bool)
    for lo, hi in mdat_ranges:
        inside |= (starts >= lo) & (starts + sizes <= hi)
    if not inside.all():
        raise MediaError("corrupt mp4 (samples outside the media data)")
    if b"hdlr" not in tables:
        return False
    handler = tables[b"hdlr"][0][0] + 8  # after version/flags and pre_defined
    return data[handler : handler + 4] == b"vide"


def check_mp4(data: bytes) -> None:
    """Raise :class:`MediaError` unless ``data`` is a whole, well-formed mp4 with a video track.

    Cheap (no decoding): it parses the box tree and the sample tables only, so that decord is
    never handed the inputs that crash it. Fragmented mp4s (``moof``) get the box checks only.
    """
    if not data:
        raise MediaError("zero-byte video")
    if len(data) < 8 or data[4:8] != b"ftyp":
        raise MediaError("not an mp4 (no ftyp box)")
    top = _boxes(data, 0, len(data))
    kinds = [kind for kind, _, _ in top]
    if b"moov" not in kinds:
        raise MediaError("truncated or corrupt mp4 (no moov box)")
    if b"moof" in kinds:
        return
    mdat_ranges = [(lo, hi) for kind, lo, hi in top if kind == b"mdat"]
    moov_lo, moov_hi = next((lo, hi) for kind, lo, hi in top if kind == b"moov")
    video = False
    for kind, lo, hi in _boxes(data, moov_lo, moov_hi):
        if kind == b"trak":
            tables: dict[bytes, list[tuple[int, int]]] = {}
            _find(data, lo, hi, tables)
            video |= _check_track(data, tables, mdat_ranges)
    if not video:
        raise MediaError("mp4 has no video frames")


# --- video ---------------------------------------------------------------------------------------


def frame_indices(num_available: int, num_frames: int, jitter: bool, rng: np.random.Generator) -> np.ndarray:
    """``num_frames`` indices into a clip, one per equal segment, oldest first.

    Without jitter each index is its segment's centre (uniform, deterministic); with jitter a
    uniformly random frame of each segment (TSN-style). A clip shorter than ``num_frames``
    repeats frames in order.
    """
    offsets = rng.random(num_frames) if jitter else np.full(num_frames, 0.5)
    idx = np.floor((np.arange(num_frames) + offsets) * num_available / num_frames).astype(np.int64)
    return np.clip(idx, 0, num_available - 1)


def decode_video(data: bytes, cfg: VideoConfig, train: bool, rng: np.random.Generator) -> torch.Tensor:
    """uint8 RGB frames [num_frames, 3, H, W] of an mp4 in bytes, H and W at most ``image_size``.

    decord decodes the clip at its own size up to the last chosen frame (every frame from the
    keyframe before it: the h264 decoding, not the scaling, is what costs). Clips larger than
    ``image_size`` are scaled down after picking (8 resizes, not one per decoded frame), to a
    square: aspect ratio is not kept, talking-face clips are close to square and the video
    encoders take square input. Smaller clips keep their size, and the model scales them up on
    its device: upsampled frames would carry no more information, only more bytes through the
    worker queues. Frames stay uint8 for the same reason; the model normalises them
    (``TimesformerFrames``). The result is a channels-first view of decord's channels-last
    frames, not a copy: the collate's stack into shared memory makes the one copy.
    """
    frames, _, _ = read_frames(data, cfg.num_frames, train and cfg.jitter, rng, cfg.decode_threads, cfg.image_size)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)
    if max(video.shape[-2:]) > cfg.image_size:
        video = resize_frames(video, cfg.image_size)
    return video


def read_frames(data: bytes, num_frames: int, jitter: bool, rng: np.random.Generator, threads: int = 1,
                fallback_size: int = 224) -> tuple[np.ndarray, np.ndarray, int]:
    """uint8 [num_frames, H, W, 3] frames of an mp4 at its own size, chosen by :func:`frame_indices`;
    their indices and the clip's frame count. Any failure is a :class:`MediaError`.

    decord cannot copy out frames of a few widths (48 px for one) at their own size, though it can
    scale them: such a clip comes at ``fallback_size`` square.
    """
    import decord

    check_mp4(data)
    try:
        try:
            return _pick_frames(data, threads, None, num_frames, jitter, rng)
        except decord.DECORDError:
            return _pick_frames(data, threads, fallback_size, num_frames, jitter, rng)
    except (decord.DECORDError, RuntimeError, IndexError) as err:
        raise MediaError(f"undecodable video: {_first_line(err)}") from None


def _pick_frames(data: bytes, threads: int, size: int | None, num_frames: int, jitter: bool,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """uint8 [num_frames, H, W, 3] frames chosen by :func:`frame_indices`, at the clip's size or
    ``size`` square; the indices and the frame count."""
    import decord

    scale = {} if size is None else {"width": size, "height": size}
    reader = decord.VideoReader(io.BytesIO(data), num_threads=threads, **scale)
    if len(reader) < 1:
        raise MediaError("video has no frames")
    wanted = frame_indices(len(reader), num_frames, jitter, rng)
    unique, order = np.unique(wanted, return_inverse=True)
    frames = reader.get_batch(unique.tolist()).asnumpy()
    # a short clip repeats frames
    return (frames if len(unique) == len(wanted) else frames[order]), wanted, len(reader)


def resize_frames(video: torch.Tensor, size: int) -> torch.Tensor:
    """Frames [..., 3, H, W] (uint8 in the loader, float in the model) -> [..., 3, size, size],
    bilinear, antialiased when shrinking."""
    lead = video.shape[:-3]
    flat = video.reshape(-1, *video.shape[-3:])
    out = torch.nn.functional.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=max(video.shape[-2:]) > size)
    return out.reshape(*lead, *out.shape[-3:])


def probe_mp4(data: bytes) -> tuple[bool, str]:
    """Whether mp4 bytes are well formed and their first frame decodes, and why not."""
    import decord

    try:
        check_mp4(data)
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        if len(reader) < 1:
            raise MediaError("video has no frames")
        reader[0].asnumpy()
    except MediaError as err:
        return False, str(err)
    except (decord.DECORDError, RuntimeError, IndexError) as err:
        return False, f"undecodable video: {_first_line(err)}"
    return True, ""


def _first_line(err: Exception) -> str:
    """decord's messages carry a timestamp, a source location and a C++ stack trace: keep the gist."""
    lines = str(err).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", lines[0]) if lines else type(err).__name__
    return text[:160]
