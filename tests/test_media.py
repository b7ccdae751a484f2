import io
import struct
import subprocess
import sys
import textwrap

import av
import numpy as np
import pytest
import soundfile
import torch

from emotrain.config import ConfigError, from_dict
from emotrain.data.media import (
    AudioConfig,
    MediaError,
    VideoConfig,
    check_mp4,
    crop,
    decode_audio,
    decode_video,
    encode_wav_16k,
    load_wav_16k,
    probe_mp4,
    probe_wav,
    read_wav,
)
from emotrain.data.schema import SAMPLE_RATE

# --- helpers -------------------------------------------------------------------------------------


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def mp4_bytes(frames: np.ndarray, fps: int = 8) -> bytes:
    """H.264 yuv420p mp4 of uint8 RGB frames [T, H, W, 3], near-lossless so colours can be checked."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "1", "preset": "veryfast"}
        stream.codec_context.thread_count = 1
        for pts, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = pts
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return buf.getvalue()


def grey_clip(n: int, size: int = 32) -> tuple[bytes, np.ndarray]:
    """Frame i is a flat grey whose level identifies i."""
    levels = 12 + 15 * np.arange(n)
    frames = np.repeat(levels.astype(np.uint8)[:, None, None, None], size, 1).repeat(size, 2).repeat(3, 3)
    return mp4_bytes(frames), levels


def decoded_levels(video: torch.Tensor) -> np.ndarray:
    """Per-frame mean level (0-255) of the first channel."""
    return video[:, 0].float().mean(dim=(1, 2)).numpy()


def frame_of(levels: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    return np.abs(decoded[:, None] - levels[None, :]).argmin(axis=1)


@pytest.fixture(scope="module")
def clip16():
    return grey_clip(16)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- audio ---------------------------------------------------------------------------------------


def test_16k_wav_round_trips_unchanged():
    wave = sine(440, 1.0, SAMPLE_RATE)
    out = load_wav_16k(wav_bytes(wave, SAMPLE_RATE))
    assert out.dtype == np.float32 and out.shape == wave.shape
    assert np.abs(out - wave).max() < 1e-3


@pytest.mark.parametrize("rate", [44_100, 22_050, 8_000])
def test_other_rates_are_resampled_keeping_length_and_pitch(rate):
    out = load_wav_16k(wav_bytes(sine(440, 1.0, rate), rate))
    assert abs(len(out) - SAMPLE_RATE) <= 1
    assert abs(peak_hz(out, SAMPLE_RATE) - 440) <= 1.0
    assert 0.4 < np.abs(out).max() < 0.6


def test_stereo_is_downmixed_to_the_channel_mean():
    left, right = sine(300, 0.5, SAMPLE_RATE, 0.6), sine(700, 0.5, SAMPLE_RATE, 0.2)
    out = load_wav_16k(wav_bytes(np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT"))
    assert out.ndim == 1
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)


def test_encode_wav_16k_is_pcm16_and_clips_instead_of_wrapping():
    wave = np.array([0.0, 0.5, -0.5, 1.5, -1.5], dtype=np.float32)
    data = encode_wav_16k(wave)
    info = soundfile.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    samples, rate = read_wav(data)
    assert rate == SAMPLE_RATE
    np.testing.assert_allclose(samples, [0.0, 0.5, -0.5, 1.0, -1.0], atol=1e-4)


def test_eval_crop_is_the_centre_and_deterministic():
    n, keep = 5 * SAMPLE_RATE, 2 * SAMPLE_RATE
    samples = np.arange(n, dtype=np.float32)
    out_a = crop(samples, keep, train=False, rng=rng(1))
    out_b = crop(samples, keep, train=False, rng=rng(2))
    start = (n - keep) // 2
    assert len(out_a) == keep and out_a[0] == start and out_a[-1] == start + keep - 1
    assert np.array_equal(out_a, out_b)


def test_train_crop_varies_with_the_rng_and_stays_inside():
    n, keep = 3 * SAMPLE_RATE, SAMPLE_RATE
    samples = np.arange(n, dtype=np.float32)
    gen = rng(0)
    starts = set()
    for _ in range(20):
        out = crop(samples, keep, train=True, rng=gen)
        assert len(out) == keep and np.array_equal(np.diff(out), np.ones(keep - 1))
        assert 0 <= out[0] <= n - keep
        starts.add(int(out[0]))
    assert len(starts) > 10


@pytest.mark.parametrize("train", [False, True])
def test_short_clips_come_back_whole_and_unpadded(train):
    samples = np.full(100, 0.25, dtype=np.float64)
    out = crop(samples, 160, train=train, rng=rng())
    assert out.dtype == np.float32 and out.shape == (100,) and np.all(out == 0.25)


def test_decode_audio_augments_only_in_training():
    data = wav_bytes(sine(440, 1.0, SAMPLE_RATE), SAMPLE_RATE)
    cfg = AudioConfig(max_seconds=1.5, augment=True)
    plain = decode_audio(data, cfg, train=False, rng=rng())
    aug = decode_audio(data, cfg, train=True, rng=rng())
    assert plain.shape == aug.shape == (SAMPLE_RATE,)  # a 1 s clip under a 1.5 s limit: whole, unpadded
    assert not np.allclose(aug, plain)
    assert abs(peak_hz(aug, SAMPLE_RATE) - 440) <= 1.0  # the content survives
    same = decode_audio(data, AudioConfig(max_seconds=1.5), train=True, rng=rng())
    assert np.array_equal(same, plain)


def _truncated_wav() -> bytes:
    data = wav_bytes(sine(440, 1.0, SAMPLE_RATE), SAMPLE_RATE)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "zero-byte"),
        (bytes(range(256)) * 8, "unreadable"),
        (_truncated_wav(), "truncated"),
        (wav_bytes(np.zeros(0, dtype=np.float32), SAMPLE_RATE), "no samples"),
        (wav_bytes(np.array([0.1, np.nan], dtype=np.float32), SAMPLE_RATE, subtype="FLOAT"), "non-finite"),
        # A header damaged to 22089 Hz: resampling it would allocate gigabytes of kernel.
        (wav_bytes(sine(440, 0.1, 22_089), 22_089), "implausible sample rate"),
    ],
    ids=["zero-byte", "garbage", "truncated", "empty", "nan", "odd-rate"],
)
def test_bad_wavs_raise_media_error_with_a_reason(data, reason):
    with pytest.raises(MediaError, match=reason):
        load_wav_16k(data)
    ok, why = probe_wav(data)
    assert not ok and reason in why


def test_probe_wav_accepts_a_good_wav():
    assert probe_wav(wav_bytes(sine(440, 0.2, 22_050), 22_050)) == (True, "")


def test_audio_config_is_validated():
    with pytest.raises(ConfigError, match="max_seconds"):
        from_dict(AudioConfig, {"max_seconds": 0})
    assert from_dict(AudioConfig, {"max_seconds": 2.5}).max_samples == 40_000


# --- video ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "size", "expected"), [
    (32, 32, 224, (32, 32)),  # smaller clips keep their size: the model scales them up
    (32, 64, 224, (32, 64)),
    (32, 48, 224, (224, 224)),  # decord cannot give 48 px wide frames as they are; scaled, it can
    (32, 32, 32, (32, 32)),
    (64, 64, 32, (32, 32)),  # larger clips are scaled down to image_size square
    (32, 64, 48, (48, 48)),
])
def test_decode_video_never_upsamples_and_scales_larger_clips_down_to_a_square(height, width, size, expected):
    frames = np.zeros((6, height, width, 3), dtype=np.uint8)
    frames[:, : height // 2] = 200  # top half bright
    video = decode_video(mp4_bytes(frames), VideoConfig(num_frames=4, image_size=size), train=False, rng=rng())
    assert video.shape == (4, 3, *expected) and video.dtype == torch.uint8
    rows = video[0, 0].float().mean(dim=1)
    assert rows[: expected[0] // 2 - 2].min() > 150 and rows[expected[0] // 2 + 2 :].max() < 50


def test_known_colour_decodes_to_its_rgb_value():
    colour = np.array([200, 100, 50], dtype=np.uint8)
    cfg = VideoConfig(num_frames=4, image_size=32)
    video = decode_video(mp4_bytes(np.tile(colour, (6, 32, 32, 1))), cfg, train=False, rng=rng())
    per_channel = video.float().mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(per_channel, colour, atol=6)  # h264's colour subsampling and rounding


def test_eval_frames_are_uniform_segment_centres(clip16):
    data, levels = clip16
    cfg = VideoConfig(num_frames=8, image_size=32, jitter=True)  # jitter is for training only
    first = decode_video(data, cfg, train=False, rng=rng(1))
    second = decode_video(data, cfg, train=False, rng=rng(2))
    assert torch.equal(first, second)
    assert frame_of(levels, decoded_levels(first)).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]


def test_train_jitter_picks_a_random_frame_in_each_segment(clip16):
    data, levels = clip16
    cfg = VideoConfig(num_frames=8, image_size=32, jitter=True)
    gen = rng(0)
    seen = set()
    for _ in range(6):
        idx = frame_of(levels, decoded_levels(decode_video(data, cfg, train=True, rng=gen)))
        assert np.array_equal(idx // 2, np.arange(8))  # one frame from each pair (segment)
        seen.add(tuple(idx))
    assert len(seen) > 1
    no_jitter = VideoConfig(num_frames=8, image_size=32)
    idx = frame_of(levels, decoded_levels(decode_video(data, no_jitter, train=True, rng=gen)))
    assert idx.tolist() == [1, 3, 5, 7, 9, 11, 13, 15]


def test_a_short_clip_repeats_frames_in_order():
    data, levels = grey_clip(3)
    cfg = VideoConfig(num_frames=8, image_size=32)
    video = decode_video(data, cfg, train=False, rng=rng())
    assert video.shape == (8, 3, 32, 32)
    assert frame_of(levels, decoded_levels(video)).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


def _box_payload(data: bytes, kind: bytes) -> int:
    """Offset of the first ``kind`` box's payload (a plain byte search is enough for our clips)."""
    return data.index(kind) + 4


