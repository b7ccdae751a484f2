"""WebDataset pipelines: conversation shards in, batches of turns out, on every rank and worker.

Stages, per dataloader worker: shard urls (``shardlists``: seeded, split by rank then worker)
-> tar members grouped into conversation samples (raw bytes; a broken member is skipped and
counted) -> shuffle buffer over the *raw* conversations (train only; decoding after the buffer
keeps worker memory flat) -> expand each conversation into its turn samples, decoding each clip
at most once per conversation -> collate into fixed-size batches (train: full batches only;
eval: a last partial batch). Counters of what was skipped ride along in every batch.

Batch contract (dict; B turns, U utterance slots, R distinct utterance texts, K distinct
context texts, C distinct clips, L token lengths):

- ``keys``: list[str] turn keys ``{conversation_id}_{turn_id}``
- ``labels``: LongTensor [B], class index (unlabelled turns are not yielded)
- ``utt_token_ids``, ``utt_token_mask``: LongTensor [R, Lu]: each distinct utterance token
  sequence of the batch once (turns of one conversation repeat each other's utterances; equal
  texts share a row wherever they occur), in order of first appearance, padded to the longest
  of those rows; ``utt_row``: LongTensor [B, U], the row of each utterance slot, -1 on padding
  slots (``utt_row >= 0`` equals ``utt_mask``). A turn's slots hold its last ``max_utterances``
  utterances, oldest first, left-aligned on U (padding slots at the end)
- ``utt_roles``: LongTensor [B, U], 0 = padding, 1 = speaker, 2 = listener
- ``utt_mask``: BoolTensor [B, U]; ``num_utts``: LongTensor [B]; the current (labelled)
  utterance is at ``num_utts - 1``
- ``ctx_token_ids``, ``ctx_token_mask``: LongTensor [K, Lc], each distinct context text of the
  batch once (built from ``text.context_fields``; with the default ``["context"]`` all turns
  of a conversation share one); ``ctx_row``: LongTensor [B], the row of each turn's context
- ``meta_ids``: LongTensor [B, len(META_FIELDS)], 0 = unknown
- audio models only: each distinct clip of the batch once (turns of one conversation repeat
  each other's utterances): ``audio`` FloatTensor [C, S] (16 kHz, zero-padded; S is the longest
  clip, at most ``max_seconds * 16000``), ``audio_lengths`` LongTensor [C] (real samples),
  ``audio_index`` LongTensor [B, U] (the row of ``audio`` holding each utterance's clip, -1 where
  there is none), ``audio_present`` BoolTensor [B, U] (``audio_index >= 0``)
- video models only: ``video`` ByteTensor [B, T, 3, H, W], uint8 RGB, the current utterance's
  clip (the model normalises it); H, W are at most ``image_size``: smaller clips keep their size
  (the model scales them up on its device) unless the batch mixes sizes; from prepared shards
  (``pack --prepare-video``, see :mod:`emotrain.data.prepared`) H = W = ``image_size``, as a
  channels-first view of channels-last frames; ``video_present`` BoolTensor [B]. With
  ``video.jpeg_decode: device`` on prepared shards the frames come undecoded instead:
  ``video_jpeg`` ByteTensor [N] (the batch's JPEG files back to back), ``video_jpeg_sizes``
  LongTensor [B, T] (bytes of each, 0 for a missing clip) and ``video_jpeg_side`` (int, their
  side in pixels); :func:`emotrain.models.inputs.model_inputs` decodes them on the model's device.
- ``skipped``: dict[str, int], what this batch's worker skipped since its previous batch
  (``shard_errors``, ``bad_conversations``, ``bad_clips``); the training loop sums them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import default_collate

from emotrain.data.frame_slots import FrameSlots, frames_buffer, media_zeros
from emotrain.data.frame_slots import install as install_frame_slots
from emotrain.data.manifest import Manifest
from emotrain.data.media import AudioConfig, MediaError, VideoConfig, decode_audio, decode_video, resize_frames
from emotrain.data.prepared import (
    FRAMES_SUFFIX, INDEX_SUFFIX, PreparedClip, PreparedVideo, check_fits, decode_into, frames_index_member,
    frames_member, pick_frames, split_frames,
)
from emotrain.data.schema import ROLE_IDS, UNLABELLED, mp4_member, wav_member
from emotrain.data.shardlists import ShardSource
from emotrain.data.tars import shard_samples
from emotrain.data.text import (
    MetadataEncoder, TextConfig, collate_token_batch, context_text, load_tokenizer, tokenize_turn,
)
from emotrain.config import path_field
from emotrain.errors import UserError
from emotrain.log import setup_logging
from emotrain.signals import ignore_stop_notices, stop_signals_blocked

log = logging.getLogger(__name__)

SKIP_KINDS = ("shard_errors", "bad_conversations", "bad_clips")
FORKSERVER = multiprocessing.get_context("forkserver")


def init_worker(worker_id: int) -> None:
    """A loader worker: the stop signals are its training process's to act on; its warnings (a skipped
    sample) go to the same log channel and folder logs as that process's."""
    ignore_stop_notices(worker_id)
    setup_logging()
