"""A split's ``manifest.json``: what ``pack`` wrote and what every reader of shards relies on.

``shards/<name>/<split>/manifest.json`` is written last by ``emotrain pack`` and read once per
split by the loader, training, evaluation and ``inspect``: :meth:`Manifest.load` checks every key
and type (a malformed or hand-edited file is one clear line, not a ``KeyError`` deep in a
worker), and the typed object is passed down from there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotrain.config import ConfigError, from_dict, to_dict
from emotrain.errors import UserError
from emotrain.files import write_atomic
from emotrain.data.prepared import PreparedVideo
from emotrain.labels import LabelScheme

MANIFEST = "manifest.json"


# (resolved path, mtime, size) -> the manifest read from it, for Manifest.load.
_LOADED: dict[tuple[str, int, int], "Manifest"] = {}


@dataclass
class ShardEntry:
    name: str  # file name inside the split folder
    conversations: int
    sha256: str


@dataclass
class Manifest:
    name: str
    split: str
    conversations: int
    turns: int
    labelled_turns: int
    clips: int
    label_histogram: dict[str, int]  # class name -> labelled turns
    scheme: LabelScheme
    shards: list[ShardEntry]
    conversation_ids: list[str]
    vocab: dict[str, list[str]]  # metadata field -> values; built from train only, the same in every split
    recipe: dict[str, Any]  # how the splits were carved (fractions, seed, source)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {kind, id, reason}
    # Conversations whose last turn is labelled: what the loader yields with data.turns = last.
    # None in manifests written before it was recorded (repack to use turns: last).
    labelled_last_turns: int | None = None
    # How the video is stored: prepared JPEG frames (pack --prepare-video), or None for the mp4s as given.
    video: PreparedVideo | None = None

    def __post_init__(self) -> None:
        self.location: Path | None = None  # the split folder it was loaded from (not written)

    def validate(self) -> None:
        for shard in self.shards:  # a shard name is a file in the split folder: nothing may point outside it
            if Path(shard.name).name != shard.name or shard.name in ("", ".", ".."):
                raise ValueError(f"shard name {shard.name!r} is not a plain file name")

    @classmethod
    def path_for(cls, shards_dir: str | Path, split: str) -> Path:
        return Path(shards_dir) / split / MANIFEST

    @classmethod
    def load(cls, shards_dir: str | Path, split: str) -> Manifest:
        """The manifest of ``shards_dir/split``, validated; a missing or malformed one is a UserError."""
        if not str(shards_dir):
            raise UserError("data.shards is not set: add --set data.shards=DIR (the folder `emotrain pack --out` wrote)")
        path = Path(cls.path_for(shards_dir, split))
        try:
            stat = path.stat()
        except OSError:
            return cls.read(path)  # missing: read() says so in one line
        # Loaded once per process: training, its periodic validation and evaluation ask for the same split
        # again; a repack (another size or modification time) is read afresh.
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in _LOADED:
            _LOADED[key] = cls.read(path)
        return _LOADED[key]

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Read a ``manifest.json`` (or the folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST
        if not path.is_file():
            raise UserError(f"no manifest at {path}: pack the corpus first (emotrain pack)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: malformed manifest ({err})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: malformed manifest (expected a JSON object)")
        try:
            manifest = from_dict(cls, data)
        except ConfigError as err:
            raise UserError(f"{path}: malformed manifest: {err}") from None
        manifest.location = path.parent
        return manifest

    def write(self, split_dir: str | Path) -> Path:
        """Write atomically into ``split_dir`` (written last by a pack: its presence means the split is done)."""
        split_dir = Path(split_dir)
        split_dir.mkdir(parents=True, exist_ok=True)
        path = split_dir / MANIFEST
        write_atomic(path, json.dumps(to_dict(self), indent=2) + "\n")
        self.location = split_dir
        return path

    def turns_for(self, turns: str) -> int:
        """How many labelled turns the loader yields from this split under ``data.turns``."""
        if turns == "all":
            return self.labelled_turns
        if self.labelled_last_turns is None:
            raise UserError(f"{self.location or 'this manifest'} does not record the labelled last turns "
                            "that data.turns=last needs: pack the corpus again")
        return self.labelled_last_turns

    @property
    def classes(self) -> list[str]:
        return list(self.scheme.classes)

    def class_counts(self) -> list[int]:
        """Labelled turns per class, in class-index order (what class weighting needs)."""
        return [int(self.label_histogram.get(c, 0)) for c in self.scheme.classes]

    def shard_urls(self) -> list[str]:
        """Paths of this split's shards; every one listed must exist."""
        if self.location is None:
            raise ValueError("a manifest that was not loaded from disk has no shard paths")
        urls = [str(self.location / s.name) for s in self.shards]
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise UserError(f"{len(missing)} shard(s) listed in {self.location / MANIFEST} are missing, "
                            f"e.g. {missing[0]}")
        return urls