# Each of these three made decord 0.6 itself crash the process (checked by hand: SIGSEGV,
# SIGSEGV, SIGABRT) before check_mp4 guarded it.


def _with_bad_sample_size(data: bytes) -> bytes:
    """stsz entry 2 claims 16 MiB."""
    out = bytearray(data)
    struct.pack_into(">I", out, _box_payload(data, b"stsz") + 12 + 4 * 2, 0x00FFFFFF)
    return bytes(out)


def _with_bad_chunk_offset(data: bytes) -> bytes:
    """The first chunk starts 16 MiB into the file."""
    out = bytearray(data)
    struct.pack_into(">I", out, _box_payload(data, b"stco") + 8, 0x00FFFFFF)
    return bytes(out)


def _with_bad_sample_count(data: bytes) -> bytes:
    """stts claims 2**31 - 1 samples."""
    out = bytearray(data)
    struct.pack_into(">I", out, _box_payload(data, b"stts") + 8, 0x7FFFFFFF)
    return bytes(out)


BAD_VIDEOS = {
    "zero-byte": lambda good: (b"", "zero-byte"),
    "garbage": lambda good: (bytes(range(256)) * 8, "no ftyp"),
    "wav": lambda good: (wav_bytes(sine(440, 0.2, SAMPLE_RATE), SAMPLE_RATE), "no ftyp"),
    "header-only": lambda good: (good[:40], "truncated"),
    "truncated-half": lambda good: (good[: len(good) // 2], "truncated"),
    "truncated-tail": lambda good: (good[:-3], "truncated"),
    "ftyp-then-garbage": lambda good: (good[:32] + bytes(range(256)) * 8, "mp4"),
}
CRASHERS = [_with_bad_sample_size, _with_bad_chunk_offset, _with_bad_sample_count]


@pytest.mark.parametrize("name", sorted(BAD_VIDEOS))
def test_bad_videos_raise_media_error_with_a_reason(clip16, name):
    data, reason = BAD_VIDEOS[name](clip16[0])
    with pytest.raises(MediaError, match=reason):
        decode_video(data, VideoConfig(image_size=32), train=False, rng=rng())
    ok, why = probe_mp4(data)
    assert not ok and reason in why


@pytest.mark.parametrize("damage", CRASHERS)
def test_check_mp4_rejects_damaged_sample_tables(clip16, damage):
    """Checked without decord: if check_mp4 let these through, decord would kill pytest."""
    with pytest.raises(MediaError, match="corrupt mp4"):
        check_mp4(damage(clip16[0]))


def _layout_mp4(path, container_options: dict[str, str]) -> bytes:
    """16 frames of H.264 with B-frames plus an AAC track, written to a file (faststart needs one)."""
    with av.open(str(path), mode="w", format="mp4", options=container_options) as container:
        video = container.add_stream("libx264", rate=8)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        for pts in range(16):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 12 * pts, np.uint8), format="rgb24")
            frame.pts = pts
            container.mux(video.encode(frame))
        container.mux(video.encode())
        sound = av.AudioFrame.from_ndarray(sine(440, 2.0, SAMPLE_RATE)[None], format="fltp", layout="mono")
        sound.sample_rate, sound.pts = SAMPLE_RATE, 0
        container.mux(audio.encode(sound))
        container.mux(audio.encode())
    return path.read_bytes()


