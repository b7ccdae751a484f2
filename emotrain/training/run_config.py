"""The one config of a training run: data, model, loss and optimisation, checked together.

Each part is validated on its own when loaded; :meth:`RunConfig.validate` adds the checks
that need two parts at once (what the loader delivers must be what the model expects), so a
mismatch stops the run at load time instead of as a shape error deep inside a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from emotrain.config import load_config
from emotrain.data.stream import DataConfig
from emotrain.training.deepspeed_config import TrainConfig
from emotrain.training.losses import LossConfig
from emotrain.models import ModelConfig


@dataclass
class RunConfig:
    model: ModelConfig
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval_batch_size: int = 16

    def validate(self) -> None:
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        check_inputs_fit(self.model, self.data)


def check_inputs_fit(model: ModelConfig, data: DataConfig) -> None:
    """What the loader delivers must be what the model expects (training, and a bundle when it loads)."""
    if model.needs_video:
        want = (model.video_frames(), model.video_image_size())
        have = (data.video.num_frames, data.video.image_size)
        if want != have:
            raise ValueError(
                f"the video encoder expects {want[0]} frames of {want[1]}x{want[1]} but the loader gives "
                f"{have[0]} of {have[1]}x{have[1]}: set data.video.num_frames / data.video.image_size to match"
            )


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config (a file, or a packaged name such as ``demo/audio_text``). ``model:`` may
    name a model YAML (``../model/audio_text_tiny.yaml``) instead of spelling the model out, so one
    model file serves tests, training configs and ``inspect``; paths resolve as
    :mod:`emotrain.config` describes."""
    return load_config(RunConfig, path, overrides)
