"""Writing a small file so that nobody ever reads half of it."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` beside ``path``, flush it to disk, then rename it over ``path``.

    A reader, a kill or a crash sees the old file or the new one, never a part: what status,
    manifests, pack sidecars and checkpoint markers need, since their presence is what says a
    step is done.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
