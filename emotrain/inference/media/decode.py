"""A recording's audio and video, cut into utterance spans in one forward pass each (PyAV).

Why this shape: an hour-long file must not sit in memory, and every span must be decoded exactly
once. So each stream is read front to back once and each utterance's share is handed on as soon
as the stream has passed its end:

- audio: every decoded frame is converted to float, downmixed to mono (the channel mean, as
  :func:`emotrain.data.media.read_wav` downmixes a wav) and its samples go to the span they fall in;
  a finished span is resampled to 16 kHz with the loader's resampler (:func:`resample_16k`);
- video: the loader looks at ``num_frames`` frames of a clip, the centres of as many equal
  segments (:func:`emotrain.data.media.frame_indices`). A cheap first pass reads the video
  stream's packet time stamps (no decoding) to know which frames each span holds; the decoding
  pass then keeps only the chosen frames, in RGB, scaled exactly as the loader scales them
  (:func:`resize_frames`). :func:`frames_mp4` stores them as a lossless H.264 (RGB) mp4: the
  loader's own mp4 path reads back exactly these pixels and picks exactly these frames.

A stream that fails part way (a truncated or damaged file) ends there: the spans it did not reach
get a reason instead of media, and the rest of the run goes on.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emotrain.data.media import frame_indices, resample_16k, resize_frames
from emotrain.errors import UserError

# ffmpeg demuxer names that hold recordings (it also "opens" text, images and raw bytes).
CONTAINERS = {
    "mov,mp4,m4a,3gp,3g2,mj2": "mp4/mov", "matroska,webm": "mkv/webm", "avi": "avi", "wav": "wav",
    "flac": "flac", "mp3": "mp3", "ogg": "ogg", "aac": "aac", "mpegts": "mpeg-ts", "flv": "flv", "w64": "w64",
    "aiff": "aiff", "asf": "asf/wmv", "mpeg": "mpeg-ps",
}


@dataclass(frozen=True)
class MediaLimits:
    """What a single call accepts: files larger or longer are refused with one line."""

    max_bytes: int = 16 * 2**30
    max_seconds: float = 4 * 3600.0

    def validate(self) -> None:
        if self.max_bytes < 1 or not self.max_seconds > 0:
            raise UserError("media limits must be > 0")


@dataclass(frozen=True)
class StreamInfo:
    """One stream of an input file."""

    path: Path
    kind: str  # audio | video
    codec: str
    duration: float | None  # seconds, as the container says
    rate: int = 0  # audio sample rate
    channels: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0


@dataclass
class MediaInfo:
    """The inputs of one prediction: which file gives the audio and which the video, and how long they are."""

    files: list[str]
    audio: StreamInfo | None
    video: StreamInfo | None
    duration: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        def stream(s: StreamInfo | None) -> dict | None:
            return None if s is None else {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(s).items()}

        return {"files": self.files, "audio": stream(self.audio), "video": stream(self.video),
                "duration": self.duration, "notes": self.notes}


def _open(path: Path):  # noqa: ANN202 - an av container
    import av

    try:
        return av.open(str(path))
    except av.error.FFmpegError as err:
        raise UserError(f"{path}: not a readable media file ({err.strerror or type(err).__name__})") from None


def _probe_file(path: Path, limits: MediaLimits) -> tuple[StreamInfo | None, StreamInfo | None]:
    """The first audio and the first video stream of a file; one line for anything unusable."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"media file not found: {path}") from None
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a media file")
    if size == 0:
        raise UserError(f"{path}: zero-byte file")
    if size > limits.max_bytes:
        raise UserError(f"{path}: {size / 2**20:.0f} MiB is over the limit of {limits.max_bytes / 2**20:.0f} MiB")
    with _open(path) as container:
        name = container.format.name
        if name not in CONTAINERS:
            raise UserError(f"{path}: unknown container {name!r}: expected one of "
                            f"{', '.join(sorted(set(CONTAINERS.values())))}")
        whole = container.duration / 1e6 if container.duration else None

        def seconds(stream) -> float | None:  # noqa: ANN001
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            return whole

        audio = video = None
        if container.streams.audio:
            s = container.streams.audio[0]
            audio = StreamInfo(path, "audio", s.codec_context.name, seconds(s), rate=int(s.codec_context.sample_rate or 0),
                               channels=int(s.codec_context.channels or 0))
        if container.streams.video:
            s = container.streams.video[0]
            if not _attached_picture(s):  # an mp3's or m4a's cover art is not a video
                rate = s.average_rate or s.guessed_rate
                video = StreamInfo(path, "video", s.codec_context.name, seconds(s), width=s.codec_context.width,
                                   height=s.codec_context.height, fps=float(rate) if rate else 0.0)
    return audio, video


def _attached_picture(stream) -> bool:  # noqa: ANN001 - an av video stream
    import av

    try:
        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except (AttributeError, TypeError):
        return stream.codec_context.name in ("mjpeg", "png") and stream.frames <= 1


