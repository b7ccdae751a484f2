import numpy as np
import pytest

from emotrain.config import ConfigError, from_dict
from emotrain.data.schema import META_FIELDS, VOCAB_FIELDS
from emotrain.data.text import (
    _META_SOURCES,
    MetadataEncoder,
    TextConfig,
    collate_token_batch,
    context_text,
    load_tokenizer,
    tokenize_turn,
)
from emotrain.errors import UserError

WORDS = ["i", "feel", "so", "happy", "today", "my", "dog", "ran", "away", "sad", "the", "party", "was", "fun", "lost"]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wordpiece")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]) + "\n")
    return folder


@pytest.fixture(scope="module")
def tokenizer(vocab_dir):
    return load_tokenizer(str(vocab_dir))


def cfg(**kwargs) -> TextConfig:
    return from_dict(TextConfig, {"tokenizer": "unused", **kwargs})


def test_a_folder_with_only_vocab_txt_gives_an_uncased_wordpiece_tokenizer(tokenizer):
    ids = tokenizer("I feel HAPPY today.")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "i", "feel", "happy", "today", ".", "[SEP]"]
    assert tokenizer.pad_token_id == 0


def test_an_unknown_tokenizer_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "no-such-tokenizer"))


def test_lengths_are_capped_at_the_configured_maxima(tokenizer):
    long_text = " ".join(WORDS * 40)  # 600 words
    out = tokenize_turn(tokenizer, ["i feel sad", long_text], long_text, cfg())
    utt_lengths = [len(ids) for ids in out["utterances"]]
    assert utt_lengths == [5, 128]
    assert len(out["context"]) == 256
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for ids in [*out["utterances"], out["context"]]:
        assert ids.dtype == np.int64 and ids[0] == cls and ids[-1] == sep
    small = tokenize_turn(tokenizer, [long_text], long_text, cfg(max_utterance_tokens=16, max_context_tokens=8))
    assert len(small["utterances"][0]) == 16 and len(small["context"]) == 8


def test_an_empty_context_is_just_cls_sep(tokenizer):
    out = tokenize_turn(tokenizer, ["fun"], "", cfg(context_fields=[]))
    assert out["context"].tolist() == [tokenizer.cls_token_id, tokenizer.sep_token_id]


def test_context_fields_choose_what_the_context_holds(tokenizer):
    record = {"context": "the party was fun"}
    turn = {"event_scenario": "my dog ran away", "emotion_cause": "lost", "goal_to_response": ""}
    assert context_text(record, turn, ["context"]) == "the party was fun"
    assert context_text(record, turn, ["event_scenario", "context"]) == "my dog ran away the party was fun"
    assert context_text(record, turn, ["goal_to_response"]) == ""
    ids = tokenize_turn(tokenizer, ["i"], context_text(record, turn, ["emotion_cause"]), cfg())["context"]
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert tokens == ["[CLS]", "lost", "[SEP]"]


def test_text_config_validation():
    with pytest.raises(ConfigError, match="speaker_emotion"):
        cfg(context_fields=["context", "speaker_emotion"])  # the label must never be an input
    with pytest.raises(ConfigError, match="twice"):
        cfg(context_fields=["context", "context"])
    with pytest.raises(ConfigError, match="max_utterance_tokens"):
        cfg(max_utterance_tokens=1)
    assert cfg().context_fields == ["context"] and cfg().max_utterances == 8


def test_a_memo_tokenises_each_text_once_per_conversation(tokenizer):
    calls: list[list[str]] = []

    def counting(texts, **kwargs):
        calls.append(list(texts))
        return tokenizer(texts, **kwargs)

    memo: dict = {}
    first = tokenize_turn(counting, ["i feel sad", "fun"], "the party", cfg(), memo)
    second = tokenize_turn(counting, ["i feel sad", "fun", "my dog ran away"], "the party", cfg(), memo)
    assert calls == [["i feel sad", "fun"], ["the party"], ["my dog ran away"]] or calls == [
        ["the party"], ["i feel sad", "fun"], ["my dog ran away"]]
    plain = tokenize_turn(tokenizer, ["i feel sad", "fun", "my dog ran away"], "the party", cfg())
    assert [ids.tolist() for ids in second["utterances"]] == [ids.tolist() for ids in plain["utterances"]]
    assert second["context"].tolist() == plain["context"].tolist() == first["context"].tolist()


def test_too_many_or_no_utterances_are_refused(tokenizer):
    with pytest.raises(ValueError, match="max_utterances"):
        tokenize_turn(tokenizer, ["i"] * 3, "", cfg(max_utterances=2))
    with pytest.raises(ValueError, match="at least one"):
        tokenize_turn(tokenizer, [], "", cfg())


