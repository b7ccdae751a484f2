"""Label schemes: free-text emotion words -> class indices.

AvaMERG's ``speaker_emotion`` holds the 32 EmpatheticDialogues words plus free-form words
in later turns. A scheme maps words to classes explicitly; an unmapped word yields
``None`` so the caller leaves the turn unlabelled and counts it. There is deliberately no
fallback class: a silent default would bias every metric towards it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from emotrain.config import ConfigError, find_config, from_dict, read_yaml


def normalise_word(word: str) -> str:
    return " ".join(word.strip().lower().split())


@dataclass
class LabelScheme:
    """Classes in index order and the words each class absorbs (a class name maps to itself)."""

    name: str
    classes: list[str]
    words: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if len(self.classes) < 2:
            raise ValueError("a scheme needs at least two classes")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names repeat")
        unknown = sorted(set(self.words) - set(self.classes))
        if unknown:
            raise ValueError(f"words given for unknown class(es): {unknown}")
        seen: dict[str, str] = {}
        for cls, words in self.words.items():
            for word in words:
                w = normalise_word(word)
                if w in seen and seen[w] != cls:
                    raise ValueError(f"word {w!r} maps to both {seen[w]!r} and {cls!r}")
                seen[w] = cls
        self._index = {normalise_word(c): i for i, c in enumerate(self.classes)}
        for w, cls in seen.items():
            self._index[w] = self.classes.index(cls)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, word: str | None) -> int | None:
        """Class index of ``word``, or None when the scheme does not map it."""
        if not isinstance(word, str):
            return None
        return self._index.get(normalise_word(word))

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "words": {k: list(v) for k, v in self.words.items()}}


def load_scheme(path_or_name: str | Path) -> LabelScheme:
    """Load a scheme from a YAML path, or by name from the packaged ``configs/labels/`` (``ekman7``)."""
    path = find_config(path_or_name, subdir="labels")
    try:
        return from_dict(LabelScheme, read_yaml(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def scheme_from_dict(data: dict) -> LabelScheme:
    """Rebuild the scheme recorded in a manifest."""
    try:
        return from_dict(LabelScheme, data)
    except ConfigError as err:
        raise ConfigError(f"manifest scheme: {err}") from None