def probe(media: Path | None, audio_file: Path | None, limits: MediaLimits) -> MediaInfo:
    """Which stream comes from where: the audio of ``audio_file`` when given, else of ``media``; the video of
    ``media``. A missing stream is a note (that model then reads text only), both missing one line."""
    if media is None and audio_file is None:
        raise UserError("pass a media file (--media) and/or an audio file (--audio)")
    notes = []
    audio = video = None
    if media is not None:
        audio, video = _probe_file(Path(media), limits)
    if audio_file is not None:
        separate, _ = _probe_file(Path(audio_file), limits)
        if separate is None:
            raise UserError(f"{audio_file}: no audio stream")
        if audio is not None:
            notes.append(f"the audio of {media} is not used: --audio {audio_file} given")
        audio = separate
    if audio is None and video is None:
        raise UserError(f"{media}: neither an audio nor a video stream")
    if media is not None and audio is None:
        notes.append(f"{media} has no audio track: the audio model reads text and metadata only")
    if video is None:
        notes.append(f"{media or audio_file} has no video stream: the video model reads text and metadata only")
    durations = [s.duration for s in (audio, video) if s is not None and s.duration]
    duration = max(durations) if durations else 0.0
    if duration > limits.max_seconds:
        raise UserError(f"{media or audio_file}: {duration / 60:.1f} minutes is over the limit of "
                        f"{limits.max_seconds / 60:.1f} minutes")
    files = [str(p) for p in (media, audio_file) if p is not None]
    return MediaInfo(files, audio, video, duration, notes)


def _float_channels(frame) -> np.ndarray:  # noqa: ANN001 - av.AudioFrame
    """float32 [channels, samples] of an audio frame, integer formats scaled as libsndfile scales them."""
    array = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T
    kind = frame.format.name.rstrip("p")
    if kind == "s16":
        return array.astype(np.float32) / 32768.0
    if kind == "s32":
        return (array.astype(np.float64) / 2147483648.0).astype(np.float32)
    if kind == "u8":
        return (array.astype(np.float32) - 128.0) / 128.0
    return array.astype(np.float32)


@dataclass
class SpanMedia:
    """One span's media: 16 kHz mono audio and the loader's chosen RGB frames, or why not."""

    audio: np.ndarray | None = None
    frames: np.ndarray | None = None  # uint8 [num_frames, H, W, 3]
    audio_reason: str = ""
    video_reason: str = ""


def _stream_failed(kind: str, at: float, err: Exception) -> str:
    return f"the {kind} stream cannot be read past {at:.2f} s ({getattr(err, 'strerror', None) or err})"


