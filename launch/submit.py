#!/usr/bin/env python
"""Submit a training run to SLURM with submitit: one task per GPU, requeued on preemption/timeout.

    python launch/submit.py --config train/audio_text --set data.shards=shards/avamerg --run-dir runs/audio \\
        --nodes 2 --gpus-per-node 4 --partition gpu --time 1440
    python launch/submit.py --cluster local ...     # same job on this machine, for debugging

Preemption: submitit asks for SIGUSR2 before the time limit (and SLURM signals a preempted job);
every rank then stops at an agreed step and checkpoints (emotrain/signals.py), after which the
job hands the signal back to submitit, which requeues the job (emotrain/recipes/jobs.py); the
requeued job resumes from the run directory's latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emotrain.config import ConfigError, find_config  # noqa: E402
from emotrain.training.slurm_submit import add_slurm_arguments, check_slurm_arguments, make_executor  # noqa: E402
from emotrain.recipes.jobs import TrainJob, TrainRequest  # noqa: E402  (importable in the job, unlike __main__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="run config: a YAML file or a packaged name (train/audio_text)")
    parser.add_argument("--run-dir", required=True, help="run directory (resumes if it holds checkpoints)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override (repeatable)")
    add_slurm_arguments(parser)
    parser.add_argument("--logs", default="runs/submitit", help="submitit's folder for job logs and pickles")
    parser.add_argument("--wait", action="store_true", help="block until the job ends and print its result")
    args = parser.parse_args(argv)
    check_slurm_arguments(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    request = TrainRequest(str(find_config(args.config)), Path(args.run_dir).resolve(), list(args.overrides))
    executor = make_executor(args, args.logs)
    job = executor.submit(TrainJob(request))
    print(f"submitted job {job.job_id}: logs in {Path(args.logs) / str(job.job_id)}_*")
    if args.wait:
        print(json.dumps(job.results()[0]))  # one result per task; rank 0's status is the run's
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as err:  # a bad path or value: one line, not a traceback
        print(f"submit: error: {err}", file=sys.stderr)
        sys.exit(2)
