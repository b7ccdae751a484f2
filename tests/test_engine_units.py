"""Engine pieces that need no process group: config, DeepSpeed dict, optimizer groups, schedule,
checkpoint bookkeeping, RNG state, device moves, stop signals."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from emotrain.training import checkpoint
from emotrain.training.master_weights import fp32_state_dict
from emotrain.config import ConfigError, from_dict, read_yaml
from emotrain.training.distributed import AccelerateSettings
from emotrain.models.inputs import model_inputs
from emotrain.errors import UserError
from emotrain.evaluation.export import export_weights
from emotrain.config import CONFIG_ROOT, find_config
from emotrain.training.deepspeed_config import TrainConfig, deepspeed_config, read_deepspeed_json, use_bf16
from emotrain.training.optim import build_optimizer, optimizer_state_bytes, param_groups, warmup_cosine
from emotrain.signals import StopRequest
from emotrain.training.rng import capture_rng_state, restore_rng_state, seed_all

DS_CONFIGS = {"zero0": 0, "zero1": 1, "zero2": 2, "zero3": 3, "zero2_offload": 2}


def accel(**kw) -> AccelerateSettings:
    base = dict(use_deepspeed=True, deepspeed_config_file=None, mixed_precision=None, zero_stage=None,
                gradient_accumulation_steps=None, gradient_clipping=None, offload_optimizer_device=None,
                offload_param_device=None)
    return AccelerateSettings(**{**base, **kw})


def cfg(**kw) -> TrainConfig:
    return from_dict(TrainConfig, {"total_samples": 1000, **kw})


@pytest.mark.parametrize("bad", [
    {"global_batch_size": 30, "micro_batch_size": 8},
    {"zero_stage": 4},
    {"min_lr_ratio": 1.5},
    {"lr": 0.0},
    {"keep_checkpoints": 0},
    {"grad_clip": -1.0},
])
def test_train_config_rejects(bad: dict) -> None:
    with pytest.raises(ConfigError):
        cfg(**bad)


def test_steps_from_samples() -> None:
    c = cfg(total_samples=1000, global_batch_size=32, micro_batch_size=8, warmup_samples=100)
    assert (c.total_steps, c.warmup_steps) == (32, 4)
    assert c.accumulation_steps(1) == 4 and c.accumulation_steps(2) == 2 and c.accumulation_steps(4) == 1
    with pytest.raises(ConfigError, match="world size 3"):
        c.accumulation_steps(3)


@pytest.mark.parametrize("name,stage", DS_CONFIGS.items())
def test_shipped_deepspeed_configs(name: str, stage: int) -> None:
    raw = json.loads((CONFIG_ROOT / "deepspeed" / f"{name}.json").read_text())
    assert raw["zero_optimization"]["stage"] == stage
    assert raw["bf16"]["enabled"] is True and "gradient_clipping" in raw
    ds = deepspeed_config(cfg(deepspeed_config=f"configs/deepspeed/{name}.json", global_batch_size=32, micro_batch_size=4), 2)
    assert "train_batch_size" not in ds
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (4, 4)
    assert ds["data_types"]["grad_accum_dtype"] == ("bf16" if stage == 0 else "fp32")
    if name == "zero2_offload":
        assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu" and ds["zero_force_ds_cpu_optimizer"] is False


def test_deepspeed_config_takes_precision_and_clipping_from_train_config() -> None:
    ds = deepspeed_config(cfg(bf16=False, grad_clip=0.25, zero_stage=0), 1)
    assert ds["bf16"]["enabled"] is False and ds["data_types"]["grad_accum_dtype"] == "fp32"
    assert ds["gradient_clipping"] == 0.25 and ds["zero_optimization"]["stage"] == 0


@pytest.mark.parametrize("content,message", [
    ({"train_batch_size": 64}, "train_batch_size"),
    ({"optimizer": {"type": "Adam"}}, "optimizer"),
    ({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}, "zero_optimization.reduce_bucket_size"),
])
def test_deepspeed_json_rejects(tmp_path: Path, content: dict, message: str) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        read_deepspeed_json(str(path))


def test_accelerate_settings_win(tmp_path: Path) -> None:
    assert use_bf16(cfg(bf16=False), accel(mixed_precision="bf16")) is True  # the launch-time choice wins
    assert use_bf16(cfg(bf16=False), accel()) is False
    ds = deepspeed_config(cfg(bf16=True, zero_stage=1),
                          2, accel(deepspeed_config_file="configs/deepspeed/zero3.json", zero_stage=2, gradient_clipping=0.5,
                                   mixed_precision="bf16", offload_optimizer_device="cpu"))
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 100000  # from zero3.json
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True
    with pytest.raises(ConfigError, match="fp16"):
        use_bf16(cfg(), accel(mixed_precision="fp16"))
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=3"):
        deepspeed_config(cfg(global_batch_size=32, micro_batch_size=8), 2, accel(gradient_accumulation_steps=3))


def test_accelerate_yamls_load_in_accelerate() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    for name in ("single", "multi_process", "multi_node_deepspeed"):
        load_config_from_file(str(CONFIG_ROOT / "accelerate" / f"{name}.yaml"))
    multi_node = read_yaml(CONFIG_ROOT / "accelerate/multi_node_deepspeed.yaml")
    assert multi_node["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
    assert find_config(multi_node["deepspeed_config"]["deepspeed_config_file"]).is_file()


class Encoded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.text_encoder = nn.Linear(4, 4)
        self.audio_encoder = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_split_encoders_and_decay() -> None:
    model = Encoded()
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, encoder_lr=1e-5, weight_decay=0.1)}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {k: sorted(names[id(p)] for p in g["params"]) for k, g in groups.items()}
    assert members == {
        "encoder": ["text_encoder.weight"],
        "encoder_no_decay": ["audio_encoder.bias", "audio_encoder.weight", "text_encoder.bias"],
        "head": ["head.weight"],
        "head_no_decay": ["head.bias"],
    }
    assert groups["encoder"]["lr"] == 1e-5 and groups["head"]["lr"] == 1e-3
    assert groups["head"]["weight_decay"] == 0.1 and groups["head_no_decay"]["weight_decay"] == 0.0


def test_no_empty_groups() -> None:
    groups = param_groups(nn.Linear(3, 3), lr=1.0, encoder_lr=0.1, weight_decay=0.0)
    assert sorted(g["name"] for g in groups) == ["head", "head_no_decay"]


def test_warmup_cosine_shape() -> None:
    factor = warmup_cosine(warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == pytest.approx(1.0)
    after = [factor(s) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert factor(20) == pytest.approx(0.1) and factor(100) == pytest.approx(0.1)
    assert warmup_cosine(0, 10, 0.0)(0) == pytest.approx(1.0)


def test_scheduler_applies_per_group_rates() -> None:
    model = Encoded()
    optimizer, schedule = build_optimizer(model, lr=1e-3, encoder_lr=1e-5, weight_decay=0.0, warmup_steps=2,
                                          total_steps=10, min_lr_ratio=0.0)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["head"] == pytest.approx(5e-4) and lrs["encoder"] == pytest.approx(5e-6)
    optimizer.step()
    schedule.step()
    assert {g["name"]: g["lr"] for g in optimizer.param_groups}["head"] == pytest.approx(1e-3)
    # nothing of the schedule itself is saved: a resumed run follows its current config
    assert schedule.state_dict()["lr_lambdas"] == [None] * len(optimizer.param_groups)


def test_optimizer_state_bytes_counts_master_weights_and_moments() -> None:
    model = nn.Linear(10, 10)
    optimizer = torch.optim.AdamW(model.parameters())
    assert optimizer_state_bytes(optimizer) == 110 * 4
    model(torch.ones(1, 10)).sum().backward()
    optimizer.step()
    assert optimizer_state_bytes(optimizer) == 3 * 110 * 4 + 2 * 4  # + the two scalar step counters


def make_tag(root: Path, step: int, complete: bool) -> None:
    tag = root / checkpoint.tag_for(step)
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        (tag / checkpoint.COMPLETE).write_text("{}")


def test_newest_complete_tag_and_pruning(tmp_path: Path) -> None:
    root = checkpoint.checkpoint_dir(tmp_path)
    assert checkpoint.latest_complete_tag(root) is None
    for step, complete in [(10, True), (20, False), (30, True), (40, True), (100, True), (120, False)]:
        make_tag(root, step, complete)
    (root / "zero_to_fp32.py").write_text("")
    assert checkpoint.latest_complete_tag(root) == "step00000100"  # step 120 is half-written
    checkpoint.prune(root, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step00000040", "step00000100", "step00000120", "zero_to_fp32.py"]


def test_fp32_state_dict_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        fp32_state_dict(tmp_path)


def test_rng_state_round_trip(tmp_path: Path) -> None:
    seed_all(7, rank=1)
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    first = (random.random(), __import__("numpy").random.rand(), torch.rand(3).tolist())
    seed_all(8, rank=0)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), __import__("numpy").random.rand(), torch.rand(3).tolist()) == first


def test_ranks_draw_differently() -> None:
    seed_all(0, rank=0)
    a = torch.rand(4)
    seed_all(0, rank=1)
    assert not torch.equal(a, torch.rand(4))


def test_model_inputs_casts_only_floats_and_drops_keys_labels_counters() -> None:
    batch = {"keys": ["a", "b"], "audio": torch.zeros(2, 3), "ids": torch.ones(2, 3, dtype=torch.long),
             "mask": torch.ones(2, dtype=torch.bool), "labels": torch.tensor([0, 1]), "skipped": {"bad_clips": 0}}
    moved = model_inputs(batch, torch.device("cpu"), torch.bfloat16)
    assert moved["audio"].dtype == torch.bfloat16 and moved["ids"].dtype == torch.long and moved["mask"].dtype == torch.bool
    assert sorted(moved) == ["audio", "ids", "mask"]  # the model never receives keys, labels or counters


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signals_set_a_flag_and_restore_handlers(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal_name == sig.name
    assert signal.getsignal(sig) is before


def test_export_needs_a_run_folder_and_a_complete_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("train: {}\n")
    make_tag(checkpoint.checkpoint_dir(tmp_path), 8, complete=False)
    with pytest.raises(UserError, match="no complete checkpoint"):
        export_weights(tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="step00000008 is not a complete checkpoint"):
        export_weights(tmp_path, tmp_path / "out", tag="step00000008")
    with pytest.raises(UserError, match="config.yaml is missing"):
        export_weights(tmp_path / "nowhere", tmp_path / "out")
