"""One training run wired together: shards -> loader, config -> model and loss, periodic validation.

Every launcher ends up here on every rank (``emotrain train`` in one process, ``launch/train.py``
under torchrun, accelerate, deepspeed, srun or submitit): the distributed environment is read in
:mod:`emotrain.training.distributed`, the loop is :func:`emotrain.training.engine.fit`. What the run
directory holds besides checkpoints (:class:`emotrain.training.rundir.RunDir`):

- ``config.yaml``: the resolved config, every path absolute and the precision actually used
  recorded, so evaluate and export read it from any directory;
- ``status.json``: :class:`emotrain.training.rundir.RunStatus`, written at the end of every launch; a SLURM
  batch script requeues when it says ``preempted``;
- ``versions.json``, ``deepspeed.json`` and TensorBoard events under ``tb/`` (from the engine).

Data position on resume: the train stream continues exactly after the checkpoint's micro-batch.
Each rank's stream is a pure function of the seed, the rank and the loader's worker count (shard
order per epoch, shuffle buffer, and each conversation's augmentation drawn from its place in the
stream), so a resumed loader re-reads the conversations already trained on without decoding them
and yields the batch the interrupted run would have drawn next, in the same epoch, with the same
crops. This needs the same world size and ``data.num_workers`` as the interrupted launch (the
world size is checked at resume).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from emotrain.names import TRAIN, VAL
from emotrain.data.manifest import Manifest
from emotrain.data.schema import meta_vocab_sizes
from emotrain.data.stream import SKIP_KINDS, Modalities, build_loader, prepared_video
from emotrain.data.text import load_tokenizer
from emotrain.errors import UserError
from emotrain.log import get_logger, log_to_folder
from emotrain.evaluation.scoring import PeriodicValidation
from emotrain.models import build_model
from emotrain.training.rundir import LAUNCH_ENV, RunDir, RunStatus
from emotrain.training import distributed as dist
from emotrain.config import to_dict
from emotrain.training.checkpoint import ResumeState, latest_complete_tag
from emotrain.training.master_weights import initial_weights
from emotrain.training.deepspeed_config import use_bf16
from emotrain.training.engine import fit
from emotrain.training.losses import build_loss
from emotrain.training.run_config import RunConfig

log = get_logger(__name__)


def check_tokenizer(cfg: RunConfig) -> None:
    """A from-config BERT must have an embedding row for every id the tokenizer can emit."""
    vocab_size = (cfg.model.text.config or {}).get("vocab_size") if cfg.model.text.pretrained is None else None
    if vocab_size is not None:
        size = len(load_tokenizer(cfg.data.text.tokenizer))
        if size > vocab_size:
            raise UserError(f"tokenizer {cfg.data.text.tokenizer} has {size} tokens but model.text.config.vocab_size "
                            f"is {vocab_size}: set it to at least {size}")


# What a checkpoint's weights and its resumed data stream depend on; a relaunch may change the rest
# (more steps, another learning rate, workers for evaluation), never these.
CONTRACT = ("model", "data.text", "data.audio", "data.video", "data.turns", "train.bf16")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}.{key}" if prefix else key).items()}
    return {prefix: node}


def check_same_contract(run: RunDir, cfg: RunConfig) -> None:
    """Refuse, before anything is written, a relaunch whose model or data contract differs from the
    run's checkpoints: its saved config.yaml is the only record of the architecture they hold."""
    if not run.is_run() or latest_complete_tag(run.checkpoints) is None:
        return
    saved, new = _flat(to_dict(run.read_config())), _flat(to_dict(cfg))
    differ = sorted(k for k in saved.keys() | new.keys()
                    if any(k == c or k.startswith(c + ".") for c in CONTRACT) and saved.get(k) != new.get(k))
    if differ:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {new.get(k)!r})" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise UserError(f"{run.root} holds checkpoints of another configuration: {shown}{more}; "
                        "relaunch with the run's own settings, or use a new --run-dir")


def load_initial_weights(model: torch.nn.Module, source: str, env: dist.DistEnv) -> None:
    """``train.init_from``: every rank loads the same weights (every key must match the model)."""
    weights = initial_weights(source)
    missing, unexpected = set(model.state_dict()) - set(weights), set(weights) - set(model.state_dict())
    if missing or unexpected:
        raise UserError(f"train.init_from {source} does not fit this model: {len(missing)} missing key(s) "
                        f"(e.g. {sorted(missing)[:1]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:1]})")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:  # a shape differs
        raise UserError(f"train.init_from {source} does not fit this model: {str(err).splitlines()[-1].strip()}") from None
    log.info("train: initialised from %s (weights only; the optimizer starts afresh)", source)


