"""The OpenAPI description of the ``/v1`` routes: response models and the multipart bodies they take.

The routes read their bodies themselves (streamed within the upload limit), so FastAPI cannot infer the
request schema: it is spelled out here, next to the response models, and a test checks it against what the
routes accept.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Turn(BaseModel):
    """One turn: a line of ``emotrain predict``'s ``predictions.jsonl``."""

    key: str = Field(description="{conversation_id}_{turn_id}")
    conversation_id: str
    turn_id: int
    label: str = Field(description="the fused system's label")
    path: str = Field(description="which system gave the fused column: fused, fused_text_only, audio or video")
    present: dict[str, bool] = Field(description="per model, whether its medium was there")
    probs: dict[str, dict[str, float]] = Field(description="'fused' and each model -> class -> probability")


class Skip(BaseModel):
    kind: str
    id: str
    reason: str


class Prediction(BaseModel):
    classes: list[str]
    turns: list[Turn]
    skipped: list[Skip] = Field(description="what could not be used (a missing clip, an empty turn list), with why")


class MediaTurn(Turn):
    """A turn of a recording: ``predict``'s row plus where it is and what was said."""

    start: float = Field(description="seconds")
    end: float
    speaker: str
    text: str
    utterance: int = Field(description="its utterance's index in the conversation")
    explanation: dict[str, Any] | None = Field(None, description="explain=true: per model the attention over "
                                               "the turn's utterances, and each model's share in the fusion")


class Utterance(BaseModel):
    index: int
    start: float
    end: float
    speaker: str
    role: str = Field(description="speaker (whose emotion is predicted) or listener")
    text: str


class MediaPrediction(BaseModel):
    classes: list[str]
    turns: list[MediaTurn]
    utterances: list[Utterance]
    speaker: str = Field(description="whose emotion the turns give")
    notes: list[str] = Field(description="what was clipped, dropped or assumed, one line each")
    skipped: list[Skip]
    media: dict[str, Any] = Field(description="the streams found and the duration")
    timings: dict[str, float] = Field(description="seconds spent transcribing, decoding, preprocessing, in the models")


class Error(BaseModel):
    error: str = Field(description="one line saying what was wrong")


class Info(BaseModel):
    bundle: dict[str, Any] = Field(description="bundle.json: classes, scheme, models (temperature, source run, val "
                                               "scores), the fusion strategy and its val scores, versions")
    classes: list[str]
    endpoints: dict[str, str]
    limits: dict[str, float]
    auth: bool = Field(description="whether /v1 and /metrics need the X-API-Key header")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "malformed request (empty body, bad multipart, a field not UTF-8 or not JSON)"},
    401: {"model": Error, "description": "missing or wrong X-API-Key (when the server has a key)"},
    413: {"model": Error, "description": "upload larger than --max-upload-mb, or media longer than --max-media-s"},
    415: {"model": Error, "description": "not multipart/form-data"},
    422: {"model": Error, "description": "a record or clip that does not parse or decode"},
    503: {"model": Error, "description": "queue full or shutting down (see Retry-After)"},
    504: {"model": Error, "description": "not answered within --timeout-s"},
}

RECORD_DESCRIPTION = (
    "One conversation in the AvaMERG JSON schema (profiles, responses and chains may be absent; the official "
    "test.json layout works) with its clips, each named as in the corpus (dia{conversation_id}utt{index}_{ID}.wav "
    "and .mp4). Every turn is predicted as `emotrain predict` predicts it; missing clips fall back as there. A clip "
    "that does not decode is refused (422). Example: curl -F record=@conv.json -F clips=@dia7utt0_3.wav "
    "-F clips=@dia7utt0_3.mp4 http://127.0.0.1:8000/v1/predict/record")


def record_body() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["record"],
        "properties": {
            "record": {"type": "string", "description": "the conversation's JSON (UTF-8), as a field or a file"},
            "clips": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "its wav and mp4 clips, each under its corpus file name"},
        }}}}}}


MEDIA_DESCRIPTION = (
    "A person's own recording: a video with its audio track (mp4, mov, mkv, webm) or an audio file (wav, flac, "
    "mp3, ogg) as 'media', and/or a separate 'audio' file; a 'transcript' (SRT or WebVTT with speakers, a JSON "
    "list of {start, end, speaker, text}, or plain text for one utterance), or none when the server runs speech "
    "recognition (--asr). 'speaker' names whose emotion is predicted (default: the first named); explain=true "
    "adds each turn's explanation. The answer is what `Predictor.predict_media` gives for the same files. "
    "Example: curl -F media=@talk.mp4 -F transcript=@talk.srt -F explain=true "
    "http://127.0.0.1:8000/v1/predict/media")


def media_body() -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {
            "media": {**binary, "description": "a video (with or without audio) or an audio file"},
            "audio": {**binary, "description": "a separate audio file (its audio replaces the video's)"},
            "transcript": {"type": "string", "description": "SRT, WebVTT, JSON cues or plain text (UTF-8), "
                                                            "as a field or a file"},
            "speaker": {"type": "string", "description": "whose emotion is predicted"},
            "explain": {"type": "boolean", "description": "add each turn's explanation"},
        }}}}}}
