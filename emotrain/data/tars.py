"""Conversation samples from a split's tar shards, reading only the members the model uses.

Why not webdataset's ``tarfile_to_samples``: it reads a tar as a stream (``tarfile`` mode ``r|*``),
so every member a model does not use is still read through, 16 KiB at a time, to get past it: the
video model reads past every wav of a conversation, the audio model past every clip. Shards are
local files (the manifest lists them), so here a tar is opened for random access and a member that
is not wanted is skipped by a seek. With prepared video, where decoding is cheap, that halved the
workers' time in the tar reader (``benchmarks/cores_per_gpu.py --profile`` shows where it goes).
The headers are read by :func:`_members`, not by ``tarfile``: ``TarInfo.frombuf`` decodes every field
of every header (mode, owner, times, device numbers) where the reader needs a name, a size and a type;
that was the largest Python cost left in a worker on prepared shards (about 0.3 ms a turn). It reads
names as ``tarfile`` does (GNU long names, pax paths and sizes, the ustar prefix), checks each header's
checksum, and ends a shard where ``tarfile`` would: at a zero block, a damaged or truncated header
(reported only when it is the first, or follows a long-name or pax header), or data cut short.

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
        file = open(url, "rb")
    except OSError as err:
        handler(type(err)(f"{err} @ {url}"))
        return
    current: dict[str, Any] | None = None
    with file:
        members = _members(file)
        while True:
            try:
                member = next(members, None)
                if member is None:
                    break
                name, size, regular = member
                if not regular or _SKIP.match(name) or not wanted(name):
                    continue  # skipped by seeking past its data when the next header is read
                key, ext = split_name(name)
                if key is None:
                    continue
                ext = ext.lower()
                data = file.read(size)
                if len(data) != size:
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


_BLOCK = 512
_EMPTY = bytes(_BLOCK)
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_LONG = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_PAX = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)


def _blocks(size: int) -> int:
    """Bytes a member's data occupies: its size rounded up to whole blocks."""
    return -(-size // _BLOCK) * _BLOCK


def _name(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """``length key=value\\n`` records of a pax header (only ``path`` and ``size`` matter here)."""
    records, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length < 1:
            raise tarfile.ReadError("invalid pax header")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _members(file) -> Iterator[tuple[str, int, bool]]:
    """(name, size, is a regular file) of each member of an uncompressed tar, the file positioned at the
    member's data when it is yielded (the caller may read it; the next header is found by seeking)."""
    offset, pending, global_pax, strict = 0, {}, {}, False
    while True:
        if offset:  # as tarfile: the data skipped by seeking must really be there
            file.seek(offset - 1)
            if not file.read(1):
                raise tarfile.ReadError("unexpected end of data")
        block = file.read(_BLOCK)
        try:
            if not block:
                raise tarfile.ReadError("empty file")
            if len(block) < _BLOCK:
                raise tarfile.ReadError("truncated header")
            if block == _EMPTY:
                return
            stored = tarfile.nti(block[148:156])  # the unsigned sum first (4x quicker than calc_chksums)
            if stored != 256 + sum(block) - sum(block[148:156]) and stored not in tarfile.calc_chksums(block):
                raise tarfile.ReadError("bad checksum")
            size = tarfile.nti(block[124:136])
        except (tarfile.ReadError, tarfile.HeaderError) as err:
            if offset == 0 or strict:  # where tarfile raises; elsewhere it ends the archive quietly
                raise tarfile.ReadError(str(err)) from None
            return
        kind, name = block[156:157], _name(block[0:100])
        data_at = offset + _BLOCK
        if kind in _LONG or kind in _PAX or kind == tarfile.XGLTYPE:
            payload = file.read(_blocks(size))[:size]
            if kind == tarfile.GNUTYPE_LONGNAME:
                pending["path"] = _name(payload)
            elif kind in _PAX:
                pending.update(_pax_records(payload))
            elif kind == tarfile.XGLTYPE:
                global_pax.update(_pax_records(payload))
            offset, strict = data_at + _blocks(size), True
            continue
        if kind == tarfile.GNUTYPE_SPARSE:
            raise tarfile.ReadError(f"{name}: sparse members are not supported")
        prefix = _name(block[345:500])
        if kind == tarfile.AREGTYPE and name.endswith("/"):
            kind = tarfile.DIRTYPE
        if prefix and kind not in tarfile.GNU_TYPES:
            name = prefix + "/" + name
        info = {**global_pax, **pending}
        name = info.get("path", name)
        if kind == tarfile.DIRTYPE:
            name = name.rstrip("/")
        size = int(info["size"]) if "size" in info else size
        pending, strict = {}, False
        regular = kind in _REGULAR
        yield name, size, regular
        # tarfile skips the data of regular files and of unknown types; other types have none
        offset = data_at + (_blocks(size) if regular or kind not in tarfile.SUPPORTED_TYPES else 0)
