"""Atomic DeepSpeed checkpoints under ``RUN/checkpoints/``, resume, pruning, and weights for export.

Layout: ``RUN/checkpoints/step00000120/`` is one DeepSpeed tag (every rank's model and optimizer
shards) plus ``rng_rank00000.pt``... (each rank's generator states) and a ``complete`` marker. The
marker is written by rank 0 only after a barrier that every rank reaches once its own files are
closed, and ``latest`` (DeepSpeed's own pointer, so ``zero_to_fp32.py`` works unchanged) is replaced
atomically afterwards. A kill at any moment therefore leaves either the previous complete checkpoint
or the new one as the newest complete tag, never a half one (DeepSpeed's own ``latest`` can name a
tag whose other ranks were still writing when the job was killed). Resume takes the newest tag
that has the marker; rank 0 decides and broadcasts, so every rank loads the same tag.

The checkpoint folder must be on a file system every node sees (rank 0 checks all ranks' files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from emotrain.errors import UserError
from emotrain.files import write_atomic
from emotrain.training.rundir import RunDir
from emotrain.training import distributed as dist
from emotrain.training.best import BestState
from emotrain.training.rng import capture_rng_state, restore_rng_state

COMPLETE = "complete"
LATEST = "latest"
FILES = "files"  # in the complete marker: [size, sha256] of every file of the tag
BEST = "best"  # names the best tag so far (train.best_metric); the rotation never deletes it
_TAG = re.compile(r"step(\d{8,})")
log = logging.getLogger(__name__)


@dataclass
class ResumeState:
    """Where training stands: optimizer steps done and micro-batches each rank drew from its loader.

    A loader recreated from ``micro_batches`` (or, with a per-step seeded loader, from ``step``)
    continues where the interrupted run stopped. ``micro_batches`` exceeds ``step x accumulation``
    when non-finite micro-batches were skipped.
    """

    step: int = 0
    micro_batches: int = 0
    nonfinite: int = 0
    world_size: int = 1
    best: BestState = field(default_factory=BestState)  # the best validation so far, and early-stopping patience

    @classmethod
    def from_dict(cls, data: dict) -> ResumeState:
        """Read a ``complete`` marker (one written before ``best`` existed has none)."""
        data = dict(data)
        data.pop(FILES, None)
        best = BestState(**data.pop("best", {}))
        return cls(**data, best=best)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return RunDir(run_dir).checkpoints


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def step_of(tag: str) -> int | None:
    match = _TAG.fullmatch(tag)
    return int(match.group(1)) if match else None


def _rng_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"rng_rank{rank:05d}.pt"


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags with a ``complete`` marker, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(step, entry.name) for entry in ckpt_dir.iterdir()
             if (step := step_of(entry.name)) is not None and (entry / COMPLETE).is_file()]
    return [name for _, name in sorted(found)]


def latest_complete_tag(ckpt_dir: Path) -> str | None:
    """The newest tag with a ``complete`` marker, verified or not (see :func:`latest_good_tag`)."""
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def _digests(tag_dir: Path) -> dict[str, list]:
    """[size, sha256] of every file of a tag but the marker, by path relative to the tag."""
    out = {}
    for path in sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != COMPLETE):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        out[str(path.relative_to(tag_dir))] = [path.stat().st_size, digest.hexdigest()]
    return out


def verify(tag_dir: Path) -> str | None:
    """Why a complete tag cannot be trusted (a file missing, truncated or changed since the save), or None.

    A marker from before the file list was recorded is trusted as it is."""
    try:
        files = json.loads((tag_dir / COMPLETE).read_text(encoding="utf-8")).get(FILES)
    except (OSError, ValueError, AttributeError) as err:
        return f"unreadable {COMPLETE} marker ({err})"
    if files is None:
        return None
    for name, (size, sha256) in files.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were saved"
    actual = _digests(tag_dir)
    changed = [name for name in files if actual.get(name, [None, None])[1] != files[name][1]]
    return f"{changed[0]} differs from what was saved" if changed else None


def latest_good_tag(ckpt_dir: Path) -> str | None:
    """The newest complete tag that verifies; a damaged newer one is passed over with a warning."""
    for tag in reversed(complete_tags(ckpt_dir)):
        reason = verify(ckpt_dir / tag)
        if reason is None:
            return tag
        log.warning("checkpoint %s is damaged (%s): falling back to an older one", ckpt_dir / tag, reason)
    return None


def _best_name(ckpt_dir: Path) -> str | None:
    """The tag ``best`` names, when it is a complete checkpoint (not verified: no hashing)."""
    try:
        tag = (ckpt_dir / BEST).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return tag if step_of(tag) is not None and (ckpt_dir / tag / COMPLETE).is_file() else None


def best_tag(ckpt_dir: Path) -> str | None:
    """The best checkpoint, when it is complete and verifies."""
    tag = _best_name(ckpt_dir)
    if tag is None:
        return None
    reason = verify(ckpt_dir / tag)
    if reason is not None:
        log.warning("the best checkpoint %s is damaged (%s): using the newest good one", ckpt_dir / tag, reason)
        return None
    return tag


def default_tag(ckpt_dir: Path, prefer_last: bool = False) -> tuple[str, str] | None:
    """(tag, "best" or "last") that evaluate and export score by default: the best when the run has one."""
    best = None if prefer_last else best_tag(ckpt_dir)
    if best is not None:
        return best, "best"
    last = latest_good_tag(ckpt_dir)
    return (last, "last") if last is not None else None


def choose_tag(ckpt_dir: Path, tag: str | None = None, last: bool = False) -> tuple[str, str]:
    """(tag, "best" | "last" | "requested") for evaluate and export, or a one-line UserError.

    ``tag`` must be a tag name of this run (``step00001000``), never a path: a path could name
    another run's checkpoint."""
    if tag is not None:
        if step_of(tag) is None:
            raise UserError(f"--checkpoint/--tag {tag!r} is not a tag name such as step00001000")
        if not (ckpt_dir / tag / COMPLETE).is_file():
            known = ", ".join(complete_tags(ckpt_dir)) or "none"
            raise UserError(f"{ckpt_dir / tag} is not a complete checkpoint (complete: {known})")
        reason = verify(ckpt_dir / tag)
        if reason is not None:
            raise UserError(f"{ckpt_dir / tag} is damaged: {reason}")
        return tag, "best" if tag == _best_name(ckpt_dir) else "requested"  # verified just above
    chosen = default_tag(ckpt_dir, prefer_last=last)
    if chosen is None:
        raise UserError(f"no complete checkpoint under {ckpt_dir}: train first")
    return chosen


