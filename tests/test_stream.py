import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from corpus import torchrun
from helpers import data_config, labelled_keys

from emotrain.data import stream
from emotrain.data.schema import META_FIELDS
from emotrain.data.shardlists import Slot, train_shards
from emotrain.data.stream import Modalities, build_loader
from emotrain.data.media import VideoConfig


def test_batch_contract_audio_model_reads_no_video(five_shards):
    # One worker: batches cross a process boundary (numpy small fields, shared-memory audio).
    loader, manifest = build_loader(data_config(five_shards, num_workers=1), "train", Modalities(audio=True, video=False), 4, train=False)
    batches = list(loader)
    assert sum(len(b["keys"]) for b in batches) == manifest.labelled_turns
    b = batches[0]
    assert all(isinstance(v, torch.Tensor) for k, v in b.items() if k not in ("keys", "skipped"))
    B, U = b["utt_roles"].shape
    assert b["utt_row"].shape == (B, U) and b["ctx_row"].shape == (B,)
    rows, width = b["utt_token_ids"].shape
    assert b["utt_token_mask"].shape == (rows, width) and torch.equal(b["utt_row"] >= 0, b["utt_mask"])
    assert b["ctx_token_mask"].shape == b["ctx_token_ids"].shape and (b["ctx_row"] >= 0).all()
    assert sorted(set(b["utt_row"][b["utt_mask"]].tolist())) == list(range(rows))  # each row used
    assert sorted(set(b["ctx_row"].tolist())) == list(range(len(b["ctx_token_ids"])))
    clips = b["audio"].shape[0]
    assert b["audio_lengths"].shape == (clips,) and b["audio"].shape == (clips, int(b["audio_lengths"].max()))
    assert b["audio"].shape[1] <= 16000  # max_seconds 1: padded to the batch's longest clip, at most that
    padding = torch.arange(b["audio"].shape[1]) >= b["audio_lengths"][:, None]
    assert not b["audio"][padding].any() and (b["audio_lengths"] > 0).all()
    assert b["audio_index"].shape == (B, U) and b["audio_index"].max() < clips
    assert sorted(set(b["audio_index"][b["audio_index"] >= 0].tolist())) == list(range(clips))  # each clip used
    assert b["meta_ids"].shape == (B, len(META_FIELDS))
    assert "video" not in b and "video_present" not in b
    assert torch.equal(b["utt_mask"], b["utt_roles"] > 0)
    assert (b["num_utts"] == b["utt_mask"].sum(1)).all()
    # the current utterance is the last real slot and is the speaker's
    assert (b["utt_roles"][torch.arange(B), b["num_utts"] - 1] == 1).all()
    assert b["audio_present"][b["utt_mask"]].float().mean() > 0.5
    assert torch.equal(b["audio_present"], b["audio_index"] >= 0)
    assert not b["audio_present"][~b["utt_mask"]].any()
    # Turns of one conversation share utterances: their clips are sent once, not once per slot.
    assert sum(int(x["audio_present"].sum()) for x in batches) > sum(x["audio"].shape[0] for x in batches)


def test_loader_batches_send_each_distinct_text_once(five_shards, monkeypatch):
    """``utt_token_ids[utt_row]`` gives back every slot's own token ids (``ctx_*`` likewise), with
    each distinct text of the batch in one row; the turns of one conversation share most rows."""
    collated: list[tuple[list[dict], dict]] = []
    real = stream.collate_turns

    def recording(samples, *args):
        collated.append((samples, real(samples, *args)))
        return collated[-1][1]

    monkeypatch.setattr(stream, "collate_turns", recording)  # no workers: the collate runs here
    cfg = data_config(five_shards)
    loader, _ = build_loader(cfg, "train", Modalities(False, False), 8, train=False)
    assert sum(len(b["keys"]) for b in loader) == sum(len(samples) for samples, _ in collated) > 13
    for samples, batch in collated:
        for prefix in ("utt", "ctx"):
            ids, mask = batch[f"{prefix}_token_ids"], batch[f"{prefix}_token_mask"]
            distinct = {ids[r, mask[r] > 0].tobytes() for r in range(len(ids))}
            assert len(distinct) == len(ids)  # rows are distinct
            assert (ids[mask == 0] == 0).all()  # the tiny tokenizer's [PAD]
        for i, sample in enumerate(samples):
            utterances, row = sample["tokens"]["utterances"], batch["utt_row"][i]
            for j, r in enumerate(row):
                if j < len(utterances):
                    got = batch["utt_token_ids"][r, batch["utt_token_mask"][r] > 0]
                    assert got.tolist() == utterances[j].tolist()
                else:
                    assert r == -1
            r = batch["ctx_row"][i]
            got = batch["ctx_token_ids"][r, batch["ctx_token_mask"][r] > 0]
            assert got.tolist() == sample["tokens"]["context"].tolist()
    by_conversation: dict[str, list[dict]] = {}
    for samples, _ in collated:
        for sample in samples:
            by_conversation.setdefault(sample["key"].rsplit("_", 1)[0], []).append(sample)
    turns = max(by_conversation.values(), key=len)[:8]
    one = real(turns, cfg, Modalities(False, False), 0)
    assert len(one["utt_token_ids"]) < int(one["utt_mask"].sum()) and len(one["ctx_token_ids"]) == 1


