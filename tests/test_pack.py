import json
import subprocess
import tarfile

import pytest
import webdataset as wds

from corpus import copy_corpus, make_corpus, make_shards, pack_options
from emotrain.cli import main as cli_main
from emotrain.data.pack import pack
from emotrain.config import to_dict


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), conversations=12, seed=3)


def read_split(out, split):
    manifest = json.loads((out / split / "manifest.json").read_text())
    urls = [str(out / split / s["name"]) for s in manifest["shards"]]
    samples = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())) if urls else []
    return manifest, samples


def test_pack_counts_match_what_is_read(corpus, tmp_path):
    out = tmp_path / "shards" / "tiny"
    manifests = make_shards(corpus, out)
    source = json.loads((corpus / "train.json").read_text())
    total_turns = sum(len(c["turns"]) for c in source)
    all_ids = set()
    for split, manifest in manifests.items():
        m, samples = read_split(out, split)
        assert m == to_dict(manifest)  # what pack returned is what it wrote
        assert m["conversations"] == len(samples) == len(m["conversation_ids"])
        keys = [s["__key__"] for s in samples]
        assert keys == m["conversation_ids"] and "." not in "".join(keys)
        labels = [l for s in samples for l in json.loads(s["labels.json"])]
        assert m["labelled_turns"] == sum(1 for l in labels if l >= 0) == sum(m["label_histogram"].values())
        last_labels = [json.loads(s["labels.json"])[-1:] for s in samples]
        assert m["labelled_last_turns"] == sum(1 for last in last_labels if last and last[0] >= 0)
        assert m["clips"] == sum(1 for s in samples for k in s if k.endswith((".wav", ".mp4")))
        for shard in m["shards"]:
            names = subprocess.run(["tar", "-tf", str(out / split / shard["name"])], capture_output=True, text=True, check=True).stdout.split()
            assert len({n.split(".")[0] for n in names}) == shard["conversations"]
            with tarfile.open(out / split / shard["name"]) as tar:  # plain ustar members: no pax blocks to parse
                assert all(member.mtime == 0 and not member.pax_headers for member in tar.getmembers())
        for s in samples:
            record = json.loads(s["json"])
            text = s["json"].decode()
            assert "speaker_emotion" not in text and '"response"' not in text
            assert len(record["turns"]) == len(json.loads(s["labels.json"]))
        all_ids |= set(keys)
    assert all_ids == {c["conversation_id"] for c in source}
    assert sum(len(json.loads(s["labels.json"])) for sp in manifests for s in read_split(out, sp)[1]) == total_turns
    train_avatars = {str(c["speaker_profile"]["ID"]) for c in source if c["conversation_id"] in manifests["train"].conversation_ids}
    assert set(manifests["test"].vocab["avatar_id"]) >= train_avatars  # vocab is train's, shared
    assert manifests["test"].vocab == manifests["train"].vocab


def test_wavs_are_resampled_once_to_16k(corpus, tmp_path):
    import io

    import soundfile as sf

    out = tmp_path / "s"
    make_shards(corpus, out)
    _, samples = read_split(out, "train")
    rates = {sf.info(io.BytesIO(s[k])).samplerate for s in samples for k in s if k.endswith(".wav")}
    assert rates == {16000}