def audio_spans(info: StreamInfo, spans: list[tuple[float, float]]) -> Iterator[tuple[np.ndarray | None, str]]:
    """16 kHz mono samples of each span (sorted, not overlapping), in span order, from one decoding pass."""
    import av

    rate = info.rate
    bounds = [(int(round(s * rate)), int(round(e * rate))) for s, e in spans]
    i, parts, pos, reached = 0, [], None, 0.0
    failure = ""
    with _open(info.path) as container:
        stream = container.streams.audio[0]
        offset = container.start_time / 1e6 if container.start_time and container.start_time > 0 else 0.0
        try:
            for frame in container.decode(stream):
                data = _float_channels(frame).mean(axis=0, dtype=np.float32)
                stamped = None if frame.time is None else int(round((frame.time - offset) * rate))
                if pos is None or (stamped is not None and abs(stamped - pos) > rate // 10):
                    pos = stamped or 0  # the first frame, or a gap in the stream: follow its time stamps
                lo, hi = pos, pos + len(data)
                pos = hi
                reached = hi / rate
                while i < len(bounds):
                    a, b = bounds[i]
                    if hi > a and lo < b:
                        parts.append(data[max(a, lo) - lo: min(b, hi) - lo])
                    if hi >= b:
                        yield _finish(parts, rate)
                        parts, i = [], i + 1
                        continue
                    break
                if i == len(bounds):
                    return
        except av.error.FFmpegError as err:
            failure = _stream_failed("audio", reached, err)
    if i < len(bounds) and parts and not failure:  # the stream ended inside the last span: what is there
        yield _finish(parts, rate)
        i += 1
    for _ in range(i, len(bounds)):
        yield None, failure or f"the audio track ends at {reached:.2f} s"


def _finish(parts: list[np.ndarray], rate: int) -> tuple[np.ndarray | None, str]:
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if len(samples) == 0:
        return None, "no audio samples in the span"
    if not np.isfinite(samples).all():
        return None, "audio has non-finite samples"
    return resample_16k(np.ascontiguousarray(samples), rate), ""


def frame_times(info: StreamInfo) -> tuple[list[int], float]:
    """The presentation time stamps of every video frame (sorted; a pass over the packets, no decoding) and
    the stream's time base; a damaged stream gives the frames before the damage."""
    import av

    stamps = []
    with _open(info.path) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is not None and packet.size:
                    stamps.append(int(stamp))
        except av.error.FFmpegError:
            pass
        base = float(stream.time_base)
        start = container.start_time / 1e6 / base if container.start_time and container.start_time > 0 else 0
    return sorted(set(s - int(start) for s in stamps)), base


def video_spans(info: StreamInfo, spans: list[tuple[float, float]], num_frames: int,
                image_size: int) -> Iterator[tuple[np.ndarray | None, str]]:
    """The loader's ``num_frames`` frames of each span (RGB at most ``image_size`` square), in span order,
    from one decoding pass that converts only the chosen frames."""
    import av

    stamps, base = frame_times(info)
    times = np.array(stamps, dtype=np.int64)
    eps = 1e-6
    wanted: list[np.ndarray] = []  # per span, the chosen stamps (repeats allowed: a short span repeats frames)
    seconds = times * base
    for start, end in spans:
        lo, hi = np.searchsorted(seconds, [start - eps, end - eps], side="left")
        inside = times[lo:hi]  # the frames shown from start (inclusive) to end (exclusive)
        rng = np.random.default_rng(0)  # unused: frame_indices draws nothing without jitter
        wanted.append(inside[frame_indices(len(inside), num_frames, False, rng)] if len(inside) else inside)
    i, got, failure, reached = 0, {}, "", 0.0
    last = [int(w[-1]) if len(w) else None for w in wanted]

    end_of_stream = float(times[-1] * base) if len(times) else 0.0

    def ready(k: int) -> tuple[np.ndarray | None, str]:
        if not len(wanted[k]):
            if spans[k][0] > end_of_stream:
                return None, f"the video stream ends at {end_of_stream:.2f} s"
            return None, "no video frame in the span"
        if any(int(s) not in got for s in wanted[k]):
            return None, failure or "a chosen frame did not decode"
        frames = np.stack([got[int(s)] for s in wanted[k]])
        for s in wanted[k]:  # spans do not overlap: no later span wants these
            got.pop(int(s), None)
        return frames, ""

    with _open(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        offset = int(container.start_time / 1e6 / base) if container.start_time and container.start_time > 0 else 0
        keep = set(int(s) for w in wanted for s in w)
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                stamp = int(frame.pts) - offset
                reached = stamp * base
                if stamp in keep:
                    got[stamp] = _scaled(frame.to_ndarray(format="rgb24"), image_size)
                while i < len(wanted) and (last[i] is None or last[i] <= stamp):
                    yield ready(i)
                    i += 1
                if i == len(wanted):
                    return
        except av.error.FFmpegError as err:
            failure = _stream_failed("video", reached, err)
    for k in range(i, len(wanted)):
        yield ready(k) if not failure else (None, failure)


def _scaled(frame: np.ndarray, image_size: int) -> np.ndarray:
    """A frame scaled as :func:`emotrain.data.media.decode_video` scales a clip's frames."""
    if max(frame.shape[:2]) <= image_size:
        return frame
    video = torch.from_numpy(frame).permute(2, 0, 1)[None]
    return resize_frames(video, image_size)[0].permute(1, 2, 0).contiguous().numpy()


def frames_mp4(frames: np.ndarray) -> bytes:
    """A lossless H.264 (RGB, ``libx264rgb`` at qp 0) mp4 of uint8 [T, H, W, 3] frames: the loader's mp4 path
    reads back exactly these pixels and, as the clip holds exactly ``num_frames`` frames, picks each once."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264rgb", rate=25)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        stream.codec_context.thread_count = 1
        for pts, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = pts
            out.mux(stream.encode(video_frame))
        out.mux(stream.encode())
    return buf.getvalue()


def none_spans(count: int, reason: str) -> Iterator[tuple[None, str]]:
    for _ in range(count):
        yield None, reason


def media_spans(info: MediaInfo, spans: list[tuple[float, float]], num_frames: int | None,
                image_size: int) -> Iterator[SpanMedia]:
    """Each span's media, in span order: both streams advance together, so only the spans in between sit in
    memory. ``num_frames`` None: no model reads video, none is decoded."""
    audio = audio_spans(info.audio, spans) if info.audio is not None else none_spans(len(spans), "")
    if info.video is not None and num_frames:
        video = video_spans(info.video, spans, num_frames, image_size)
    else:
        video = none_spans(len(spans), "")
    for (samples, audio_reason), (frames, video_reason) in zip(audio, video):
        yield SpanMedia(samples, frames, audio_reason, video_reason)


def audio_windows(info: StreamInfo, seconds: float) -> Iterator[tuple[float, np.ndarray]]:
    """(start, 16 kHz mono samples) of consecutive ``seconds``-long windows of a whole audio stream: what
    speech recognition reads, a window at a time."""
    total = info.duration or MediaLimits().max_seconds  # unknown length: windows until the stream ends
    count = max(1, math.ceil(total / seconds))
    spans = [(k * seconds, (k + 1) * seconds) for k in range(count)]
    for (start, _), (samples, _) in zip(spans, audio_spans(info, spans)):
        if samples is not None:
            yield start, samples
