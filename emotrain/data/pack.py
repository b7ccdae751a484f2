"""Pack an AvaMERG folder into WebDataset shards, one conversation per sample.

Why the shape of this module:
- *A fixed plan, then parallel writers.* Shard boundaries are decided up front from file
  sizes, so shard ``i`` always holds the same conversations. That is what lets worker
  processes write shards independently and lets a re-run keep every finished shard. (A
  rolling ``wds.ShardWriter`` decides boundaries while it writes, which rules out both;
  each shard is written with ``wds.TarWriter``, the writer ShardWriter itself wraps.)
- *Atomic.* A shard is written to ``.tmp`` and renamed; a sidecar ``.done.json`` with its
  sha256 and the plan fingerprint is written after it. Only shards with a matching,
  verified sidecar are kept on resume, and ``manifest.json`` is written last.
- *Nothing lost, nothing fatal.* A bad clip is recorded as missing with its reason and its
  conversation is still packed; bad records are skipped with their reason (see
  ``avamerg.py``); the run fails with one line only when nothing was packed or too much
  was skipped. Conversations a speaker-independent split drops (see ``splits.py``) are
  listed with their reason under ``recipe.dropped_cross_split`` and count as skipped against
  ``max_skip_frac``; a requested split that such a split leaves empty fails before any work.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from emotrain.log import progress as progress_of
from emotrain.data.avamerg import Conversation, MediaDirs, Skipped, read_conversations
from emotrain.data.clips import EXTENSIONS, ClipSource, FolderClips
from emotrain.config import to_dict
from emotrain.data.manifest import MANIFEST, Manifest, ShardEntry
from emotrain.data.prepared import PreparedVideo, prepare_clip
from emotrain.data.schema import UNLABELLED, VOCAB_FIELDS, mp4_member, wav_member
from emotrain.data.splits import SPLITS, SplitRecipe, plan_splits
from emotrain.errors import UserError
from emotrain.files import atomic_output, write_atomic
from emotrain.labels import LabelScheme, normalise_word

DONE_SUFFIX = ".done.json"


@dataclass(frozen=True)
class PackOptions:
    source: Path
    out: Path
    scheme: LabelScheme
    recipe: SplitRecipe
    json_name: str = "train.json"
    audio_dir: Path | None = None
    video_dir: Path | None = None
    workers: int = 1
    shard_mb: float = 256.0
    max_per_shard: int = 1000
    max_clip_mb: float = 64.0
    max_skip_frac: float = 0.2
    progress: bool = True
    video: PreparedVideo | None = None  # store prepared JPEG frames instead of the mp4s (see prepared.py)


@dataclass
class ShardTask:
    """Everything a worker needs to write one shard, decided by the main process."""

    path: Path
    fingerprint: str
    conversations: list[Conversation]
    labels: list[list[int]]
    clips: FolderClips
    video: PreparedVideo | None = None


def encode_conversation(conv: Conversation, labels: list[int], clips: ClipSource,
                        video: PreparedVideo | None = None) -> tuple[dict[str, Any], list[Skipped], int]:
    """One shard sample for ``conv``, the clips that could not be used (or were ambiguous), and the clip count.

    ``pack`` writes it into a shard; ``predict`` on a raw folder and the Python API hand it to the
    loader's turn expander directly, so every path decodes and preprocesses the same bytes.
    ``video``: store each mp4 as prepared frames (decoded here, once) instead of as given."""
    from emotrain.data.media import MediaError, encode_wav_16k, load_wav_16k, probe_mp4

    sample: dict[str, Any] = {
        "__key__": conv.conversation_id,
        "json": json.dumps(conv.shard_json(), ensure_ascii=False).encode("utf-8"),
        "labels.json": json.dumps(labels).encode("utf-8"),
    }
    skipped: list[Skipped] = []
    count = 0
    for utt in conv.utterances:
        clip = clips.read(conv, utt, "wav")
        reason = clip.reason
        if clip.data is not None:
            try:
                sample[wav_member(utt.index)] = encode_wav_16k(load_wav_16k(clip.data))
                count += 1
            except MediaError as err:
                reason = f"undecodable wav: {err}"
        for why in (reason, clip.note):
            if why:
                skipped.append(Skipped("clip", clip.name, why))
        clip = clips.read(conv, utt, "mp4")
        reason = clip.reason
        if clip.data is not None and video is not None:
            try:
                for suffix, member in prepare_clip(clip.data, video).items():
                    sample[f"utt{utt.index}{suffix}"] = member
                count += 1
            except MediaError as err:
                reason = f"undecodable mp4: {err}"
        elif clip.data is not None:
            ok, why = probe_mp4(clip.data)
            if ok:
                sample[mp4_member(utt.index)] = clip.data
                count += 1
            else:
                reason = f"undecodable mp4: {why}"
        for why in (reason, clip.note):
            if why:
                skipped.append(Skipped("clip", clip.name, why))
    return sample, skipped, count


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _done_path(shard: Path) -> Path:
    return shard.with_name(shard.name + DONE_SUFFIX)


def finished_shard(task: ShardTask) -> dict[str, Any] | None:
    """The sidecar of a shard a previous run finished for the same plan, if it verifies."""
    done = _done_path(task.path)
    if not (task.path.is_file() and done.is_file()):
        return None
    try:
        record = json.loads(done.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != task.fingerprint or record.get("sha256") != _sha256(task.path):
        return None
    return record


def write_shard(task: ShardTask) -> dict[str, Any]:
    """Write one shard atomically (or keep a verified one) and return its sidecar record."""
    import webdataset as wds

    record = finished_shard(task)
    if record is not None:
        return {**record, "resumed": True}
    skipped: list[Skipped] = []
    clips = 0
    # A fixed member mtime makes a shard a pure function of its content, so re-packing the same
    # corpus gives the same bytes (and sha256) whether a shard was kept or redone. An int: a
    # float mtime costs every member an extra pax header block for readers to parse.
    with atomic_output(task.path) as tmp:
        with wds.TarWriter(str(tmp), mtime=0) as sink:
            for conv, labels in zip(task.conversations, task.labels):
                sample, clip_skips, n = encode_conversation(conv, labels, task.clips, task.video)
                sink.write(sample)
                skipped.extend(clip_skips)
                clips += n
    record = {
        "name": task.path.name,
        "conversations": len(task.conversations),
        "keys": [c.conversation_id for c in task.conversations],
        "clips": clips,
        "sha256": _sha256(task.path),
        "fingerprint": task.fingerprint,
        "skipped": [s.to_dict() for s in skipped],
    }
    write_atomic(_done_path(task.path), json.dumps(record, indent=1, ensure_ascii=False))
    return {**record, "resumed": False}


def _media_size(conv: Conversation, clips: ClipSource) -> int:
    return sum(clips.size(conv, utt, ext) for utt in conv.utterances for ext in EXTENSIONS)


def plan_shards(
    conversations: list[Conversation], clips: ClipSource, shard_bytes: int, max_per_shard: int
) -> list[list[Conversation]]:
    """Consecutive groups of conversations, each up to ``shard_bytes`` of media."""
    groups: list[list[Conversation]] = []
    current: list[Conversation] = []
    size = 0
    for conv in conversations:
        conv_size = _media_size(conv, clips)
        if current and (size + conv_size > shard_bytes or len(current) >= max_per_shard):
            groups.append(current)
            current, size = [], 0
        current.append(conv)
        size += conv_size
    if current:
        groups.append(current)
    return groups


def _fingerprint(group: list[Conversation], labels: list[list[int]], clips: ClipSource,
                 video: PreparedVideo | None = None) -> str:
    """Changes whenever the shard's content would: records, labels, clip files (size, mtime), how video is stored."""
    digest = hashlib.sha256()
    if video is not None:
        digest.update(json.dumps(to_dict(video), sort_keys=True).encode())
    for conv, conv_labels in zip(group, labels):
        digest.update(json.dumps(conv.shard_json(), sort_keys=True).encode())
        digest.update(json.dumps(conv_labels).encode())
        for utt in conv.utterances:
            for ext in EXTENSIONS:
                digest.update(clips.signature(conv, utt, ext).encode())
    return digest.hexdigest()


