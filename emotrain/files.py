"""Writing a file, or a whole output folder, so that nobody ever reads half of it: every file the project writes goes
through here."""

from __future__ import annotations

import contextlib
import os
import shutil
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


@contextlib.contextmanager
def replaced_folder(out: Path, what: str = "--out") -> Iterator[Path]:
    """An output folder written as one unit: yields a new, empty sibling of ``out`` to write into, and on
    success swaps it in for ``out`` (whatever ``out`` held before is gone, so no earlier run's file is left
    beside this run's). On an error the sibling is removed and ``out`` is untouched.

    Entered before the work, so an ``out`` that cannot be written (no permission, under a file, a file
    itself) is one line at once, not a traceback after every turn was scored.
    """
    from emotrain.errors import UserError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out} is a file, not a folder")
    tmp = out.with_name(f".{out.name}.new-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        probe = tmp / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write {what} {out}: {err.strerror or err}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
