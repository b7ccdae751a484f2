"""Text and metadata of a turn as ids: tokenised utterances and context, metadata vocab ids.

Tokenising happens in the loader workers, each text once per conversation (a turn's window
repeats most of the previous turn's utterances); padding happens per batch in the collate
(:func:`collate_token_batch`), which also sends each distinct sequence of the batch once (turns
of a conversation share most of their texts), padded to the longest of those rows rather than
to the configured maxima, so short dialogues do not pay for 128-token rows.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emotrain.config import path_field
from emotrain.data.schema import META_FIELDS, UNKNOWN_ID, VOCAB_FIELDS
from emotrain.errors import UserError
from emotrain.labels import normalise_word

# Texts that may feed the context input: the situation, then the chain-of-empathy fields
# (never ``speaker_emotion``, the label). The real ``context`` often names the emotion.
CONTEXT_FIELDS = ("context", "event_scenario", "emotion_cause", "goal_to_response")


@dataclass
class TextConfig:
    """Which tokenizer, how long, and which texts make up a turn's context input."""

    tokenizer: str = path_field("name_or_path", default="bert-base-uncased")  # a hub name, a local HF tokenizer folder, or a folder with vocab.txt
    max_utterance_tokens: int = 128
    max_context_tokens: int = 256
    context_fields: list[str] = field(default_factory=lambda: ["context"])
    max_utterances: int = 8

    def validate(self) -> None:
        if not self.tokenizer:
            raise ValueError("tokenizer must name a tokenizer or a folder")
        if self.max_utterance_tokens < 2 or self.max_context_tokens < 2:
            raise ValueError("max_utterance_tokens and max_context_tokens must be >= 2 ([CLS] and [SEP])")
        if self.max_utterances < 1:
            raise ValueError("max_utterances must be >= 1")
        unknown = [f for f in self.context_fields if f not in CONTEXT_FIELDS]
        if unknown:
            raise ValueError(f"context_fields: unknown {unknown} (choose from {list(CONTEXT_FIELDS)})")
        if len(set(self.context_fields)) != len(self.context_fields):
            raise ValueError("context_fields lists a field twice")


def load_tokenizer(name_or_path: str) -> Any:
    """A fast Hugging Face tokenizer from a hub name or a local folder.

    A folder holding only a WordPiece ``vocab.txt`` (like ``configs/tokenizers/tiny-wordpiece``)
    becomes an uncased ``BertTokenizerFast``; anything else goes to ``AutoTokenizer``, which
    honours ``HF_HUB_OFFLINE`` and the local cache.
    """
    from transformers import AutoTokenizer, BertTokenizerFast

    path = Path(name_or_path)
    if path.is_dir() and (path / "vocab.txt").is_file() and not any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        return BertTokenizerFast.from_pretrained(str(path), do_lower_case=True)
    try:
        return AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load tokenizer {name_or_path!r}: {str(err).splitlines()[0]}") from None


def context_text(record: dict[str, Any], turn: dict[str, Any], fields: list[str]) -> str:
    """The chosen context texts of a turn joined in order (``context`` is per conversation)."""
    parts = [record.get(f) if f == "context" else turn.get(f) for f in fields]
    return " ".join(str(p).strip() for p in parts if p and str(p).strip())


