"""A trained run back as a plain model on one process: config + checkpoint weights, no DeepSpeed engine.

Evaluation and export read runs this way; the weights come from DeepSpeed's own
``zero_to_fp32`` reader (see :func:`emotrain.training.master_weights.fp32_state_dict`), so any ZeRO stage and
any world size at training time load the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from emotrain.data.manifest import Manifest
from emotrain.data.schema import meta_vocab_sizes
from emotrain.data.stream import Modalities
from emotrain.errors import UserError
from emotrain.evaluation.export import WEIGHTS
from emotrain.models import build_model
from emotrain.training.rundir import RunDir
from emotrain.training.checkpoint import choose_tag, step_of
from emotrain.training.master_weights import fp32_state_dict
from emotrain.training.run_config import RunConfig


@dataclass
class TrainedModel:
    model: torch.nn.Module
    config: RunConfig
    classes: list[str]
    tag: str
    step: int
    kind: str  # which checkpoint: "best", "last" or "requested"

    @property
    def modalities(self) -> Modalities:
        return Modalities(audio=self.config.model.needs_audio, video=self.config.model.needs_video)

    @property
    def eval_batch_size(self) -> int:
        return self.config.eval_batch_size

    @property
    def bf16(self) -> bool:
        return self.config.train.bf16


def trained_weights(run: RunDir, tag: str | None, last: bool = False) -> tuple[dict[str, torch.Tensor], str, str]:
    """(fp32 state dict, tag, kind) of a run's checkpoint (``tag``, else the best, ``last``: the newest), or of
    an ``emotrain export`` folder (``model.safetensors`` beside ``config.yaml``; kind ``export``)."""
    exported = run.root / WEIGHTS
    if not run.checkpoints.is_dir() and exported.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(exported)), exported.name, "export"
        except (SafetensorError, OSError) as err:
            raise UserError(f"{exported}: not a readable safetensors file ({err})") from None
    tag, kind = choose_tag(run.checkpoints, tag, last)
    return fp32_state_dict(run.root, tag), tag, kind


def load_trained_model(run_dir: str | Path, tag: str | None, device: torch.device, last: bool = False) -> TrainedModel:
    """The run's model with a checkpoint's weights (every key must match), in eval mode on ``device``:
    ``tag``, else the best checkpoint when the run has one (``last``: the newest); an export folder's weights."""
    run = RunDir(run_dir).require()
    cfg = run.read_config()
    weights, tag, kind = trained_weights(run, tag, last)
    manifest = Manifest.load(cfg.data.shards, "train")
    classes = manifest.classes
    model = build_model(cfg.model, len(classes), meta_vocab_sizes(manifest.vocab), load_weights=False)
    model.load_state_dict(weights, strict=True)
    return TrainedModel(model.to(device).eval(), cfg, classes, tag, step_of(tag) or 0, kind)
