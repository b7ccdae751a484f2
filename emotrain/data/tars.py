"""Conversation samples from a split's tar shards, reading only the members the model uses.

Why not webdataset's ``tarfile_to_samples``: it reads a tar as a stream (``tarfile`` mode ``r|*``),
so every member a model does not use is still read through, 16 KiB at a time, to get past it: the
video model reads past every wav of a conversation, the audio model past every clip. Shards are
local files (the manifest lists them), so here a tar is opened for random access and a member that
is not wanted is skipped by a seek. With prepared video, where decoding is cheap, that halved the
workers' time in the tar reader (``benchmarks/cores_per_gpu.py --profile`` shows where it goes).

The samples are what webdataset would give: members grouped by key (the member name up to the
first dot of its base name), ``__key__`` and ``__url__`` set, extensions as keys (lower case). A
shard that cannot be opened, or breaks part way (truncated, a damaged header), goes to ``handler``
with what was read before the damage kept; a duplicate member name is reported the same way.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # (key, extension): webdataset's base_plus_ext rule
_SKIP = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (__key__ and the like)


def split_name(name: str) -> tuple[str | None, str | None]:
    """``dir/key.ext1.ext2`` -> (``dir/key``, ``ext1.ext2``); (None, None) for a name without an extension."""
    match = _NAME.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


def shard_samples(urls: Iterable[dict[str, str]], wanted: Callable[[str], bool],
                  handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """The samples of each shard in ``urls`` (``{"url": path}`` items, as the shard lists yield them)."""
    for item in urls:
        yield from _samples(item["url"], wanted, handler)


def _samples(url: str, wanted: Callable[[str], bool], handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    try:
        tar = tarfile.open(url, mode="r:")
    except (OSError, tarfile.TarError) as err:
        handler(type(err)(f"{err} @ {url}"))
        return
    current: dict[str, Any] | None = None
    with tar:
        while True:
            try:
                info = tar.next()
                if info is None:
                    break
                tar.members = []  # headers are not kept: a shard may hold many thousands of members
                name = info.name
                if not info.isreg() or _SKIP.match(name) or not wanted(name):
                    continue  # skipped by seeking past its data when the next header is read
                key, ext = split_name(name)
                if key is None:
                    continue
                ext = ext.lower()
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise tarfile.ReadError(f"unexpected end of data in {name}")
            except (OSError, EOFError, tarfile.TarError) as err:
                handler(type(err)(f"{err} @ {url}"))
                break  # past a damaged header or a short read nothing more can be trusted
            if current is None or key != current["__key__"]:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            if ext in current:
                handler(ValueError(f"{name}: duplicate file name in {url}"))
                continue
            current[ext] = data
    if current is not None:
        yield current
