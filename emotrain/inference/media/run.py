"""A person's own recording in, emotions out: the body of :meth:`Predictor.predict_media`.

Steps: probe the file(s) (:mod:`.decode`), get the cues from the transcript or from speech
recognition (:mod:`.transcript`, :mod:`.asr`), clean them (clipped to the media, overlaps cut, each
change a note), give them roles (:mod:`.segment`), then decode each utterance's span once, in one
forward pass per stream, into the clip bytes the AvaMERG reader would find, and hand the
conversation, a few turns at a time, to the bundle's own path: the pack's encoder, the loader's
turn expander and collate, the models, calibration and fusion (:class:`Predictor`).
"""

from __future__ import annotations

import contextlib
import copy
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emotrain.data.avamerg import Skipped
from emotrain.data.media import encode_wav_16k
from emotrain.data.stream import SkipCounter
from emotrain.errors import UserError
from emotrain.inference.media.asr import WINDOW_SECONDS, Transcriber, load_transcriber, transcribe
from emotrain.inference.media.decode import MediaInfo, MediaLimits, frames_mp4, media_spans, probe, audio_windows
from emotrain.inference.media.segment import MediaUtterance, UtteranceClips, assign_roles, conversation_samples
from emotrain.inference.media.transcript import Cue, clean_cues, read_transcript

if TYPE_CHECKING:
    from emotrain.inference.predict import Predictor, TurnPrediction

NO_TRANSCRIPT = ("no transcript: pass --transcript FILE (SRT, WebVTT, a JSON list of {start, end, speaker, text} "
                 "or plain text) or --asr MODEL (a Whisper hub name or local folder)")
_EXPLAIN_LOCK = threading.Lock()  # explanations hook the shared models: one explained call at a time


@dataclass
class MediaTurn:
    """One predicted turn: the bundle's prediction, the utterance it ends with, and (explain) why."""

    prediction: "TurnPrediction"
    utterance: MediaUtterance
    explanation: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return self.prediction.label

    def row(self, classes: list[str]) -> dict[str, Any]:
        """The JSONL record: ``predict``'s row plus the time span, speaker, text and utterance index."""
        u = self.utterance
        row = {"start": round(u.start, 3), "end": round(u.end, 3), "speaker": u.speaker, "text": u.text,
               "utterance": u.index, **self.prediction.row(classes)}
        if self.explanation is not None:
            row["explanation"] = self.explanation
        return row


@dataclass
class MediaPrediction:
    """What :meth:`Predictor.predict_media` returns."""

    turns: list[MediaTurn]  # in time order
    utterances: list[MediaUtterance]  # every utterance, the speaker's and the others'
    classes: list[str]
    speaker: str  # whose emotion the turns give ("" when the transcript names nobody)
    info: MediaInfo
    notes: list[str] = field(default_factory=list)  # what was clipped, dropped or assumed, one line each
    skipped: list[Skipped] = field(default_factory=list)  # clips that could not be used, with why
    timings: dict[str, float] = field(default_factory=dict)  # seconds: transcribe, decode, preprocess, model

    def summary(self) -> dict[str, Any]:
        paths: dict[str, int] = {}
        for t in self.turns:
            paths[t.prediction.path] = paths.get(t.prediction.path, 0) + 1
        return {"media": self.info.to_dict(), "speaker": self.speaker, "utterances": len(self.utterances),
                "turns": len(self.turns), "paths": paths, "notes": self.notes,
                "skipped": [s.to_dict() for s in self.skipped], "timings": self.timings}

    def line(self) -> str:
        paths = ", ".join(f"{n} {p}" for p, n in sorted(self.summary()["paths"].items())) or "none"
        return (f"predicted {len(self.turns)} turns of {self.speaker or 'the speaker'} in {len(self.utterances)} "
                f"utterances ({paths}); {len(self.notes)} note(s), {len(self.skipped)} clip(s) unusable")


def _cues(info: MediaInfo, transcript: str | Path | Sequence[Cue] | None,
          asr: str | Path | Transcriber | None, timings: dict[str, float]) -> tuple[list[Cue], str]:
    """The transcript's cues, else speech recognition's; where they came from."""
    if transcript is not None:
        cues = list(transcript) if not isinstance(transcript, (str, Path)) else read_transcript(Path(transcript), info.duration or None)
        if cues:
            return cues, str(transcript) if isinstance(transcript, (str, Path)) else "transcript"
        if asr is None:
            raise UserError(f"the transcript {transcript if isinstance(transcript, (str, Path)) else ''} holds no "
                            f"cues: pass a transcript with cues (--transcript) or --asr MODEL (a Whisper hub name "
                            f"or local folder)")
    if asr is None:
        raise UserError(NO_TRANSCRIPT)
    if info.audio is None:
        raise UserError("speech recognition (--asr) needs an audio track; this input has none: pass --transcript")
    transcriber = load_transcriber(asr)
    began = time.perf_counter()
    cues = list(transcribe(transcriber, audio_windows(info.audio, WINDOW_SECONDS)))
    timings["transcribe"] = time.perf_counter() - began
    if not cues:
        raise UserError(f"speech recognition ({asr if isinstance(asr, (str, Path)) else type(asr).__name__}) found no "
                        f"speech in {', '.join(info.files)}: pass --transcript")
    return cues, f"speech recognition ({asr if isinstance(asr, (str, Path)) else type(asr).__name__})"


