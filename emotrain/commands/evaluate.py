"""``emotrain evaluate RUN... --split val [test]``: score splits on every rank, each turn exactly once.

Outputs in each run directory: ``predictions/<split>.npz`` + ``predictions/classes.json`` (what
``emotrain fuse`` reads), ``eval/<split>/report.json`` with the PNG plots, and the metrics in
TensorBoard (``RUN/tb``) under ``eval/<split>/`` at the checkpoint's step.

Run it the way training ran (``torchrun ... -m emotrain.cli evaluate RUN --split val test``) or on one
process (``emotrain evaluate RUN --split val``); the results are the same.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emotrain.errors import UserError

if TYPE_CHECKING:
    import torch

    from emotrain.training.distributed import DistEnv

SPLITS = ("val", "test")


def summary_line(split: str, metrics: dict[str, Any]) -> str:
    return (f"{split}: accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}  "
            f"weighted-F1 {metrics['weighted_f1']:.3f}  ECE {metrics['ece']:.3f}  ({metrics['n']} turns)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="run_dir",
                        help="training run directories (each holds config.yaml and checkpoints/); several: one launch")
    parser.add_argument("--split", dest="splits", nargs="+", choices=SPLITS, default=["val"],
                        help="which splits of the runs' shards to score (several: one launch, each model loaded once)")
    parser.add_argument("--checkpoint", help="checkpoint tag under RUN/checkpoints (default: the best one when the run "
                        "validated, else the newest)")
    parser.add_argument("--last", action="store_true", help="score the newest checkpoint instead of the best")
    parser.add_argument("--batch-size", type=int, help="turns per batch (default: the run's eval batch size)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from emotrain.training import distributed as dist

    if args.batch_size is not None and args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    env = dist.read_env()
    device = dist.init_distributed(env) if env.world_size > 1 else dist.device_for(env)
    try:
        for run_dir in dict.fromkeys(args.run_dirs):
            evaluate_run(run_dir, args, env, device)
    finally:
        dist.shutdown()
    return 0


def evaluate_run(run_dir: Path, args: argparse.Namespace, env: DistEnv, device: torch.device) -> None:
    """Score the requested splits with one run's model (collective: every rank calls it)."""
    from emotrain.evaluation.scoring import evaluate_model, write_evaluation
    from emotrain.evaluation.trained_model import load_trained_model
    from emotrain.rundir import RunDir

    run = RunDir(run_dir)
    loaded = load_trained_model(run.root, args.checkpoint, device, last=args.last)
    extra = {"run": str(run), "checkpoint": loaded.tag, "checkpoint_kind": loaded.kind, "model": loaded.config.model.kind,
             "text_inputs": {"utterances": True, "context_fields": list(loaded.config.data.text.context_fields)}}
    for split in dict.fromkeys(args.splits):
        scored = evaluate_model(
            loaded.model, loaded.config.data, loaded.modalities, split,
            args.batch_size or loaded.eval_batch_size, device, loaded.bf16, env.rank, env.world_size,
            len(loaded.classes), progress=not args.no_progress,
        )
        if scored is not None:
            metrics = write_evaluation(run, split, scored, loaded.classes, extra, loaded.step)
            print(f"{loaded.config.model.kind} {summary_line(split, metrics)}  [{loaded.kind} checkpoint {loaded.tag}]")
            print(f"predictions: {run.predictions(split)}  report: {run.eval_dir(split)}")
