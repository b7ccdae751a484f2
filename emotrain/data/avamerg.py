"""Read the AvaMERG layout into validated conversation records.

The corpus ships as JSON lists of conversations plus one ``.wav`` and one ``.mp4`` per
utterance, named ``dia{conversation_id}utt{index}_{ID}`` where ``index`` is the utterance's
position in ``dialogue_history`` and ``ID`` the speaker's or listener's avatar id by role.

Real data has faults, so reading never stops at the first bad record: a conversation or turn
that cannot be used is *skipped with its reason* and the caller records it in the manifest.
Only a file that is not JSON at all is fatal, reported as one line naming the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotrain.data.schema import ROLES
from emotrain.errors import UserError

# Conversation ids become shard keys and file names: no dots, no separators (matched whole, with
# fullmatch: ``$`` would also match before a final newline).
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PROFILE_KEYS = ("ID", "age", "gender", "timbre")
CHAIN_TEXT_KEYS = ("event_scenario", "emotion_cause", "goal_to_response")
EMPTY_TURNS = "empty turn list"


@dataclass(frozen=True)
class Skipped:
    """One thing left out of (or unlabelled in) the shards, with why."""

    kind: str  # conversation | turn | clip
    id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "reason": self.reason}


@dataclass
class Profile:
    avatar_id: int
    age: str
    gender: str
    timbre: str


@dataclass
class Utterance:
    index: int
    role: str
    text: str


@dataclass
class Turn:
    turn_id: int
    last_utterance: int
    emotion: str | None  # the raw label word; mapped to a class by a LabelScheme
    event_scenario: str = ""
    emotion_cause: str = ""
    goal_to_response: str = ""


@dataclass
class Conversation:
    conversation_id: str
    topic: str
    context: str
    speaker: Profile | None
    listener: Profile | None
    utterances: list[Utterance]
    turns: list[Turn] = field(default_factory=list)

    def avatar_id(self, role: str) -> int | None:
        profile = self.speaker if role == "speaker" else self.listener
        return None if profile is None else profile.avatar_id

    def clip_stem(self, utterance: Utterance) -> str | None:
        """``dia{id}utt{index}_{ID}``, or None when the role's profile (and so its ID) is unknown."""
        avatar = self.avatar_id(utterance.role)
        if avatar is None:
            return None
        return f"dia{self.conversation_id}utt{utterance.index}_{avatar}"

    def shard_json(self) -> dict[str, Any]:
        """The shard's ``json`` member: everything but the labels and the listener's response."""

        def profile(p: Profile | None) -> dict[str, Any] | None:
            return None if p is None else {"ID": p.avatar_id, "age": p.age, "gender": p.gender, "timbre": p.timbre}

        return {
            "conversation_id": self.conversation_id,
            "topic": self.topic,
            "speaker_profile": profile(self.speaker),
            "listener_profile": profile(self.listener),
            "context": self.context,
            "utterances": [{"index": u.index, "role": u.role, "text": u.text} for u in self.utterances],
            "turns": [
                {
                    "turn_id": t.turn_id,
                    "last_utterance": t.last_utterance,
                    "event_scenario": t.event_scenario,
                    "emotion_cause": t.emotion_cause,
                    "goal_to_response": t.goal_to_response,
                }
                for t in self.turns
            ],
        }


class RecordError(ValueError):
    """A field of one record has the wrong shape; the record is skipped with this reason."""


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecordError(f"{what} should be {names}, got {type(value).__name__}")
    if isinstance(value, str):
        _representable(value, what)
    return value


