"""The shard reader: webdataset's samples, without reading the members a model does not use."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import webdataset as wds

from emotrain.data.tars import shard_samples, split_name


def shard_paths(shards: Path) -> list[str]:
    manifest = json.loads((shards / "train" / "manifest.json").read_text())
    return [str(shards / "train" / s["name"]) for s in manifest["shards"]]


def test_samples_equal_webdatasets_for_every_member_selection(five_shards):
    urls = [{"url": u} for u in shard_paths(five_shards)]
    for wanted in (lambda n: True, lambda n: not n.endswith(".wav"), lambda n: n.endswith(".json")):
        ours = list(shard_samples(urls, wanted, lambda err: True))
        theirs = list(wds.tarfile_to_samples(select_files=wanted)(iter(urls)))
        assert len(ours) == 13 and ours == theirs


def test_a_truncated_shard_keeps_what_came_before_and_reports_once(five_shards, tmp_path):
    path = Path(shard_paths(five_shards)[0])
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    errors: list[Exception] = []
    samples = list(shard_samples([{"url": str(cut)}], lambda n: True, lambda err: errors.append(err) or True))
    whole = list(shard_samples([{"url": str(path)}], lambda n: True, lambda err: True))
    assert 1 <= len(samples) < len(whole)
    assert {**samples[0], "__url__": ""} == {**whole[0], "__url__": ""}
    assert len(errors) == 1 and str(cut) in str(errors[0])
    missing: list[Exception] = []
    assert list(shard_samples([{"url": str(tmp_path / "nope.tar")}], lambda n: True, missing.append)) == []
    assert len(missing) == 1


def test_a_duplicate_member_is_reported_and_the_first_kept(tmp_path):
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tar:
        for name, payload in (("a.json", b"1"), ("a.json", b"2"), ("b.json", b"3")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    errors: list[Exception] = []
    samples = list(shard_samples([{"url": str(path)}], lambda n: True, lambda err: errors.append(err) or True))
    assert [s["json"] for s in samples] == [b"1", b"3"] and len(errors) == 1


def test_keys_split_at_the_first_dot_of_the_base_name():
    assert split_name("dir.v2/00001.utt3.frames.json") == ("dir.v2/00001", "utt3.frames.json")
    assert split_name("noext") == (None, None)
