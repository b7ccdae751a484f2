"""A search on SLURM: ``--max-parallel`` array tasks, each running trials of the one study until it is full.

Every task is a job of the shape a sweep point gets (one task per GPU, any number of nodes); its rank 0
claims the next trial (:func:`emotrain.sweep.study.claim_next`) and hands it to the other ranks through a
small TCP store, then every rank runs the trial in-process as :class:`emotrain.sweep.array.PointJob`
runs a point. A preempted task checkpoints its training and is requeued by submitit; on its return it
finds its own trial by its lease and resumes it from the checkpoint. A task that dies (``kill -9``, a lost
node) leaves a lease that expires; another task, or the next run of the command, resumes its trial.
After the trials, the confirmation over seeds is an ordinary sweep job array (``confirm.yaml``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import submitit

from emotrain.errors import UserError
from emotrain.log import get_logger
from emotrain.sweep.layout import SweepDir
from emotrain.sweep.spec import SweepConfig
from emotrain.sweep.study import WAIT, Claim, Lease, claim_next, kept_lease, open_study, trial_dir
from emotrain.sweep.steps import InProcessSteps
from emotrain.sweep.trials import record_end, timed_trial

log = get_logger(__name__)


class _Channel:
    """Rank 0's claims to the other ranks of the task (a TCP store on the master address, bound to it)."""

    def __init__(self, env) -> None:
        import socket

        import torch

        self.rank, self.store = env.rank, None
        if env.world_size > 1:
            port = 1024 + (env.master_port - 1024 - 1) % (65536 - 1024)  # below every stage's port
            fd = socket.create_server((env.master_addr, port)).detach() if env.rank == 0 else None
            self.store = torch.distributed.TCPStore(env.master_addr, port, env.world_size, env.rank == 0,
                                                    timedelta(days=7), master_listen_fd=fd)

    def share(self, index: int, claim: Claim | None) -> Claim | None:
        if self.store is None:
            return claim
        key = f"claim{index}"
        if self.rank == 0:
            self.store.set(key, json.dumps(None if claim is None else claim.__dict__))
            return claim
        data = json.loads(self.store.get(key))
        return None if data is None else Claim(**data)


class SearchJob(submitit.helpers.Checkpointable):
    """What every task of one array task runs: trials of the sweep folder's study until none is left."""

    def __init__(self, sweep_root: str) -> None:
        self.sweep_root = sweep_root

    def __call__(self) -> list[int]:
        from emotrain.training import distributed as dist

        sweep = SweepDir(Path(self.sweep_root))
        cfg = sweep.read_config()
        assert cfg.search is not None
        start_env, env = dict(os.environ), dist.read_env()
        channel = _Channel(env)
        study = open_study(cfg, sweep) if env.is_main else None
        me, ran, index = Lease.mine(), [], 0
        steps = InProcessSteps(start_env, env.master_port, requeue=True)
        while True:
            claim = None
            if env.is_main:
                while (claim := claim_next(study, cfg, sweep, me)) == WAIT:
                    time.sleep(min(5.0, cfg.search.lease_s / 4))
            claim = channel.share(index, claim)
            index += 1
            if claim is None:
                return ran
            pdir = trial_dir(cfg, sweep, claim.number, claim.params)
            with kept_lease(pdir, me, cfg.search.lease_s) if env.is_main else nullcontext():
                end, wall = timed_trial(cfg, sweep, claim, steps, env.is_main)
                if end is None:
                    return ran  # preempted (a rank other than 0): the requeued task resumes the trial
                if env.is_main:
                    record_end(study, cfg, sweep, claim, end, wall)
            ran.append(claim.number)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue the same task: it finds its trial by its lease and resumes the training's checkpoint."""
        return submitit.helpers.DelayedSubmission(SearchJob(self.sweep_root))


def submit_search(cfg: SweepConfig, sweep: SweepDir, args: argparse.Namespace) -> list[tuple[str, object]]:
    """``--max-parallel`` array tasks of :class:`SearchJob` (none when the study is full and finished)."""
    from emotrain.sweep.runner import say
    from emotrain.sweep.search_runner import unfinished
    from emotrain.training.slurm_submit import make_executor

    assert cfg.search is not None
    sweep.write_config(cfg)
    study = open_study(cfg, sweep)
    left = cfg.search.n_trials - len(study.trials) + len(unfinished(study))
    if left <= 0:
        say(f"search: the study holds {len(study.trials)} finished trial(s) of {cfg.search.n_trials}: nothing to run")
        return []
    tasks = min(args.max_parallel, left)
    executor = make_executor(args, sweep.submitit_dir, name=f"search-{cfg.name}", slurm_array_parallelism=tasks)
    with executor.batch():
        jobs = [executor.submit(SearchJob(str(sweep.root))) for _ in range(tasks)]
    for i, job in enumerate(jobs):
        say(f"search task {i}: array task {job.job_id}")
    return [(f"search task {i}", job) for i, job in enumerate(jobs)]


def run_search(cfg: SweepConfig, sweep: SweepDir, args: argparse.Namespace) -> int:
    """``emotrain sweep run`` of a search file: trials (here, or as a job array), confirmation, report."""
    from emotrain.sweep.runner import say
    from emotrain.sweep.search_report import render_markdown, write_search_report
    from emotrain.sweep.search_runner import confirm_config, confirm_dir, run_local, unfinished

    failed: list[str] = []
    if not args.slurm:
        failed = run_local(cfg, sweep)
    else:
        from emotrain.sweep.array import submit_array, wait_for

        for flag in ("max_parallel", "nodes", "cpus_per_task", "time"):
            if getattr(args, flag) < 1:
                raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
        jobs = submit_search(cfg, sweep, args)
        if not args.wait:
            log.info(f"submitted {len(jobs)} search task(s); when they end, run the same command again "
                     f"(it confirms the best trials over seeds), then: emotrain sweep report {args.out}")
            return 0
        wait_for(jobs)  # a task that died is no loss: its trial went to another task (or goes to the next run)
        study = open_study(cfg, sweep)
        left = unfinished(study)
        if left or len(study.trials) < cfg.search.n_trials:
            raise UserError(f"search: {len(study.trials)} of {cfg.search.n_trials} trials, {len(left)} unfinished "
                            f"({left}): run the same command again to continue")
        confirm = confirm_config(cfg, study)
        if confirm is not None:
            failed = wait_for(submit_array(confirm, confirm_dir(sweep), args, args.max_parallel))
    if open_study(cfg, sweep).trials:
        summary, written = write_search_report(cfg, sweep)
        log.info(render_markdown(summary))
        say(f"wrote {', '.join(str(p) for p in written)}")
    return 1 if failed else 0