def prune(ckpt_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete tags and the best one; drop older ones and incomplete tags older than the newest."""
    tags = complete_tags(ckpt_dir)
    if not tags:
        return
    newest = step_of(tags[-1])
    # Which tag is the best is enough here: verifying it would hash a whole checkpoint at every save.
    doomed = set(tags[:-keep]) - {_best_name(ckpt_dir)}
    for entry in ckpt_dir.iterdir():
        step = step_of(entry.name)
        if step is not None and (entry.name in doomed or (step < newest and entry.name not in tags)):
            shutil.rmtree(entry, ignore_errors=True)


def save(engine, run_dir: str | Path, state: ResumeState, env: dist.DistEnv, keep: int, is_best: bool = False) -> Path:
    """Collective: every rank writes its part of tag ``step{N}``; rank 0 then marks it complete (and
    the best, when ``is_best``: after the marker, so ``best`` never names a half-written tag)."""
    ckpt_dir = checkpoint_dir(run_dir)
    tag = tag_for(state.step)
    state.world_size = env.world_size
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"emotrain": asdict(state)}, save_latest=False)
    tag_dir = ckpt_dir / tag
    torch.save(capture_rng_state(), _rng_file(tag_dir, env.rank))
    dist.barrier()
    if env.is_main:
        missing = [r for r in range(env.world_size) if not _rng_file(tag_dir, r).is_file()]
        if missing:
            raise RuntimeError(f"{tag_dir}: ranks {missing} wrote no files; is {ckpt_dir} on a shared file system?")
        # The file list lets a later reader verify the tag (a truncated or half-copied file is caught).
        write_atomic(tag_dir / COMPLETE, json.dumps({**asdict(state), FILES: _digests(tag_dir)}) + "\n")
        write_atomic(ckpt_dir / LATEST, tag)
        if is_best:
            write_atomic(ckpt_dir / BEST, tag)
        prune(ckpt_dir, keep)
    dist.barrier()
    return tag_dir


def resume(engine, run_dir: str | Path, env: dist.DistEnv) -> ResumeState | None:
    """Collective: load the newest complete checkpoint into ``engine`` and this rank's RNG; None if none."""
    ckpt_dir = checkpoint_dir(run_dir)
    tag = dist.broadcast_from_main(latest_good_tag(ckpt_dir) if env.is_main else None)
    if tag is None:
        return None
    state = ResumeState.from_dict(json.loads((ckpt_dir / tag / COMPLETE).read_text(encoding="utf-8")))
    if state.world_size != env.world_size:
        raise UserError(
            f"{ckpt_dir / tag} was written by {state.world_size} ranks, this run has {env.world_size}: ZeRO "
            f"shards do not re-split; start a new run from its weights with --set train.init_from={run_dir} "
            "(the optimizer starts afresh)"
        )
    path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load {ckpt_dir / tag}")
    restore_rng_state(torch.load(_rng_file(ckpt_dir / tag, env.rank), weights_only=True))
    return state
