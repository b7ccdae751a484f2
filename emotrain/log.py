"""One log channel for every process: the standard ``logging`` module, set up where a process starts.

:func:`setup_logging` runs in ``emotrain.cli.main`` (every command, ``launch/train.py``, every torchrun
child) and in the cluster jobs (:mod:`emotrain.recipes.jobs`). The console stays as quiet as before:

- emotrain's own messages (``INFO``) go to stdout, bare, from rank 0 only: what ``print`` used to show;
- warnings and errors, emotrain's and the libraries', go to stderr from every rank, prefixed with the rank
  when there are several (``[rank 1] skipping ...``), so interleaved ranks can be told apart.

:func:`log_to_folder` adds a file, ``FOLDER/logs/emotrain.log``, to a run, sweep or predict folder: rank 0's
messages and every rank's warnings and errors, each line with time, rank and level. Every rank appends to
the same file (opened for append: whole lines, whoever writes them).

:func:`progress` is a progress bar on a terminal and, when the output is not one (a SLURM ``.out`` file, CI),
a plain line every ``EMOTRAIN_PROGRESS_EVERY`` seconds (30 by default) with the count, rate and ETA,
instead of a carriage-return update per step.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = "emotrain"
LOG_DIR, LOG_FILE = "logs", "emotrain.log"
PROGRESS_ENV = "EMOTRAIN_PROGRESS_EVERY"
# The folder logs of this process, inherited by the processes it starts (torchrun ranks, loader workers
# through the fork server, a sweep's points), whose setup_logging() opens them too.
FILES_ENV = "EMOTRAIN_LOG_FILES"
_CONSOLE_TAG = "_emotrain_console"


def get_logger(name: str) -> logging.Logger:
    """The logger of an emotrain module (``get_logger(__name__)``)."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


def process_rank() -> int:
    """This process's global rank as its launcher gave it (torchrun, SLURM), 0 when alone."""
    for var in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def _several_ranks() -> bool:
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value) > 1
    return False


class _RankTag(logging.Filter):
    """Stamps each record with this process's rank (read when it is logged: a launcher may set it late)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = process_rank()
        record.rank_prefix = f"[rank {record.rank}] " if _several_ranks() else ""
        return True


class _OwnMessagesOfRank0(logging.Filter):
    """emotrain's own messages below WARNING, from rank 0 only (what the console showed as prints)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith(ROOT) and record.levelno < logging.WARNING and process_rank() == 0


class _FileRecords(logging.Filter):
    """The log file: rank 0's own messages, and every rank's warnings and errors (libraries' included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.name.startswith(ROOT) and process_rank() == 0


def setup_logging() -> None:
    """The console handlers (idempotent): call once where a process starts."""
    root = logging.getLogger()
    if any(getattr(h, _CONSOLE_TAG, False) for h in root.handlers):
        return
    tag = _RankTag()
    info = logging.StreamHandler(sys.stdout)
    info.addFilter(tag)
    info.addFilter(_OwnMessagesOfRank0())
    info.setFormatter(logging.Formatter("%(message)s"))
    warn = logging.StreamHandler(sys.stderr)
    warn.setLevel(logging.WARNING)
    warn.addFilter(tag)
    warn.setFormatter(logging.Formatter("%(rank_prefix)s%(message)s"))
    for handler in (info, warn):
        setattr(handler, _CONSOLE_TAG, True)
        root.addHandler(handler)
    logging.getLogger(ROOT).setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the handlers above and the file
    for inherited in filter(None, os.environ.get(FILES_ENV, "").split(os.pathsep)):
        _attach_file(Path(inherited))


def log_to_folder(folder: str | Path) -> Path:
    """Also write this process's log into ``FOLDER/logs/emotrain.log`` (idempotent per file); returns its path."""
    path = Path(folder) / LOG_DIR / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    setup_logging()
    _attach_file(path)
    files = [f for f in os.environ.get(FILES_ENV, "").split(os.pathsep) if f]
    if str(path.resolve()) not in files:
        os.environ[FILES_ENV] = os.pathsep.join([*files, str(path.resolve())])
    return path


class _FolderLog(logging.FileHandler):
    """A folder's log file. A write that fails (the folder was removed, the disk is full) costs that line
    only: never logging's own traceback on the console, never the job."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            super().emit(record)  # its delayed open raises outside logging's own error handling
        except OSError:
            pass

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _attach_file(path: Path) -> None:
    root = logging.getLogger()
    target = str(path.resolve())
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in root.handlers):
        return
    try:
        handler = _FolderLog(target, mode="a", encoding="utf-8", delay=True)
    except OSError:
        return  # a folder removed meanwhile: the console still has every message
    handler.addFilter(_RankTag())
    handler.addFilter(_FileRecords())
    handler.setFormatter(logging.Formatter("%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def close_folder_logs() -> None:
    """Detach and close every folder log (a test, or a process that moves on to another folder)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    os.environ.pop(FILES_ENV, None)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """What a progress bar says, as a log line every ``every`` seconds (and one at the end): count, rate, ETA.

    The subset of tqdm's interface the project uses: iteration, ``update``, ``set_postfix``, ``write``,
    ``close`` and use as a context manager."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, initial: int = 0, desc: str = "",
                 unit: str = "it", every: float | None = None, logger: logging.Logger | None = None) -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self._start_n = initial
        self.every = every if every is not None else float(os.environ.get(PROGRESS_ENV, "30") or 30)
        self.log = logger or get_logger("progress")
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def write(self, text: str) -> None:
        self.log.info(text)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total and rate > 0:
            left = max(self.total - self.n, 0) / rate
            eta = f", ETA {int(left // 3600):d}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"
        postfix = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {count} {self.unit}{share}, {rate:.2f} {self.unit}/s{eta}{postfix}"

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._start_n:
                self.log.info(self.line() + " (done)" if self.total and self.n >= self.total else self.line())


def progress(iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0, desc: str = "",
             unit: str = "it", disable: bool = False, leave: bool = True, stream: Any = None) -> Any:
    """A tqdm bar on a terminal; a :class:`PlainProgress` when the output is a file or a pipe; a silent
    pass-through when ``disable``."""
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    if disable or _is_terminal(stream):
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable, leave=leave,
                    file=stream, dynamic_ncols=True)
    return PlainProgress(iterable, total=total, initial=initial, desc=desc, unit=unit)
