"""A request's multipart body, read within its limits into a private temporary folder.

The body is streamed through python-multipart: each file part goes straight to a file in the request's own
folder (``mkdtemp``, mode 0700) under a name the server makes (``part-0``, ``part-1``, ...), never under the
name the client sent, which stays a plain string (a record's clip name is a key, not a path). Field parts
(a record's JSON, a transcript) stay in memory as raw bytes, so that their encoding is checked strictly
rather than guessed. The body is counted as it arrives: past ``max_bytes`` the request ends with 413 at
once, whatever its ``Content-Length`` said. The caller deletes the folder when the request ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 4 * 2**20  # a record's JSON or a transcript
MAX_PARTS = 256


class RequestError(Exception):
    """A request's fault: an HTTP status and one line for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class FilePart:
    """An uploaded file: the form field, the client's file name (a string only), where the server put it."""

    field: str
    filename: str
    path: Path
    size: int


@dataclass
class Form:
    """The parsed body: raw field values and file parts, in the order sent."""

    folder: Path
    fields: dict[str, list[bytes]] = field(default_factory=dict)
    files: list[FilePart] = field(default_factory=list)

    def text(self, name: str) -> str | None:
        """A field's single value as UTF-8 text (a file part of that name counts too); None when absent."""
        values = list(self.fields.get(name, []))
        values += [part.path.read_bytes() for part in self.files if part.field == name]
        if not values:
            return None
        if len(values) > 1:
            raise RequestError(400, f"the field {name!r} was sent {len(values)} times; send it once")
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestError(400, f"the field {name!r} is not UTF-8 text (byte {err.start}): "
                                    "save it as UTF-8 and send it again") from None

    def files_of(self, name: str) -> list[FilePart]:
        return [part for part in self.files if part.field == name]


def private_folder() -> Path:
    """A new folder only this user can read (``mkdtemp`` makes it 0700), for one request's uploads."""
    return Path(tempfile.mkdtemp(prefix="emotrain-serve-"))


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _disposition(headers: dict[bytes, bytes]) -> tuple[str, str | None]:
    _, options = parse_options_header(headers.get(b"content-disposition", b""))
    name = options.get(b"name")
    if name is None:
        raise RequestError(400, "a multipart part has no name in its Content-Disposition header")
    filename = options.get(b"filename")
    decode = lambda raw: raw.decode("utf-8", errors="replace")  # noqa: E731 - names are labels, not paths
    return decode(name), None if filename is None else decode(filename)


async def read_form(content_type: str, stream: AsyncIterator[bytes], folder: Path, max_bytes: int) -> Form:
    """Parse a ``multipart/form-data`` body from ``stream`` into ``folder``, within ``max_bytes`` in all."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        shown = (content_type or "none").split(";")[0]
        raise RequestError(415, f"send multipart/form-data (got Content-Type {shown})")
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart/form-data without a boundary")
    form = Form(folder)
    state: dict = {"headers": {}, "header": b"", "value": b"", "fh": None, "data": None, "size": 0, "parts": 0}

    def on_part_begin() -> None:
        state["parts"] += 1
        if state["parts"] > MAX_PARTS:
            raise RequestError(400, f"more than {MAX_PARTS} parts in one request")
        state["headers"], state["size"] = {}, 0

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header"].lower()] = state["value"]
        state["header"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        name, filename = _disposition(state["headers"])
        state["name"], state["filename"] = name, filename
        if filename is None:
            state["fh"], state["data"] = None, bytearray()
        else:
            path = folder / f"part-{len(form.files)}"
            fh: IO[bytes] = open(path, "xb")  # noqa: SIM115 - closed at the part's end or on error
            state["fh"], state["path"], state["data"] = fh, path, None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        state["size"] += len(chunk)
        if state["fh"] is not None:
            state["fh"].write(chunk)
        else:
            if state["size"] > MAX_FIELD_BYTES:
                raise RequestError(413, f"the field {state['name']!r} is larger than {MAX_FIELD_BYTES // 2**20} MiB")
            state["data"].extend(chunk)

    def on_part_end() -> None:
        if state["fh"] is not None:
            state["fh"].close()
            form.files.append(FilePart(state["name"], state["filename"], state["path"], state["size"]))
            state["fh"] = None
        else:
            form.fields.setdefault(state["name"], []).append(bytes(state["data"]))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished})
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > max_bytes:
                raise RequestError(413, f"the upload is larger than the server's limit of {_mib(max_bytes)}")
            parser.write(chunk)
        if received == 0:
            raise RequestError(400, "empty request body")
        parser.finalize()
    except FormParserError as err:
        raise RequestError(400, f"malformed multipart body: {err}") from None
    finally:
        if state["fh"] is not None:
            state["fh"].close()
    if not form.fields and not form.files:
        raise RequestError(400, "the multipart body holds no parts")
    return form


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def folder_is_private(folder: Path) -> bool:
    """Whether only the owner may enter the folder (for the tests and a startup check)."""
    return (os.stat(folder).st_mode & 0o077) == 0
