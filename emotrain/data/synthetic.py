"""A small, learnable corpus in the real AvaMERG layout (``emotrain synth``).

Why it exists: the real corpus cannot be shipped to tests, and random data cannot show that a
model learns. This corpus has the real folder layout and JSON schema (``train.json``,
``audio_v5_0/dia{id}utt{index}_{ID}.wav``, ``video_v5_0/...mp4``), AvaMERG's 7-class imbalance,
and a *known, partial* class signal in each modality, carried by each turn's current speaker
utterance (index ``2 * turn_id``):

- audio: one of 7 well-separated pitches and one of 7 amplitude-modulation ("rhythm") rates;
- video: one of 7 hues (a moving blob and a tint of the background) and one of 7 motion directions;
- text: two cue words of the class in the utterance.

Per turn and per modality the signal is drawn independently: *informative* (the turn's class),
a *decoy* (a uniformly drawn class) or *neutral* (no class cue), with the shares in
:class:`SynthSpec`. Audio and video therefore fail on different turns, so model A (audio + text)
and model B (video + text) make different mistakes and late fusion can beat both. Listener
utterances are always neutral. Every speaker utterance is the current utterance of its own turn,
so in later turns it still carries that earlier turn's cues as history.

Unlike the real corpus, whose ``context`` names the emotion in about half of the records, the
context, topic, profiles, ``event_scenario``, ``emotion_cause`` and ``goal_to_response`` are drawn
independently of the label here: the three signals above are the only class information, so a
score measures what a model learned from them.

Determinism: everything about conversation ``i`` comes from ``numpy.random.default_rng([seed, i])``
(media from per-clip generators keyed the same way), so the output does not depend on the number of
workers, and the JSON is the same whether media are written or not.
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing
import re
import shutil
import string
from dataclasses import dataclass, field
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile

from emotrain.log import progress as progress_of
from emotrain.errors import UserError
from emotrain.files import write_atomic
from emotrain.labels import load_scheme

TARGET_SCHEME = "ekman7"
SOURCE_SCHEME = "ed32"
AUDIO_DIR = "audio_v5_0"
VIDEO_DIR = "video_v5_0"
JSON_NAME = "train.json"
VIDEO_SIZE_RANGE = (16, 1024)
FPS_RANGE = (1, 60)
KEYFRAME_RANGE = (1, 1000)

# Support per class in the real AvaMERG test split: the imbalance the corpus reproduces.
AVAMERG_SUPPORT = {
    "sad": 2536.0, "happy": 1150.0, "angry": 399.0, "surprised": 361.0,
    "fear": 297.0, "contempt": 107.0, "disgusted": 89.0,
}


@dataclass
class SynthSpec:
    """How the corpus looks and how strong each modality's class signal is.

    The defaults let a tiny model per modality learn well above chance from a few hundred
    conversations while leaving each modality wrong on a different third of the turns.
    """

    # Share of turns whose current speaker utterance carries the turn's true class, per modality.
    audio_informative: float = 0.65
    video_informative: float = 0.65
    text_informative: float = 0.35
    # Of the other turns, the share carrying a uniformly drawn class instead of a neutral cue.
    decoy_share: float = 0.3
    # Share of later turns whose emotion is drawn afresh (otherwise it keeps the previous one).
    emotion_change_share: float = 0.1
    # Share of later turns labelled with a free-form word instead of an EmpatheticDialogues one,
    # and of those, the share using a word the target scheme does not map (an unlabelled turn).
    free_form_share: float = 0.03
    unmapped_share: float = 0.5
    # Clip length range (seconds), and share of wavs written at 22.05 or 44.1 kHz instead of 16 kHz.
    min_seconds: float = 1.0
    max_seconds: float = 4.0
    resample_share: float = 0.2
    # Noise: white noise std in audio (peak 0.5), relative pitch/rate jitter, hue and direction
    # jitter (degrees), pixel noise std in video (0..1 scale).
    audio_noise: float = 0.05
    pitch_jitter: float = 0.03
    hue_jitter: float = 10.0
    direction_jitter: float = 15.0
    video_noise: float = 0.03
    video_size: int = 64
    fps: int = 8
    # Frames from one keyframe to the next (x264's keyint); 250 is x264's default, as most real clips
    # are encoded, so a clip of 5.7 s at 25 fps has a single keyframe.
    keyframe_interval: int = 250
    # Relative class frequency under the target scheme (ekman7); defaults to AvaMERG's.
    class_weights: dict[str, float] = field(default_factory=lambda: dict(AVAMERG_SUPPORT))

    def validate(self) -> None:
        shares = (
            "audio_informative", "video_informative", "text_informative", "decoy_share",
            "emotion_change_share", "free_form_share", "unmapped_share", "resample_share",
        )
        for name in shares:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if not 0.2 <= self.min_seconds <= self.max_seconds <= 30.0:
            raise ValueError(
                f"need 0.2 <= min_seconds <= max_seconds <= 30, got {self.min_seconds}, {self.max_seconds}"
            )
        low, high = VIDEO_SIZE_RANGE
        if not low <= self.video_size <= high or self.video_size % 2:
            raise ValueError(f"video_size must be an even number in [{low}, {high}], got {self.video_size}")
        if not FPS_RANGE[0] <= self.fps <= FPS_RANGE[1]:
            raise ValueError(f"fps must lie in [{FPS_RANGE[0]}, {FPS_RANGE[1]}], got {self.fps}")
        if not KEYFRAME_RANGE[0] <= self.keyframe_interval <= KEYFRAME_RANGE[1]:
            raise ValueError(f"keyframe_interval must lie in {list(KEYFRAME_RANGE)}, got {self.keyframe_interval}")
        for name in ("audio_noise", "pitch_jitter", "hue_jitter", "direction_jitter", "video_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        classes = _labels().classes
        if set(self.class_weights) != set(classes):
            raise ValueError(f"class_weights must name exactly the classes {list(classes)}")
        if any(w < 0 for w in self.class_weights.values()) or sum(self.class_weights.values()) <= 0:
            raise ValueError("class_weights must be non-negative with a positive sum")


# --- the class signal --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassCue:
    """What a class looks, sounds and reads like in this corpus."""

    pitch_hz: float  # fundamental frequency, geometric steps of ~1.29x
    rate_hz: float  # amplitude-modulation rate
    hue_deg: float  # 7 hues 51.4 degrees apart
    direction_deg: float  # motion direction of the blob (0 = right, 90 = up)
    words: tuple[str, ...]  # cue words in the speaker's utterance


CUES: dict[str, ClassCue] = {
    "happy": ClassCue(340.0, 6.0, 51.4, 0.0, ("wonderful", "sunny", "delightful", "cheerful")),
    "surprised": ClassCue(720.0, 8.0, 308.6, 51.4, ("unexpected", "sudden", "astonishing", "unbelievable")),
    "angry": ClassCue(436.0, 7.0, 0.0, 102.9, ("outrageous", "unfair", "infuriating", "rude")),
    "fear": ClassCue(561.0, 5.0, 154.3, 154.3, ("dark", "dangerous", "creepy", "threatening")),
    "sad": ClassCue(160.0, 2.0, 205.7, 205.7, ("gloomy", "tearful", "empty", "painful")),
    "disgusted": ClassCue(206.0, 3.0, 102.9, 257.1, ("gross", "filthy", "rotten", "nasty")),
    "contempt": ClassCue(264.0, 4.0, 257.1, 308.6, ("pathetic", "worthless", "lame", "inferior")),
}
# Neutral voices sit below every class pitch, by the avatar's timbre.
NEUTRAL_PITCH_HZ = {"low": 95.0, "mid": 110.0, "high": 125.0}

# --- conversations: avatars, topics and text (class-independent apart from the cue words) -------

# ID, age, gender, timbre, background grey level of the avatar's video.
AVATARS: tuple[tuple[int, str, str, str, float], ...] = (
    (1, "young", "female", "high", 0.30), (2, "young", "male", "mid", 0.36),
    (3, "middle-aged", "female", "mid", 0.42), (4, "middle-aged", "male", "low", 0.48),
    (5, "elderly", "female", "mid", 0.54), (6, "elderly", "male", "low", 0.60),
    (7, "child", "female", "high", 0.33), (8, "child", "male", "high", 0.39),
    (9, "young", "female", "mid", 0.45), (10, "young", "male", "low", 0.51),
    (11, "middle-aged", "female", "high", 0.57), (12, "elderly", "male", "mid", 0.63),
)
TURN_COUNT_P = (0.15, 0.30, 0.30, 0.25)  # 1 to 4 turns per conversation
UNMAPPED_WORDS = ("bewildered", "confused", "indifferent")

TOPIC_NOUNS: dict[str, tuple[str, ...]] = {
    "work": ("project", "meeting", "boss", "office", "deadline", "promotion"),
    "family": ("dinner", "wedding", "visit", "phone call", "birthday", "holiday"),
    "school": ("exam", "teacher", "homework", "class", "grade", "library"),
    "travel": ("flight", "hotel", "trip", "train", "beach", "passport"),
    "health": ("doctor", "checkup", "medicine", "gym", "diet", "hospital"),
    "friendship": ("party", "message", "game", "concert", "gift", "plan"),
}
EVENT_SCENARIOS = (
    "personal event", "social interaction", "work event", "family matter", "unexpected news", "daily routine",
)
RELATIONS = ("friend", "neighbour", "coworker", "sister", "brother", "mother", "father", "roommate")
TIMES = ("yesterday", "last week", "this morning", "last night", "a few days ago", "over the weekend", "recently")
CONTEXT_VERBS = ("talked about", "dealt with", "thought about", "worked on", "heard about", "went over")
OPENERS = ("well,", "so,", "honestly,", "you know,", "i think", "guess what,", "okay so")
SPEAKER_VERBS = ("saw", "had", "went to", "got", "found", "remembered", "checked")
CUE_TAILS = ("and it felt so {0}", "and it was {0} and {1}", "it was really {0}", "and it was {0}, even {1}")
NEUTRAL_TAILS = ("and it was a normal day", "and that was about it", "and then i went home", "like i do most days")
LISTENER_OPENERS = ("oh,", "i see,", "wow,", "hmm,", "okay,", "right,", "really,")
LISTENER_FOLLOWS = (
    "how did that happen?", "what did you do next?", "tell me more about the {0}.", "i am listening.",
    "how do you feel now?", "what happened with the {0}?", "that must have been quite something.",
)
CONTEXT_TEMPLATE = "i {0} the {1} with my {2} {3}."
SPEAKER_TEMPLATE = "{0} i {1} the {2} {3} {4}."
CAUSE_TEMPLATE = "the speaker {0} the {1} with their {2}."
GOALS = (
    "the listener wants to understand what happened.", "the listener wants to ask about the details.",
    "the listener wants to show support.", "the listener wants to keep the conversation going.",
    "the listener wants to offer some advice.",
)


@dataclass(frozen=True)
class _Labels:
    """Label words by class of the target scheme, derived from the scheme files."""

    classes: tuple[str, ...]
    source_words: dict[str, tuple[str, ...]]  # class -> the EmpatheticDialogues words it absorbs
    free_words: dict[str, tuple[str, ...]]  # class -> other (free-form) words it maps
    all_words: tuple[str, ...]


@lru_cache(maxsize=1)
def _labels() -> _Labels:
    target, source = load_scheme(TARGET_SCHEME), load_scheme(SOURCE_SCHEME)
    if set(CUES) != set(target.classes):
        raise ValueError(f"CUES must cover exactly the {TARGET_SCHEME} classes {target.classes}")
    source_words: dict[str, list[str]] = {c: [] for c in target.classes}
    for word in source.classes:
        index = target.index(word)
        if index is None:
            raise ValueError(f"{TARGET_SCHEME} does not map the {SOURCE_SCHEME} word {word!r}")
        source_words[target.classes[index]].append(word)
    empty = [c for c, words in source_words.items() if not words]
    if empty:
        raise ValueError(f"no {SOURCE_SCHEME} word maps to {empty} under {TARGET_SCHEME}")
    free_words = {
        c: tuple(w for w in target.words.get(c, []) if w not in source.classes and w != c) for c in target.classes
    }
    mapped = [w for w in UNMAPPED_WORDS if target.index(w) is not None]
    if mapped:
        raise ValueError(f"UNMAPPED_WORDS {mapped} are mapped by {TARGET_SCHEME}")
    all_words = tuple(source.classes) + tuple(w for ws in free_words.values() for w in ws) + UNMAPPED_WORDS
    return _Labels(
        classes=tuple(target.classes),
        source_words={c: tuple(ws) for c, ws in source_words.items()},
        free_words=free_words,
        all_words=all_words,
    )


# --- planning a conversation (JSON + what each clip must show) ---------------------------------


@dataclass(frozen=True)
class ClipPlan:
    """One utterance's media: who, how long, and which class cue (None = neutral) it carries."""

    stem: str
    avatar: int
    timbre: str
    grey: float
    seconds: float
    sample_rate: int
    audio_class: str | None
    video_class: str | None


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _sentence(text: str) -> str:
    text = re.sub(r"\bi\b", "I", text)
    return text[0].upper() + text[1:] if text else text