# What loader workers import, loaded once by the fork server (a name that fails to import is skipped).
WORKER_PRELOAD = [__name__, "emotrain.data.worker_preload"]


@contextlib.contextmanager
def _fork_server_parent() -> Iterator[None]:
    """While the fork server starts: tell it (through its environment) which process it serves, so that it
    dies with that process (:func:`emotrain.signals.fork_server_dies_with_parent`)."""
    from emotrain.signals import PARENT_ENV

    before = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = str(os.getpid())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = before


@dataclass
class DataConfig:
    """Where the shards are and how turns become tensors (the run records all of it)."""

    shards: str = path_field(default="")  # the folder `emotrain pack --out` wrote (train/ val/ test/)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    turns: Literal["all", "last"] = "all"
    num_workers: int = 2
    shuffle_buffer: int = 64
    seed: int = 0

    def validate(self) -> None:
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0")
        if self.shuffle_buffer < 0:
            raise ValueError("shuffle_buffer must be >= 0")


@dataclass(frozen=True)
class Modalities:
    """Which media a model reads; the loader never decodes (or even reads) the others."""

    audio: bool
    video: bool


class SkipCounter:
    """Per-worker tally of skipped data; each batch takes (and resets) what accrued since the last."""

    def __init__(self, keep_reasons: bool = False) -> None:
        self.pending: Counter[str] = Counter()
        # predict reports every skip with its reason; training only counts them
        self.reasons: list[tuple[str, str, str]] | None = [] if keep_reasons else None

    def add(self, kind: str, what: str, reason: object) -> None:
        self.pending[kind] += 1
        if self.reasons is not None:
            self.reasons.append((kind, what, str(reason)))
        log.warning("skipping %s (%s): %s", what, kind, reason)

    def take(self) -> dict[str, int]:
        taken = {k: self.pending.get(k, 0) for k in SKIP_KINDS}
        self.pending.clear()
        return taken

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset handler: count a broken shard member and keep reading."""
        self.add("shard_errors", "tar member", exn)
        return True


class TurnExpander:
    """Conversation sample -> turn samples, decoding each needed clip once per conversation.

    ``unlabelled``: yield unlabelled turns too (label -1): what ``predict`` wants of new data;
    training and evaluation leave them out."""

    def __init__(self, cfg: DataConfig, modalities: Modalities, vocab: dict[str, list[str]], train: bool,
                 counter: SkipCounter, seed: int, unlabelled: bool = False, prepared: PreparedVideo | None = None):
        self.cfg, self.modalities, self.train, self.counter = cfg, modalities, train, counter
        self.unlabelled = unlabelled
        self.prepared = prepared  # the shards hold prepared frames instead of mp4s (the manifest's video)
        self.meta = MetadataEncoder(vocab)
        self.tokenizer = load_tokenizer(cfg.text.tokenizer)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reseed(self, ordinal: int) -> None:
        """Draw the augmentation of the ``ordinal``-th conversation this reader sees from its own
        generator: then a conversation's crops depend on its place in the stream only, not on what
        was decoded before it, and a resumed stream that skips ahead draws what the first run drew."""
        self.rng = np.random.default_rng([self.seed, ordinal])

    def _audio(self, sample: dict[str, Any], index: int, key: str) -> np.ndarray | None:
        data = sample.get(wav_member(index))
        if data is None:
            return None
        try:
            return decode_audio(data, self.cfg.audio, self.train, self.rng)
        except MediaError as err:
            self.counter.add("bad_clips", f"{key}/{wav_member(index)}", err)
            return None

    def _video(self, sample: dict[str, Any], index: int, key: str) -> torch.Tensor | list[memoryview] | None:
        """The clip's frames decoded (mp4), or its prepared frames still as JPEG (picked per turn)."""
        if self.prepared is not None:
            data, index_json = sample.get(frames_member(index)), sample.get(frames_index_member(index))
            if data is None and index_json is None:
                return None
            try:
                if data is None or index_json is None:
                    raise MediaError("prepared frames without their index, or an index without frames")
                return split_frames(data, index_json, self.prepared)
            except MediaError as err:
                self.counter.add("bad_clips", f"{key}/{frames_member(index)}", err)
                return None
        data = sample.get(mp4_member(index))
        if data is None:
            return None
        try:
            return decode_video(data, self.cfg.video, self.train, self.rng)
        except MediaError as err:
            self.counter.add("bad_clips", f"{key}/{mp4_member(index)}", err)
            return None

    def __call__(self, sample: dict[str, Any], decode: bool = True) -> list[dict[str, Any]]:
        """All labelled turns of one conversation, or none when its json is malformed.

        Built fully before anything is yielded, so a bad field in a later turn cannot leave
        half a conversation in the batches. ``decode=False`` leaves the media out (and draws no
        random numbers): the same turns, cheaply, for skipping ahead on resume.
        """
        key = sample.get("__key__", "?")
        try:
            return self._turns(sample, key, decode)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            self.counter.add("bad_conversations", key, err)
            return []

    def _turns(self, sample: dict[str, Any], key: str, decode: bool = True) -> list[dict[str, Any]]:
        record = json.loads(sample["json"])
        labels = json.loads(sample["labels.json"])
        turns = record["turns"]
        utterances = {u["index"]: u for u in record["utterances"]}
        if not isinstance(labels, list) or len(labels) != len(turns):
            raise ValueError("labels do not match turns")
        pairs = list(zip(turns, labels))
        if self.cfg.turns == "last":
            pairs = pairs[-1:]
        audio_cache: dict[int, Any] = {}
        video_cache: dict[int, Any] = {}
        token_memo: dict[tuple[str, int], np.ndarray] = {}
        out: list[dict[str, Any]] = []
        for turn, label in pairs:
            if label == UNLABELLED and not self.unlabelled:
                continue
            last = turn["last_utterance"]
            window = [utterances[i] for i in sorted(utterances) if i <= last][-self.cfg.text.max_utterances :]
            context = context_text(record, turn, self.cfg.text.context_fields)
            item = {
                "key": f"{key}_{turn['turn_id']}",
                "label": int(label),
                "tokens": tokenize_turn(self.tokenizer, [u["text"] for u in window], context, self.cfg.text,
                                        token_memo),
                "roles": [ROLE_IDS.get(u["role"], 0) for u in window],
                "meta_ids": self.meta.encode(record, turn),
            }
            if decode and self.modalities.audio:
                for u in window:
                    if u["index"] not in audio_cache:
                        audio_cache[u["index"]] = self._audio(sample, u["index"], key)
                item["audio"] = [audio_cache[u["index"]] for u in window]
            if decode and self.modalities.video:
                if last not in video_cache:
                    video_cache[last] = self._video(sample, last, key)
                clip = video_cache[last]
                if isinstance(clip, list):  # prepared: this turn's frames, drawn from its conversation's generator
                    clip = pick_frames(clip, self.cfg.video.num_frames, self.train and self.cfg.video.jitter, self.rng)
                item["video"] = clip
            out.append(item)
        return out


