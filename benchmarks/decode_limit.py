"""The decode limit: how many clips/s one core can turn from bytes into model input.

The loader can never beat this, so loader throughput is read against it. In a tight loop over
the same in-memory bytes (no I/O, no tar, no tokenising), one thread, as in a loader worker:

- video: ``decode_video`` (the mp4 check, decord decoding 8 frames scaled while decoding,
  normalising) at 224 px and at ``--image-size``, plus ``check_mp4`` alone (the guard's cost)
  and, for comparison, decord with its default thread count;
- audio: ``load_wav_16k`` + ``crop`` on 16 kHz wavs (what the loader reads after packing)
  and on ``--source-rate`` wavs (what the packer reads, resampling once).

Clips come from ``--corpus DIR`` (every ``*.wav`` / ``*.mp4`` under it, e.g. an AvaMERG or
``emotrain synth`` folder) or are synthesised with AvaMERG's average length (5.67 s).
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
import soundfile
import torch

from emotrain.data.media import (
    VideoConfig,
    check_mp4,
    crop,
    decode_video,
    encode_wav_16k,
    load_wav_16k,
    read_wav,
)
from emotrain.data.schema import SAMPLE_RATE

Item = TypeVar("Item")


def synth_mp4(rng: np.random.Generator, seconds: float, fps: int, size: int, gop: int) -> bytes:
    """H.264 yuv420p, a keyframe every ``gop`` frames (0: libx264's default, 250), moving textured content."""
    frames = max(1, round(seconds * fps))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0, 255, 3)
    texture = rng.normal(0, 12, (size, size, 3)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.options = {"g": str(gop)}
        for i in range(frames):
            phase = 2 * np.pi * i / fps
            wave = 60 * np.sin(2 * np.pi * (xx + yy) * 3 + phase)[..., None]
            blob = 100 * np.exp(-(((xx - 0.5 - 0.2 * np.sin(phase)) ** 2 + (yy - 0.5) ** 2) / 0.02))[..., None]
            image = np.clip(base + wave + blob + texture, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def synth_wav(rng: np.random.Generator, seconds: float, rate: int) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + rng.normal(0, 0.02, len(t))
    buf = io.BytesIO()
    soundfile.write(buf, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def corpus_clips(folder: Path, limit: int) -> tuple[list[bytes], list[bytes]]:
    wavs = [p.read_bytes() for p in sorted(folder.rglob("*.wav"))[:limit]]
    mp4s = [p.read_bytes() for p in sorted(folder.rglob("*.mp4"))[:limit]]
    return wavs, mp4s


def rate(fn: Callable[[Item], object], clips: list[Item], min_seconds: float) -> tuple[float, int]:
    """Clips/s of ``fn`` over the clips, repeated until at least ``min_seconds`` have passed.

    Also used by ``loader_throughput.py`` for its decode limit (c).
    """
    fn(clips[0])  # warm-up: imports, first-call setup
    done, start = 0, time.perf_counter()
    while True:
        for data in clips:
            fn(data)
        done += len(clips)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed, done


def report(name: str, fn: Callable[[bytes], object], clips: list[bytes], min_seconds: float) -> None:
    per_s, n = rate(fn, clips, min_seconds)
    print(f"{name:<52} {per_s:9.1f} clips/s  {1000 / per_s:8.2f} ms/clip  ({n} clips)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="take *.wav and *.mp4 from this folder (default: synthesise)")
    parser.add_argument("--clips", type=int, default=8, help="clips of each kind (synthesised or taken)")
    parser.add_argument("--image-size", type=int, default=64, help="second decode size to time (besides 224)")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.67, help="synthetic clip length")
    parser.add_argument("--fps", type=int, default=25, help="synthetic video frame rate")
    parser.add_argument("--source-size", type=int, default=256, help="synthetic video width and height")
    parser.add_argument("--gop", type=int, default=0, help="synthetic keyframe interval (0: libx264 default)")
    parser.add_argument("--source-rate", type=int, default=44_100, help="synthetic source wav sample rate")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time each measurement at least this long")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a loader worker

    rng = np.random.default_rng(0)
    if args.corpus is not None:
        source_wavs, mp4s = corpus_clips(args.corpus, args.clips)
        if not source_wavs or not mp4s:
            parser.error(f"{args.corpus} holds no .wav or no .mp4 files")
        origin = f"{len(source_wavs)} wav + {len(mp4s)} mp4 from {args.corpus}"
    else:
        source_wavs = [synth_wav(rng, args.seconds, args.source_rate) for _ in range(args.clips)]
        mp4s = [synth_mp4(rng, args.seconds, args.fps, args.source_size, args.gop) for _ in range(args.clips)]
        origin = (f"{args.clips} synthetic clips of {args.seconds} s: wav at {args.source_rate} Hz, "
                  f"mp4 {args.source_size}x{args.source_size} at {args.fps} fps, gop {args.gop or 'default'}")
    packed_wavs = [encode_wav_16k(load_wav_16k(w)) for w in source_wavs]
    print(origin)
    print(f"mean sizes: mp4 {np.mean([len(m) for m in mp4s]) / 1024:.0f} KiB, "
          f"source wav {np.mean([len(w) for w in source_wavs]) / 1024:.0f} KiB "
          f"({read_wav(source_wavs[0])[1]} Hz), packed wav {np.mean([len(w) for w in packed_wavs]) / 1024:.0f} KiB")
    print(f"one thread; torch {torch.__version__}; at least {args.min_seconds:.0f} s per line")

    max_samples = 6 * SAMPLE_RATE
    crop_rng = np.random.default_rng(1)
    frame_rng = np.random.default_rng(2)
    report("audio: load_wav_16k + crop (16 kHz, as packed)",
           lambda d: crop(load_wav_16k(d), max_samples, True, crop_rng), packed_wavs, args.min_seconds)
    report("audio: load_wav_16k + crop (source rate, resampling)",
           lambda d: crop(load_wav_16k(d), max_samples, True, crop_rng), source_wavs, args.min_seconds)
    report("video: check_mp4 only (the crash guard)", check_mp4, mp4s, args.min_seconds)
    for size in dict.fromkeys([224, args.image_size]):
        cfg = VideoConfig(num_frames=args.num_frames, image_size=size, jitter=True)
        report(f"video: decode_video {args.num_frames} frames at {size}, 1 thread",
               lambda d, c=cfg: decode_video(d, c, True, frame_rng), mp4s, args.min_seconds)
    auto = VideoConfig(num_frames=args.num_frames, image_size=224, jitter=True, decode_threads=0)
    report(f"video: decode_video {args.num_frames} frames at 224, decord auto threads",
           lambda d: decode_video(d, auto, True, frame_rng), mp4s, args.min_seconds)


if __name__ == "__main__":
    main()
