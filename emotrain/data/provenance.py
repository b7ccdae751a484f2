"""Where a result's data came from: each split's shard fingerprint, recorded when a run trains and checked
before anything is scored against those shards again.

A split's fingerprint is a sha256 over what its ``manifest.json`` says (every shard's name, conversation count
and sha256, the conversation ids, the label scheme and the metadata vocabularies): packing the folder again with
another split seed, other records or another scheme changes it; moving the folder does not. Training writes
``RUN/provenance.json`` (the shards' place and the fingerprint of train, val and test) on its first launch and
refuses a relaunch on changed shards; ``evaluate`` and ``bundle`` refuse shards whose train split or scored
split differs from it (the "test" split of a repack may hold the training data); a moved folder is named as
moved, and ``evaluate --shards DIR`` points at its new place, checked by the same fingerprints. ``evaluate``
also records the fingerprint each ``predictions/<split>.npz`` was scored on, which ``fuse`` compares.

Runs trained before this file existed have none: they are used as before, unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emotrain.data.manifest import Manifest
from emotrain.errors import UserError
from emotrain.files import write_atomic

PROVENANCE = "provenance.json"
SCORED = "scored_on.json"  # in RUN/predictions/: split -> the fingerprint its .npz was scored on
SPLITS = ("train", "val", "test")
SMALL_FILE = 16 * 2**20  # local folders: files up to this size are compared by content, larger ones by size


def split_fingerprint(manifest: Manifest) -> str:
    """What identifies a packed split, wherever its folder lies."""
    content = {
        "split": manifest.split,
        "shards": [[s.name, s.conversations, s.sha256] for s in manifest.shards],
        "conversation_ids": manifest.conversation_ids,
        "scheme": manifest.scheme.to_dict(),
        "vocab": manifest.vocab,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def folder_identity(name_or_path: str) -> str:
    """A tokenizer or encoder by what it is, not where it lies: a local folder's files (path, size, and the
    sha256 of each file up to 16 MiB), else the hub name itself. A run folder moved to another install (where
    the packaged tokenizer has another absolute path) keeps its identity."""
    path = Path(name_or_path)
    if not path.is_dir():
        return f"name:{name_or_path}"
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            file = Path(dirpath) / name
            size = file.stat().st_size
            digest.update(f"{file.relative_to(path).as_posix()}\0{size}\0".encode())
            if size <= SMALL_FILE:
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    return f"folder:{digest.hexdigest()}"


@dataclass
class DataProvenance:
    """The shards a result came from: their folder then, and each split's fingerprint."""

    shards: str
    splits: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, shards: str | Path) -> DataProvenance:
        """The fingerprints of the splits packed in ``shards`` now (train must be there; val and test if packed)."""
        splits = {}
        for split in SPLITS:
            if split == "train" or Manifest.path_for(shards, split).is_file():
                splits[split] = split_fingerprint(Manifest.load(shards, split))
        return cls(str(Path(shards).absolute()), splits)

    @classmethod
    def read(cls, path: Path) -> DataProvenance | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(data["shards"]), {str(k): str(v) for k, v in dict(data["splits"]).items()})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}: unreadable provenance ({err}): it says which shards the run was trained on") from None

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(asdict(self), indent=2) + "\n")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_splits_agree(shards: str | Path, train: Manifest) -> None:
    """Val and test were packed with train's label scheme and vocabularies (they are one pack)."""
    for split in ("val", "test"):
        if not Manifest.path_for(shards, split).is_file():
            continue
        other = Manifest.load(shards, split)
        if other.scheme.to_dict() != train.scheme.to_dict():
            raise UserError(f"{Manifest.path_for(shards, split)} labels with scheme {other.scheme.name} {other.scheme.classes}, "
                            f"but train with {train.scheme.name} {train.scheme.classes}: pack all splits together")
        if other.vocab != train.vocab:
            raise UserError(f"{Manifest.path_for(shards, split)} holds other metadata vocabularies than train's: "
                            "pack all splits together")


def record_training(run_root: Path, shards: str, write: bool = True) -> None:
    """At a launch (every rank checks, rank 0 ``write``\ s): the first launch writes ``RUN/provenance.json``;
    a relaunch must find the same shards."""
    path = Path(run_root) / PROVENANCE
    now = DataProvenance.of(shards)
    before = DataProvenance.read(path)
    if before is None:
        if write:
            now.write(path)
        return
    changed = [s for s, fp in before.splits.items() if now.splits.get(s) != fp]
    if changed:
        raise UserError(f"the {', '.join(changed)} split(s) of {shards} changed since {run_root} was first trained on them "
                        f"(packed again?): resume on the shards it began with, or use a new --run-dir")