def label_turns(conv: Conversation, scheme: LabelScheme) -> tuple[list[int], list[Skipped]]:
    """Class index per turn; an unmapped or absent word leaves the turn unlabelled (recorded)."""
    labels, skipped = [], []
    for turn in conv.turns:
        index = scheme.index(turn.emotion)
        if index is None:
            labels.append(UNLABELLED)
            word = "no label" if turn.emotion is None else f"label {turn.emotion!r} not in scheme {scheme.name}"
            skipped.append(Skipped("turn", f"{conv.conversation_id}_{turn.turn_id}", f"{word}: unlabelled"))
        else:
            labels.append(index)
    return labels, skipped


def _vocab_values(conv: Conversation) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {name: [] for name in VOCAB_FIELDS}
    for profile in (conv.speaker, conv.listener):
        if profile is not None:
            values["age"].append(profile.age)
            values["gender"].append(profile.gender)
            values["timbre"].append(profile.timbre)
            values["avatar_id"].append(str(profile.avatar_id))
    values["topic"].append(conv.topic)
    values["event_scenario"].extend(t.event_scenario for t in conv.turns)
    return values


def build_vocab(train: list[Conversation]) -> dict[str, list[str]]:
    """Metadata vocabularies from the train split only, shared by every split (id = position + 1)."""
    seen: dict[str, set[str]] = {name: set() for name in VOCAB_FIELDS}
    for conv in train:
        for name, values in _vocab_values(conv).items():
            seen[name].update(normalise_word(v) for v in values if v and v.strip())
    return {name: sorted(values) for name, values in seen.items()}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_tasks(tasks: list[ShardTask], workers: int, progress: bool) -> list[dict[str, Any]]:
    total = sum(len(t.conversations) for t in tasks)
    results: dict[Path, dict[str, Any]] = {}
    bar = progress_of(total=total, unit="conv", desc="pack", disable=not progress)
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            results[task.path] = write_shard(task)
            bar.update(len(task.conversations))
    else:
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
            by_name = {t.path.name: t for t in tasks}
            for record in pool.imap_unordered(write_shard, tasks):
                task = by_name[record["name"]]
                results[task.path] = record
                bar.update(len(task.conversations))
    bar.close()
    return [results[t.path] for t in tasks]


