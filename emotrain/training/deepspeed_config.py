"""The ``train:`` section of a config, and the DeepSpeed config dict derived from it.

The JSON files in ``configs/deepspeed/`` say *how* to shard (ZeRO stage, offload, buckets); the
batch geometry, precision and clipping come from :class:`TrainConfig`, so one JSON works at any
world size: a hard-coded ``train_batch_size`` would break when the number of GPUs changes.
Precision is decided once, in :func:`use_bf16`; the training recipe writes the decision into the
run's saved config, so evaluation computes in the dtype training used. When ``accelerate launch``
started the job, the DeepSpeed file, ZeRO stage, offload devices, clipping and bf16 it names win,
because they are the launch-time choice (``accelerate launch --config_file configs/accelerate/...``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from emotrain.config import CONFIG_ROOT, ConfigError, find_config, path_field
from emotrain.training.best import BestMetric, EarlyStopping
from emotrain.training.distributed import AccelerateSettings

# Keys a configs/deepspeed/*.json must not carry: the engine derives them or passes its own objects.
_FORBIDDEN_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer", "scheduler")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping for one run; sizes are in samples so they survive world-size changes."""

    total_samples: int
    deepspeed_config: str = path_field("config", default=str(CONFIG_ROOT / "deepspeed" / "zero2.json"))
    zero_stage: int | None = None
    global_batch_size: int = 32
    micro_batch_size: int = 8
    lr: float = 3e-4
    encoder_lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_samples: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    bf16: bool = True
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 3
    eval_every_steps: int = 0
    best_metric: BestMetric = "val/macro_f1"  # which validation keeps the best checkpoint
    early_stopping: EarlyStopping | None = None  # {patience: N evaluations, min_delta: x}; off when absent
    log_every_steps: int = 10
    max_consecutive_nonfinite: int = 20
    # Start a new run from these weights (an `emotrain export` folder or a run directory), optimizer
    # afresh: how a run continues on another number of ranks. Ignored when the run resumes.
    init_from: str | None = path_field(default=None)
    seed: int = 0

    def validate(self) -> None:
        positive = ("total_samples", "global_batch_size", "micro_batch_size", "keep_checkpoints", "log_every_steps",
                    "max_consecutive_nonfinite")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_samples", "checkpoint_every_steps", "eval_every_steps", "weight_decay", "encoder_lr", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")
        if self.zero_stage not in (None, 0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")

    @property
    def total_steps(self) -> int:
        return math.ceil(self.total_samples / self.global_batch_size)

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.warmup_samples / self.global_batch_size)

    def accumulation_steps(self, world_size: int) -> int:
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size {self.global_batch_size} is not a multiple of "
                f"micro_batch_size {self.micro_batch_size} x world size {world_size}"
            )
        return self.global_batch_size // per_step


def _find_auto(node: Any, where: str = "") -> str | None:
    if node == "auto":
        return where or "(top level)"
    if isinstance(node, dict):
        for key, value in node.items():
            found = _find_auto(value, f"{where}.{key}" if where else key)
            if found:
                return found
    return None


def read_deepspeed_json(path: str) -> dict:
    """Read and check a DeepSpeed JSON: no batch sizes (derived here), no optimizer or scheduler (the
    engine passes its own), no "auto" (only Accelerate fills those in, and it does not drive DeepSpeed
    here). ``path``: a file (relative: to the working directory) or a packaged name such as
    ``deepspeed/zero2.json``."""
    try:
        file = find_config(path)
    except ConfigError:
        raise ConfigError(f"DeepSpeed config not found: {path}") from None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file}: not valid JSON ({err})") from None
    bad = [key for key in _FORBIDDEN_KEYS if key in data]
    if bad:
        raise ConfigError(f"{file}: remove {', '.join(bad)}; the engine derives batch sizes and builds the optimizer")
    auto = _find_auto(data)
    if auto:
        raise ConfigError(f'{file}: {auto} is "auto", which only Accelerate resolves; give a value')
    return data


def use_bf16(cfg: TrainConfig, accelerate: AccelerateSettings | None = None) -> bool:
    """Whether this run computes in bf16: the config's ``train.bf16``, unless ``accelerate launch``
    asked for bf16 (its launch-time choice wins). fp16 is refused: nothing here scales losses."""
    if accelerate is not None and accelerate.mixed_precision == "fp16":
        raise ConfigError("accelerate asks for fp16; emotrain trains in bf16 or fp32 only")
    return cfg.bf16 or (accelerate is not None and accelerate.mixed_precision == "bf16")


def deepspeed_config(cfg: TrainConfig, world_size: int, accelerate: AccelerateSettings | None = None) -> dict:
    """The dict handed to ``deepspeed.initialize(config=...)``. Its precision is ``cfg.bf16`` as the recipe
    decided it (:func:`use_bf16`) and recorded in the run's config.yaml: not decided a second time here."""
    source = accelerate.deepspeed_config_file if accelerate and accelerate.deepspeed_config_file else cfg.deepspeed_config
    ds = read_deepspeed_json(source)
    zero = ds.setdefault("zero_optimization", {})
    if cfg.zero_stage is not None:
        zero["stage"] = cfg.zero_stage
    bf16, clip = cfg.bf16, cfg.grad_clip
    if accelerate is not None:
        if accelerate.zero_stage is not None:
            zero["stage"] = accelerate.zero_stage
        for block, device in (("offload_optimizer", accelerate.offload_optimizer_device),
                              ("offload_param", accelerate.offload_param_device)):
            if device is not None:
                zero[block] = {"device": device}
        if accelerate.gradient_clipping is not None:
            clip = accelerate.gradient_clipping
    accumulation = cfg.accumulation_steps(world_size)
    if accelerate is not None and accelerate.gradient_accumulation_steps not in (None, accumulation):
        raise ConfigError(
            f"accelerate sets gradient_accumulation_steps={accelerate.gradient_accumulation_steps} but "
            f"train.global_batch_size gives {accumulation} at world size {world_size}; drop it from the accelerate config"
        )
    stage = int(zero.get("stage", 0))
    ds.update(
        train_micro_batch_size_per_gpu=cfg.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        gradient_clipping=clip,
        zero_allow_untested_optimizer=True,  # torch.optim.AdamW is "untested" to DeepSpeed but fine
    )
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    ds.pop("fp16", None)
    # DeepSpeed supports bf16 weights with fp32 gradient accumulation only under ZeRO >= 1; plain data
    # parallel (stage 0) must accumulate in bf16; the default differs between versions, so always say which.
    ds["data_types"] = {"grad_accum_dtype": "bf16" if bf16 and stage == 0 else "fp32"}
    ds.setdefault("steps_per_print", 2**31 - 1)
    return ds