def test_text_dedup_cuts_bert_rows_per_turn(five_shards):
    """Before, BERT encoded each real utterance slot and one context per turn; now each distinct
    utterance and context text of a batch once (default text config, batches of 8, eval)."""
    loader, _ = build_loader(data_config(five_shards), "train", Modalities(False, False), 8, train=False)
    assert data_config(five_shards).text.max_utterances == 8
    turns = before = after = 0
    for b in loader:
        turns += len(b["keys"])
        before += int(b["utt_mask"].sum()) + len(b["keys"])
        after += len(b["utt_token_ids"]) + len(b["ctx_token_ids"])
    print(f"\nBERT rows per turn: {before / turns:.2f} before, {after / turns:.2f} after text dedup "
          f"({before / after:.2f}x fewer; {turns} turns)")
    assert before >= 1.6 * after


def test_video_model_reads_no_audio_and_gets_uint8_frames(five_shards):
    loader, _ = build_loader(data_config(five_shards), "train", Modalities(audio=False, video=True), 4, train=False)
    b = next(iter(loader))
    assert "audio" not in b and b["video"].shape == (len(b["keys"]), 4, 3, 32, 32)
    assert b["video"].dtype == torch.uint8 and b["video_present"].all() and b["video"].float().std() > 1


def test_every_module_the_fork_server_preloads_imports():
    """The fork server skips a name that fails to import: a typo would silently cost every worker seconds."""
    import importlib

    for name in stream.WORKER_PRELOAD:
        importlib.import_module(name)
    preload = importlib.import_module("emotrain.data.worker_preload")
    assert preload.AutoTokenizer.__name__ == "AutoTokenizer"


def test_collate_audio_sends_each_distinct_clip_once():
    a, b, empty = np.ones(3, dtype=np.float32), np.full(5, 2, dtype=np.float32), np.zeros(0, dtype=np.float32)
    out = stream.collate_audio([[a], [a, None, b], [empty, b]], slots=3)
    assert out["audio_index"].tolist() == [[0, -1, -1], [0, -1, 1], [-1, 1, -1]]
    assert out["audio_lengths"].tolist() == [3, 5] and out["audio"].shape == (2, 5)
    assert out["audio"][0].tolist() == [1, 1, 1, 0, 0] and out["audio"][1].tolist() == [2] * 5
    assert out["audio_present"].tolist() == [[True, False, False], [True, False, True], [False, True, False]]
    nothing = stream.collate_audio([[None], [empty]], slots=1)
    assert nothing["audio"].shape == (0, 1) and not nothing["audio_present"].any()


def test_a_batch_of_clips_keeps_their_size_unless_it_mixes_sizes():
    cfg = VideoConfig(num_frames=2, image_size=32)
    small = torch.full((2, 3, 16, 16), 7, dtype=torch.uint8)
    same = stream.stack_clips([small, None, small], cfg)
    assert same.shape == (3, 2, 3, 16, 16) and same[1].sum() == 0 and (same[0] == 7).all()
    mixed = stream.stack_clips([small, torch.full((2, 3, 24, 8), 9, dtype=torch.uint8), None], cfg)
    assert mixed.shape == (3, 2, 3, 32, 32) and (mixed[0] == 7).all() and (mixed[1] == 9).all()
    assert mixed[2].sum() == 0
    assert stream.stack_clips([None, None], cfg).shape == (2, 2, 3, 32, 32)


def test_each_clip_decoded_once_per_conversation(five_shards, monkeypatch):
    calls = []
    real = stream.decode_audio
    monkeypatch.setattr(stream, "decode_audio", lambda data, *a: calls.append(data) or real(data, *a))
    loader, _ = build_loader(data_config(five_shards), "train", Modalities(audio=True, video=False), 64, train=False)
    turns = sum(len(b["keys"]) for b in loader)
    assert turns > 13  # conversations have several turns sharing their early clips
    assert len(calls) == len(set(calls))  # every clip's bytes differ, so a repeat is a second decode


def test_unlabelled_turns_are_not_yielded(five_shards):
    loader, manifest = build_loader(data_config(five_shards), "train", Modalities(False, False), 64, train=False)
    keys = [k for b in loader for k in b["keys"]]
    assert len(keys) == len(set(keys)) == manifest.labelled_turns
    assert set(keys) == labelled_keys(five_shards)