def _conversation_id(info: MediaInfo) -> str:
    stem = Path(info.files[0]).stem if info.files else "media"
    return re.sub(r"[^A-Za-z0-9-]+", "-", stem).strip("-")[:48] or "media"


def predict_media(predictor: "Predictor", media: str | Path | None = None, *, audio: str | Path | None = None,
                  transcript: str | Path | Sequence[Cue] | None = None, asr: str | Path | Transcriber | None = None,
                  speaker: str | None = None, explain: bool = False, limits: MediaLimits | None = None,
                  batch_size: int | None = None) -> MediaPrediction:
    """See :meth:`emotrain.inference.predict.Predictor.predict_media`."""
    from emotrain.inference.predict import counter_skips

    limits = limits or MediaLimits()
    limits.validate()
    timings: dict[str, float] = {"transcribe": 0.0, "decode": 0.0, "preprocess": 0.0, "model": 0.0}
    info = probe(Path(media) if media is not None else None, Path(audio) if audio is not None else None, limits)
    notes = list(info.notes)
    cues, origin = _cues(info, transcript, asr, timings)
    cues, cue_notes = clean_cues(cues, info.duration or None)
    notes += cue_notes
    if not cues:
        raise UserError(f"no usable cue in {origin} ({'; '.join(cue_notes[:3])})")
    utterances, target, role_notes = assign_roles(cues, speaker)
    notes += role_notes
    cid = _conversation_id(info)
    video_model = next((m for m in predictor.bundle.models.values() if m.modalities.video), None)
    num_frames = video_model.data.video.num_frames if video_model else None
    image_size = video_model.data.video.image_size if video_model else 224
    if not any(m.modalities.audio for m in predictor.bundle.models.values()):
        info = copy.copy(info)
        info.audio = None  # no model hears: nothing to decode
    history = max(m.data.text.max_utterances for m in predictor.bundle.models.values())
    skipped: list[Skipped] = []

    def clips() -> Iterator[UtteranceClips]:
        spans = media_spans(info, [(u.start, u.end) for u in utterances], num_frames, image_size)
        while True:
            began = time.perf_counter()
            try:
                span = next(spans)
                clip = UtteranceClips(None if span.audio is None else encode_wav_16k(span.audio),
                                      None if span.frames is None else frames_mp4(span.frames),
                                      span.audio_reason, span.video_reason)
            except StopIteration:
                return
            finally:
                timings["decode"] += time.perf_counter() - began
            yield clip

    runner = copy.copy(predictor)  # its own predict functions (timed, maybe explained); the shared one is untouched
    recorder = None
    runner.predict_fns = {name: _timed(fn, timings) for name, fn in predictor.predict_fns.items()}
    counter = SkipCounter(keep_reasons=True)
    began = time.perf_counter()
    with _EXPLAIN_LOCK if explain else contextlib.nullcontext():
        if explain:
            from emotrain.inference.media.explain import AttentionRecorder

            recorder = AttentionRecorder(runner)
        try:
            scored = runner.score_samples(conversation_samples(cid, utterances, clips(), history, skipped), counter,
                                          batch_size)
        finally:
            if recorder is not None:
                recorder.close()
    timings["preprocess"] = time.perf_counter() - began - timings["decode"] - timings["model"]
    predictions = predictor.combine(scored)
    speaker_utterances = [u for u in utterances if u.role == "speaker"]
    # in time order (the keys sort as text: "_10" before "_2")
    turns = sorted((MediaTurn(p, speaker_utterances[p.turn_id]) for p in predictions), key=lambda t: t.utterance.index)
    if recorder is not None:
        from emotrain.inference.media.explain import fusion_shares

        shares = fusion_shares(predictor, [t.prediction for t in turns])  # in the turns' (time) order
        for turn, share in zip(turns, shares):
            turn.explanation = {"attention": recorder.for_turn(turn.prediction.key, turn.utterance.index),
                                "fusion_share": share}
    lost = {t.utterance.index for t in turns}
    missing = [u for u in speaker_utterances if u.index not in lost]
    skipped += counter_skips(counter)
    skipped += [Skipped("turn", f"utterance {u.index}", "not scored (see the clip and conversation skips)") for u in missing]
    return MediaPrediction(turns, utterances, list(predictor.classes), target, info, notes, skipped,
                           {k: round(v, 4) for k, v in timings.items()})


def _timed(fn: Any, timings: dict[str, float]) -> Any:
    def predict(batch: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn(batch)
        finally:
            timings["model"] += time.perf_counter() - began

    return predict
