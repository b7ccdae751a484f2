"""``emotrain evaluate RUN... --split val [test]``: score splits on every rank, each turn exactly once
(:mod:`emotrain.recipes.evaluate` says what it writes).

Run it the way training ran (``torchrun ... -m emotrain.cli evaluate RUN --split val test``) or on one
process (``emotrain evaluate RUN --split val``); the results are the same.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emotrain.names import EVAL_SPLITS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="run_dir",
                        help="training run directories (each holds config.yaml and checkpoints/); several: one launch")
    parser.add_argument("--split", dest="splits", nargs="+", choices=EVAL_SPLITS, default=["val"],
                        help="which splits of the runs' shards to score (several: one launch, each model loaded once)")
    parser.add_argument("--checkpoint", help="checkpoint tag under RUN/checkpoints (default: the best one when the run "
                        "validated, else the newest)")
    parser.add_argument("--last", action="store_true", help="score the newest checkpoint instead of the best")
    parser.add_argument("--batch-size", type=int, help="turns per batch (default: the run's eval batch size)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from emotrain.recipes.evaluate import EvalRequest, evaluate_runs

    evaluate_runs(EvalRequest(list(args.run_dirs), list(args.splits), args.checkpoint, args.last, args.batch_size,
                              progress=not args.no_progress))
    return 0
