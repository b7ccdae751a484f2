import json

import pytest

from helpers import conversation, write

from emotrain.data.avamerg import MediaDirs, read_conversations
from emotrain.data.splits import SplitRecipe, assign_splits
from emotrain.errors import UserError


def test_reads_cumulative_history_and_clip_names(tmp_path):
    convs, skipped = read_conversations(write(tmp_path, [conversation(turns=3)]))
    assert skipped == []
    (conv,) = convs
    assert [u.index for u in conv.utterances] == [0, 1, 2, 3, 4]
    assert [t.last_utterance for t in conv.turns] == [0, 2, 4]
    assert conv.clip_stem(conv.utterances[0]) == "dia00001utt0_3"
    assert conv.clip_stem(conv.utterances[1]) == "dia00001utt1_7"
    shard = conv.shard_json()
    assert "proud" not in json.dumps(shard) and "speaker_emotion" not in json.dumps(shard)
    assert "\"response\"" not in json.dumps(shard)


def test_bad_records_are_skipped_with_reasons(tmp_path):
    wrong_type = conversation("00002")
    wrong_type["turns"] = "not a list"
    unsafe = conversation("../etc")
    dotted = conversation("a.b")
    bad_turn = conversation("00004", turns=2)
    bad_turn["turns"][1]["turn_id"] = "one"
    records = [conversation("00001"), wrong_type, unsafe, dotted, conversation("00001", emotion="sad"), bad_turn]
    convs, skipped = read_conversations(write(tmp_path, records))
    assert [c.conversation_id for c in convs] == ["00001", "00004"]
    assert convs[0].turns[0].emotion == "proud"  # the first duplicate is kept
    assert len(convs[1].turns) == 1
    reasons = {(s.kind, s.id): s.reason for s in skipped}
    assert "turns should be list" in reasons[("conversation", "00002")]
    assert "unsafe" in reasons[("conversation", "../etc")]
    assert "unsafe" in reasons[("conversation", "a.b")]
    assert "duplicate" in reasons[("conversation", "00001")]
    assert "turn_id should be int" in reasons[("turn", "00004_one")]


@pytest.mark.parametrize("content, pattern", [
    (b"[{\"conversation_id\": ", "malformed JSON at line 1"),
    (b"\xff\xfe[]", "not UTF-8"),
    (b"{}", "expected a JSON list"),
])
def test_broken_json_is_one_clear_error(tmp_path, content, pattern):
    path = tmp_path / "train.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=pattern) as info:
        read_conversations(path)
    assert str(path) in str(info.value)


def test_media_dirs_both_layouts(tmp_path):
    assert MediaDirs.locate(tmp_path) == MediaDirs(tmp_path, tmp_path)
    (tmp_path / "audio_v5_0").mkdir()
    (tmp_path / "video_v5_0").mkdir()
    assert MediaDirs.locate(tmp_path) == MediaDirs(tmp_path / "audio_v5_0", tmp_path / "video_v5_0")
    with pytest.raises(UserError, match="not found"):
        MediaDirs.locate(tmp_path, audio=tmp_path / "nope")


def test_splits_are_deterministic_and_stable(tmp_path):
    records = [conversation(f"{i:05d}", speaker=i % 9, listener=9 + i % 5) for i in range(300)]
    convs, _ = read_conversations(write(tmp_path, records))
    recipe = SplitRecipe(val_frac=0.2, test_frac=0.2, seed=1)
    first, _ = assign_splits(convs, recipe)
    again, _ = assign_splits(list(reversed(convs)), recipe)
    ids = lambda s: {n: sorted(c.conversation_id for c in s[n]) for n in s}  # noqa: E731
    assert ids(first) == ids(again)
    assert 30 < len(first["val"]) < 90 and 30 < len(first["test"]) < 90
    subset, _ = assign_splits(convs[:100], recipe)  # dropping records moves nobody else
    assert all(set(ids(subset)[n]) <= set(ids(first)[n]) for n in first)
    other, _ = assign_splits(convs, SplitRecipe(val_frac=0.2, test_frac=0.2, seed=2))
    assert ids(other) != ids(first)


def test_speaker_independent_split_keeps_avatars_apart(tmp_path):
    records = [conversation(f"{i:05d}", speaker=i % 20, listener=20 + (i * 7) % 20) for i in range(400)]
    convs, _ = read_conversations(write(tmp_path, records))
    splits, dropped = assign_splits(convs, SplitRecipe(0.2, 0.2, seed=0, speaker_independent=True))
    owner = {}
    for name, members in splits.items():
        for conv in members:
            for avatar in (conv.avatar_id("speaker"), conv.avatar_id("listener")):
                assert owner.setdefault(avatar, name) == name
    assert sum(len(v) for v in splits.values()) + len(dropped) == 400
    assert len(splits["train"]) > 0 and dropped == []  # 20 disjoint avatar pairs: whole pairs are assigned