def collate_turns(samples: list[dict[str, Any]], cfg: DataConfig, modalities: Modalities, pad_id: int,
                  counter: SkipCounter | None = None) -> dict[str, Any]:
    """Stack turn samples into the batch contract described at the top of this module.

    The small fields come out as numpy arrays and the media as tensors (in shared memory inside
    a loader worker): see :class:`TurnLoader` for why, and for where the arrays become tensors.
    ``counter`` counts prepared frames that fail to decode here (their clip becomes missing).
    """
    batch_size = len(samples)
    num_utts = [len(s["roles"]) for s in samples]
    max_u = max(num_utts)
    batch: dict[str, Any] = {
        "keys": [s["key"] for s in samples],
        "labels": np.array([s["label"] for s in samples], dtype=np.int64),
        "num_utts": np.array(num_utts, dtype=np.int64),
        "meta_ids": np.stack([s["meta_ids"] for s in samples]).astype(np.int64, copy=False),
    }
    batch.update(collate_token_batch([s["tokens"] for s in samples], max_u, pad_id=pad_id))
    roles = np.zeros((batch_size, max_u), dtype=np.int64)
    for i, s in enumerate(samples):
        roles[i, : num_utts[i]] = s["roles"]
    batch["utt_roles"] = roles
    batch["utt_mask"] = roles > 0
    if modalities.audio:
        batch.update(collate_audio([s["audio"] for s in samples], max_u))
    if modalities.video:
        clips = [s["video"] for s in samples]
        if any(isinstance(c, PreparedClip) for c in clips):
            keys = [s["key"] for s in samples]
            batch.update(collate_prepared(clips, keys, cfg.video, counter or SkipCounter()))
        else:
            batch.update(video=stack_clips(clips, cfg.video), video_present=np.array([c is not None for c in clips]))
    return batch


