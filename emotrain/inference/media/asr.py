"""Speech recognition when there is no transcript: Whisper through transformers' ASR pipeline.

A :class:`Transcriber` turns a window of 16 kHz mono audio into cues (seconds from the window's start,
text; no speaker). :class:`WhisperTranscriber` loads ``pipeline("automatic-speech-recognition",
return_timestamps=True)`` from a hub name or a local folder (offline nodes: a folder, or a name already
in the Hugging Face cache); its segment time stamps become the utterance boundaries. The audio is read
and recognised a window (30 s, Whisper's own input length) at a time, so an hour of audio never sits in
memory; a segment that crosses a window border is cut there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from emotrain.data.schema import SAMPLE_RATE
from emotrain.errors import UserError
from emotrain.inference.media.transcript import Cue

WINDOW_SECONDS = 30.0


class Transcriber(Protocol):
    """Anything that turns 16 kHz mono samples into cues with times relative to their start."""

    def __call__(self, samples: np.ndarray) -> list[Cue]: ...


def transcribe(transcriber: Transcriber, windows: Iterable[tuple[float, np.ndarray]]) -> Iterator[Cue]:
    """The cues of every window, shifted to media time and kept inside their window."""
    for start, samples in windows:
        length = len(samples) / SAMPLE_RATE
        for cue in transcriber(samples):
            begin, end = max(0.0, cue.start), min(length, cue.end)
            if end > begin and cue.text.strip():
                yield Cue(start + begin, start + end, cue.speaker, " ".join(cue.text.split()))


class WhisperTranscriber:
    """A Whisper checkpoint through transformers' ASR pipeline, segment time stamps on."""

    def __init__(self, name_or_folder: str | Path, device: str | int = -1):
        self.source = str(name_or_folder)
        folder = Path(name_or_folder)
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"--asr {folder}: a file; expected a model folder or a hub name")
            if not (folder / "config.json").is_file():
                raise UserError(f"--asr {folder}: not a model folder (no config.json); expected a Whisper "
                                "checkpoint saved with save_pretrained, or a hub name")
        self.pipe = _load_pipeline(self.source, device)

    def __call__(self, samples: np.ndarray) -> list[Cue]:
        try:
            out = self.pipe({"raw": np.asarray(samples, dtype=np.float32), "sampling_rate": SAMPLE_RATE},
                            return_timestamps=True)
        except (ValueError, RuntimeError, IndexError, KeyError) as err:
            raise UserError(f"speech recognition with {self.source} failed: {str(err).splitlines()[0][:200]}") from None
        length = len(samples) / SAMPLE_RATE
        cues = []
        for chunk in out.get("chunks") or []:
            start, end = chunk.get("timestamp") or (None, None)
            start = 0.0 if start is None else float(start)
            end = length if end is None else float(end)
            cues.append(Cue(start, end, "", str(chunk.get("text", ""))))
        if not cues and str(out.get("text", "")).strip():  # a model that gives no segments: one cue for the window
            cues.append(Cue(0.0, length, "", str(out["text"])))
        return cues


def _load_pipeline(source: str, device: str | int):  # noqa: ANN202 - a transformers pipeline
    """The pipeline, or one line saying why not (not a model, not a speech model, not in the cache offline)."""
    from transformers import pipeline

    try:
        pipe = pipeline("automatic-speech-recognition", model=source, device=device)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--asr {source}: cannot load a speech recognition model ({first[:200]})") from None
    if getattr(pipe, "type", None) not in ("seq2seq_whisper", None) and "whisper" not in type(pipe.model).__name__.lower():
        raise UserError(f"--asr {source}: a {type(pipe.model).__name__}, not Whisper: its output has no segment "
                        "time stamps to cut utterances by")
    return pipe


def load_transcriber(asr: str | Path | Transcriber) -> Transcriber:
    """A transcriber from a hub name or folder, or the object given (tests pass a stub)."""
    if callable(asr) and not isinstance(asr, (str, Path)):
        return asr
    return WhisperTranscriber(asr)
