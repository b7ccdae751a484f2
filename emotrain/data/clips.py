"""Where an utterance's clip is, and its bytes: one lookup for ``pack``, ``predict`` and the Python API.

Clips are named ``dia{conversation_id}utt{index}_{ID}.wav`` / ``.mp4`` with ``ID`` the avatar of
the utterance's role. The official ``test.json`` names no profile, so no ID, yet its clips keep the
suffix: then the clip is found by conversation and utterance index alone (and when two files
match, the first by name is used and the ambiguity reported). The same rule serves clips in
folders (:class:`FolderClips`) and clips handed over as bytes (:class:`MemoryClips`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from emotrain.data.avamerg import Conversation, MediaDirs, Utterance

CLIP_NAME = re.compile(r"dia(?P<cid>[A-Za-z0-9-]+?)utt(?P<index>\d+)_(?P<id>\d+)\.(?P<ext>wav|mp4)")  # fullmatch: no "\n"
EXTENSIONS = ("wav", "mp4")
AMBIGUOUS = "files match"  # in the note of a clip found among several candidates


@dataclass(frozen=True)
class ClipRead:
    """One clip's bytes (None when unusable), why not, the name it was looked up by, and a note
    (set when the name had to be guessed from several candidates)."""

    data: bytes | None
    reason: str
    name: str
    note: str = ""


def index_names(names: Iterable[str]) -> dict[tuple[str, int, str], list[str]]:
    """(conversation id, utterance index, extension) -> the clip names that fit, sorted."""
    found: dict[tuple[str, int, str], list[str]] = {}
    for name in names:
        match = CLIP_NAME.fullmatch(name) if isinstance(name, str) else None
        if match:
            found.setdefault((match["cid"], int(match["index"]), match["ext"]), []).append(name)
    return {key: sorted(value) for key, value in found.items()}


class ClipSource:
    """Bytes of an utterance's clip by the corpus's naming rule (subclasses say where they live)."""

    def _names_for(self, ext: str) -> dict[tuple[str, int, str], list[str]]:
        raise NotImplementedError

    def _read(self, name: str, ext: str) -> tuple[bytes | None, str]:
        raise NotImplementedError

    def locate(self, conv: Conversation, utt: Utterance, ext: str) -> tuple[str | None, str]:
        """The clip's name (None when there is none) and a note when the name was ambiguous.

        With the role's profile ID known, the name is exact (a missing file is missing; nothing is
        guessed). Without it, any ``_{ID}`` suffix fits."""
        stem = conv.clip_stem(utt)
        if stem is not None:
            return f"{stem}.{ext}", ""
        candidates = self._names_for(ext).get((conv.conversation_id, utt.index, ext), [])
        if not candidates:
            return None, ""
        note = f"{len(candidates)} {AMBIGUOUS} ({', '.join(candidates)}): used {candidates[0]}" if len(candidates) > 1 else ""
        return candidates[0], note

    def read(self, conv: Conversation, utt: Utterance, ext: str) -> ClipRead:
        name, note = self.locate(conv, utt, ext)
        if name is None:
            what = f"dia{conv.conversation_id}utt{utt.index}_*.{ext}"
            return ClipRead(None, f"missing file (no {utt.role} profile ID; nothing matches {what})", what)
        data, reason = self._read(name, ext)
        return ClipRead(data, reason, name, note)

    def size(self, conv: Conversation, utt: Utterance, ext: str) -> int:
        """Bytes of the clip on disk or in memory, 0 when it is absent (for planning shards)."""
        raise NotImplementedError

    def signature(self, conv: Conversation, utt: Utterance, ext: str) -> str:
        """What changes when the clip does (for a shard's fingerprint)."""
        raise NotImplementedError


@dataclass
class FolderClips(ClipSource):
    """Clips in the corpus folders, each at most ``max_bytes`` (bigger ones are refused, not read)."""

    media: MediaDirs
    max_bytes: int
    _index: dict[str, dict[tuple[str, int, str], list[str]]] = field(default_factory=dict, repr=False)

    def _folder(self, ext: str) -> Path:
        return self.media.audio if ext == "wav" else self.media.video

    def _names_for(self, ext: str) -> dict[tuple[str, int, str], list[str]]:
        """One scan of the folder, on the first clip without an ID (a glob per clip would rescan it each time)."""
        if ext not in self._index:
            try:
                names = [entry.name for entry in os.scandir(self._folder(ext)) if entry.name.endswith(f".{ext}")]
            except OSError:
                names = []
            self._index[ext] = index_names(names)
        return self._index[ext]

    def path(self, name: str, ext: str) -> Path:
        return self._folder(ext) / name

    def _read(self, name: str, ext: str) -> tuple[bytes | None, str]:
        path = self.path(name, ext)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None, "missing file"
        except OSError as err:
            return None, f"unreadable ({err.strerror or err})"
        if size == 0:
            return None, "zero-byte file"
        if size > self.max_bytes:
            return None, f"over size limit ({size} > {self.max_bytes} bytes)"
        try:
            return path.read_bytes(), ""
        except OSError as err:  # no permission, a folder where a clip should be, an I/O error
            return None, f"unreadable ({err.strerror or err})"

    def _stat(self, conv: Conversation, utt: Utterance, ext: str) -> os.stat_result | None:
        name, _ = self.locate(conv, utt, ext)
        if name is None:
            return None
        try:
            return self.path(name, ext).stat()
        except OSError:
            return None

    def size(self, conv: Conversation, utt: Utterance, ext: str) -> int:
        st = self._stat(conv, utt, ext)
        return 0 if st is None else st.st_size

    def signature(self, conv: Conversation, utt: Utterance, ext: str) -> str:
        name, _ = self.locate(conv, utt, ext)
        st = self._stat(conv, utt, ext)
        return f"{name}:missing" if st is None else f"{name}:{st.st_size}:{st.st_mtime_ns}"


@dataclass
class MemoryClips(ClipSource):
    """Clips handed over as bytes (the Python API), keyed by their corpus file names."""

    files: Mapping[str, bytes]
    used: set[str] = field(default_factory=set, repr=False)  # the names a read looked up

    def _names_for(self, ext: str) -> dict[tuple[str, int, str], list[str]]:
        return index_names(self.files)

    def _read(self, name: str, ext: str) -> tuple[bytes | None, str]:
        self.used.add(name)
        data = self.files.get(name)
        if data is None:
            return None, "missing file"
        if not isinstance(data, (bytes, bytearray, memoryview)):  # a path or text given for the clip's bytes
            return None, f"not bytes (a {type(data).__name__} was given; pass the file's contents)"
        if not data:
            return None, "zero-byte file"
        return bytes(data), ""

    def unused(self) -> list[str]:
        """Names handed over that no read looked up (a typo, another conversation's clip): reported, not ignored."""
        return sorted(str(name) for name in self.files if name not in self.used)

    def size(self, conv: Conversation, utt: Utterance, ext: str) -> int:
        name, _ = self.locate(conv, utt, ext)
        data = self.files.get(name, b"") if name else b""
        return len(data) if isinstance(data, (bytes, bytearray, memoryview)) else 0

    def signature(self, conv: Conversation, utt: Utterance, ext: str) -> str:
        return f"{self.locate(conv, utt, ext)[0]}:{self.size(conv, utt, ext)}"