def collate_prepared(clips: list[PreparedClip | None], keys: list[str], cfg: VideoConfig,
                     counter: SkipCounter) -> dict[str, Any]:
    """A batch's prepared clips, decoded here into the batch's shared memory, or kept as JPEG bytes
    for the model's device to decode (``jpeg_decode: device``): see the contract at the top.

    Decoded straight into the shared-memory batch (channels last, as libjpeg-turbo writes them)
    and sent as a channels-first view of it: the frames are written once and never copied in
    the worker. The JPEG bytes themselves are a few percent of the decoded frames.
    """
    frames, side = cfg.num_frames, cfg.image_size
    present = np.array([c is not None for c in clips])
    if cfg.jpeg_decode == "device":
        sizes = np.zeros((len(clips), frames), dtype=np.int64)
        for i, clip in enumerate(clips):
            if clip is not None:
                sizes[i] = [len(j) for j in clip.jpegs]
        data = media_zeros((int(sizes.sum()),), torch.uint8)
        flat, pos = data.numpy(), 0
        for clip in clips:
            for jpeg in clip.jpegs if clip is not None else ():
                flat[pos : pos + len(jpeg)] = np.frombuffer(jpeg, dtype=np.uint8)
                pos += len(jpeg)
        return {"video_jpeg": data, "video_jpeg_sizes": sizes, "video_jpeg_side": side, "video_present": present}
    video, slot = frames_buffer((len(clips), frames, side, side, 3))  # possibly a reused slot: every clip written
    pixels = video.numpy()
    for i, clip in enumerate(clips):
        if clip is None:
            if slot is not None:
                pixels[i] = 0
            continue
        try:
            decode_into(clip, pixels[i])
        except MediaError as err:
            counter.add("bad_clips", keys[i], err)
            pixels[i] = 0
            present[i] = False
    out = {"video": video.permute(0, 1, 4, 2, 3), "video_present": present}
    return out if slot is None else {**out, "frame_slot": slot}


