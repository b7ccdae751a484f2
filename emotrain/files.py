"""Writing a file so that nobody ever reads half of it: every file the project writes goes through here."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it is flushed to disk and renamed over
    ``path``, on an error it is removed and ``path`` is untouched.

    A reader, a kill or a crash sees the old file or the new one, never a part: what status,
    manifests, reports, pack sidecars and checkpoint markers need, since their presence is what says
    a step is done. For writers that take a path (``savefig``, ``safetensors``, numpy).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
