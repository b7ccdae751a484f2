"""``emotrain evaluate RUN --split val [test]``: score splits on every rank, each turn exactly once.

Every rank runs the model over its own eval shards (``shardlists.eval_shards``), the scored
turns travel to rank 0 in one gather at the end, and rank 0 checks the count against the
split's manifest before writing anything: a turn scored twice or never is an error, because a
metric computed on the wrong rows looks just as plausible as a right one.

Outputs in the run directory: ``predictions/<split>.npz`` + ``predictions/classes.json`` (what
``emotrain fuse`` reads), ``eval/<split>/report.json`` with the PNG plots, and the metrics in
TensorBoard (``RUN/tb``) under ``eval/<split>/`` at the checkpoint's step.

Run it the way training ran (``torchrun ... -m emotrain.cli evaluate RUN --split val test``) or on one
process (``emotrain evaluate RUN --split val``); the results are the same.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from emotrain.data.stream import DataConfig, Modalities, build_loader
from emotrain.errors import UserError
from emotrain.gather import Scored, check_complete, gather_to_rank0
from emotrain.metrics import compute_metrics
from emotrain.predictions import save_classes, save_predictions
from emotrain.report import write_report

if TYPE_CHECKING:
    from emotrain.dist import DistEnv

SPLITS = ("val", "test")
_NOT_INPUTS = ("keys", "labels", "skipped")


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch minus what the model must never see (keys, labels, counters), on ``device``."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in _NOT_INPUTS}


@torch.no_grad()
def score_batches(model: torch.nn.Module, batches, device: torch.device, bf16: bool, num_classes: int,
                  progress: bool = False) -> Scored:
    """Logits for every turn this rank reads, in fp32 whatever the compute dtype."""
    model.eval()
    scored = Scored.empty(num_classes)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
        with autocast:
            logits = model(model_inputs(batch, device))
        scored.extend(batch["keys"], logits.float().cpu().numpy(), batch["labels"].numpy())
    return scored


def evaluate_model(model: torch.nn.Module, data: DataConfig, modalities: Modalities, split: str, batch_size: int,
                   device: torch.device, bf16: bool, rank: int, world_size: int, num_classes: int,
                   progress: bool = False) -> Scored | None:
    """Score ``split`` across all ranks; rank 0 gets every turn once (checked), others None."""
    loader, manifest = build_loader(data, split, modalities, batch_size, train=False, rank=rank, world_size=world_size)
    local = score_batches(model, loader, device, bf16, num_classes, progress=progress and rank == 0)
    merged = gather_to_rank0(local, device)
    if merged is not None:
        check_complete(merged, int(manifest["labelled_turns"]), split)
    return merged


def write_evaluation(run_dir: Path, split: str, scored: Scored, classes: list[str], extra: dict[str, Any],
                     step: int) -> dict[str, Any]:
    """Predictions for fusion, the split's report and plots, and TensorBoard scalars; returns the metrics."""
    save_predictions(run_dir / "predictions" / f"{split}.npz", scored.keys, scored.logits, scored.labels)
    save_classes(run_dir / "predictions", classes)
    metrics = compute_metrics(scored.logits, scored.labels, classes, from_logits=True)
    write_report(run_dir / "eval" / split, {split: metrics}, extra=extra, tensorboard_dir=run_dir / "tb",
                 step=step)
    return metrics


def summary_line(split: str, metrics: dict[str, Any]) -> str:
    return (f"{split}: accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}  "
            f"weighted-F1 {metrics['weighted_f1']:.3f}  ECE {metrics['ece']:.3f}  ({metrics['n']} turns)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="run_dir",
                        help="training run directories (each holds config.yaml and checkpoints/); several: one launch")
    parser.add_argument("--split", dest="splits", nargs="+", choices=SPLITS, default=["val"],
                        help="which splits of the runs' shards to score (several: one launch, each model loaded once)")
    parser.add_argument("--checkpoint", help="checkpoint tag under RUN/checkpoints (default: the latest complete one)")
    parser.add_argument("--batch-size", type=int, help="turns per batch (default: the run's eval batch size)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from emotrain import dist

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
    from emotrain.run_loading import load_trained_model

    loaded = load_trained_model(run_dir, args.checkpoint, device)
    extra = {"run": str(run_dir), "checkpoint": loaded.tag, "model": loaded.config.model.kind,
             "text_inputs": {"utterances": True, "context_fields": list(loaded.config.data.text.context_fields)}}
    for split in dict.fromkeys(args.splits):
        scored = evaluate_model(
            loaded.model, loaded.config.data, loaded.modalities, split,
            args.batch_size or loaded.eval_batch_size, device, loaded.bf16, env.rank, env.world_size,
            len(loaded.classes), progress=not args.no_progress,
        )
        if scored is not None:
            metrics = write_evaluation(run_dir, split, scored, loaded.classes, extra, loaded.step)
            print(f"{loaded.config.model.kind} {summary_line(split, metrics)}")
            print(f"predictions: {run_dir / 'predictions' / (split + '.npz')}  report: {run_dir / 'eval' / split}")