def _remove_stale(split_dir: Path, planned: set[str]) -> None:
    for path in split_dir.glob("*.tar*"):
        base = path.name.split(".tar")[0] + ".tar"
        if base not in planned:
            path.unlink()


def pack(opts: PackOptions) -> dict[str, Manifest]:
    """Pack every split; returns the per-split manifests. Raises UserError on a failed pack."""
    source_json = opts.source / opts.json_name
    if not opts.source.is_dir():
        raise UserError(f"AvaMERG folder not found: {opts.source}")
    try:  # fail before any work when the output cannot be written
        opts.out.mkdir(parents=True, exist_ok=True)
        probe = opts.out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to --out {opts.out}: {err.strerror or err}") from None
    conversations, input_skips = read_conversations(source_json)
    records = len(conversations) + sum(1 for s in input_skips if s.kind == "conversation")
    clips = FolderClips(MediaDirs.locate(opts.source, opts.audio_dir, opts.video_dir), int(opts.max_clip_mb * 2**20))
    plan = plan_splits(conversations, opts.recipe)
    splits, dropped = plan.splits, plan.dropped
    if conversations and opts.recipe.speaker_independent and plan.empty:
        raise UserError(_empty_split_message(plan.empty, len(conversations), plan.graph))
    vocab = build_vocab(splits["train"])
    name = opts.out.name
    tasks_by_split: dict[str, list[ShardTask]] = {}
    label_skips: dict[str, list[Skipped]] = {}
    for split in SPLITS:
        split_dir = opts.out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        groups = plan_shards(splits[split], clips, int(opts.shard_mb * 2**20), opts.max_per_shard)
        tasks, skips = [], []
        for index, group in enumerate(groups):
            labels = []
            for conv in group:
                conv_labels, turn_skips = label_turns(conv, opts.scheme)
                labels.append(conv_labels)
                skips.extend(turn_skips)
            path = split_dir / f"{name}-{split}-{index:06d}.tar"
            tasks.append(ShardTask(path, _fingerprint(group, labels, clips, opts.video), group, labels, clips, opts.video))
        _remove_stale(split_dir, {t.path.name for t in tasks})
        tasks_by_split[split] = tasks
        label_skips[split] = skips
    all_tasks = [t for split in SPLITS for t in tasks_by_split[split]]
    records_by_path = dict(zip((t.path for t in all_tasks), _run_tasks(all_tasks, opts.workers, opts.progress)))

    recipe = {
        **opts.recipe.to_dict(), "source": str(source_json),
        "dropped_cross_split": [{"id": c.conversation_id, "reason": plan.reasons[c.conversation_id]} for c in dropped],
    }
    if plan.note:
        recipe["split_note"] = plan.note
    manifests = {}
    for split in SPLITS:
        tasks = tasks_by_split[split]
        shard_records = [records_by_path[t.path] for t in tasks]
        histogram = Counter(l for t in tasks for labels in t.labels for l in labels if l != UNLABELLED)
        skipped = [s.to_dict() for s in label_skips[split]]
        skipped += [s for r in shard_records for s in r["skipped"]]
        if split == "train":  # rejected before split assignment: listed once, with the source split
            skipped = [s.to_dict() for s in input_skips] + skipped
        manifest = Manifest(
            name=name,
            split=split,
            conversations=sum(r["conversations"] for r in shard_records),
            turns=sum(len(c.turns) for t in tasks for c in t.conversations),
            labelled_turns=sum(histogram.values()),
            labelled_last_turns=sum(1 for t in tasks for labels in t.labels if labels and labels[-1] != UNLABELLED),
            clips=sum(r["clips"] for r in shard_records),
            label_histogram={cls: histogram.get(i, 0) for i, cls in enumerate(opts.scheme.classes)},
            scheme=opts.scheme,
            shards=[ShardEntry(r["name"], r["conversations"], r["sha256"]) for r in shard_records],
            conversation_ids=[c.conversation_id for c in splits[split]],
            vocab=vocab,
            recipe=recipe,
            skipped=skipped,
            video=opts.video,
        )
        manifest.write(opts.out / split)
        manifests[split] = manifest

    packed = sum(m.conversations for m in manifests.values())
    skipped_conversations = records - len(conversations)
    if packed == 0:
        raise UserError(f"nothing was packed from {source_json} ({skipped_conversations} conversation(s) skipped)")
    lost = skipped_conversations + len(dropped)
    if records and lost / records > opts.max_skip_frac:
        where = opts.out / "train" / MANIFEST
        if not dropped:
            raise UserError(
                f"{skipped_conversations} of {records} conversations were skipped, more than --max-skip-frac "
                f"{opts.max_skip_frac}; see 'skipped' in {where}"
            )
        raise UserError(
            f"{skipped_conversations} of {records} conversations were skipped and {len(dropped)} dropped by "
            f"--speaker-independent (their speaker and listener avatars are in different splits), "
            f"{lost / records:.0%} in all, more than --max-skip-frac {opts.max_skip_frac}: raise --max-skip-frac "
            f"or lower --val-frac/--test-frac; see 'skipped' and recipe.dropped_cross_split in {where}"
        )
    return manifests


def _empty_split_message(empty: list[str], conversations: int, graph: str) -> str:
    """One line: which requested splits a speaker-independent split cannot fill, and what to change."""
    hints = ["lower --val-frac/--test-frac" if name == "train" else f"set --{name}-frac 0" for name in empty]
    return (
        f"--speaker-independent found no way to put any conversation in the {' and '.join(empty)} split without "
        f"an avatar in two splits ({conversations} conversations, {graph}): {' and '.join(hints)}, add "
        f"conversations between other avatars, or pack without --speaker-independent"
    )
