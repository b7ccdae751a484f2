"""Synthetic conversations as a person's own recording: each conversation's clips joined into one file with
its audio track, and the transcript marking the utterance boundaries and speakers.

Each clip is first cut to a whole number of ``unit`` seconds (at a whole number of audio samples and video
frames), so the audio and video tracks stay in step in one file and every boundary is an exact time stamp
in SRT's milliseconds. The cut clips are also written as an AvaMERG folder (``reference/``) with a
``test.json`` that holds what a subtitle file carries (texts and roles; no profiles, topic or context):
the reference ``predict`` reads. With ``lossless``, the joined file's video holds the reference mp4s'
decoded pictures bit for bit (H.264 at qp 0 in their own YUV 4:2:0) and its audio their PCM samples, so
the two paths see the same pixels and samples; otherwise it is re-encoded as a phone would (H.264 crf 23,
AAC 128 kb/s in mp4).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile
import torch

from emotrain.inference.media.transcript import format_time

SPEAKER_NAME, LISTENER_NAME = "Alice", "Bob"


@dataclass
class Joined:
    path: Path
    transcript: Path
    reference: Path  # AvaMERG folder of the cut clips, test.json inside
    cues: list[dict]  # {start, end, speaker, text, index}
    conversation_id: str


def _frames(path: Path) -> tuple[list[av.VideoFrame], float]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [f for f in c.decode(stream)]
        return frames, float(stream.average_rate)


def _convert_audio(samples: np.ndarray, rate: int, target: int, channels: int) -> np.ndarray:
    """[n, channels] float in [-1, 1] at ``target`` Hz; a second channel is the first at half gain."""
    if target != rate:
        import torchaudio.functional as AF

        samples = AF.resample(torch.from_numpy(samples.astype(np.float32)), rate, target).numpy()
    out = samples[:, None] if channels == 1 else np.stack([samples, 0.5 * samples], axis=1)
    return np.clip(out, -1.0, 1.0)


def join_conversation(corpus: Path, record: dict, out_dir: Path, *, unit: float = 0.5, audio_rate: int | None = None,
                      channels: int = 1, size: tuple[int, int] | None = None, fps: int | None = None,
                      lossless: bool = True, transcript: str = "srt", container: str | None = None) -> Joined:
    """Join one conversation's clips (see the module docstring); ``size`` (w, h) and ``fps`` re-render the video
    (nearest frame in time, bilinear scaling), ``audio_rate`` and ``channels`` the audio; ``container``: the
    file's extension (default mkv lossless, mp4 lossy)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = out_dir / "reference"
    (reference / "audio_v5_0").mkdir(parents=True, exist_ok=True)
    (reference / "video_v5_0").mkdir(parents=True, exist_ok=True)
    cid = record["conversation_id"]
    last = max(record["turns"], key=lambda t: len(t["dialogue_history"]))["dialogue_history"]
    pieces = []  # (audio [n, ch] int16, [av.VideoFrame], utterance)
    out_fps = None
    for utt in last:
        idx = utt["index"]
        wav = next((corpus / "audio_v5_0").glob(f"dia{cid}utt{idx}_*.wav"))
        mp4 = next((corpus / "video_v5_0").glob(f"dia{cid}utt{idx}_*.mp4"))
        samples, rate = soundfile.read(wav, dtype="float32")
        frames, clip_fps = _frames(mp4)
        target_rate, target_fps = audio_rate or 16_000, fps or int(round(clip_fps))
        out_fps = target_fps
        audio = _convert_audio(samples, rate, target_rate, channels)
        seconds = min(len(samples) / rate, len(frames) / clip_fps)
        keep = math.floor(seconds / unit + 1e-9) * unit
        assert keep > 0, f"clip {wav.name} shorter than {unit} s"
        n_audio, n_video = round(keep * target_rate), round(keep * target_fps)
        assert abs(n_audio - keep * target_rate) < 1e-6 and abs(n_video - keep * target_fps) < 1e-6, "unit not aligned"
        pcm = np.round(audio[:n_audio] * 32767).astype(np.int16)
        picked = [frames[min(len(frames) - 1, int(k * clip_fps / target_fps + 1e-9))] for k in range(n_video)]
        if size is not None:
            picked = [f.reformat(width=size[0], height=size[1], format="yuv420p") for f in picked]
        stem = f"dia{cid}utt{idx}_{wav.stem.rsplit('_', 1)[1]}"
        soundfile.write(reference / "audio_v5_0" / f"{stem}.wav", pcm, target_rate, subtype="PCM_16")
        ref_frames = _write_video(reference / "video_v5_0" / f"{stem}.mp4", picked, target_fps, "crf", "mp4", None)
        pieces.append((pcm, ref_frames, utt))
    # the reference record: what a subtitle file carries
    turns = [{"turn_id": t["turn_id"], "dialogue_history": t["dialogue_history"]} for t in record["turns"]]
    (reference / "test.json").write_text(json.dumps([{"conversation_id": cid, "turns": turns}]), encoding="utf-8")
    # the joined file
    suffix = container or ("mkv" if lossless else "mp4")
    path = out_dir / f"conversation-{cid}.{suffix}"
    cues, t = [], 0.0
    rate_out = audio_rate or 16_000
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=out_fps)
        first = pieces[0][1][0]
        video.width, video.height, video.pix_fmt = first.width, first.height, "yuv420p"
        video.options = {"qp": "0", "preset": "ultrafast"} if lossless else {"crf": "23", "preset": "veryfast"}
        audio_stream = container.add_stream("pcm_s16le" if lossless else "aac", rate=rate_out,
                                             layout="mono" if channels == 1 else "stereo")
        if not lossless:
            audio_stream.bit_rate = 128_000
        audio_pts, video_pts = 0, 0
        for pcm, frames, utt in pieces:
            seconds = len(pcm) / rate_out
            cues.append({"start": round(t, 6), "end": round(t + seconds, 6), "text": utt["utterance"], "index": utt["index"],
                         "speaker": SPEAKER_NAME if utt["role"] == "speaker" else LISTENER_NAME})
            t += seconds
            for f in frames:
                frame = av.VideoFrame.from_ndarray(f.to_ndarray(format="yuv420p"), format="yuv420p")
                frame.pts = video_pts
                video_pts += 1
                container.mux(video.encode(frame))
            for lo in range(0, len(pcm), 1024):
                block = pcm[lo:lo + 1024]  # [n, channels]: packed s16 interleaves the channels
                aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(block.reshape(1, -1)), format="s16",
                                                    layout="mono" if channels == 1 else "stereo")
                aframe.sample_rate, aframe.pts = rate_out, audio_pts
                aframe.time_base = Fraction(1, rate_out)
                audio_pts += len(block)
                container.mux(audio_stream.encode(aframe))
        container.mux(video.encode())
        container.mux(audio_stream.encode())
    transcript_path = out_dir / f"conversation-{cid}.{transcript}"
    transcript_path.write_text(write_transcript(cues, transcript), encoding="utf-8")
    return Joined(path, transcript_path, reference, cues, cid)


def _write_video(path: Path, frames: list[av.VideoFrame], fps: int, mode: str, fmt: str, _: object) -> list[av.VideoFrame]:
    """The clip as the synthetic corpus writes its mp4s (H.264 crf 20, yuv420p); returns its decoded frames."""
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast", "x264-params": "mbtree=0"}
        stream.codec_context.thread_count = 1
        for pts, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f.to_ndarray(format="yuv420p"), format="yuv420p")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    decoded, _ = _frames(path)
    return decoded


def write_transcript(cues: list[dict], kind: str) -> str:
    if kind == "json":
        return json.dumps([{k: c[k] for k in ("start", "end", "speaker", "text")} for c in cues])
    if kind == "vtt":
        body = "".join(f"{format_time(c['start'], '.')} --> {format_time(c['end'], '.')}\n<v {c['speaker']}>{c['text']}\n\n"
                       for c in cues)
        return "WEBVTT\n\n" + body
    return "".join(f"{i}\n{format_time(c['start'])} --> {format_time(c['end'])}\n{c['speaker']}: {c['text']}\n\n"
                   for i, c in enumerate(cues, 1))
