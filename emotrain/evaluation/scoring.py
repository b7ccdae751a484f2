"""Scoring a split on every rank, each turn exactly once: the one path for periodic validation and ``evaluate``.

Every rank runs a predictor over its own eval shards (``shardlists.eval_shards``), the scored
turns travel to rank 0 in one gather at the end, and rank 0 checks the count against the
split's manifest before anything is computed from them: a turn scored twice or never is an
error, because a metric computed on the wrong rows looks just as plausible as a right one.

A predictor maps a batch to fp32 logits. During training it is the DeepSpeed engine (bf16
weights, bf16 inputs); afterwards it is the plain model loaded from a checkpoint, under bf16
autocast when the run trained in bf16 (:func:`model_predictor`). Both build the model's inputs
with :func:`emotrain.models.inputs.model_inputs`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emotrain.log import progress as progress_of
from emotrain.names import VAL
from emotrain.data.manifest import Manifest
from emotrain.data.stream import DataConfig, Modalities, build_loader
from emotrain.errors import UserError
from emotrain.evaluation.gather import Scored, check_complete, gather_to_rank0
from emotrain.evaluation.metrics import compute_metrics, log_softmax, macro_f1
from emotrain.evaluation.predictions import save_classes, save_predictions
from emotrain.evaluation.report import write_report
from emotrain.models.inputs import model_inputs
from emotrain.training.rundir import RunDir

Predict = Callable[[Mapping[str, Any]], torch.Tensor]


def model_predictor(model: torch.nn.Module, device: torch.device, bf16: bool) -> Predict:
    """fp32 logits of a plain model in eval mode, computed in bf16 when the run trained in bf16."""
    model.eval()

    def predict(batch: Mapping[str, Any]) -> torch.Tensor:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            return model(model_inputs(batch, device)).float()

    return predict


@torch.no_grad()
def score_batches(predict: Predict, batches: Iterable[Mapping[str, Any]], num_classes: int,
                  progress: bool = False) -> Scored:
    """Logits for every turn this rank reads, in fp32 whatever the compute dtype."""
    scored = Scored.empty(num_classes)
    for batch in progress_of(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
        score_batch(predict, batch, scored)
    return scored


def score_batch(predict: Predict, batch: Mapping[str, Any], into: Scored) -> None:
    """Append one batch's keys, fp32 logits, labels and medium presence to ``into`` (call under no_grad)."""
    into.extend(batch["keys"], predict(batch).float().cpu().numpy(), batch["labels"].numpy(), medium_present(batch))


def medium_present(batch: Mapping[str, Any]) -> np.ndarray:
    """bool [B]: whether the model had its own medium for each turn (any audio clip in the window, or the
    turn's video clip); True for a batch that carries neither."""
    if "audio_present" in batch:
        return batch["audio_present"].any(dim=1).numpy()
    if "video_present" in batch:
        return batch["video_present"].numpy()
    return np.ones(len(batch["keys"]), dtype=bool)


def score_split(predict: Predict, data: DataConfig, modalities: Modalities, split: str, batch_size: int,
                device: torch.device, rank: int, world_size: int, num_classes: int,
                progress: bool = False, manifest: Manifest | None = None) -> Scored | None:
    """Collective: score ``split`` across all ranks; rank 0 gets every turn once (checked), others None."""
    manifest = manifest or Manifest.load(data.shards, split)
    if manifest.turns_for(data.turns) == 0:  # every rank sees the same manifest: all refuse together
        raise UserError(f"{data.shards}/{split} holds no labelled turns to score (data.turns={data.turns})")
    loader, manifest = build_loader(data, split, modalities, batch_size, train=False, rank=rank, world_size=world_size,
                                    manifest=manifest)
    local = score_batches(predict, loader, num_classes, progress=progress and rank == 0)
    merged = gather_to_rank0(local, device)
    if merged is not None:
        check_complete(merged, manifest.turns_for(data.turns), split)
    return merged


def evaluate_model(model: torch.nn.Module, data: DataConfig, modalities: Modalities, split: str, batch_size: int,
                   device: torch.device, bf16: bool, rank: int, world_size: int, num_classes: int,
                   progress: bool = False) -> Scored | None:
    """:func:`score_split` with a plain model (evaluation after training)."""
    return score_split(model_predictor(model, device, bf16), data, modalities, split, batch_size, device, rank,
                       world_size, num_classes, progress)


class PeriodicValidation:
    """Accuracy and macro-F1 on the val split during training (collective: every rank scores its shards)."""

    def __init__(self, data: DataConfig, modalities: Modalities, batch_size: int, rank: int, world_size: int,
                 device: torch.device, num_classes: int, manifest: Manifest):
        self.data, self.modalities, self.batch_size, self.manifest = data, modalities, batch_size, manifest
        self.rank, self.world_size, self.device, self.num_classes = rank, world_size, device, num_classes

    def __call__(self, predict: Predict, step: int) -> dict[str, float]:
        merged = score_split(predict, self.data, self.modalities, VAL, self.batch_size, self.device, self.rank,
                             self.world_size, self.num_classes, manifest=self.manifest)
        if merged is None or not merged.keys:
            return {}
        preds = merged.logits.argmax(axis=1)
        log_probs = log_softmax(merged.logits.astype(np.float64))
        return {"val/accuracy": float((preds == merged.labels).mean()),
                "val/macro_f1": macro_f1(merged.labels, preds, self.num_classes),
                "val/nll": float(-log_probs[np.arange(len(merged.labels)), merged.labels].mean())}


def write_evaluation(run_dir: str | Path | RunDir, split: str, scored: Scored, classes: list[str],
                     extra: dict[str, Any], step: int) -> dict[str, Any]:
    """Predictions for fusion, the split's report and plots, and TensorBoard scalars; returns the metrics."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    save_predictions(run.predictions(split), scored.keys, scored.logits, scored.labels)
    save_classes(run.predictions_dir, classes)
    metrics = compute_metrics(scored.logits, scored.labels, classes, from_logits=True)
    write_report(run.eval_dir(split), {split: metrics}, extra=extra, tensorboard_dir=run.tensorboard, step=step)
    return metrics