class TrainStream:
    """The endless train loader for this rank, positioned for a resume, tallying skipped data."""

    def __init__(self, cfg: RunConfig, modalities: Modalities, env: dist.DistEnv, manifest: Manifest):
        self.cfg, self.modalities, self.env, self.manifest = cfg, modalities, env, manifest
        self.skipped: Counter[str] = Counter()

    def __call__(self, state: ResumeState) -> Iterator[dict[str, Any]]:
        loader, _ = build_loader(self.cfg.data, "train", self.modalities, self.cfg.train.micro_batch_size, train=True,
                                 rank=self.env.rank, world_size=self.env.world_size,
                                 skip_batches=state.micro_batches, manifest=self.manifest)
        for batch in loader:
            self.skipped.update(batch.pop("skipped"))
            yield batch

    def stats(self) -> dict[str, int]:
        return {f"skipped_{kind}": self.skipped.get(kind, 0) for kind in SKIP_KINDS}


def run_training(cfg: RunConfig, run_dir: str | Path, env: dist.DistEnv) -> int:
    """Train on this rank; every rank calls it. Returns the process exit code."""
    run = RunDir(run_dir)
    log_to_folder(run.root)  # RUN/logs/emotrain.log: rank 0's messages, every rank's warnings and errors
    # Rank 0 holds the run's lock for the whole launch; a second launch fails on its rank 0, and the
    # launcher (torchrun, srun --kill-on-bad-exit) ends its other ranks.
    with run.lock() if env.is_main else contextlib.nullcontext():
        return _run_training(cfg, run, env)


def _run_training(cfg: RunConfig, run: RunDir, env: dist.DistEnv) -> int:
    manifest = Manifest.load(cfg.data.shards, TRAIN)
    if manifest.turns_for(cfg.data.turns) == 0:
        raise UserError(f"{cfg.data.shards}/train holds no labelled turns (data.turns={cfg.data.turns})")
    check_tokenizer(cfg)
    modalities = Modalities(audio=cfg.model.needs_audio, video=cfg.model.needs_video)
    prepared_video(manifest, cfg.data.video, modalities)  # prepared shards for another model: one line, now
    # Decided once (accelerate may ask for bf16) and recorded, so evaluation computes as training did.
    cfg.train.bf16 = use_bf16(cfg.train, dist.read_accelerate_settings())
    check_same_contract(run, cfg)
    if env.is_main:
        run.write_config(cfg)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg.model, len(manifest.classes), meta_vocab_sizes(manifest.vocab))
    if cfg.train.init_from and latest_complete_tag(run.checkpoints) is None:
        load_initial_weights(model, cfg.train.init_from, env)
    loss_fn = build_loss(cfg.loss, manifest.class_counts())
    stream = TrainStream(cfg, modalities, env, manifest)
    validation = None
    val_manifest = Manifest.load(cfg.data.shards, VAL)
    if val_manifest.turns_for(cfg.data.turns) > 0:
        validation = PeriodicValidation(cfg.data, modalities, cfg.eval_batch_size, env.rank, env.world_size,
                                        dist.device_for(env), len(manifest.classes), val_manifest)
    result = fit(model, loss_fn, stream, cfg.train, run.root, env, evaluate_fn=validation, data_stats=stream.stats)
    if env.is_main:
        run.write_status(RunStatus(status=result.stop_reason, step=result.step, total_steps=cfg.train.total_steps,
                                   resumed_from=result.resumed_from, world_size=env.world_size,
                                   num_nodes=env.num_nodes, launcher=env.launcher, best_step=result.best_step,
                                   best_metric=cfg.train.best_metric if result.best_step is not None else None,
                                   best_value=result.best_value,
                                   detail="early stopping" if result.early_stopped else None,
                                   launch_id=os.environ.get(LAUNCH_ENV)))
        log.info(f"train: {result.stop_reason} at step {result.step}/{cfg.train.total_steps}"
              + (" (early stopping)" if result.early_stopped else "")
              + (f" (resumed from step {result.resumed_from})" if result.resumed_from else "")
              + (f"; best {cfg.train.best_metric} at step {result.best_step}" if result.best_step is not None else "")
              + f"; checkpoint {result.checkpoint}")
    dist.shutdown()
    return result.exit_code
