"""Speaker-independent splits: avatars on one side, as few conversations dropped as the avatar graph allows."""

import hashlib
import json
import random

import pytest

from emotrain.cli import main as cli_main
from emotrain.data.avamerg import read_conversations
from emotrain.data.splits import SPLITS, SplitRecipe, assign_splits
from helpers import conversation, write


def read(tmp_path, records):
    convs, skipped = read_conversations(write(tmp_path, records))
    assert skipped == []
    return convs


def owners(splits):
    """avatar id -> the one split it is in (fails when an avatar is in two)."""
    owner = {}
    for name, members in splits.items():
        for conv in members:
            for avatar in (conv.avatar_id("speaker"), conv.avatar_id("listener")):
                assert owner.setdefault(avatar, name) == name, f"avatar {avatar} in {owner[avatar]} and {name}"
    return owner


def old_hash_split(convs, recipe):
    """Today's method, inline: each avatar hashed on its own; a conversation across splits is dropped."""

    def split(avatar):
        digest = hashlib.sha256(f"{recipe.seed}:avatar{avatar}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        return "test" if u < recipe.test_frac else "val" if u < recipe.test_frac + recipe.val_frac else "train"

    kept = {name: [] for name in SPLITS}
    for conv in convs:
        a, b = split(conv.avatar_id("speaker")), split(conv.avatar_id("listener"))
        if a == b:
            kept[a].append(conv)
    return kept


def grouped_records():
    """40 conversations among 8 disjoint groups (4 pairs, 4 triangles) of uneven sizes."""
    sizes = [9, 7, 6, 5, 4, 4, 3, 2]
    records, cid, next_avatar = [], 0, 100
    for g, size in enumerate(sizes):
        members = list(range(next_avatar, next_avatar + (2 if g % 2 else 3)))
        next_avatar += len(members)
        pairs = [(a, b) for a in members for b in members if a != b]
        for k in range(size):
            speaker, listener = pairs[k % len(pairs)]
            records.append(conversation(f"{cid:05d}", speaker=speaker, listener=listener))
            cid += 1
    return records


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separate_avatar_groups_are_split_whole(tmp_path, seed):
    convs = read(tmp_path, grouped_records())
    recipe = SplitRecipe(0.2, 0.2, seed=seed, speaker_independent=True)
    splits, dropped = assign_splits(convs, recipe)
    assert dropped == []
    owners(splits)
    assert sum(len(v) for v in splits.values()) == 40
    for name, frac in zip(SPLITS, recipe.fractions()):
        assert splits[name], f"{name} is empty"
        assert abs(len(splits[name]) - frac * 40) <= 4, {n: len(v) for n, v in splits.items()}
    shuffled = list(convs)
    random.Random(seed).shuffle(shuffled)  # the assignment depends on the conversations, not their order
    again, _ = assign_splits(shuffled, recipe)
    ids = lambda s: {n: sorted(c.conversation_id for c in s[n]) for n in s}  # noqa: E731
    assert ids(again) == ids(splits)


def dense_records():
    """10 speakers x 10 listeners, every pair once: no avatar-disjoint split keeps everything."""
    return [conversation(f"{10 * s + l:05d}", speaker=s, listener=10 + l) for s in range(10) for l in range(10)]


def test_dense_avatar_graph_keeps_what_it_can_and_says_what_it_dropped(tmp_path, capsys):
    src = tmp_path / "dense"
    src.mkdir()
    convs = read(src, dense_records())
    recipe = SplitRecipe(0.1, 0.1, seed=0, speaker_independent=True)
    splits, dropped = assign_splits(convs, recipe)
    owners(splits)
    assert splits["val"] and splits["test"]
    kept = sum(len(v) for v in splits.values())
    assert kept + len(dropped) == 100
    for name in ("val", "test"):  # near their share of what is kept (hashing avatars left them at 3 and 1)
        assert 0.05 * kept <= len(splits[name]) <= 0.15 * kept, {n: len(v) for n, v in splits.items()}
    hashed = old_hash_split(convs, recipe)
    assert len(hashed["test"]) < 0.05 * sum(len(v) for v in hashed.values())  # what the old method did here

    out = tmp_path / "shards"
    argv = ["pack", "--avamerg", str(src), "--out", str(out), "--no-progress", "--speaker-independent",
            "--val-frac", "0.1", "--test-frac", "0.1", "--max-skip-frac", "1"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"dropped: {len(dropped)} conversations" in printed and "not proven optimal" in printed
    recipe_written = json.loads((out / "train" / "manifest.json").read_text())["recipe"]
    listed = {d["id"]: d["reason"] for d in recipe_written["dropped_cross_split"]}
    assert set(listed) == {c.conversation_id for c in dropped}
    where = owners(splits)
    for conv in dropped:
        s, l = conv.avatar_id("speaker"), conv.avatar_id("listener")
        assert listed[conv.conversation_id] == (
            f"speaker-independent: speaker avatar {s} in {where[s]}, listener avatar {l} in {where[l]}")
    assert "local search" in recipe_written["split_note"] and "avatar graph" in recipe_written["method"]


def test_drops_count_against_max_skip_frac(tmp_path, capsys):
    src = tmp_path / "dense"
    src.mkdir()
    convs = read(src, dense_records())
    _, dropped = assign_splits(convs, SplitRecipe(0.1, 0.1, seed=0, speaker_independent=True))
    frac = len(dropped) / 100
    argv = ["pack", "--avamerg", str(src), "--no-progress", "--speaker-independent", "--val-frac", "0.1",
            "--test-frac", "0.1"]
    assert cli_main([*argv, "--out", str(tmp_path / "a"), "--max-skip-frac", str(frac - 0.01)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in captured.err
    assert f"{len(dropped)} dropped by --speaker-independent" in err[0]
    assert "raise --max-skip-frac" in err[0] and "--val-frac/--test-frac" in err[0]
    assert cli_main([*argv, "--out", str(tmp_path / "b"), "--max-skip-frac", str(frac + 0.01)]) == 0


def test_a_requested_split_that_cannot_be_filled_fails_in_one_line(tmp_path, capsys):
    src = tmp_path / "one-pair"
    src.mkdir()
    read(src, [conversation(f"{i:05d}", speaker=1 + i % 2, listener=2 - i % 2) for i in range(10)])
    argv = ["pack", "--avamerg", str(src), "--no-progress", "--speaker-independent", "--max-skip-frac", "1"]
    assert cli_main([*argv, "--out", str(tmp_path / "a"), "--val-frac", "0.1", "--test-frac", "0"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in captured.err
    assert "val split" in err[0] and "set --val-frac 0" in err[0]
    assert not (tmp_path / "a" / "train").exists()  # failed before writing anything
    assert cli_main([*argv, "--out", str(tmp_path / "b"), "--val-frac", "0", "--test-frac", "0"]) == 0
    assert "nothing dropped" in capsys.readouterr().out