def collate_audio(windows: list[list[np.ndarray | None]], slots: int) -> dict[str, Any]:
    """Each distinct clip of a batch once, and the row each utterance slot finds its clip in.

    Turn k+1 of a conversation repeats most of turn k's utterances, and the expander decodes a
    clip once per conversation, so the same array recurs across a batch's windows: it is sent
    once and the audio model encodes it once (with 8-utterance windows on the synthetic corpus,
    1.7 slots per distinct clip and a third of the padded bytes). A clip that decoded to no
    samples counts as missing (the model's learned "missing" vector).
    """
    rows: dict[int, int] = {}
    clips: list[np.ndarray] = []
    index = np.full((len(windows), slots), -1, dtype=np.int64)
    for i, window in enumerate(windows):
        for j, clip in enumerate(window):
            if clip is None or len(clip) == 0:
                continue
            if id(clip) not in rows:
                rows[id(clip)] = len(clips)
                clips.append(clip)
            index[i, j] = rows[id(clip)]
    lengths = np.array([len(clip) for clip in clips], dtype=np.int64)
    audio = media_zeros((len(clips), max(1, int(lengths.max(initial=0)))), torch.float32)
    for row, clip in enumerate(clips):
        audio[row, : len(clip)] = torch.from_numpy(clip)
    return {"audio": audio, "audio_lengths": lengths, "audio_index": index, "audio_present": index >= 0}


def stack_clips(clips: list[torch.Tensor | None], cfg: VideoConfig) -> torch.Tensor:
    """uint8 [B, T, 3, H, W] from a batch's decoded clips; a missing clip (None) is all zeros.

    Clips keep their decoded size when they all share it (the model scales them to its input
    size on its device); a batch that mixes sizes is scaled to ``image_size`` here.
    """
    size = cfg.image_size
    if len({tuple(c.shape[-2:]) for c in clips if c is not None}) > 1:
        clips = [c if c is None or tuple(c.shape[-2:]) == (size, size) else resize_frames(c, size) for c in clips]
    height, width = next((tuple(c.shape[-2:]) for c in clips if c is not None), (size, size))
    blank = torch.zeros(cfg.num_frames, 3, height, width, dtype=torch.uint8)
    # default_collate stacks straight into shared memory inside a loader worker (no extra copy).
    return default_collate([blank if c is None else c for c in clips])