def corrupt_shard(path: Path) -> None:
    """Rewrite a shard with one undecodable wav, one conversation's json broken, then truncate it."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    keys = sorted({m.name.split(".")[0] for m, _ in members})
    bad_wav = next(m.name for m, _ in members if m.name.startswith(keys[0] + ".") and m.name.endswith(".wav"))
    bad_json = f"{keys[1]}.json"
    with tarfile.open(path, "w") as out:
        for member, data in members:
            if member.name == bad_wav:
                data = b"RIFF\x00\x00garbage" * 20
            elif member.name == bad_json:
                data = b"{not json"
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    path.write_bytes(path.read_bytes()[: last.offset_data + last.size // 2])  # the last member cut short


def test_corrupted_shard_members_are_skipped_and_counted(five_shards, tmp_path):
    import shutil

    shards = tmp_path / "bad"
    shutil.copytree(five_shards, shards)
    manifest = json.loads((shards / "train" / "manifest.json").read_text())
    corrupt_shard(shards / "train" / manifest["shards"][0]["name"])
    loader, _ = build_loader(data_config(shards), "train", Modalities(True, False), 2, train=True)
    skipped = {k: 0 for k in stream.SKIP_KINDS}
    seen = 0
    for batch, _ in zip(loader, range(40)):  # the endless stream runs through the bad shard several times
        seen += len(batch["keys"])
        for kind, n in batch["skipped"].items():
            skipped[kind] += n
    assert seen == 80
    assert skipped["bad_clips"] >= 1 and skipped["bad_conversations"] >= 1 and skipped["shard_errors"] >= 1


@pytest.mark.slow
def test_eval_yields_every_labelled_turn_exactly_once_with_more_ranks_than_shards(two_shards, tmp_path):
    """3 ranks x 2 workers over 2 shards; 1, 2 and 3 ranks over 5 shards: tests/test_evaluate.py."""
    shards = two_shards
    torchrun(3, "stream_ranks.py", "eval", "--shards", str(shards), "--out", str(tmp_path), "--workers", "2")
    got = json.loads((tmp_path / "eval.json").read_text())
    assert len(got["keys"]) == len(set(got["keys"]))  # gather would have raised on a duplicate
    assert set(got["keys"]) == labelled_keys(shards)


@pytest.mark.slow
def test_train_ranks_read_disjoint_shards_and_run_equal_batches(five_shards, tmp_path):
    batches = 9  # more than one epoch on either rank: uneven shards must not stop one rank early
    torchrun(2, "stream_ranks.py", "train", "--shards", str(five_shards), "--out", str(tmp_path), "--workers", "0",
             "--batches", str(batches))
    manifest = json.loads((five_shards / "train" / "manifest.json").read_text())
    urls = [str(five_shards / "train" / s["name"]) for s in manifest["shards"]]
    convs_in = {}
    for url in urls:
        with tarfile.open(url) as tar:
            convs_in[url] = {n.split(".")[0] for n in tar.getnames()}
    epoch0 = []
    for rank in (0, 1):
        got = json.loads((tmp_path / f"train-{rank}.json").read_text())
        assert got["batches"] == [batches, batches]
        expected = set().union(*(convs_in[u] for u in train_shards(urls, Slot(rank, 2, 0, 1), seed=0, epoch=0)))
        first_epoch = got["keys"][: len(expected)]
        assert set(first_epoch) == expected
        epoch0.append(expected)
    assert not epoch0[0] & epoch0[1]
    assert epoch0[0] | epoch0[1] == set().union(*convs_in.values())


def test_loader_workers_survive_the_preemption_notices(five_shards):
    """`scancel --signal=USR2` reaches loader workers too; a dead worker would fail the training
    process before it could checkpoint (seen in the submitit preemption test)."""
    import os
    import signal

    loader, manifest = build_loader(data_config(five_shards, num_workers=1), "train", Modalities(False, False), 2,
                                    train=False)
    batches = iter(loader.loader)  # the DataLoader's own iterator knows its workers
    keys = list(next(batches)["keys"])
    for worker in batches._workers:
        os.kill(worker.pid, signal.SIGUSR1)
        os.kill(worker.pid, signal.SIGUSR2)
    keys += [k for batch in batches for k in batch["keys"]]
    assert len(keys) == len(set(keys)) == manifest.labelled_turns


def test_a_train_loader_skipping_k_batches_yields_what_a_fresh_one_yields_after_k(five_shards):
    """Resume without replay: same keys, same augmented audio, across epochs, with 2 workers."""
    import itertools

    cfg = data_config(five_shards, num_workers=2, shuffle_buffer=4)

    def batches(skip: int, count: int) -> list[dict]:
        loader, _ = build_loader(cfg, "train", Modalities(audio=True, video=False), 2, train=True, skip_batches=skip)
        return list(itertools.islice(loader, count))

    fresh, resumed = batches(0, 36), batches(25, 11)
    labelled = json.loads((five_shards / "train" / "manifest.json").read_text())["labelled_turns"]
    assert 2 * 25 > labelled  # the skip crosses an epoch boundary
    for expected, got in zip(fresh[25:], resumed, strict=True):
        assert got["keys"] == expected["keys"]
        assert torch.equal(got["audio"], expected["audio"]) and torch.equal(got["audio_index"], expected["audio_index"])
