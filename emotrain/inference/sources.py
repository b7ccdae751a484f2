"""The two inputs of ``emotrain predict``, each turn predicted exactly once on any number of ranks.

- An AvaMERG-layout folder, read directly (no packing step): every rank reads the JSON with the
  corpus reader and takes its share of the conversations by the rule evaluation splits shards by
  (:func:`emotrain.data.shardlists.eval_shards`, over the sorted conversation ids); its clips go
  through the pack's encoding and the loader's expansion (:class:`~emotrain.inference.predict.Predictor`).
- Packed shards: the evaluation loader itself, split by rank and worker as ``evaluate`` splits them.

Each rank's scores travel to rank 0 in one gather per model (:func:`emotrain.evaluation.gather.gather_to_rank0`,
which refuses a key seen twice); what was skipped, with why, travels as JSON beside them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emotrain.log import progress as progress_of
from emotrain.data.avamerg import EMPTY_TURNS, MediaDirs, Skipped, read_conversations
from emotrain.data.clips import AMBIGUOUS, FolderClips
from emotrain.data.shardlists import Slot, eval_shards
from emotrain.data.stream import SkipCounter
from emotrain.evaluation.gather import Scored, gather_bytes_to_rank0, gather_to_rank0
from emotrain.inference.predict import MAX_CLIP_BYTES, Predictor, TurnPrediction, counter_skips, encode


@dataclass
class PredictSummary:
    """What a ``predict`` run did: how many turns by which path, and everything skipped with its reason."""

    bundle: str
    source: str
    conversations: int  # usable conversations read
    turns: int  # turns predicted
    paths: dict[str, int]  # path -> turns
    empty_conversations: int  # conversations with an empty turn list (reported, nothing to predict)
    ambiguous_clips: int  # clips found among several files of the same conversation and utterance
    skipped_counts: dict[str, int]  # kind -> how many
    skipped: list[dict[str, str]] = field(default_factory=list)  # {kind, id, reason}
    expected_turns: int | None = None  # shards: the turns their manifest lists

    def line(self) -> str:
        paths = ", ".join(f"{count} {path}" for path, count in sorted(self.paths.items()))
        expected = f" of {self.expected_turns} listed" if self.expected_turns is not None else ""
        skipped = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped_counts.items())) or "nothing"
        return (f"predicted {self.turns} turns{expected} of {self.conversations} conversations ({paths or 'none'}); "
                f"skipped: {skipped}; {self.empty_conversations} conversation(s) with no turns; "
                f"{self.ambiguous_clips} ambiguous clip name(s)")


def _summary(predictor: Predictor, source: str, conversations: int, turns: list[TurnPrediction],
             skipped: list[dict[str, str]], expected_turns: int | None = None) -> PredictSummary:
    ambiguous = [s for s in skipped if s["kind"] == "clip" and AMBIGUOUS in s["reason"]]
    return PredictSummary(
        bundle=str(predictor.bundle.root), source=source, conversations=conversations, turns=len(turns),
        paths=dict(Counter(t.path for t in turns)),
        empty_conversations=sum(1 for s in skipped if s["kind"] == "conversation" and s["reason"] == EMPTY_TURNS),
        ambiguous_clips=len(ambiguous),
        skipped_counts=dict(Counter(s["kind"] for s in skipped if s not in ambiguous)),
        skipped=skipped, expected_turns=expected_turns)


def _gather_skips(skipped: list[Skipped], device: torch.device) -> list[dict[str, str]] | None:
    parts = gather_bytes_to_rank0(json.dumps([s.to_dict() for s in skipped]).encode("utf-8"), device)
    return None if parts is None else [s for part in parts for s in json.loads(part.decode("utf-8"))]


def _gather_scores(scored: dict[str, Scored], device: torch.device) -> dict[str, Scored] | None:
    gathered = {name: gather_to_rank0(s, device) for name, s in scored.items()}  # same order on every rank
    return None if any(s is None for s in gathered.values()) else gathered


def predict_folder(predictor: Predictor, json_path: Path, media: MediaDirs, rank: int = 0, world_size: int = 1,
                   device: torch.device | None = None, progress: bool = False,
                   max_clip_bytes: int = MAX_CLIP_BYTES) -> tuple[list[TurnPrediction], PredictSummary] | None:
    """Collective: predict every turn of an AvaMERG JSON file; rank 0 gets the turns and the summary, others None."""
    device = device or torch.device("cpu")
    conversations, read_skips = read_conversations(json_path)
    by_id = {c.conversation_id: c for c in conversations}
    mine = eval_shards(list(by_id), Slot(rank, world_size, 0, 1))
    clips = FolderClips(media, max_clip_bytes)
    clip_skips: list[Skipped] = []
    counter = SkipCounter(keep_reasons=True)

    def samples():  # noqa: ANN202 - a generator of shard samples
        for cid in progress_of(mine, desc="predict", unit="conv", disable=not (progress and rank == 0)):
            sample, skips = encode(by_id[cid], clips)
            clip_skips.extend(skips)
            yield sample

    scored = predictor.score_samples(samples(), counter)
    gathered = _gather_scores(scored, device)
    skipped = _gather_skips(clip_skips + counter_skips(counter), device)
    if gathered is None or skipped is None:
        return None
    skipped = [s.to_dict() for s in read_skips] + skipped
    turns = predictor.combine(gathered)
    return turns, _summary(predictor, str(json_path), len(conversations), turns, skipped)


def predict_shards(predictor: Predictor, shards: Path, split: str, rank: int = 0, world_size: int = 1,
                   device: torch.device | None = None, progress: bool = False,
                   num_workers: int | None = None) -> tuple[list[TurnPrediction], PredictSummary] | None:
    """Collective: predict every turn of ``shards/split``; rank 0 gets the turns and the summary, others None."""
    from emotrain.data.manifest import Manifest

    device = device or torch.device("cpu")
    manifest = Manifest.load(shards, split)
    scored, counts = predictor.score_shards(manifest, rank, world_size, num_workers, progress)
    gathered = _gather_scores(scored, device)
    loader_skips = [Skipped("loader", f"{split} shards", f"{n} {kind} (see the log for each)")
                    for kind, n in sorted(counts.items()) if n]
    skipped = _gather_skips(loader_skips, device)
    if gathered is None or skipped is None:
        return None
    turns = predictor.combine(gathered)
    # A turn the pack left unlabelled is predicted here, not skipped.
    pack_skips: list[dict[str, Any]] = [dict(s) for s in manifest.skipped
                                        if not (s.get("kind") == "turn" and str(s.get("reason", "")).endswith(": unlabelled"))]
    return turns, _summary(predictor, str(shards / split), manifest.conversations, turns, pack_skips + skipped,
                           expected_turns=manifest.turns)
