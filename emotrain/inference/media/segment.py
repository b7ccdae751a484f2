"""Cues -> the utterances of one conversation, with roles, and the conversation samples the bundle reads.

Roles: AvaMERG has two, the *speaker* (whose emotion each turn asks for) and the *listener*. The
person named by ``speaker`` (default: the first cue's speaker) is the speaker; everyone else is a
listener. A cue without a name in a transcript that names speakers continues the previous cue's
speaker (subtitles usually name a speaker once), and those before the first name are the first named
person's; a transcript that names nobody (and speech
recognition, which never does) is taken as one person talking: every utterance is the speaker's.
Each speaker utterance is a turn, classified with its dialogue history, as AvaMERG turns are.

The samples are built a few turns at a time (:func:`conversation_samples`): a turn's window is its
last ``history`` utterances, so a sample holding those for each of its turns gives the model
exactly what one sample of the whole conversation would, while only a few utterances' clips are in
memory at any time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from emotrain.data.avamerg import Conversation, Skipped, Turn, Utterance
from emotrain.data.clips import ClipRead, ClipSource
from emotrain.data.pack import encode_conversation
from emotrain.data.schema import UNLABELLED
from emotrain.errors import UserError
from emotrain.inference.media.transcript import Cue

SPEAKER, LISTENER = "speaker", "listener"
TURNS_PER_SAMPLE = 16


@dataclass
class MediaUtterance:
    """One utterance of the recording: its place, span, who said it, in which role, and what."""

    index: int
    start: float
    end: float
    speaker: str
    role: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start, "end": self.end, "speaker": self.speaker,
                "role": self.role, "text": self.text}


def assign_roles(cues: list[Cue], speaker: str | None) -> tuple[list[MediaUtterance], str, list[str]]:
    """The utterances with their roles, the speaker's name ("" when nobody is named) and what was assumed."""
    names: list[str] = []
    filled: list[str] = []
    current = ""
    for cue in cues:
        current = cue.speaker or current
        filled.append(current)
        if current and current not in names:
            names.append(current)
    notes = []
    if not names:
        if speaker:
            raise UserError(f"--speaker {speaker!r}: the transcript names no speakers")
        notes.append("no speaker names in the transcript: every utterance is taken as the speaker's")
        target = ""
    elif speaker is None:
        target = names[0]
        if len(names) > 1:
            notes.append(f"speaker: {target!r} (the first named; the others are listeners: "
                         f"{', '.join(repr(n) for n in names[1:])}); pick another with --speaker")
    else:
        matches = [n for n in names if n.casefold() == speaker.casefold()]
        if not matches:
            raise UserError(f"--speaker {speaker!r} is not in the transcript; its speakers: "
                            f"{', '.join(repr(n) for n in names)}")
        target = matches[0]
    if names and not cues[0].speaker:
        filled = [name or names[0] for name in filled]  # cues before the first name
        notes.append(f"the cues before the first named one are taken as {names[0]!r}'s")
    utterances = [MediaUtterance(i, cue.start, cue.end, name, SPEAKER if name == target or not names else LISTENER,
                                 cue.text) for i, (cue, name) in enumerate(zip(cues, filled))]
    if not any(u.role == SPEAKER for u in utterances):
        raise UserError(f"the speaker {target!r} says nothing: no turn to predict")
    return utterances, target, notes


@dataclass
class UtteranceClips:
    """The clip bytes of one utterance (None: not there, with why)."""

    wav: bytes | None
    mp4: bytes | None
    wav_reason: str = ""
    mp4_reason: str = ""


class SpanClips(ClipSource):
    """Clips by utterance index, as a :class:`ClipSource` for the pack's encoder."""

    def __init__(self, clips: dict[int, UtteranceClips], conversation_id: str):
        self.clips = clips
        self.conversation_id = conversation_id

    def read(self, conv: Conversation, utt: Utterance, ext: str) -> ClipRead:
        clip = self.clips[utt.index]
        name = f"utterance {utt.index} {'audio' if ext == 'wav' else 'video'}"
        data, reason = (clip.wav, clip.wav_reason) if ext == "wav" else (clip.mp4, clip.mp4_reason)
        return ClipRead(data, "" if data is not None else reason, name)


def conversation_samples(conversation_id: str, utterances: list[MediaUtterance],
                         clips: Iterable[UtteranceClips], history: int,
                         skipped: list[Skipped]) -> Iterator[dict[str, Any]]:
    """Shard samples of the conversation, a few turns each with their windows' utterances and clips
    (``clips``: one per utterance, in order, produced lazily); the clips' skip records go to ``skipped``."""
    window: deque[tuple[MediaUtterance, UtteranceClips]] = deque()
    pending: list[Turn] = []
    turn_id = 0

    def emit() -> dict[str, Any]:
        conv = Conversation(conversation_id, "", "", None, None,
                            [Utterance(u.index, u.role, u.text) for u, _ in window], list(pending))
        sample, skips, _ = encode_conversation(conv, [UNLABELLED] * len(pending),
                                               SpanClips({u.index: c for u, c in window}, conversation_id))
        fresh = emitted_for(conv)
        skipped.extend(s for s in skips if not s.id.startswith("utterance ") or int(s.id.split()[1]) in fresh)
        return sample

    reported: set[int] = set()

    def emitted_for(conv: Conversation) -> set[int]:
        """Each clip's reason is reported once, though its utterance may sit in two samples' windows."""
        fresh = {u.index for u in conv.utterances} - reported
        reported.update(fresh)
        return fresh

    for utterance, clip in zip(utterances, clips):
        window.append((utterance, clip))
        if utterance.role == SPEAKER:
            pending.append(Turn(turn_id, utterance.index, None))
            turn_id += 1
        if len(pending) >= TURNS_PER_SAMPLE or (pending and len(window) >= 2 * history + TURNS_PER_SAMPLE):
            yield emit()
            pending = []
        if not pending:
            while len(window) > history - 1:
                window.popleft()
    if pending:
        yield emit()
