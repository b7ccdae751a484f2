"""A search's Optuna study in the sweep folder, and which trial each worker runs next.

The study lives in ``SWEEP/search/study.journal``: Optuna's journal file storage with its open-lock
(``O_CREAT|O_EXCL`` lock files, safe on NFS where SQLite's locking is not), or in the RDB that
``search.storage`` names. Every trial is the point ``points/trial-NNNN/seed<S>`` of the sweep.

The journal storage has no heartbeat, so a trial whose process died without a word (``kill -9``, a lost
node) would stay RUNNING forever. Each RUNNING trial therefore holds a lease in its point folder
(``lease.json``: host, pid, SLURM array task, time of the last renewal), renewed by its worker every
quarter of ``search.lease_s``. A worker looking for work, under the claim lock (``SWEEP/search/claim.lock``),
takes first a RUNNING trial whose lease is its own (a requeued array task), has expired, names a process
of this host that is gone, or is missing; it resumes that trial in the same folder, so its training
continues from its checkpoint. Only then does it ask for a new trial, while the study holds fewer than
``search.n_trials``. A finished trial (complete, pruned, failed) is never run again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from emotrain.errors import UserError
from emotrain.files import write_atomic
from emotrain.signals import process_alive
from emotrain.sweep.layout import PointDir, SweepDir
from emotrain.sweep.spec import Point, Setting, SweepConfig

TRIAL_FILE, LEASE_FILE, PRUNED_FILE = "trial.json", "lease.json", "pruned.json"
WAIT = "wait"  # claim_next: every trial is taken, some still run under a live lease


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def trial_point(cfg: SweepConfig, number: int, params: dict[str, Any]) -> Point:
    """Trial ``number`` as a sweep point: its setting is the proposed values, its seed the sweep's first."""
    return Point(Setting(trial_name(number), dict(params)), cfg.seeds[0])


def trial_dir(cfg: SweepConfig, sweep: SweepDir, number: int, params: dict[str, Any]) -> PointDir:
    return sweep.point(trial_point(cfg, number, params), cfg.models)


def _storage(cfg: SweepConfig, sweep: SweepDir):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    assert cfg.search is not None
    if cfg.search.storage:
        return cfg.search.storage
    sweep.search_dir.mkdir(parents=True, exist_ok=True)
    journal = str(sweep.search_dir / "study.journal")
    return JournalStorage(JournalFileBackend(journal, lock_obj=JournalFileOpenLock(journal)))


def sampler_for(cfg: SweepConfig, offset: int = 0):
    """The seeded sampler; ``offset`` (the number of trials asked before) makes each proposal its own draw,
    so two workers (or a re-run) do not repeat the first proposals, and a seed repeats a search."""
    import optuna

    assert cfg.search is not None
    spec = cfg.search.sampler
    if spec.name == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed + offset)
    return optuna.samplers.TPESampler(seed=spec.seed + offset, n_startup_trials=spec.n_startup_trials)


def pruner_for(cfg: SweepConfig):
    import optuna

    assert cfg.search is not None
    spec = cfg.search.pruner
    if spec.name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)


def open_study(cfg: SweepConfig, sweep: SweepDir):
    """The sweep's study (created on first use; every worker opens the same one)."""
    import optuna

    assert cfg.search is not None
    optuna.logging.set_verbosity(logging.WARNING)
    storage, name = _storage(cfg, sweep), cfg.name or "search"
    try:  # loading writes nothing: a re-run that finds the study full leaves the journal as it was
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler_for(cfg), pruner=pruner_for(cfg))
    except KeyError:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler_for(cfg), pruner=pruner_for(cfg),
                                    direction=cfg.search.objective.direction, load_if_exists=True)
    if study.direction.name.lower() != cfg.search.objective.direction:
        raise UserError(f"{sweep.root}: the study there is to {study.direction.name.lower()}, the sweep file says "
                        f"{cfg.search.objective.direction}: use a new --out for another objective")
    return study


