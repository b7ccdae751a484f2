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


def _tar(path: Path, fmt: int, members: list[tuple[str, bytes | None]]) -> Path:
    """A tar of regular files (bytes), directories (None) and one symlink, in tarfile's format ``fmt``."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            if payload is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("link.json")
        link.type, link.linkname = tarfile.SYMTYPE, "a.json"
        tar.addfile(link)
    return path


def _by_tarfile(path: Path) -> list[tuple[str, int, bool, bytes | None]]:
    out = []
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            out.append((info.name, info.size, info.isreg(), tar.extractfile(info).read() if info.isreg() else None))
    return out


def _by_lean_reader(path: Path) -> list[tuple[str, int, bool, bytes | None]]:
    from emotrain.data.tars import _members

    out = []
    with open(path, "rb") as file:
        for name, size, regular in _members(file):
            out.append((name, size, regular, file.read(size) if regular else None))
    return out


def test_the_lean_header_reader_reads_names_sizes_and_data_as_tarfile_does(tmp_path):
    long_dir = "d" * 120 + "/"
    members = [("a.json", b"1" * 700), ("dir", None), ("k/" + "x" * 150 + ".utt1.frames.mjpeg", b"\xff\xd8" * 300),
               ("ünïcode/ключ.wav", b"RIFF" * 10), (long_dir + "short.json", b"{}"), ("empty.txt", b"")]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        chosen = members if fmt != tarfile.USTAR_FORMAT else [m for m in members if "x" * 150 not in m[0]]
        path = _tar(tmp_path / f"f{fmt}.tar", fmt, chosen)
        assert _by_lean_reader(path) == _by_tarfile(path), fmt
    # A damaged header after the first ends the archive quietly, as tarfile does; a damaged first one is an error.
    path = tmp_path / f"f{tarfile.PAX_FORMAT}.tar"
    data = bytearray(path.read_bytes())
    second = 512 + 1024  # a.json's header and its 700 bytes of data
    data[second + 10] ^= 0xFF
    (tmp_path / "damaged.tar").write_bytes(bytes(data))
    assert _by_lean_reader(tmp_path / "damaged.tar") == _by_tarfile(tmp_path / "damaged.tar") != []
    data[10] ^= 0xFF
    (tmp_path / "first.tar").write_bytes(bytes(data))
    errors: list[Exception] = []
    assert list(shard_samples([{"url": str(tmp_path / "first.tar")}], lambda n: True, errors.append)) == []
    assert len(errors) == 1 and "bad checksum" in str(errors[0])
