"""``emotrain train CONFIG --run-dir RUN``: one model, trained on this process's rank.

Every launcher runs this on every rank (``launch/train.py`` is the script form): the
distributed environment is read in :mod:`emotrain.dist`, the loop is :func:`emotrain.engine.train`.
This module only wires the run together: shards -> loader, config -> model and loss, periodic
validation, and the files a run directory holds besides checkpoints:

- ``config.yaml``: the resolved config (shard path made absolute), what evaluate and export read;
- ``status.json``: ``{"status": completed|preempted|nonfinite, "step", "total_steps", "resumed_from",
  "world_size", "num_nodes", "launcher"}``, written
  at the end of every launch; a SLURM batch script requeues when it says ``preempted``;
- ``versions.json``, ``deepspeed.json`` and TensorBoard events under ``tb/`` (from the engine).

Data position on resume: the shard stream restarts at the epoch after the one the checkpoint
was in (each epoch is a fresh seeded permutation), so no sample of the interrupted epoch's
remainder is replayed out of order; the rest of that epoch is skipped, not repeated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from emotrain import dist
from emotrain.checkpoint import ResumeState
from emotrain.config import to_dict
from emotrain.data.schema import meta_vocab_sizes
from emotrain.data.stream import SKIP_KINDS, Modalities, build_loader, read_manifest
from emotrain.data.text import load_tokenizer
from emotrain.engine import train
from emotrain.errors import UserError
from emotrain.gather import Scored, gather_to_rank0
from emotrain.losses import build_loss
from emotrain.metrics import macro_f1
from emotrain.models import build_model
from emotrain.run_config import CONFIG_FILE, RunConfig, load_run_config

STATUS_FILE = "status.json"


def check_tokenizer(cfg: RunConfig) -> None:
    """A from-config BERT must have an embedding row for every id the tokenizer can emit."""
    vocab_size = (cfg.model.text.config or {}).get("vocab_size") if cfg.model.text.pretrained is None else None
    if vocab_size is not None:
        size = len(load_tokenizer(cfg.data.text.tokenizer))
        if size > vocab_size:
            raise UserError(f"tokenizer {cfg.data.text.tokenizer} has {size} tokens but model.text.config.vocab_size "
                            f"is {vocab_size}: set it to at least {size}")


def start_epoch(state: ResumeState, micro_batch_size: int, turns_per_rank: float) -> int:
    """The epoch to restart the shard stream at: the one after the checkpoint's (0 on a fresh run)."""
    if state.micro_batches == 0:
        return 0
    return math.floor(state.micro_batches * micro_batch_size / max(turns_per_rank, 1.0)) + 1


class TrainStream:
    """The endless train loader for this rank, positioned for a resume, tallying skipped data."""

    def __init__(self, cfg: RunConfig, modalities: Modalities, env: dist.DistEnv, manifest: Mapping[str, Any]):
        self.cfg, self.modalities, self.env = cfg, modalities, env
        self.turns_per_rank = manifest["labelled_turns"] / env.world_size
        self.skipped: Counter[str] = Counter()

    def __call__(self, state: ResumeState) -> Iterator[dict[str, Any]]:
        epoch = start_epoch(state, self.cfg.train.micro_batch_size, self.turns_per_rank)
        loader, _ = build_loader(self.cfg.data, "train", self.modalities, self.cfg.train.micro_batch_size, train=True,
                                 rank=self.env.rank, world_size=self.env.world_size, start_epoch=epoch)
        for batch in loader:
            self.skipped.update(batch.pop("skipped"))
            yield batch

    def stats(self) -> dict[str, int]:
        return {f"skipped_{kind}": self.skipped.get(kind, 0) for kind in SKIP_KINDS}


class Validation:
    """Accuracy and macro-F1 on the val split, every rank scoring its own shards (collective)."""

    def __init__(self, cfg: RunConfig, modalities: Modalities, env: dist.DistEnv, num_classes: int):
        self.cfg, self.modalities, self.env, self.num_classes = cfg, modalities, env, num_classes

    def __call__(self, predict, step: int) -> dict[str, float]:
        loader, _ = build_loader(self.cfg.data, "val", self.modalities, self.cfg.eval_batch_size, train=False,
                                 rank=self.env.rank, world_size=self.env.world_size)
        local = Scored.empty(self.num_classes)
        for batch in loader:
            local.extend(batch["keys"], predict(batch).cpu().numpy(), batch["labels"].numpy())
        merged = gather_to_rank0(local, dist.device_for(self.env))
        if merged is None or not merged.keys:
            return {}
        preds = merged.logits.argmax(axis=1)
        return {"val/accuracy": float((preds == merged.labels).mean()),
                "val/macro_f1": macro_f1(merged.labels, preds, self.num_classes)}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def resolve_run(cfg: RunConfig) -> RunConfig:
    """Make the shard path absolute so the saved config works from any directory."""
    cfg.data.shards = str(Path(cfg.data.shards).resolve())
    return cfg


def train_run(cfg: RunConfig, run_dir: Path, env: dist.DistEnv) -> int:
    """Train on this rank; every rank calls it. Returns the process exit code."""
    cfg = resolve_run(cfg)
    manifest = read_manifest(cfg.data.shards, "train")
    if manifest["labelled_turns"] == 0:
        raise UserError(f"{cfg.data.shards}/train holds no labelled turns")
    check_tokenizer(cfg)
    classes = list(manifest["scheme"]["classes"])
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg.model, len(classes), meta_vocab_sizes(manifest["vocab"]))
    loss_fn = build_loss(cfg.loss, [int(manifest["label_histogram"][c]) for c in classes])
    modalities = Modalities(audio=cfg.model.needs_audio, video=cfg.model.needs_video)
    stream = TrainStream(cfg, modalities, env, manifest)
    has_val = read_manifest(cfg.data.shards, "val")["labelled_turns"] > 0
    validation = Validation(cfg, modalities, env, len(classes)) if has_val else None
    result = train(model, loss_fn, stream, cfg.train, run_dir, env, evaluate_fn=validation, data_stats=stream.stats)
    if env.is_main:
        _write_json_atomic(run_dir / STATUS_FILE, {"status": result.stop_reason, "step": result.step,
                                                   "total_steps": cfg.train.total_steps,
                                                   "resumed_from": result.resumed_from,
                                                   "world_size": env.world_size, "num_nodes": env.num_nodes,
                                                   "launcher": env.launcher})
        print(f"train: {result.stop_reason} at step {result.step}/{cfg.train.total_steps}"
              + (f" (resumed from step {result.resumed_from})" if result.resumed_from else "")
              + f"; checkpoint {result.checkpoint}")
    dist.shutdown()
    return result.exit_code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="run config YAML, e.g. configs/train/audio_text_tiny.yaml")
    parser.add_argument("--run-dir", type=Path, required=True, help="where checkpoints, logs and the resolved config go; "
                        "an existing run resumes from its latest checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")


def run(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.overrides)
    return train_run(cfg, args.run_dir, dist.read_env())
