"""What was said when, by whom: subtitle files (SRT, WebVTT), a JSON list of cues, or plain text.

Every format becomes a list of :class:`Cue` (seconds from the start of the media, a speaker name or
"" when none is given, the text). Speakers come from a WebVTT voice tag (``<v Anna>Hello``) or a
``NAME:`` prefix (``Anna: Hello``; a name is at most 32 characters of letters, digits, spaces, dots,
dashes and underscores, so ``Note: ...`` in a sentence of normal prose is the one false positive
left). :func:`clean_cues` then makes the list usable: cues are sorted, empty ones dropped, cues
past the media's end clipped or dropped and overlapping cues cut at the next cue's start, each
change reported as one line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emotrain.errors import UserError

MAX_TRANSCRIPT_BYTES = 32 * 2**20
_TIME = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?$")
_ARROW = re.compile(r"^\s*(\S+)\s+-->\s+(\S+)")
_VOICE = re.compile(r"<v(?:\.[^\s>]*)?\s+([^>]+)>")
_TAG = re.compile(r"</?[^>]+>")
_PREFIX = re.compile(r"^\s*([A-Za-z0-9][\w .\-]{0,31}?)\s*:(?:\s+(\S.*))?$", re.S)


@dataclass
class Cue:
    """One utterance of the transcript: its span in seconds, who said it ("" = not said) and what."""

    start: float
    end: float
    speaker: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "speaker": self.speaker, "text": self.text}


def parse_time(value: str) -> float:
    """``hh:mm:ss,mmm`` / ``mm:ss.mmm`` (SRT or WebVTT) -> seconds."""
    match = _TIME.match(value.strip())
    if not match:
        raise ValueError(f"not a time stamp: {value!r}")
    hours, minutes, seconds, millis = match.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + (int(millis.ljust(3, "0")) / 1000 if millis else 0.0)


def format_time(seconds: float, sep: str = ",") -> str:
    """seconds -> ``hh:mm:ss,mmm`` (``sep="."``: WebVTT)."""
    millis = int(round(seconds * 1000))
    sign, millis = ("-" if millis < 0 else ""), abs(millis)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{sign}{hours:02d}:{minutes:02d}:{rest // 1000:02d}{sep}{rest % 1000:03d}"


def split_speaker(text: str) -> tuple[str, str]:
    """(speaker, text) of a cue's text: a WebVTT voice tag first, then a ``NAME:`` prefix; tags removed."""
    voice = _VOICE.search(text)
    speaker = voice.group(1).strip() if voice else ""
    plain = " ".join(_TAG.sub("", text).split())
    if not speaker:
        prefix = _PREFIX.match(plain)
        if prefix and not prefix.group(1).strip().isdigit():
            speaker, plain = prefix.group(1).strip(), (prefix.group(2) or "").strip()
    return speaker, plain


def _blocks(text: str) -> list[list[str]]:
    blocks, current = [], []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def parse_subtitles(text: str, where: str) -> list[Cue]:
    """SRT or WebVTT cues (the header, NOTE, STYLE and REGION blocks of WebVTT are skipped)."""
    cues = []
    for block in _blocks(text.lstrip("\ufeff")):
        arrow = next((i for i, line in enumerate(block) if "-->" in line), None)
        if arrow is None:  # WEBVTT header, NOTE, STYLE, a stray number
            continue
        match = _ARROW.match(block[arrow])
        try:
            if not match:
                raise ValueError(f"malformed timing line {block[arrow].strip()!r}")
            start, end = parse_time(match.group(1)), parse_time(match.group(2))
        except ValueError as err:
            raise UserError(f"{where}: cue {len(cues) + 1}: {err}") from None
        speaker, said = split_speaker(" ".join(block[arrow + 1:]))
        cues.append(Cue(start, end, speaker, said))
    return cues


def parse_json_cues(data: Any, where: str) -> list[Cue]:
    """A JSON list of ``{start, end, speaker, text}`` (speaker optional)."""
    if not isinstance(data, list):
        raise UserError(f"{where}: expected a JSON list of {{start, end, speaker, text}}, got {type(data).__name__}")
    cues = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise UserError(f"{where}: item {i} is not an object")
        unknown = sorted(set(item) - {"start", "end", "speaker", "text"})
        if unknown:
            raise UserError(f"{where}: item {i}: unknown key(s) {unknown} (expected start, end, speaker, text)")
        try:
            start, end = float(item["start"]), float(item["end"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: item {i}: start and end must be numbers of seconds") from None
        speaker, text = item.get("speaker") or "", item.get("text", "")
        if not isinstance(speaker, str) or not isinstance(text, str):
            raise UserError(f"{where}: item {i}: speaker and text must be strings")
        cues.append(Cue(start, end, speaker.strip(), " ".join(text.split())))
    return cues


def read_transcript(path: Path, duration: float | None) -> list[Cue]:
    """The cues of a transcript file by its content: WebVTT (``WEBVTT`` header), SRT (``-->`` lines),
    a JSON list, or plain text (one utterance spanning the whole media, ``duration`` seconds)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_TRANSCRIPT_BYTES:
            raise UserError(f"{path}: over {MAX_TRANSCRIPT_BYTES // 2**20} MiB: not a transcript")
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"transcript not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"transcript {path} is a folder") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start})") from None
    stripped = text.strip()
    if stripped.startswith("[") or path.suffix.lower() == ".json":
        try:
            return parse_json_cues(json.loads(stripped or "[]"), str(path))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if stripped.startswith("WEBVTT") or "-->" in stripped:
        return parse_subtitles(text, str(path))
    if not stripped:
        return []
    speaker, said = split_speaker(stripped)
    return [Cue(0.0, float("inf") if duration is None else duration, speaker, said)]


def clean_cues(cues: list[Cue], duration: float | None) -> tuple[list[Cue], list[str]]:
    """Cues sorted by start, each non-empty, inside [0, duration] and not overlapping the next; what was
    changed, one line per cue (1-based, in the order given)."""
    notes: list[str] = []
    numbered = sorted(enumerate(cues, 1), key=lambda item: (item[1].start, item[1].end))
    kept: list[tuple[int, Cue]] = []
    for number, cue in numbered:
        where = f"cue {number} ({format_time(cue.start)} --> {format_time(cue.end)})"
        if not cue.text.strip():
            notes.append(f"{where}: empty text, dropped")
            continue
        start, end = max(0.0, cue.start), cue.end
        if duration is not None:
            if start >= duration:
                notes.append(f"{where}: starts after the media ends ({duration:.3f} s), dropped")
                continue
            if end > duration:
                notes.append(f"{where}: ends after the media ({duration:.3f} s), clipped to its end")
                end = duration
        if cue.start < 0:
            notes.append(f"{where}: starts before 0, clipped to 0")
        if end <= start:
            notes.append(f"{where}: ends before it starts, dropped")
            continue
        if kept and kept[-1][1].end > start:
            prev_number, prev = kept[-1]
            if start <= prev.start:
                notes.append(f"{where}: starts with cue {prev_number}, dropped (overlap)")
                continue
            notes.append(f"cue {prev_number}: overlaps cue {number}, cut at {format_time(start)}")
            kept[-1] = (prev_number, Cue(prev.start, start, prev.speaker, prev.text))
        kept.append((number, Cue(start, end, cue.speaker, cue.text)))
    return [cue for _, cue in kept], notes