def tokenize_turn(
    tokenizer: Any, utterance_texts: list[str], context: str, cfg: TextConfig,
    memo: dict[tuple[str, int], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Token ids of a turn's utterances (oldest first) and its context, unpadded.

    Returns ``utterances`` (a list of int64 arrays, one per utterance, each at most
    ``max_utterance_tokens`` long including [CLS]/[SEP]) and ``context`` (one int64 array, at
    most ``max_context_tokens``; an empty context gives just [CLS][SEP]). ``memo`` (one per
    conversation) holds ids already computed, keyed by text and length cap: the loader passes
    it so that turn k does not re-tokenise the utterances turn k-1 already did.
    """
    if not utterance_texts:
        raise ValueError("a turn needs at least one utterance")
    if len(utterance_texts) > cfg.max_utterances:
        raise ValueError(f"{len(utterance_texts)} utterances given, max_utterances is {cfg.max_utterances}")
    memo = {} if memo is None else memo
    wanted = [(text, cfg.max_utterance_tokens) for text in utterance_texts] + [(context, cfg.max_context_tokens)]
    for cap in {cap for _, cap in wanted}:
        todo = list(dict.fromkeys(text for text, c in wanted if c == cap and (text, c) not in memo))
        if todo:
            for text, ids in zip(todo, token_ids(tokenizer, todo, cap)):
                memo[text, cap] = np.asarray(ids, dtype=np.int64)
    return {
        "utterances": [memo[key] for key in wanted[:-1]],
        "context": memo[wanted[-1]],
    }


class _RustIds:
    """Token ids from a fast tokenizer's Rust ``Tokenizer`` without the transformers wrapper around it.

    ``tokenizer(texts, truncation=True, max_length=cap)["input_ids"]`` checks and resets the truncation
    and padding settings, builds a ``BatchEncoding`` and converts every encoding on each call (about
    0.2 ms a turn in a loader worker, more than the Rust tokenisation of a turn's new texts). This calls
    the same ``encode_batch`` with the settings that call would set (longest-first truncation at ``cap``
    on the tokenizer's side, no padding, special tokens added), on a private copy of the Rust tokenizer
    so that the wrapper's own state is never touched: the same ids.
    """

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        self.rust = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.rust.no_padding()
        self.side = getattr(tokenizer, "truncation_side", "right")
        self.cap: int | None = None

    def __call__(self, texts: list[str], cap: int) -> list[list[int]]:
        if cap != self.cap:
            self.rust.enable_truncation(cap, stride=0, strategy="longest_first", direction=self.side)
            self.cap = cap
        return [encoding.ids for encoding in self.rust.encode_batch(texts, add_special_tokens=True)]


_RUST_IDS: weakref.WeakKeyDictionary[Any, _RustIds] = weakref.WeakKeyDictionary()


def token_ids(tokenizer: Any, texts: list[str], cap: int) -> list[list[int]]:
    """``tokenizer(texts, truncation=True, max_length=cap)["input_ids"]``, straight from Rust for a fast
    tokenizer (:class:`_RustIds`; one per tokenizer object, dropped with it)."""
    if not getattr(tokenizer, "is_fast", False):
        return tokenizer(texts, truncation=True, max_length=cap)["input_ids"]
    ids = _RUST_IDS.get(tokenizer)
    if ids is None:
        ids = _RUST_IDS[tokenizer] = _RustIds(tokenizer)
    return ids(texts, cap)


def collate_token_batch(
    tokens: list[dict[str, Any]], num_utterances: int | None = None, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """:func:`tokenize_turn` outputs of a batch as distinct padded rows and the row of each slot.

    Turns of one conversation repeat each other's utterances (a window of the last
    ``max_utterances``) and usually share one context, so most slots of a batch hold a text
    another slot already holds: each distinct token sequence is sent once and BERT encodes it
    once (the models place the vectors back into the slots). Rows are deduplicated by content,
    so equal texts of different conversations share a row too; rows come in order of first
    appearance (turn by turn, oldest utterance first), so the layout is deterministic.

    Returns int64 arrays: ``utt_token_ids``/``utt_token_mask`` [R, Lu] (padded with ``pad_id``,
    mask 0, to the longest of those rows rather than the configured maximum), ``utt_row``
    [B, U] (the row of each utterance slot, -1 on the slots past a turn's own count),
    ``ctx_token_ids``/``ctx_token_mask`` [C, Lc] and ``ctx_row`` [B]. ``num_utterances`` fixes
    U (default: the most utterances in the batch).
    """
    most = max(len(t["utterances"]) for t in tokens)
    slots = most if num_utterances is None else num_utterances
    if slots < most:
        raise ValueError(f"num_utterances={slots} but a turn has {most} utterances")
    utt_ids, utt_mask, utt_row = _distinct_rows([t["utterances"] for t in tokens], slots, pad_id)
    ctx_ids, ctx_mask, ctx_row = _distinct_rows([[t["context"]] for t in tokens], 1, pad_id)
    return {
        "utt_token_ids": utt_ids, "utt_token_mask": utt_mask, "utt_row": utt_row,
        "ctx_token_ids": ctx_ids, "ctx_token_mask": ctx_mask, "ctx_row": ctx_row[:, 0],
    }


def _distinct_rows(
    groups: list[list[np.ndarray]], slots: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [R, L], mask [R, L], row [len(groups), slots]) for ``groups[i][j]`` sequences.

    The key is the ids' bytes: the arrays are all int64, so equal bytes mean equal ids of equal
    length (the loader's memo often hands the very same array to several turns; the bytes also
    catch equal texts it tokenised separately).
    """
    rows: dict[bytes, int] = {}
    distinct: list[np.ndarray] = []
    row = np.full((len(groups), slots), -1, dtype=np.int64)
    for i, group in enumerate(groups):
        for j, ids in enumerate(group):
            key = ids.tobytes()
            if key not in rows:
                rows[key] = len(distinct)
                distinct.append(ids)
            row[i, j] = rows[key]
    width = max(1, max((len(ids) for ids in distinct), default=0))
    token_ids = np.full((len(distinct), width), pad_id, dtype=np.int64)
    token_mask = np.zeros((len(distinct), width), dtype=np.int64)
    for r, ids in enumerate(distinct):
        token_ids[r, : len(ids)] = ids
        token_mask[r, : len(ids)] = 1
    return token_ids, token_mask, row


# Where each META_FIELDS column reads its value: (part of the sample, key).
_META_SOURCES = {
    "speaker_age": ("speaker_profile", "age"),
    "speaker_gender": ("speaker_profile", "gender"),
    "speaker_timbre": ("speaker_profile", "timbre"),
    "speaker_id": ("speaker_profile", "ID"),
    "listener_age": ("listener_profile", "age"),
    "listener_gender": ("listener_profile", "gender"),
    "listener_timbre": ("listener_profile", "timbre"),
    "listener_id": ("listener_profile", "ID"),
    "topic": ("record", "topic"),
    "event_scenario": ("turn", "event_scenario"),
}


def normalise_meta(field_name: str, value: Any) -> str:
    """The vocabulary form of a metadata value: avatar ids as decimal strings, words lower-cased."""
    if value is None:
        return ""
    if field_name == "avatar_id":
        text = str(value).strip()
        try:
            return str(int(text))
        except ValueError:
            return normalise_word(text)
    return normalise_word(str(value))


class MetadataEncoder:
    """Conversation profiles, topic and turn chain -> the ``meta_ids`` row, 0 for anything unseen.

    ``vocab`` is the manifest's (built from train only, id = position + 1), so an id means the
    same string in every split.
    """

    def __init__(self, vocab: dict[str, list[str]]):
        unknown = sorted(set(vocab) - set(VOCAB_FIELDS))
        if unknown:
            raise ValueError(f"vocab has unknown field(s) {unknown}")
        self.ids = {
            name: {normalise_meta(name, v): i + 1 for i, v in enumerate(vocab.get(name, []))} for name in VOCAB_FIELDS
        }

    def encode(self, record: dict[str, Any], turn: dict[str, Any]) -> np.ndarray:
        """int64 [len(META_FIELDS)] for one turn of a shard ``json`` record."""
        parts = {
            "record": record,
            "turn": turn,
            "speaker_profile": record.get("speaker_profile") or {},
            "listener_profile": record.get("listener_profile") or {},
        }
        row = np.full(len(META_FIELDS), UNKNOWN_ID, dtype=np.int64)
        for i, (column, vocab_field) in enumerate(META_FIELDS):
            part, key = _META_SOURCES[column]
            value = normalise_meta(vocab_field, parts[part].get(key))
            row[i] = self.ids[vocab_field].get(value, UNKNOWN_ID) if value else UNKNOWN_ID
        return row