def test_collate_token_batch_pads_distinct_rows_to_the_longest_in_the_batch(tokenizer):
    a = tokenize_turn(tokenizer, ["i feel so happy today", "fun"], "the party", cfg())
    b = tokenize_turn(tokenizer, ["sad"], "", cfg())
    batch = collate_token_batch([a, b])
    assert batch["utt_token_ids"].shape == (3, 7)  # [CLS] + 5 words + [SEP]
    assert batch["utt_token_mask"].sum(-1).tolist() == [7, 3, 3]
    assert batch["utt_row"].tolist() == [[0, 1], [2, -1]]
    assert batch["ctx_token_ids"].shape == (2, 4) and batch["ctx_token_mask"].sum(-1).tolist() == [4, 2]
    assert batch["ctx_row"].tolist() == [0, 1]
    assert batch["utt_token_ids"][2, :3].tolist() == b["utterances"][0].tolist()
    assert (batch["utt_token_ids"][batch["utt_token_mask"] == 0] == 0).all()
    assert all(v.dtype == np.int64 for v in batch.values())
    wider = collate_token_batch([a, b], num_utterances=4, pad_id=9)
    assert wider["utt_token_ids"].shape == (3, 7) and wider["utt_row"].tolist() == [[0, 1, -1, -1], [2, -1, -1, -1]]
    assert (wider["utt_token_ids"][wider["utt_token_mask"] == 0] == 9).all()
    assert (wider["ctx_token_ids"][wider["ctx_token_mask"] == 0] == 9).all()
    with pytest.raises(ValueError, match="num_utterances"):
        collate_token_batch([a, b], num_utterances=1)


def test_collate_token_batch_sends_each_distinct_text_once(tokenizer):
    """Turns of a conversation repeat each other's utterances and context: each text gets one row,
    and ``ids[row]`` gives back every slot's own token ids (equal texts anywhere share a row)."""
    texts = ["i feel sad", "my dog ran away", "so sad", "the party was fun", "fun"]
    memo: dict = {}
    turns = [tokenize_turn(tokenizer, texts[: k + 1][-3:], "the party", cfg(max_utterances=3), memo) for k in range(5)]
    # another conversation (its own memo: new arrays) repeating a text and the context of the first
    turns.append(tokenize_turn(tokenizer, ["so sad", "lost"], "the party", cfg()))
    turns.append(tokenize_turn(tokenizer, ["lost"], "my dog ran away", cfg()))
    batch = collate_token_batch(turns, pad_id=0)
    ids, mask, row = batch["utt_token_ids"], batch["utt_token_mask"], batch["utt_row"]
    assert row.shape == (7, 3) and int((row >= 0).sum()) == 15 and ids.shape[0] == 6  # 15 slots, 6 texts
    assert len({ids[r, mask[r] > 0].tobytes() for r in range(len(ids))}) == len(ids)  # rows are distinct
    assert row[:, 0].tolist() == [0, 0, 0, 1, 2, 2, 5] and row[5].tolist() == [2, 5, -1]  # first appearance order
    for t, turn in enumerate(turns):
        for j in range(3):
            if j < len(turn["utterances"]):
                r = row[t, j]
                assert ids[r, mask[r] > 0].tolist() == turn["utterances"][j].tolist()
            else:
                assert row[t, j] == -1
    ctx_ids, ctx_mask, ctx_row = batch["ctx_token_ids"], batch["ctx_token_mask"], batch["ctx_row"]
    assert ctx_row.tolist() == [0, 0, 0, 0, 0, 0, 1] and ctx_ids.shape[0] == 2
    for t, turn in enumerate(turns):
        r = ctx_row[t]
        assert ctx_ids[r, ctx_mask[r] > 0].tolist() == turn["context"].tolist()


VOCAB = {
    "age": ["elderly", "young"],
    "gender": ["female", "male"],
    "timbre": ["high", "low", "mid"],
    "avatar_id": ["12", "7"],
    "topic": ["pets", "work life"],
    "event_scenario": ["lost a pet"],
}


def record(**overrides):
    base = {
        "topic": " Work  Life ",
        "speaker_profile": {"ID": 7, "age": "Young", "gender": "male", "timbre": "LOW"},
        "listener_profile": {"ID": "012", "age": "elderly", "gender": "female", "timbre": "mid"},
    }
    base.update(overrides)
    return base


def column(name: str) -> int:
    return [c for c, _ in META_FIELDS].index(name)


def test_metadata_ids_follow_meta_fields_and_normalise_values():
    row = MetadataEncoder(VOCAB).encode(record(), {"event_scenario": "Lost a pet"})
    assert row.dtype == np.int64 and row.shape == (len(META_FIELDS),)
    expected = {
        "speaker_age": 2, "speaker_gender": 2, "speaker_timbre": 2, "speaker_id": 2,
        "listener_age": 1, "listener_gender": 1, "listener_timbre": 3, "listener_id": 1,
        "topic": 2, "event_scenario": 1,
    }
    assert {c: int(row[column(c)]) for c, _ in META_FIELDS} == expected


def test_unseen_and_missing_metadata_is_zero():
    encoder = MetadataEncoder(VOCAB)
    unseen = record(topic="space travel", speaker_profile={"ID": 99, "age": "teen", "gender": None, "timbre": ""})
    row = encoder.encode({**unseen, "listener_profile": None}, {})
    assert row.tolist() == [0] * len(META_FIELDS)
    partial = MetadataEncoder({"age": ["young"]}).encode(record(), {"event_scenario": "lost a pet"})
    assert partial[column("speaker_age")] == 1 and partial.sum() == 1


def test_metadata_encoder_covers_the_schema_and_refuses_unknown_fields():
    assert set(_META_SOURCES) == {c for c, _ in META_FIELDS}
    assert {f for _, f in META_FIELDS} <= set(VOCAB_FIELDS)
    with pytest.raises(ValueError, match="personality"):
        MetadataEncoder({"personality": ["calm"]})