@dataclass
class Lease:
    """Who runs a RUNNING trial, and when they last said so."""

    host: str
    pid: int
    task: str | None  # the SLURM array task (a requeued task is the same owner)
    renewed: float

    @classmethod
    def mine(cls) -> Lease:
        job, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        return cls(socket.gethostname(), os.getpid(), f"{job}_{index}" if job and index else None, time.time())

    def same_owner(self, other: Lease) -> bool:
        return (self.host, self.pid) == (other.host, other.pid) or (self.task is not None and self.task == other.task)

    def expired(self, lease_s: float, now: float | None = None) -> bool:
        """Not renewed for ``lease_s``, or held by a process of this host that is gone."""
        if (now if now is not None else time.time()) - self.renewed > lease_s:
            return True
        return self.host == socket.gethostname() and not process_alive(self.pid)


def read_lease(pdir: PointDir) -> Lease | None:
    try:
        return Lease(**json.loads((pdir.root / LEASE_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def write_lease(pdir: PointDir, lease: Lease) -> None:
    pdir.root.mkdir(parents=True, exist_ok=True)
    lease.renewed = time.time()
    write_atomic(pdir.root / LEASE_FILE, json.dumps(asdict(lease)) + "\n")


@contextmanager
def kept_lease(pdir: PointDir, lease: Lease, lease_s: float) -> Iterator[None]:
    """Renew ``lease`` every ``lease_s / 4`` while the body runs (a thread: training may hold this process)."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(lease_s / 4):
            current = read_lease(pdir)
            if current is not None and not current.same_owner(lease):
                return  # taken over after we looked dead: theirs now (their training fails on the run's lock)
            write_lease(pdir, lease)

    write_lease(pdir, lease)
    thread = threading.Thread(target=renew, name="trial-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@dataclass
class Claim:
    """A trial this worker now runs: new, or RUNNING before and resumed from its point folder."""

    number: int
    params: dict[str, Any]
    resumed: bool


@contextmanager
def _claim_lock(sweep: SweepDir) -> Iterator[None]:
    from optuna.storages.journal import JournalFileOpenLock

    sweep.search_dir.mkdir(parents=True, exist_ok=True)
    lock = JournalFileOpenLock(str(sweep.search_dir / "claim"))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def write_trial_file(cfg: SweepConfig, sweep: SweepDir, number: int, params: dict[str, Any]) -> PointDir:
    """``trial.json`` in the trial's point folder: what the pruning hook of its training needs."""
    pdir = trial_dir(cfg, sweep, number, params)
    pdir.root.mkdir(parents=True, exist_ok=True)
    write_atomic(pdir.root / TRIAL_FILE, json.dumps({"sweep": str(sweep.root), "study": cfg.name or "search",
                                                     "number": number, "params": params}, indent=2) + "\n")
    return pdir


def claim_next(study, cfg: SweepConfig, sweep: SweepDir, me: Lease) -> Claim | str | None:
    """The next trial for worker ``me``: a Claim, :data:`WAIT` (others' trials still run) or None (the study
    holds ``n_trials`` finished trials)."""
    from optuna.trial import TrialState

    assert cfg.search is not None
    with _claim_lock(sweep):
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        for trial in running:
            pdir = trial_dir(cfg, sweep, trial.number, trial.params)
            lease = read_lease(pdir)
            if lease is None or lease.same_owner(me) or lease.expired(cfg.search.lease_s):
                write_trial_file(cfg, sweep, trial.number, trial.params)
                write_lease(pdir, me)
                return Claim(trial.number, dict(trial.params), resumed=True)
        if len(trials) < cfg.search.n_trials:
            study.sampler = sampler_for(cfg, offset=len(trials))
            trial = study.ask()
            params = {dim.key: dim.suggest(trial) for dim in cfg.search.dimensions()}
            write_lease(write_trial_file(cfg, sweep, trial.number, params), me)
            return Claim(trial.number, params, resumed=False)
    return WAIT if running else None


def read_pruned(pdir: PointDir) -> dict[str, Any] | None:
    """What the pruning hook recorded (``{"step", "value"}``) when it stopped this trial's training."""
    try:
        return json.loads((pdir.root / PRUNED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_pruned(point_root: Path, step: int, value: float) -> None:
    write_atomic(point_root / PRUNED_FILE, json.dumps({"step": step, "value": value}) + "\n")