def _draw_class(rng: np.random.Generator, classes: tuple[str, ...], spec: SynthSpec) -> str:
    weights = np.array([spec.class_weights[c] for c in classes], dtype=float)
    return classes[int(rng.choice(len(classes), p=weights / weights.sum()))]


def _signal(
    rng: np.random.Generator, informative: float, decoy: float, label: str, classes: tuple[str, ...]
) -> str | None:
    """The class a modality shows for one turn: the true one, a decoy, or None (neutral)."""
    informs, decoys, decoy_class = rng.random(), rng.random(), classes[int(rng.integers(len(classes)))]
    if informs < informative:
        return label
    return decoy_class if decoys < decoy else None


def _speaker_line(rng: np.random.Generator, topic: str, cue: str | None) -> str:
    opener, verb = _pick(rng, OPENERS), _pick(rng, SPEAKER_VERBS)
    noun, time = _pick(rng, TOPIC_NOUNS[topic]), _pick(rng, TIMES)
    if cue is None:
        tail = _pick(rng, NEUTRAL_TAILS)
    else:
        first, second = rng.choice(len(CUES[cue].words), size=2, replace=False)
        tail = _pick(rng, CUE_TAILS).format(CUES[cue].words[first], CUES[cue].words[second])
    return _sentence(SPEAKER_TEMPLATE.format(opener, verb, noun, time, tail))


