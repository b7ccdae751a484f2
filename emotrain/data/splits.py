"""Carve labelled train / val / test splits from one labelled AvaMERG JSON.

The official ``test.json`` carries no labels, so evaluation splits are carved by
conversation. Assignment hashes ``(seed, id)`` instead of shuffling a list: a
conversation's split then does not depend on which other conversations are present, so
adding data or dropping a broken record never moves the rest between splits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from emotrain.data.avamerg import Conversation

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitRecipe:
    val_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0
    speaker_independent: bool = False

    def validate(self) -> None:
        for name in ("val_frac", "test_frac"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.val_frac + self.test_frac >= 1.0:
            raise ValueError("val_frac + test_frac must leave some training data")

    def to_dict(self) -> dict:
        return {
            "val_frac": self.val_frac,
            "test_frac": self.test_frac,
            "seed": self.seed,
            "speaker_independent": self.speaker_independent,
            "method": "sha256(seed:id) uniform; by avatar id when speaker_independent",
        }


def _uniform(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _split_of(u: float, recipe: SplitRecipe) -> str:
    if u < recipe.test_frac:
        return "test"
    if u < recipe.test_frac + recipe.val_frac:
        return "val"
    return "train"


def assign_splits(
    conversations: list[Conversation], recipe: SplitRecipe
) -> tuple[dict[str, list[Conversation]], list[Conversation]]:
    """Conversations per split (input order kept) and those a speaker-independent split drops.

    With ``speaker_independent`` every avatar id belongs to exactly one split; a
    conversation whose speaker and listener avatars fall in different splits cannot be
    placed without leaking an avatar, so it is returned as dropped.
    """
    recipe.validate()
    splits: dict[str, list[Conversation]] = {name: [] for name in SPLITS}
    dropped: list[Conversation] = []
    for conv in conversations:
        if recipe.speaker_independent:
            avatars = {a for a in (conv.avatar_id("speaker"), conv.avatar_id("listener")) if a is not None}
            keys = [f"avatar{a}" for a in sorted(avatars)] or [f"conversation{conv.conversation_id}"]
            names = {_split_of(_uniform(recipe.seed, k), recipe) for k in keys}
            if len(names) > 1:
                dropped.append(conv)
                continue
            name = names.pop()
        else:
            name = _split_of(_uniform(recipe.seed, conv.conversation_id), recipe)
        splits[name].append(conv)
    return splits, dropped
