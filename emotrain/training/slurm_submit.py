"""The submitit executor for SLURM jobs of emotrain, built from one set of command-line options.

``launch/submit.py`` (one training run) and ``emotrain sweep run --slurm`` (a job array of sweep points)
take the same options and get the same job shape: one task per GPU, ``--kill-on-bad-exit`` so a failed
rank ends the step, and the submitting shell's torch rank variables dropped so SLURM numbers the ranks.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", choices=["slurm", "local", "debug"], default=None,
                        help="submitit backend (default: slurm when available, else local)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--tasks-per-node", type=int, default=None, help="default: --gpus-per-node, or 1")
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.add_argument("--cpus-per-task", type=int, default=8)
    parser.add_argument("--partition", default=None)
    parser.add_argument("--time", type=int, default=24 * 60, help="time limit in minutes")


def check_slurm_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("nodes", "cpus_per_task", "time"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


def make_executor(args: argparse.Namespace, folder: str | Path, name: str = "emotrain", **extra: Any) -> Any:
    """A submitit AutoExecutor for the job shape ``args`` describe (``extra``: more parameters, such as
    ``slurm_array_parallelism``)."""
    import submitit

    from emotrain.training import distributed as dist

    tasks = args.tasks_per_node or max(args.gpus_per_node, 1)
    dist.forget_torch_ranks()  # the job inherits this environment: SLURM must number the ranks
    executor = submitit.AutoExecutor(folder=str(folder), cluster=args.cluster)
    # One failed rank ends the step: the others would otherwise wait out the rendezvous timeout.
    params: dict[str, Any] = dict(name=name, nodes=args.nodes, tasks_per_node=tasks, cpus_per_task=args.cpus_per_task,
                                  timeout_min=args.time, slurm_srun_args=["--kill-on-bad-exit=1"], **extra)
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.partition:
        params["slurm_partition"] = args.partition
    executor.update_parameters(**params)
    return executor
