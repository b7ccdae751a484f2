"""What a packed shard sample holds, shared by the packer, the loader and the models.

One shard sample is one conversation, so each clip is stored once however many turns
use it:

- ``__key__``: the conversation id (no dots: webdataset splits keys at the first dot).
- ``json``: ``conversation_id``, ``topic``, ``speaker_profile`` / ``listener_profile``
  (``ID``, ``age``, ``gender``, ``timbre``), ``context``, ``utterances``
  (``[{index, role, text}]``), ``turns`` (``[{turn_id, last_utterance, event_scenario,
  emotion_cause, goal_to_response}]``). The label is never in here.
- ``labels.json``: a list aligned with ``turns``: class index under the scheme, -1 when
  the turn is unlabelled.
- ``utt{index}.wav``: mono 16 kHz PCM16 wav; ``utt{index}.mp4``: the video bytes as given.
"""

from __future__ import annotations

SAMPLE_RATE = 16_000
UNLABELLED = -1

ROLES = ("speaker", "listener")
# Role ids in batches: 0 is padding.
ROLE_IDS = {role: i + 1 for i, role in enumerate(ROLES)}

# Metadata vocabularies built from the train split (manifest ``vocab``); id 0 = unknown.
VOCAB_FIELDS = ("age", "gender", "timbre", "avatar_id", "topic", "event_scenario")
# Metadata id columns of a batch (``meta_ids[:, i]``), each looked up in VOCAB_FIELDS.
META_FIELDS = (
    ("speaker_age", "age"),
    ("speaker_gender", "gender"),
    ("speaker_timbre", "timbre"),
    ("speaker_id", "avatar_id"),
    ("listener_age", "age"),
    ("listener_gender", "gender"),
    ("listener_timbre", "timbre"),
    ("listener_id", "avatar_id"),
    ("topic", "topic"),
    ("event_scenario", "event_scenario"),
)
UNKNOWN_ID = 0


def meta_vocab_sizes(vocab: dict[str, list[str]]) -> dict[str, int]:
    """Embedding table size per batch metadata column (vocab entries + the unknown id)."""
    return {column: len(vocab.get(field, [])) + 1 for column, field in META_FIELDS}


def wav_member(index: int) -> str:
    return f"utt{index}.wav"


def mp4_member(index: int) -> str:
    return f"utt{index}.mp4"