@pytest.mark.parametrize(
    "options",
    [{}, {"movflags": "faststart"}, {"movflags": "frag_keyframe+empty_moov"}],
    ids=["mdat-first", "moov-first", "fragmented"],
)
def test_common_valid_layouts_pass_the_check_and_decode(tmp_path, options):
    data = _layout_mp4(tmp_path / "clip.mp4", options)
    check_mp4(data)
    assert probe_mp4(data) == (True, "")
    assert decode_video(data, VideoConfig(image_size=32), train=False, rng=rng()).shape == (8, 3, 32, 32)


def test_probe_and_check_accept_a_good_clip(clip16):
    check_mp4(clip16[0])
    assert probe_mp4(clip16[0]) == (True, "")


def test_damaged_clips_never_crash_the_process(clip16, tmp_path):
    """In a child process, since a decord crash would take pytest down with it.

    Covers the damage that crashed unguarded decord (sample tables), then seeded random byte
    damage anywhere: each clip must decode or raise MediaError, and the child must exit cleanly.
    """
    good = clip16[0]
    variants = [damage(good) for damage in CRASHERS]
    gen = rng(7)
    for _ in range(40):
        damaged = bytearray(good)
        for pos in gen.integers(8, len(good), size=gen.integers(1, 4)):
            damaged[pos] = gen.integers(0, 256)
        variants.append(bytes(damaged))
    for i, data in enumerate(variants):
        (tmp_path / f"{i:03d}.mp4").write_bytes(data)
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import numpy as np
        from emotrain.data.media import MediaError, VideoConfig, decode_video
        outcomes = []
        for path in sorted(Path(sys.argv[1]).glob("*.mp4")):
            try:
                decode_video(path.read_bytes(), VideoConfig(image_size=32), False, np.random.default_rng(0))
                outcomes.append("decoded")
            except MediaError:
                outcomes.append("MediaError")
        print(",".join(outcomes))
        """
    )
    child = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=300)
    assert child.returncode == 0, child.stderr.decode(errors="replace")[-2000:]
    outcomes = child.stdout.decode().strip().split(",")
    assert len(outcomes) == len(variants)
    assert outcomes[: len(CRASHERS)] == ["MediaError"] * len(CRASHERS)


def test_video_config_is_validated():
    with pytest.raises(ConfigError, match="mean"):
        from_dict(VideoConfig, {"mean": [0.5, 0.5]})
    with pytest.raises(ConfigError, match="num_frames"):
        from_dict(VideoConfig, {"num_frames": 0})
