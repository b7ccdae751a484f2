"""The GPU kit's CPU side: what the GPU tests build (tests/gpu_util.py) with tiny configs, random-weight full
configs, and that `pytest -m gpu` skips every GPU test with "needs CUDA" on a machine without one."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from gpu_util import REPO, full_size_run_yaml, largest_micro_batch

from emotrain.config import load_config
from emotrain.models import ModelConfig
from emotrain.models.flops import training_flops_per_turn
from emotrain.models.random_init import random_weights
from emotrain.training.run_config import load_run_config


@pytest.mark.parametrize("kind", ["audio_text", "video_text"])
def test_random_weights_keep_the_architecture_and_what_trains(kind: str) -> None:
    full = load_config(ModelConfig, REPO / f"configs/model/{kind}.yaml")
    rand = random_weights(full)
    assert full.text.pretrained is not None and rand.text.pretrained is None
    assert rand.text.freeze_layers == 6  # as pretrained BERT is frozen, not as a random one (0)
    if kind == "audio_text":
        assert rand.audio.pretrained is None and rand.audio.freeze_feature_encoder is True
    assert training_flops_per_turn(rand).gflop() == training_flops_per_turn(full).gflop()


@pytest.mark.parametrize("variant", ["train", "rtx3060"])
@pytest.mark.parametrize("kind", ["audio_text", "video_text"])
def test_full_size_run_yaml_loads_offline(kind: str, variant: str, tmp_path) -> None:
    path = full_size_run_yaml(kind, tmp_path / "shards", tmp_path / "run.yaml", variant=variant)
    cfg = load_run_config(path)
    assert cfg.data.shards == str(tmp_path / "shards") and cfg.data.text.tokenizer.endswith("tiny-wordpiece")
    assert cfg.model.text.pretrained is None and cfg.model.kind == kind
    original = load_run_config(REPO / "configs" / variant / f"{kind}.yaml")
    assert cfg.train == original.train and cfg.model.text.gradient_checkpointing == original.model.text.gradient_checkpointing


@pytest.mark.parametrize("kind", ["audio_text", "video_text"])
def test_micro_batch_probe_on_the_cpu_with_a_tiny_model(kind: str) -> None:
    cfg = load_config(ModelConfig, REPO / f"configs/model/{kind}_tiny.yaml")
    fits, tried = largest_micro_batch(cfg, torch.device("cpu"), [1, 2])
    assert fits == 2 and tried == {1: {"allocated_gib": 0.0, "reserved_gib": 0.0}, 2: {"allocated_gib": 0.0, "reserved_gib": 0.0}}


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skips of a machine without CUDA")
def test_gpu_tests_skip_with_needs_cuda_without_a_gpu() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                           str(REPO / "tests" / "test_gpu.py")], cwd=REPO, capture_output=True, text=True, timeout=300)
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and "skipped" in summary and "passed" not in summary and "failed" not in summary, proc.stdout
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips and all("needs CUDA" in line for line in skips), proc.stdout


def test_bf16_peaks_by_device_name() -> None:
    from emotrain.models.flops import bf16_peak_flops

    assert bf16_peak_flops("NVIDIA H200") == 989e12 and bf16_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert bf16_peak_flops("NVIDIA GeForce RTX 3060") == 25e12 and bf16_peak_flops("Some Other GPU") is None


def test_workload_counts_clips_left_as_jpeg() -> None:
    from emotrain.models.example_batch import example_batch
    from emotrain.models.flops import TurnWorkload

    batch = example_batch("video_text", [0, 1], frames=4, image=32)
    undecoded = {k: v for k, v in batch.items() if k != "video"} | {"video_jpeg": torch.zeros(1, dtype=torch.uint8)}
    assert TurnWorkload.from_batch(undecoded).video_clips == TurnWorkload.from_batch(batch).video_clips == 1
