"""Trained runs scored on their splits: every rank scores its shards, each turn exactly once.

Outputs in each run directory: ``predictions/<split>.npz`` + ``predictions/classes.json`` (what
``emotrain fuse`` reads), ``eval/<split>/report.json`` with the PNG plots, and the metrics in
TensorBoard (``RUN/tb``) under ``eval/<split>/`` at the checkpoint's step. ``emotrain evaluate`` and a
SLURM sweep point call :func:`evaluate_runs` with the same typed request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emotrain.errors import UserError
from emotrain.log import get_logger
from emotrain.names import EVAL_SPLITS, VAL

log = get_logger(__name__)

if TYPE_CHECKING:
    import torch

    from emotrain.training.distributed import DistEnv


@dataclass(frozen=True)
class EvalRequest:
    """What to score: the runs, the splits, which checkpoint, the batch size (None: the run's own)."""

    run_dirs: list[Path]
    splits: list[str] = field(default_factory=lambda: [VAL])
    checkpoint: str | None = None
    last: bool = False
    batch_size: int | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        unknown = [split for split in self.splits if split not in EVAL_SPLITS]
        if unknown:
            raise UserError(f"unknown split(s) {', '.join(unknown)}: choose from {', '.join(EVAL_SPLITS)}")


def summary_line(split: str, metrics: dict[str, Any]) -> str:
    return (f"{split}: accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}  "
            f"weighted-F1 {metrics['weighted_f1']:.3f}  ECE {metrics['ece']:.3f}  ({metrics['n']} turns)")


def evaluate_runs(request: EvalRequest) -> None:
    """Score every requested run on every requested split (collective: every rank calls it)."""
    from emotrain.training import distributed as dist

    request.validate()
    env = dist.read_env()
    device = dist.init_distributed(env) if env.world_size > 1 else dist.device_for(env)
    try:
        for run_dir in dict.fromkeys(request.run_dirs):
            evaluate_run(Path(run_dir), request, env, device)
    finally:
        dist.shutdown()


def evaluate_run(run_dir: Path, request: EvalRequest, env: DistEnv, device: torch.device) -> None:
    """Score the requested splits with one run's model (collective: every rank calls it)."""
    from emotrain.evaluation.scoring import evaluate_model, write_evaluation
    from emotrain.evaluation.trained_model import load_trained_model
    from emotrain.training.rundir import RunDir

    run = RunDir(run_dir)
    loaded = load_trained_model(run.root, request.checkpoint, device, last=request.last)
    extra = {"run": str(run), "checkpoint": loaded.tag, "checkpoint_kind": loaded.kind, "model": loaded.config.model.kind,
             "text_inputs": {"utterances": True, "context_fields": list(loaded.config.data.text.context_fields)}}
    for split in dict.fromkeys(request.splits):
        scored = evaluate_model(
            loaded.model, loaded.config.data, loaded.modalities, split,
            request.batch_size or loaded.eval_batch_size, device, loaded.bf16, env.rank, env.world_size,
            len(loaded.classes), progress=request.progress,
        )
        if scored is not None:
            metrics = write_evaluation(run, split, scored, loaded.classes, extra, loaded.step)
            log.info(f"{loaded.config.model.kind} {summary_line(split, metrics)}  [{loaded.kind} checkpoint {loaded.tag}]")
            log.info(f"predictions: {run.predictions(split)}  report: {run.eval_dir(split)}")