def test_bad_clips_and_records_lose_nothing_else(corpus, tmp_path):
    src = copy_corpus(corpus, tmp_path / "bad")
    records = json.loads((src / "train.json").read_text())
    wavs = sorted((src / "audio_v5_0").glob("*.wav"))
    mp4s = sorted((src / "video_v5_0").glob("*.mp4"))
    wavs[0].unlink()                                   # missing
    mp4s[1].write_bytes(b"")                           # zero-byte
    data = wavs[2].read_bytes(); wavs[2].write_bytes(data[: len(data) // 3])  # truncated
    mp4s[3].write_bytes(b"\x00\x01garbage" * 100)      # corrupt
    big = wavs[4]; big.write_bytes(big.read_bytes() + b"\x00" * 3_000_000)  # over size (with max_clip_mb=2)
    wavs[5].unlink(); wavs[5].mkdir()                  # unreadable (a folder: root reads any file)
    bad_type = dict(records[0], conversation_id="99999", turns={"not": "a list"})
    unsafe = dict(records[1], conversation_id="../../evil")
    duplicate = dict(records[2])
    unmapped = json.loads(json.dumps(records[3]))
    unmapped["conversation_id"] = "88888"
    unmapped["turns"][0]["chain_of_empathy"]["speaker_emotion"] = "bewildered"
    (src / "train.json").write_text(json.dumps(records + [bad_type, unsafe, duplicate, unmapped]))

    out = tmp_path / "out"
    manifests = pack(pack_options(src, out, max_clip_mb=2.0))
    skipped = [s for m in manifests.values() for s in m.skipped]
    by_id = {s["id"]: s for s in skipped}
    assert by_id[wavs[0].name]["reason"] == "missing file"
    assert by_id[mp4s[1].name]["reason"] == "zero-byte file"
    assert by_id[wavs[2].name]["reason"].startswith("undecodable wav")
    assert by_id[mp4s[3].name]["reason"].startswith("undecodable mp4")
    assert by_id[big.name]["reason"].startswith("over size limit")
    assert by_id[wavs[5].name]["reason"].startswith("unreadable")
    assert "turns should be list" in by_id["99999"]["reason"]
    assert "unsafe" in by_id["../../evil"]["reason"]
    assert any(s["kind"] == "conversation" and "duplicate" in s["reason"] for s in skipped)
    assert "bewildered" in by_id[f"88888_{unmapped['turns'][0]['turn_id']}"]["reason"]
    packed_ids = {i for m in manifests.values() for i in m.conversation_ids}
    assert packed_ids == {r["conversation_id"] for r in records} | {"88888"}
    # 88888 is a copy of a record under a new id, so none of its clips exist on disk.
    expected_clips = 2 * sum(len(r["turns"][-1]["dialogue_history"]) for r in records) - 6  # the 6 bad clips above
    copied_clips = 2 * len(unmapped["turns"][-1]["dialogue_history"])
    missing_copied = [s for s in skipped if s["kind"] == "clip" and s["id"].startswith("dia88888")]
    assert len(missing_copied) == copied_clips and {s["reason"] for s in missing_copied} == {"missing file"}
    assert sum(m.clips for m in manifests.values()) == expected_clips
    labels = {s["__key__"]: json.loads(s["labels.json"]) for sp in manifests for s in read_split(out, sp)[1]}
    assert labels["88888"][0] == -1


def test_resume_keeps_verified_shards_and_redoes_the_rest(corpus, tmp_path):
    out = tmp_path / "r"
    first = make_shards(corpus, out)
    shards = sorted((out / "train").glob("*.tar"))
    assert len(shards) >= 2
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    shards[0].unlink()
    shards[1].write_bytes(shards[1].read_bytes()[:-2048])  # damaged: sha256 no longer verifies
    (out / "train" / "leftover.tar.tmp").write_bytes(b"half")
    second = make_shards(corpus, out)
    assert second == first
    for p in shards[2:]:
        assert p.stat().st_mtime_ns == mtimes[p]
    listed = [s.name for s in second["train"].shards]
    assert "leftover.tar.tmp" not in listed and all(n.endswith(".tar") for n in listed)


def test_parallel_pack_equals_serial(corpus, tmp_path):
    serial = make_shards(corpus, tmp_path / "a" / "x")
    parallel = make_shards(corpus, tmp_path / "b" / "x", workers=2)
    assert serial == parallel


def test_cli_fails_with_one_line(corpus, tmp_path, capsys):
    src = tmp_path / "empty"
    src.mkdir()
    (src / "train.json").write_text("[]")
    assert cli_main(["pack", "--avamerg", str(src), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing was packed" in err[0]
    bad = copy_corpus(corpus, tmp_path / "mostly-bad")
    records = json.loads((bad / "train.json").read_text())
    for r in records[:6]:
        r["turns"] = None
    (bad / "train.json").write_text(json.dumps(records))
    assert cli_main(["pack", "--avamerg", str(bad), "--out", str(tmp_path / "o2"), "--no-progress", "--max-skip-frac", "0.3"]) == 2
    assert "--max-skip-frac" in capsys.readouterr().err
    (bad / "train.json").write_bytes(b"\xff\xfe")
    assert cli_main(["pack", "--avamerg", str(bad), "--out", str(tmp_path / "o3"), "--no-progress"]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    (bad / "train.json").unlink()
    (bad / "train.json").mkdir()  # unreadable JSON
    assert cli_main(["pack", "--avamerg", str(bad), "--out", str(tmp_path / "o4"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read it" in err[0]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli_main(["pack", "--avamerg", str(corpus), "--out", str(blocker / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write to --out" in err[0]


def test_cli_happy_path_prints_summary(corpus, tmp_path, capsys):
    rc = cli_main(["pack", "--avamerg", str(corpus), "--out", str(tmp_path / "cli"), "--no-progress", "--shard-mb", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "train:" in out and "labelled turns" in out
    with tarfile.open(next((tmp_path / "cli" / "train").glob("*.tar"))) as tar:
        assert any(n.endswith(".json") for n in tar.getnames())