def _representable(text: str, what: str) -> None:
    """JSON may carry a lone surrogate (``"\\ud800"``) that no UTF-8 file, tar member or tokenizer can hold:
    the record is skipped with this reason instead of failing later with a UnicodeEncodeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RecordError(f"{what} holds a lone surrogate (U+{ord(text[err.start]):04X} at character {err.start}), "
                          "which UTF-8 cannot represent") from None


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    return _expect(value, str, what)


def _profile(raw: Any, what: str) -> Profile | None:
    if raw is None:
        return None
    _expect(raw, dict, what)
    missing = [k for k in PROFILE_KEYS if k not in raw]
    if missing:
        raise RecordError(f"{what} lacks {', '.join(missing)}")
    avatar = raw["ID"]
    if isinstance(avatar, str) and avatar.isdigit():
        avatar = int(avatar)
    _expect(avatar, int, f"{what}.ID")
    return Profile(
        avatar_id=avatar,
        age=_expect(raw["age"], str, f"{what}.age"),
        gender=_expect(raw["gender"], str, f"{what}.gender"),
        timbre=_expect(raw["timbre"], str, f"{what}.timbre"),
    )


def _history(raw_turn: dict, where: str) -> list[Utterance]:
    history = _expect(raw_turn.get("dialogue_history"), list, f"{where}.dialogue_history")
    if not history:
        raise RecordError(f"{where}.dialogue_history is empty")
    utterances = []
    for pos, item in enumerate(history):
        _expect(item, dict, f"{where}.dialogue_history[{pos}]")
        index = item.get("index", pos)
        _expect(index, int, f"{where}.dialogue_history[{pos}].index")
        role = _expect(item.get("role"), str, f"{where}.dialogue_history[{pos}].role")
        if role not in ROLES:
            raise RecordError(f"{where}.dialogue_history[{pos}].role {role!r} is not speaker or listener")
        text = _expect(item.get("utterance"), str, f"{where}.dialogue_history[{pos}].utterance")
        utterances.append(Utterance(index=index, role=role, text=text))
    return utterances


def _turn(raw: Any, where: str) -> tuple[Turn, list[Utterance]]:
    _expect(raw, dict, where)
    turn_id = raw.get("turn_id")
    if isinstance(turn_id, str) and turn_id.isdigit():  # the official test.json writes some ids as strings
        turn_id = int(turn_id)
    turn_id = _expect(turn_id, int, f"{where}.turn_id")
    history = _history(raw, where)
    chain = raw.get("chain_of_empathy") or {}
    _expect(chain, dict, f"{where}.chain_of_empathy")
    emotion = chain.get("speaker_emotion")
    if emotion is not None:
        _expect(emotion, str, f"{where}.chain_of_empathy.speaker_emotion")
    texts = {k: _text(chain.get(k), f"{where}.chain_of_empathy.{k}") for k in CHAIN_TEXT_KEYS}
    return Turn(turn_id=turn_id, last_utterance=history[-1].index, emotion=emotion, **texts), history


def parse_conversation(raw: Any) -> tuple[Conversation, list[Skipped]]:
    """Validate one raw conversation; raises RecordError when it must be skipped whole.

    Turns with a bad field are dropped (and returned as skips); the utterances are the
    union of every kept turn's cumulative history, which must agree where turns overlap.
    """
    _expect(raw, dict, "conversation")
    cid = raw.get("conversation_id")
    if isinstance(cid, int) and not isinstance(cid, bool):
        cid = str(cid)
    _expect(cid, str, "conversation_id")
    if not SAFE_ID.fullmatch(cid):
        raise RecordError(f"conversation_id {cid!r} is unsafe as a file name or shard key")
    conversation = Conversation(
        conversation_id=cid,
        topic=_text(raw.get("topic"), "topic"),
        context="",
        speaker=_profile(raw.get("speaker_profile"), "speaker_profile"),
        listener=_profile(raw.get("listener_profile"), "listener_profile"),
        utterances=[],
    )
    raw_turns = _expect(raw.get("turns"), list, "turns")
    if not raw_turns:  # the official test.json holds such conversations: nothing to predict or train on
        raise RecordError(EMPTY_TURNS)
    skipped: list[Skipped] = []
    by_index: dict[int, Utterance] = {}
    seen_turns: set[int] = set()
    for pos, raw_turn in enumerate(raw_turns):
        where = f"turns[{pos}]"
        turn_key = f"{cid}_{raw_turn.get('turn_id', pos) if isinstance(raw_turn, dict) else pos}"
        try:
            turn, history = _turn(raw_turn, where)
            if turn.turn_id in seen_turns:
                raise RecordError(f"{where}.turn_id {turn.turn_id} repeats")
            if history[-1].role != "speaker":
                raise RecordError(f"{where}.dialogue_history does not end with the speaker")
            for utt in history:
                known = by_index.get(utt.index)
                if known is not None and (known.text, known.role) != (utt.text, utt.role):
                    raise RecordError(f"{where} disagrees with an earlier turn on utterance {utt.index}")
        except RecordError as err:
            skipped.append(Skipped("turn", turn_key, str(err)))
            continue
        seen_turns.add(turn.turn_id)
        for utt in history:
            by_index[utt.index] = utt
        conversation.turns.append(turn)
        if not conversation.context:
            conversation.context = _text(raw_turn.get("context"), f"{where}.context")
    if not conversation.turns:
        raise RecordError("no usable turn" + (f" ({skipped[0].reason})" if skipped else ""))
    conversation.utterances = [by_index[i] for i in sorted(by_index)]
    conversation.turns.sort(key=lambda t: t.turn_id)
    return conversation, skipped


def load_json_list(path: Path) -> list[Any]:
    """The raw records of one AvaMERG JSON file; a broken file is one clear error."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of conversations, got {type(data).__name__}")
    return data


def read_conversations(path: Path) -> tuple[list[Conversation], list[Skipped]]:
    """Every usable conversation of ``path`` in file order, and what was skipped.

    A duplicate conversation id keeps the first occurrence.
    """
    conversations: list[Conversation] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for pos, raw in enumerate(load_json_list(path)):
        label = str(raw.get("conversation_id", f"#{pos}")) if isinstance(raw, dict) else f"#{pos}"
        try:
            conversation, turn_skips = parse_conversation(raw)
        except RecordError as err:
            skipped.append(Skipped("conversation", label, str(err)))
            continue
        if conversation.conversation_id in seen:
            skipped.append(Skipped("conversation", label, "duplicate conversation_id: the first is kept"))
            continue
        seen.add(conversation.conversation_id)
        conversations.append(conversation)
        skipped.extend(turn_skips)
    return conversations, skipped


@dataclass(frozen=True)
class MediaDirs:
    """Where the clips live: separate audio and video folders, or one folder for both."""

    audio: Path
    video: Path

    @classmethod
    def locate(cls, root: Path, audio: Path | None = None, video: Path | None = None) -> "MediaDirs":
        def pick(explicit: Path | None, default_name: str) -> Path:
            if explicit is not None:
                if not explicit.is_dir():
                    raise UserError(f"media folder not found: {explicit}")
                return explicit
            candidate = root / default_name
            return candidate if candidate.is_dir() else root

        return cls(audio=pick(audio, "audio_v5_0"), video=pick(video, "video_v5_0"))

    def wav(self, stem: str) -> Path:
        return self.audio / f"{stem}.wav"

    def mp4(self, stem: str) -> Path:
        return self.video / f"{stem}.mp4"