def checked_shards(run_root: Path, shards: str, splits: list[str], override: str | Path | None = None) -> str:
    """The shards folder to score ``splits`` of a run on: its own (``shards``, from its config), or ``override``
    (``--shards DIR``: the folder moved), after checking that train and every split requested are the ones
    the run was trained against. One line when they are not, or when the folder is gone."""
    where = str(Path(override).absolute()) if override is not None else shards
    recorded = DataProvenance.read(Path(run_root) / PROVENANCE)
    if recorded is None:
        return where  # a run from before provenance was recorded: nothing to compare
    if not Manifest.path_for(where, "train").is_file():
        if override is None:
            raise UserError(f"the shards {run_root} was trained on are no longer at {where} (moved or removed): "
                            "give their new place with --shards DIR (checked by their fingerprint)")
        raise UserError(f"no manifest at {Manifest.path_for(where, 'train')}: --shards must be the folder "
                        "`emotrain pack --out` wrote")
    for split in dict.fromkeys(["train", *splits]):
        if split not in recorded.splits:
            raise UserError(f"{run_root} was trained on shards without a {split} split ({recorded.shards})")
        if not Manifest.path_for(where, split).is_file():
            raise UserError(f"{where} has no {split} split, but the shards {run_root} was trained on had one")
        if split_fingerprint(Manifest.load(where, split)) != recorded.splits[split]:
            moved = "" if Path(where) == Path(recorded.shards) else f" (it was trained on {recorded.shards})"
            raise UserError(f"{where}/{split} is not the {split} split {run_root} was trained against{moved}: the "
                            "shards were packed again or are others; evaluate on the shards it was trained on, or "
                            "train again")
    return where


def record_scored(run_root: Path, split: str, shards: str) -> None:
    """After ``evaluate`` wrote ``predictions/<split>.npz``: the fingerprint it was scored on."""
    path = Path(run_root) / "predictions" / SCORED
    try:
        scored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        scored = {}
    scored[split] = split_fingerprint(Manifest.load(shards, split))
    write_atomic(path, json.dumps(scored, indent=2) + "\n")


def check_fusable(audio: Path, video: Path, splits: tuple[str, ...] = ("val", "test")) -> None:
    """Both runs' predictions were scored on the same splits, the ones each run was trained against."""
    scored = {}
    for run in (audio, video):
        try:
            scored[run] = json.loads((run / "predictions" / SCORED).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            scored[run] = None  # evaluated before this was recorded
        recorded = DataProvenance.read(run / PROVENANCE)
        if recorded is not None and scored[run] is not None:
            for split in splits:
                if split in scored[run] and scored[run][split] != recorded.splits.get(split):
                    raise UserError(f"{run}/predictions/{split}.npz was scored on another {split} split than the run "
                                    "was trained against: evaluate it again on its own shards")
    a, b = scored[audio], scored[video]
    if a is not None and b is not None:
        differ = [s for s in splits if s in a and s in b and a[s] != b[s]]
        if differ:
            raise UserError(f"{audio} and {video} were evaluated on different {' and '.join(differ)} splits "
                            "(other shards or another pack): fuse runs of the same shards")


def check_bundle_shards(sources: dict[str, dict[str, Any]], shards: str | Path, split: str) -> None:
    """``predict --shards``: shards a bundled model was trained on (the same folder, or a copy holding the same
    train split) must still hold the splits it was trained against; other shards are new data, predicted freely.
    ``sources``: model name -> its ``source`` in ``bundle.json`` (``data``: the training's provenance)."""
    train_now = split_fingerprint(Manifest.load(shards, "train")) if Manifest.path_for(shards, "train").is_file() else None
    for name, source in sources.items():
        data = source.get("data") if isinstance(source, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("splits"), dict):
            continue  # bundled from a run without provenance
        recorded = DataProvenance(str(data.get("shards", "")), {str(k): str(v) for k, v in data["splits"].items()})
        same_place = os.path.realpath(shards) == os.path.realpath(recorded.shards)
        if not same_place and train_now != recorded.splits.get("train"):
            continue
        if train_now != recorded.splits.get("train"):
            raise UserError(f"{shards} was packed again since the bundle's {name} model was trained on it: its "
                            f"{split} split may hold that model's training data; predict on other shards, or bundle again")
        if split in recorded.splits and split_fingerprint(Manifest.load(shards, split)) != recorded.splits[split]:
            raise UserError(f"{shards}/{split} is not the {split} split the bundle's {name} model was trained against")