def _listener_line(rng: np.random.Generator, topic: str) -> str:
    follow = _pick(rng, LISTENER_FOLLOWS).format(_pick(rng, TOPIC_NOUNS[topic]))
    return _sentence(f"{_pick(rng, LISTENER_OPENERS)} {follow}")


def _label_word(rng: np.random.Generator, labels: _Labels, label: str, word: str, spec: SynthSpec) -> str:
    """A later turn's label word: usually the conversation's, sometimes free-form."""
    if rng.random() >= spec.free_form_share:
        return word
    if rng.random() < spec.unmapped_share:
        return _pick(rng, UNMAPPED_WORDS)
    return _pick(rng, labels.free_words[label]) if labels.free_words[label] else word


def plan_conversation(index: int, seed: int, spec: SynthSpec) -> tuple[dict[str, Any], list[ClipPlan]]:
    """Conversation ``index`` of the corpus for ``seed``: its JSON record and its clips."""
    labels = _labels()
    rng = np.random.default_rng([seed, index])
    cid = f"{index + 1:05d}"
    topic = _pick(rng, tuple(TOPIC_NOUNS))
    speaker_pos, listener_pos = rng.choice(len(AVATARS), size=2, replace=False)
    avatars = {"speaker": AVATARS[int(speaker_pos)], "listener": AVATARS[int(listener_pos)]}
    n_turns = 1 + int(rng.choice(len(TURN_COUNT_P), p=TURN_COUNT_P))
    noun, relation, time = _pick(rng, TOPIC_NOUNS[topic]), _pick(rng, RELATIONS), _pick(rng, TIMES)
    context = _sentence(CONTEXT_TEMPLATE.format(_pick(rng, CONTEXT_VERBS), noun, relation, time))
    scenario = _pick(rng, EVENT_SCENARIOS)
    label = _draw_class(rng, labels.classes, spec)
    word = _pick(rng, labels.source_words[label])

    history: list[dict[str, Any]] = []
    clips: list[ClipPlan] = []
    turns: list[dict[str, Any]] = []
    response = ""

    def add(role: str, text: str, audio_class: str | None, video_class: str | None) -> None:
        utt_index = len(history)
        history.append({"index": utt_index, "role": role, "utterance": text})
        avatar_id, _, _, timbre, grey = avatars[role]
        sample_rate = 16_000
        seconds = round(float(rng.uniform(spec.min_seconds, spec.max_seconds)), 2)
        if rng.random() < spec.resample_share:
            sample_rate = (22_050, 44_100)[int(rng.integers(2))]
        clips.append(ClipPlan(f"dia{cid}utt{utt_index}_{avatar_id}", avatar_id, timbre, grey, seconds,
                              sample_rate, audio_class, video_class))

    for turn_id in range(n_turns):
        spoken = word
        if turn_id > 0:
            add("listener", response, None, None)
            if rng.random() < spec.emotion_change_share:
                label = _draw_class(rng, labels.classes, spec)
                word = _pick(rng, labels.source_words[label])
            spoken = _label_word(rng, labels, label, word, spec)
        audio, video, text = (
            _signal(rng, share, spec.decoy_share, label, labels.classes)
            for share in (spec.audio_informative, spec.video_informative, spec.text_informative)
        )
        add("speaker", _speaker_line(rng, topic, text), audio, video)
        response = _listener_line(rng, topic)
        cause_args = (_pick(rng, CONTEXT_VERBS), _pick(rng, TOPIC_NOUNS[topic]), _pick(rng, RELATIONS))
        cause = _sentence(CAUSE_TEMPLATE.format(*cause_args))
        goals = rng.choice(len(GOALS), size=1 + int(rng.integers(2)), replace=False)
        turns.append({
            "turn_id": turn_id,
            "context": context,
            "dialogue_history": [dict(u) for u in history],
            "response": response,
            "chain_of_empathy": {
                "speaker_emotion": spoken,
                "event_scenario": scenario,
                "emotion_cause": cause,
                "goal_to_response": " ".join(_sentence(GOALS[int(g)]) for g in goals),
            },
        })

    def profile(role: str) -> dict[str, Any]:
        avatar_id, age, gender, timbre, _ = avatars[role]
        return {"ID": avatar_id, "age": age, "gender": gender, "timbre": timbre}

    record = {
        "conversation_id": cid,
        "topic": topic,
        "speaker_profile": profile("speaker"),
        "listener_profile": profile("listener"),
        "turns": turns,
    }
    return record, clips