class TurnBatches(torch.utils.data.IterableDataset):
    """The whole per-worker pipeline as one picklable dataset (safe under forkserver/spawn)."""

    def __init__(self, urls: list[str], cfg: DataConfig, modalities: Modalities, vocab: dict[str, list[str]],
                 batch_size: int, train: bool, rank: int, world_size: int, skip_batches: int = 0,
                 unlabelled: bool = False, prepared: PreparedVideo | None = None, frame_slots: FrameSlots | None = None):
        super().__init__()
        self.unlabelled = unlabelled
        self.frame_slots = frame_slots  # reusable shared-memory frame buffers (emotrain.data.frame_slots)
        self.prepared = prepared
        self.urls, self.cfg, self.modalities, self.vocab = urls, cfg, modalities, vocab
        self.batch_size, self.train = batch_size, train
        self.rank, self.world_size = rank, world_size
        self.skip_batches = skip_batches

    def _wanted(self, name: str) -> bool:
        """Read only the tar members this model uses (no video bytes for the audio model)."""
        if name.endswith(".wav"):
            return self.modalities.audio
        if name.endswith((".mp4", FRAMES_SUFFIX, INDEX_SUFFIX)):
            return self.modalities.video
        return True

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        workers = 1 if info is None else info.num_workers
        install_frame_slots(self.frame_slots if info is not None else None)
        # A DataLoader takes batches from its workers in turn, starting with worker 0 (batch i from
        # worker i % workers). A loader resuming after skip_batches batches must start with the reader
        # that was next, so each worker plays reader (id + skip_batches) % workers, and that reader's
        # share of the first skip_batches batches is known exactly.
        worker = 0 if info is None else (info.id + self.skip_batches) % workers
        # Shard order shares one seed on every rank; augmentation and buffers differ per reader.
        reader_seed = self.cfg.seed + 1000 * (self.rank * 64 + worker)
        counter = SkipCounter()
        source = ShardSource(self.urls, self.rank, self.world_size, self.train, self.cfg.seed,
                             rotate=self.skip_batches)
        conversations: Iterable[dict[str, Any]] = shard_samples(iter(source), self._wanted, counter.tar_handler)
        if self.train and self.cfg.shuffle_buffer > 1:
            shuffle = wds.shuffle(self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=random.Random(reader_seed))
            conversations = shuffle(conversations)
        expand = TurnExpander(self.cfg, self.modalities, self.vocab, self.train, counter, reader_seed, self.unlabelled,
                              self.prepared)
        pending: list[dict[str, Any]] = []
        skip_turns = self.batch_size * max(0, (self.skip_batches - worker + workers - 1) // workers)
        for ordinal, conversation in enumerate(conversations):
            expand.reseed(ordinal)
            if skip_turns:  # resuming: pass over what the interrupted run already trained on, without decoding it
                count = len(expand(conversation, decode=False))
                if count <= skip_turns:
                    skip_turns -= count
                    continue
                turns, skip_turns = expand(conversation)[skip_turns:], 0
            else:
                turns = expand(conversation)
            for turn in turns:
                pending.append(turn)
                if len(pending) == self.batch_size:
                    yield self._emit(pending, counter, expand.tokenizer.pad_token_id)
                    pending = []
        if pending and not self.train:
            yield self._emit(pending, counter, expand.tokenizer.pad_token_id)

    def _emit(self, samples: list[dict[str, Any]], counter: SkipCounter, pad_id: int) -> dict[str, Any]:
        batch = collate_turns(samples, self.cfg, self.modalities, pad_id, counter)
        batch["skipped"] = counter.take()
        return batch


class TurnLoader:
    """Turn batches of one rank, as tensors: iterate it like a DataLoader.

    Workers send a batch's small fields (ids, masks, labels) as numpy arrays, pickled inline
    with the batch, and only its media as tensors: every tensor a worker sends crosses over
    as a shared-memory segment and a file descriptor of its own, which for a dozen small
    tensors per batch cost more than the pickling (about 9 ms of a worker's time per batch of
    8). The arrays become tensors here, in the consuming process, without a copy.

    With ``pin`` (a CUDA device consumes the batches) the small fields are put in pinned memory
    too (the DataLoader pins the media tensors), so ``.to(device, non_blocking=True)`` really does
    not block the host.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, pin: bool = False, frame_slots: FrameSlots | None = None):
        self.loader = loader
        self.pin = pin
        self.frame_slots = frame_slots

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            yield self.receive(batch)

    def receive(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One batch as the DataLoader gave it, made what the models take (for callers that iterate
        ``self.loader`` themselves, as benchmarks/cores_per_gpu.py does to reach the worker processes)."""
        if self.frame_slots is not None:  # frees the workers' frame buffers no tensor here uses any more
            self.frame_slots.arrived(batch)
        batch = as_tensors(batch)
        if self.pin:
            batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) and not v.is_pinned() else v
                     for k, v in batch.items()}
        return batch


def as_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """A collated batch's numpy arrays as tensors (no copy): what the models take."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def _as_sent(batch: dict[str, Any]) -> dict[str, Any]:
    """The workers' collate_fn: batches are formed in the dataset; keep their arrays as they are."""
    return batch


