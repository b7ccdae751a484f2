"""A manifest is read once per process, and afresh when the pack rewrites it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from emotrain.data.manifest import Manifest


def test_a_manifest_is_loaded_once_and_again_after_a_repack(five_shards, tmp_path: Path) -> None:
    shards = tmp_path / "s"
    shutil.copytree(five_shards, shards)
    first = Manifest.load(shards, "train")
    assert Manifest.load(shards, "train") is first
    path = Manifest.path_for(shards, "train")
    data = json.loads(path.read_text())
    data["conversations"] = first.conversations + 0  # same content, rewritten: a new mtime
    path.write_text(json.dumps(data, indent=1))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    again = Manifest.load(shards, "train")
    assert again is not first and again.conversations == first.conversations