# --- rendering media ---------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, amount: float) -> float:
    return float(rng.uniform(-amount, amount))


def render_audio(clip: ClipPlan, spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """A voiced tone at the cue's pitch, pulsing at the cue's rate; neutral: low pitch, irregular syllables."""
    n = max(1, round(clip.seconds * clip.sample_rate))
    t = np.arange(n) / clip.sample_rate
    if clip.audio_class is None:
        f0 = NEUTRAL_PITCH_HZ[clip.timbre] * (1 + _jitter(rng, spec.pitch_jitter))
        envelope = np.full(n, 0.15)
        for _ in range(max(1, round(clip.seconds * rng.uniform(2.0, 5.0)))):
            centre, width = rng.uniform(0, clip.seconds), rng.uniform(0.04, 0.12)
            envelope += np.exp(-0.5 * ((t - centre) / width) ** 2)
        envelope = np.minimum(envelope, 1.0)
    else:
        cue = CUES[clip.audio_class]
        f0 = cue.pitch_hz * (1 + _jitter(rng, spec.pitch_jitter))
        rate = cue.rate_hz * (1 + _jitter(rng, spec.pitch_jitter))
        envelope = 0.55 + 0.45 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    phases = rng.uniform(0, 2 * np.pi, 4)
    voice = sum(0.5**h * np.sin(2 * np.pi * (h + 1) * f0 * t + phases[h]) for h in range(4))
    wave = voice * envelope
    wave *= 0.5 / max(float(np.abs(wave).max()), 1e-9)
    wave += rng.normal(0.0, spec.audio_noise, n)
    fade = min(n // 2, round(0.01 * clip.sample_rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[n - fade:] *= ramp[::-1]
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def render_video(clip: ClipPlan, spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """uint8 frames [T, S, S, 3]: a blob on a grey background, both tinted and moving by the cue."""
    size, fps = spec.video_size, spec.fps
    frames_n = max(1, round(clip.seconds * fps))
    background = np.full(3, clip.grey)
    if clip.video_class is None:
        blob = np.full(3, 0.8)
        angle, speed = rng.uniform(0, 2 * np.pi), 0.05
    else:
        cue = CUES[clip.video_class]
        hue = (cue.hue_deg + _jitter(rng, spec.hue_jitter)) % 360.0
        blob = np.array(colorsys.hsv_to_rgb(hue / 360.0, 0.9, 0.95))
        background = 0.6 * background + 0.4 * blob
        angle, speed = math.radians(cue.direction_deg + _jitter(rng, spec.direction_jitter)), 0.5
    start = rng.uniform(0, size, 2)
    step = np.array([math.cos(angle), -math.sin(angle)]) * speed * size / fps  # (x, y) per frame; y grows down
    radius = 0.2 * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = np.empty((frames_n, size, size, 3), dtype=np.uint8)
    for i in range(frames_n):  # frame by frame: a 5.7 s clip at 512 px would take ~1 GB as one float array
        cx, cy = start + i * step
        dx = (xx - cx + size / 2) % size - size / 2  # the blob wraps around the edges
        dy = (yy - cy + size / 2) % size - size / 2
        inside = (dx * dx + dy * dy) < radius * radius
        frame = np.where(inside[..., None], blob, background).astype(np.float32)
        # Drawn frame by frame, the noise is the same stream one draw for the whole clip would give.
        frame += rng.normal(0.0, spec.video_noise, frame.shape).astype(np.float32)
        frames[i] = np.clip(frame, 0.0, 1.0) * 255.0 + 0.5
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int, keyframe_interval: int = 250) -> None:
    """H.264 yuv420p with the same bytes on every run, a keyframe every ``keyframe_interval`` frames at most.

    Single-threaded, and without x264's macroblock tree: with it, short clips came out
    differently depending on what the process had encoded before.
    """
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast", "x264-params": f"mbtree=0:keyint={keyframe_interval}"}
        stream.codec_context.thread_count = 1
        for pts, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = pts  # in the stream's 1/fps time base
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


def write_clip(out_dir: Path, clip: ClipPlan, spec: SynthSpec, rng: np.random.Generator) -> None:
    wave = render_audio(clip, spec, rng)
    soundfile.write(out_dir / AUDIO_DIR / f"{clip.stem}.wav", wave, clip.sample_rate, subtype="PCM_16")
    write_mp4(out_dir / VIDEO_DIR / f"{clip.stem}.mp4", render_video(clip, spec, rng), spec.fps, spec.keyframe_interval)


# index, seed, spec, output folder (None: JSON only)
_Job = tuple[int, int, SynthSpec, Path | None]


def _build(job: _Job) -> tuple[dict[str, Any], int, float]:
    """One conversation (a worker's task): its record, and the clips and seconds of media written.

    Without an output folder only the record is made.
    """
    index, seed, spec, out_dir = job
    record, clips = plan_conversation(index, seed, spec)
    if out_dir is None:
        return record, 0, 0.0
    for pos, clip in enumerate(clips):
        write_clip(out_dir, clip, spec, np.random.default_rng([seed, index, pos, 1]))
    return record, len(clips), sum(c.seconds for c in clips)


def _built(jobs: list[_Job], workers: int) -> Iterator[tuple[dict[str, Any], int, float]]:
    """Results in conversation order, from this process or a pool (spawned: no inherited threads)."""
    if workers == 1:
        yield from map(_build, jobs)
        return
    chunksize = max(1, min(16, len(jobs) // (4 * workers)))
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(_build, jobs, chunksize=chunksize)


# --- the corpus --------------------------------------------------------------------------------


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder")
    existing = [name for name in (JSON_NAME, AUDIO_DIR, VIDEO_DIR) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise UserError(
            f"{out_dir} already holds a corpus ({', '.join(existing)}); choose another folder or pass --overwrite"
        )
    for name in existing:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for name in (AUDIO_DIR, VIDEO_DIR):
        (out_dir / name).mkdir(parents=True, exist_ok=True)


def generate_corpus(
    out_dir: Path,
    conversations: int,
    seed: int,
    spec: SynthSpec | None = None,
    workers: int = 1,
    progress: bool = True,
    *,
    media: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``train.json`` (and, with ``media``, every clip) under ``out_dir``; return counts.

    ``media=False`` writes the JSON only, identical to the full run's: for tests of the labels
    and text at sizes where rendering clips would be slow.
    """
    spec = spec or SynthSpec()
    if conversations < 1:
        raise UserError(f"--conversations must be at least 1, got {conversations}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    try:
        spec.validate()
    except ValueError as err:
        raise UserError(f"synthetic corpus spec: {err}") from None
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    jobs = [(i, seed, spec, out_dir if media else None) for i in range(conversations)]
    records: list[dict[str, Any]] = []
    clips, seconds = 0, 0.0
    with progress_of(total=conversations, desc="synth", unit="conv", disable=not progress) as bar:
        for record, n_clips, n_seconds in _built(jobs, workers):
            records.append(record)
            clips += n_clips
            seconds += n_seconds
            bar.update()
    write_atomic(out_dir / JSON_NAME, json.dumps(records, indent=2, ensure_ascii=False) + "\n")

    scheme = load_scheme(TARGET_SCHEME)
    words = [t["chain_of_empathy"]["speaker_emotion"] for r in records for t in r["turns"]]
    return {
        "out_dir": str(out_dir),
        "conversations": len(records),
        "turns": len(words),
        "unlabelled_turns": sum(scheme.index(w) is None for w in words),
        "clips": clips,
        "seconds": round(seconds, 2),
    }


# --- the tokenizer vocabulary ------------------------------------------------------------------

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def corpus_strings() -> list[str]:
    """Every piece of text the generator can emit (templates without their placeholders)."""
    texts: list[str] = [*TOPIC_NOUNS, *EVENT_SCENARIOS, *RELATIONS, *TIMES, *CONTEXT_VERBS, *OPENERS,
                        *SPEAKER_VERBS, *CUE_TAILS, *NEUTRAL_TAILS, *LISTENER_OPENERS, *LISTENER_FOLLOWS,
                        CONTEXT_TEMPLATE, SPEAKER_TEMPLATE, CAUSE_TEMPLATE, *GOALS, *_labels().all_words]
    texts += [w for nouns in TOPIC_NOUNS.values() for w in nouns]
    texts += [w for cue in CUES.values() for w in cue.words]
    texts += [" ".join(a[1:4]) for a in AVATARS]
    return [re.sub(r"\{\d*\}", " ", t) for t in texts]


def vocab_tokens() -> list[str]:
    """WordPiece vocabulary: specials, every word used (lower-cased), then single characters."""
    words = sorted({tok for text in corpus_strings() for tok in _TOKEN.findall(text.lower())})
    chars = list(string.ascii_lowercase) + list(string.digits)
    pieces = chars + list(string.punctuation) + [f"##{c}" for c in chars]
    return list(dict.fromkeys([*SPECIAL_TOKENS, *words, *pieces]))


def write_vocab(path: Path) -> None:
    """Write ``vocab.txt`` for ``BertTokenizerFast``: any synthetic text tokenises without [UNK]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "\n".join(vocab_tokens()) + "\n")