def prepared_video(manifest: Manifest, cfg: VideoConfig, modalities: Modalities) -> PreparedVideo | None:
    """The prepared video a model reading ``manifest``'s split gets (None: mp4s, or no video read);
    a UserError naming both when its frames do not fit the model's (training checks before any work)."""
    if not modalities.video or manifest.video is None:
        return None
    unfit = check_fits(manifest.video, cfg.num_frames, cfg.image_size, str(manifest.location))
    if unfit:
        raise UserError(unfit)
    return manifest.video


def build_loader(cfg: DataConfig, split: str, modalities: Modalities, batch_size: int, train: bool,
                 rank: int = 0, world_size: int = 1, skip_batches: int = 0,
                 manifest: Manifest | None = None, vocab: dict[str, list[str]] | None = None,
                 unlabelled: bool = False, pin_memory: bool | None = None) -> tuple[TurnLoader, Manifest]:
    """The turn batches for this rank, and the split's manifest.

    ``skip_batches`` (training resume): the stream starts where a loader built the same way stood
    after that many batches, as if it had been iterated that far: the skipped conversations are
    read (the shard order and shuffle buffer advance as before) but not decoded. ``manifest``: the
    split's, when the caller already loaded it. ``vocab``: the metadata vocabularies a trained model
    was built with (``predict`` on shards packed from other data), instead of the manifest's.
    ``unlabelled``: yield unlabelled turns too (label -1). ``pin_memory``: batches in pinned host
    memory, for asynchronous copies to a GPU; by default when CUDA is available (the device every rank
    then computes on, see :func:`emotrain.training.distributed.device_for`), never on a CPU-only machine.

    Workers start from a fork server: torchaudio's thread pools can deadlock in workers forked
    from a training process. The fork server imports this module and the decoders once; the
    workers of every later loader (each validation pass, each split) are forked from it warm
    instead of importing torch, transformers and decord again (seconds per loader). Batches are
    formed inside the workers, so ``batch_size=None`` here.
    """
    if batch_size < 1:
        raise UserError("batch size must be at least 1")
    manifest = manifest or Manifest.load(cfg.shards, split)  # callers that hold it pass it down
    urls = manifest.shard_urls()
    prepared = prepared_video(manifest, cfg.video, modalities)
    decoded_in_workers = prepared is not None and cfg.video.jpeg_decode == "worker" and cfg.num_workers > 0
    slots = FrameSlots(cfg.num_workers) if decoded_in_workers else None
    dataset = TurnBatches(urls, cfg, modalities, manifest.vocab if vocab is None else vocab, batch_size, train, rank,
                          world_size, skip_batches, unlabelled, prepared, slots)
    # Its own generator: a DataLoader draws its workers' base seed when an iterator starts, and from the
    # global torch RNG that would shift the training process's dropout stream whenever a loader is
    # built (each validation; a resumed run builds its train loader after restoring the RNG).
    # The workers draw nothing from torch; their randomness is seeded explicitly (TurnBatches).
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    kwargs: dict[str, Any] = {"batch_size": None, "num_workers": cfg.num_workers, "collate_fn": _as_sent,
                              "generator": torch.Generator().manual_seed(cfg.seed), "pin_memory": pin}
    if cfg.num_workers > 0:
        FORKSERVER.set_forkserver_preload(WORKER_PRELOAD)  # a no-op once the server runs
        # The fork server must outlive a SIGTERM to every process of the job. The resource tracker it
        # starts first unblocks SIGTERM in this process once it runs, so it is started beforehand.
        multiprocessing.resource_tracker.ensure_running()
        with stop_signals_blocked(), _fork_server_parent():
            multiprocessing.forkserver.ensure_running()
        kwargs.update(multiprocessing_context=FORKSERVER, prefetch_factor=4, persistent_workers=False,
                      worker_init_fn=init_worker)
    return TurnLoader(torch.utils.data.DataLoader(dataset, **kwargs), pin=pin, frame_slots=slots), manifest
