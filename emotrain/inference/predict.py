"""Apply a bundle to conversations: the Python API, and the scoring and fusion ``emotrain predict`` runs.

One code path from bytes to probabilities: a conversation record is read by the AvaMERG reader
(:func:`emotrain.data.avamerg.parse_conversation`), its clips found by :mod:`emotrain.data.clips`
and turned into the very sample ``pack`` writes into a shard
(:func:`emotrain.data.pack.encode_conversation`); the loader's turn expander and collate
(:mod:`emotrain.data.stream`) make the batches, and :func:`emotrain.evaluation.scoring.score_batch`
scores them as ``evaluate`` does. Shards go through the loader itself. Then each model's logits
are calibrated with its temperature, and the strategy chosen on val fuses them where both models
had their medium; where only one had, the fused column is that calibrated model (the fallback
``fuse`` uses), and the row says which path was taken.

Example::

    from emotrain.inference.predict import Predictor
    predictor = Predictor.load("bundle/")
    result = predictor.predict_conversation(record, media="corpus/")   # or {"dia00001utt0_3.wav": b"...", ...}
    for turn in result.turns:
        print(turn.key, turn.label, turn.path, turn.probs["fused"])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emotrain.data.avamerg import EMPTY_TURNS, MediaDirs, RecordError, Skipped, parse_conversation
from emotrain.data.clips import ClipSource, FolderClips, MemoryClips
from emotrain.data.manifest import Manifest
from emotrain.data.pack import encode_conversation
from emotrain.data.schema import UNLABELLED
from emotrain.data.stream import SkipCounter, TurnExpander, as_tensors, build_loader, collate_turns
from emotrain.errors import UserError
from emotrain.evaluation.gather import Scored
from emotrain.evaluation.scoring import model_predictor, score_batch, score_batches
from emotrain.fusion.calibration import scaled_log_probs
from emotrain.inference.bundle import Bundle, load_bundle

if TYPE_CHECKING:
    from emotrain.inference.media import Cue, MediaLimits, MediaPrediction, Transcriber

MAX_CLIP_BYTES = 64 * 2**20  # the pack's default --max-clip-mb
FUSED, TEXT_ONLY = "fused", "fused_text_only"  # paths besides the model names (audio / video: that model alone)


@dataclass
class TurnPrediction:
    """One turn: the predicted label, the probabilities of the fused system and of each calibrated model,
    which media each model had, and which path produced the fused column."""

    key: str
    conversation_id: str
    turn_id: int
    label: str
    path: str  # fused | fused_text_only | audio | video
    present: dict[str, bool]  # model name -> its medium was there
    probs: dict[str, np.ndarray]  # "fused" and each model name -> [C]

    def row(self, classes: list[str]) -> dict[str, Any]:
        """The JSONL record of this turn."""
        return {
            "key": self.key, "conversation_id": self.conversation_id, "turn_id": self.turn_id, "label": self.label,
            "path": self.path, "present": self.present,
            "probs": {system: {c: float(p) for c, p in zip(classes, probs)} for system, probs in self.probs.items()},
        }


@dataclass
class ConversationPrediction:
    """What the Python API returns for one conversation: its turns and what was skipped in it, with why."""

    turns: list[TurnPrediction]
    skipped: list[Skipped] = field(default_factory=list)


def split_key(key: str) -> tuple[str, int]:
    """``{conversation_id}_{turn_id}`` -> (conversation id, turn id); the turn id holds no underscore."""
    conversation_id, _, turn_id = key.rpartition("_")
    return conversation_id, int(turn_id)


class Predictor:
    """A loaded bundle that scores conversation samples and fuses the models' outputs."""

    def __init__(self, bundle: Bundle, device: torch.device | None = None):
        self.bundle = bundle
        self.device = device or torch.device("cpu")
        self.predict_fns = {name: model_predictor(m.module, self.device, m.entry.bf16) for name, m in bundle.models.items()}
        self._reused: dict[str, TurnExpander] | None = None  # expand()'s expanders, built on first use

    @classmethod
    def load(cls, bundle_dir: str | Path, device: torch.device | None = None) -> "Predictor":
        return cls(load_bundle(bundle_dir, device), device)

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    def _expanders(self, counter: SkipCounter) -> dict[str, TurnExpander]:
        return {name: TurnExpander(replace(m.data, turns="all"), m.modalities, m.vocab, False, counter, seed=0,
                                   unlabelled=True)
                for name, m in self.bundle.models.items()}

    @torch.no_grad()
    def score_samples(self, samples: Iterable[dict[str, Any]], counter: SkipCounter,
                      batch_size: int | None = None) -> dict[str, Scored]:
        """Each model's logits (and medium presence) for every turn of the conversation samples, batched as
        the loader batches them (``batch_size``: default each model's eval batch size)."""
        expanders = self._expanders(counter)
        models = self.bundle.models
        sizes = {name: batch_size or m.entry.batch_size for name, m in models.items()}
        scored = {name: Scored.empty(len(self.classes)) for name in models}
        pending: dict[str, list[dict[str, Any]]] = {name: [] for name in models}

        def flush(name: str, count: int) -> None:
            self._score_chunk(name, pending[name][:count], expanders[name].tokenizer.pad_token_id, scored[name])
            pending[name] = pending[name][count:]

        for sample in samples:
            for name in models:
                pending[name].extend(expanders[name](sample))
                while len(pending[name]) >= sizes[name]:
                    flush(name, sizes[name])
        for name in models:
            if pending[name]:
                flush(name, len(pending[name]))
        return scored

    def _score_chunk(self, name: str, turns: list[dict[str, Any]], pad_id: int, into: Scored) -> None:
        """One forward pass of model ``name`` over ``turns`` (collated as the loader collates them)."""
        model = self.bundle.models[name]
        batch = collate_turns(turns, model.data, model.modalities, pad_id)
        score_batch(self.predict_fns[name], as_tensors(batch), into)

    def expand(self, sample: dict[str, Any], counter: SkipCounter) -> dict[str, list[dict[str, Any]]]:
        """Each model's turn inputs of one conversation sample, its clips decoded (the loader's expansion).

        With :meth:`score_turns`, the two halves of :meth:`score_samples` for a caller that decodes each
        conversation on its own and scores the turns of many together (the server: decoding per request,
        one forward pass for the turns of concurrent requests). The expanders are built once and reused:
        outside training they draw no random numbers, so reuse changes nothing."""
        if self._reused is None:
            self._reused = self._expanders(counter)
        for expander in self._reused.values():
            expander.counter = counter
        return {name: expander(sample) for name, expander in self._reused.items()}

    @torch.no_grad()
    def score_turns(self, turns: dict[str, list[dict[str, Any]]], batch_size: int | None = None) -> dict[str, Scored]:
        """Each model's logits for turn inputs from :meth:`expand` (of any number of conversations, in order),
        in forward passes of at most ``batch_size`` turns (default: each model's eval batch size)."""
        if self._reused is None:
            self._reused = self._expanders(SkipCounter())
        scored = {}
        for name, model in self.bundle.models.items():
            size = batch_size or model.entry.batch_size
            pad_id = self._reused[name].tokenizer.pad_token_id
            scored[name] = Scored.empty(len(self.classes))
            for start in range(0, len(turns[name]), size):
                self._score_chunk(name, turns[name][start:start + size], pad_id, scored[name])
        return scored

    def score_shards(self, manifest: Manifest, rank: int, world_size: int, num_workers: int | None,
                     progress: bool = False) -> tuple[dict[str, Scored], dict[str, int]]:
        """Each model's logits for every turn of this rank's shards of the manifest's split (the evaluate loader,
        with the bundle's vocabularies and unlabelled turns kept), and the loader's skip counts."""
        shards, split = manifest.location.parent, manifest.split
        scored, skipped = {}, {}
        for name, model in self.bundle.models.items():
            data = replace(model.data, shards=str(shards), turns="all",
                           num_workers=model.data.num_workers if num_workers is None else num_workers)
            loader, _ = build_loader(data, split, model.modalities, model.entry.batch_size, train=False, rank=rank,
                                     world_size=world_size, manifest=manifest, vocab=model.vocab,
                                     unlabelled=True)
            batches = _counting(loader, skipped)
            scored[name] = score_batches(self.predict_fns[name], batches, len(self.classes),
                                         progress=progress and rank == 0)
        return scored, skipped

    def combine(self, scored: dict[str, Scored]) -> list[TurnPrediction]:
        """Fused and per-model probabilities per turn, by conversation and then turn number (turn 10 after turn 9),
        from each model's gathered scores."""
        names = list(self.bundle.models)
        keys = sorted(set().union(*(s.keys for s in scored.values())), key=split_key)
        n, c = len(keys), len(self.classes)
        if n == 0:
            return []
        logits, calibrated, present = {}, {}, {}
        for name in names:
            rows = {k: i for i, k in enumerate(scored[name].keys)}
            index = np.array([rows.get(k, -1) for k in keys], dtype=np.int64)
            seen = index >= 0  # False: a turn this model could not read (its record failed for it alone)
            logits[name] = np.zeros((n, c), np.float64)
            logits[name][seen] = scored[name].logits[index[seen]]
            calibrated[name] = np.exp(scaled_log_probs(logits[name], self.bundle.info.models[name].temperature))
            calibrated[name][~seen] = np.nan
            present[name] = np.zeros(n, dtype=bool)
            present[name][seen] = scored[name].present[index[seen]]
        fused, paths = self._fuse(names, logits, calibrated, present)
        out = []
        for i, key in enumerate(keys):
            conversation_id, turn_id = split_key(key)
            probs = {"fused": fused[i], **{name: calibrated[name][i] for name in names}}
            out.append(TurnPrediction(key, conversation_id, turn_id, self.classes[int(np.argmax(fused[i]))],
                                      paths[i], {name: bool(present[name][i]) for name in names}, probs))
        return out

    def _fuse(self, names: list[str], logits: dict[str, np.ndarray], calibrated: dict[str, np.ndarray],
              present: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """The fused column and its path per turn: the strategy where both models had their medium (or neither:
        both then read text and metadata only), else the calibrated model that had it."""
        strategy = self.bundle.strategy
        if strategy is None:  # one model: it alone
            (name,) = names
            return calibrated[name], [name] * len(calibrated[name])
        has_a, has_v = present["audio"], present["video"]
        fused = strategy.predict_proba(logits["audio"], logits["video"])
        paths = np.where(has_a & has_v, FUSED, np.where(has_a, "audio", np.where(has_v, "video", TEXT_ONLY)))
        fused[has_a & ~has_v] = calibrated["audio"][has_a & ~has_v]
        fused[has_v & ~has_a] = calibrated["video"][has_v & ~has_a]
        for name, other in (("audio", "video"), ("video", "audio")):  # a model that could not read the turn at all
            lost = np.isnan(calibrated[name]).any(axis=1) & ~np.isnan(calibrated[other]).any(axis=1)
            fused[lost] = calibrated[other][lost]
            paths[lost] = other
        return fused, paths.tolist()

    def predict_conversation(self, record: Mapping[str, Any], media: str | Path | MediaDirs | Mapping[str, bytes],
                             batch_size: int | None = None) -> ConversationPrediction:
        """Every turn of one conversation record (the AvaMERG JSON schema; profiles, responses and chains may be
        absent) with its clips from a corpus folder, a :class:`MediaDirs`, or a mapping of clip file names
        (``dia{id}utt{index}_{ID}.wav`` / ``.mp4``) to bytes. A conversation with an empty turn list gives no turns
        and says so in ``skipped``; any other malformed record raises a one-line UserError."""
        sample, skipped = conversation_sample(record, media)
        if sample is None:
            return ConversationPrediction([], skipped)
        counter = SkipCounter(keep_reasons=True)
        turns = self.combine(self.score_samples([sample], counter, batch_size))
        return ConversationPrediction(turns, skipped + counter_skips(counter))

    def predict_media(self, media: str | Path | None = None, *, audio: str | Path | None = None,
                      transcript: str | Path | Sequence[Cue] | None = None, asr: str | Path | Transcriber | None = None,
                      speaker: str | None = None, explain: bool = False, limits: MediaLimits | None = None,
                      batch_size: int | None = None) -> MediaPrediction:
        """Every turn of a person's own recording: ``media`` a video (with or without its audio track) or an
        audio file, ``audio`` a separate audio file; ``transcript`` an SRT/WebVTT/JSON/text file or a list of
        :class:`Cue`, else ``asr`` (a Whisper hub name or folder, or a :class:`Transcriber`) finds the
        utterances. ``speaker``: whose emotion is predicted (default: the first named). ``explain``: each
        turn's attention over its history per model and each model's share in the fused decision. Bad
        input is a one-line UserError; what was clipped or could not be used is in the result's ``notes``
        and ``skipped``. See :mod:`emotrain.inference.media`."""
        from emotrain.inference.media.run import predict_media

        return predict_media(self, media, audio=audio, transcript=transcript, asr=asr, speaker=speaker,
                             explain=explain, limits=limits, batch_size=batch_size)


def conversation_sample(record: Mapping[str, Any], media: str | Path | MediaDirs | Mapping[str, bytes] | ClipSource
                        ) -> tuple[dict[str, Any] | None, list[Skipped]]:
    """The shard sample of one conversation record with its clips, and what was skipped in it; no sample for a
    conversation with an empty turn list (said in the skips); any other malformed record is a one-line UserError."""
    try:
        conversation, skipped = parse_conversation(record)
    except RecordError as err:
        cid = str(record.get("conversation_id", "?")) if isinstance(record, Mapping) else "?"
        if str(err) == EMPTY_TURNS:  # the official test.json holds such conversations: nothing to predict
            return None, [Skipped("conversation", cid, EMPTY_TURNS)]
        raise UserError(f"conversation {cid!r}: {err}") from None
    clips = clip_source(media)
    sample, clip_skips = encode(conversation, clips)
    if isinstance(clips, MemoryClips):
        clip_skips += [Skipped("clip", name, "no utterance of this conversation uses this name: not read")
                       for name in clips.unused()]
    return sample, skipped + clip_skips


def clip_source(media: str | Path | MediaDirs | Mapping[str, bytes] | ClipSource) -> ClipSource:
    """Where the API finds clips: a corpus folder (its ``audio_v5_0``/``video_v5_0`` or the folder itself),
    explicit folders, or bytes by file name."""
    if isinstance(media, ClipSource):
        return media
    if isinstance(media, MediaDirs):
        return FolderClips(media, MAX_CLIP_BYTES)
    if isinstance(media, (str, Path)):
        if not Path(media).is_dir():
            raise UserError(f"media folder not found: {media}")
        return FolderClips(MediaDirs.locate(Path(media)), MAX_CLIP_BYTES)
    if isinstance(media, Mapping):
        return MemoryClips(media)
    raise UserError(f"media must be a folder, MediaDirs or a mapping of file names to bytes, not {type(media).__name__}")


def encode(conversation: Any, clips: ClipSource) -> tuple[dict[str, Any], list[Skipped]]:
    """The shard sample of a conversation (every turn unlabelled: nothing to predict is read from the record)."""
    sample, skipped, _ = encode_conversation(conversation, [UNLABELLED] * len(conversation.turns), clips)
    return sample, skipped


def counter_skips(counter: SkipCounter) -> list[Skipped]:
    """What the turn expander refused (a clip that passed the pack's probe but did not decode, a bad record)."""
    kinds = {"bad_clips": "clip", "bad_conversations": "conversation", "shard_errors": "shard"}
    return [Skipped(kinds.get(kind, kind), what, reason) for kind, what, reason in counter.reasons or []]


def _counting(batches: Iterable[dict[str, Any]], totals: dict[str, int]) -> Iterator[dict[str, Any]]:
    """The batches, summing the loader's per-batch skip counters into ``totals``."""
    for batch in batches:
        for kind, count in batch.get("skipped", {}).items():
            totals[kind] = totals.get(kind, 0) + int(count)
        yield batch
