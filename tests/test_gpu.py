"""On one CUDA GPU: the full-size models (random weights from the full configs) through the real entry points.

Every test here is marked ``gpu`` and skipped with "needs CUDA" where there is none;
``benchmarks/gpu_check.sh`` runs them (``pytest -m gpu``) with the throughput benchmarks and collects the
figures they record (tests/gpu_util.record) into its report. Each test states its tolerance. Runs are
short (two dozen optimizer steps on the synthetic corpus) so that the whole check fits in 8 minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gpu_util import REPO, full_size_run_yaml, record
from helpers import scalars

from corpus import make_shards
from emotrain.data.prepared import PreparedVideo
from emotrain.data.splits import SplitRecipe

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
KINDS = ["audio_text", "video_text"]
STEPS, TIMEOUT = 24, 420
# Short runs: 16 turns a step, 8 a micro-batch; a checkpoint every 8 steps; validation at 12 and 24.
OVERRIDES = [f"train.total_samples={16 * STEPS}", "train.global_batch_size=16", "train.micro_batch_size=8",
             "train.warmup_samples=0", "train.lr=1e-3", "train.checkpoint_every_steps=8", "train.keep_checkpoints=3",
             "train.eval_every_steps=12", "train.log_every_steps=2", "data.num_workers=4", "eval_batch_size=16"]


def gpu_env(**extra: str) -> dict[str, str]:
    """This environment for a child on the GPU: DeepSpeed's CUDA accelerator (tests/conftest.py sets the CPU
    one), no launcher variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "ACCELERATE_", "TORCHELASTIC_", "SUBMITIT_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "DS_ACCELERATOR": "cuda", "OMP_NUM_THREADS": "4", **extra}


@pytest.fixture(scope="module")
def gpu_shards(corpus13, tmp_path_factory) -> Path:
    """The synthetic corpus with train/val/test splits, video prepared at the full models' 224 px."""
    out = tmp_path_factory.mktemp("gpushards") / "prepared"
    make_shards(corpus13, out, recipe=SplitRecipe(0.2, 0.2, seed=1), shard_mb=100.0, max_per_shard=2,
                video=PreparedVideo(16, 224))
    return out


def train_cmd(config: Path, run_dir: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(REPO / "launch" / "train.py"), str(config), "--run-dir", str(run_dir)]
    for item in [*OVERRIDES, *extra]:
        cmd += ["--set", item]
    return cmd


def _worker_pids(launcher: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()]
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module", params=KINDS)
def trained(request, gpu_shards, tmp_path_factory) -> tuple[str, Path, dict]:
    """A full-size ZeRO-2 bf16 run on one GPU with NCCL, preempted (SIGTERM) after its step-8 checkpoint and
    relaunched to completion: the runs the next tests read."""
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"gpu_{kind}")
    config = full_size_run_yaml(kind, gpu_shards, tmp / "run.yaml")
    run_dir = tmp / "run"
    extra = ["data.video.jpeg_decode=device"] if kind == "video_text" else []
    started = time.monotonic()
    proc = subprocess.Popen(train_cmd(config, run_dir, *extra), env=gpu_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    marker = run_dir / "checkpoints" / "step00000008" / "COMPLETE"
    while not marker.exists():
        assert proc.poll() is None, f"training ended before its step-8 checkpoint:\n{proc.stderr.read()[-4000:]}"
        assert time.monotonic() - started < TIMEOUT, "no step-8 checkpoint in time"
        time.sleep(0.2)
    for pid in _worker_pids(proc.pid):
        os.kill(pid, signal.SIGTERM)
    stderr = proc.communicate(timeout=TIMEOUT)[1]
    assert proc.returncode == 0, stderr[-4000:]
    first = json.loads((run_dir / "status.json").read_text())
    again = subprocess.run(train_cmd(config, run_dir, *extra), env=gpu_env(), cwd=REPO, capture_output=True, text=True,
                           timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-4000:]
    record(f"gpu_train_{kind}", {"preempted_at": first["step"], "seconds": time.monotonic() - started})
    return kind, run_dir, first


def test_full_size_zero2_bf16_trains_checkpoints_and_resumes(trained) -> None:
    kind, run_dir, first = trained
    assert first["status"] == "preempted" and 8 <= first["step"] < STEPS
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["status"], status["step"]) == ("completed", STEPS)
    ds = json.loads((run_dir / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"]
    tags = {p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step")}
    assert {"step00000016", "step00000024"} <= tags
    curve = scalars(run_dir)["train/loss"]
    steps = [step for step, _ in curve]
    assert steps == list(range(2, STEPS + 1, 2)), steps  # the resumed run continued the curve, none doubled
    losses = [loss for _, loss in curve]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses  # 24 steps over a 13-conversation corpus: it learns


def _evaluate(run_dir: Path, env: dict[str, str], out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "emotrain.cli", "evaluate", str(run_dir), "--split", "val", "--last",
                           "--no-progress"], env=env, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(run_dir / "predictions" / "val.npz") as data:
        found = {name: data[name] for name in data.files}
    np.savez(out, **found)
    return found


def test_gpu_evaluation_equals_cpu_evaluation(trained, tmp_path: Path) -> None:
    """The same checkpoint scored on the GPU and on the CPU (both bf16, as trained; model B's JPEGs by nvJPEG
    and by libjpeg-turbo). Tolerance: softmax probabilities within 0.05 per turn and class, 0.01 on average;
    the predicted class the same for at least 90% of the turns (bf16 ties may flip)."""
    kind, run_dir, _ = trained
    gpu = _evaluate(run_dir, gpu_env(), tmp_path / "gpu.npz")
    cpu = _evaluate(run_dir, gpu_env(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu"), tmp_path / "cpu.npz")
    assert list(gpu["keys"]) == list(cpu["keys"]) and len(gpu["keys"]) > 0
    p_gpu = torch.softmax(torch.from_numpy(gpu["logits"]), -1)
    p_cpu = torch.softmax(torch.from_numpy(cpu["logits"]), -1)
    diff = (p_gpu - p_cpu).abs()
    agree = float((p_gpu.argmax(-1) == p_cpu.argmax(-1)).float().mean())
    record(f"gpu_vs_cpu_eval_{kind}", {"max_abs_prob_diff": float(diff.max()), "mean_abs_prob_diff": float(diff.mean()),
                                       "argmax_agreement": agree, "turns": len(gpu["keys"])})
    assert float(diff.max()) <= 0.05 and float(diff.mean()) <= 0.01 and agree >= 0.9


def test_cpu_conv_swap_is_inactive_on_cuda(monkeypatch) -> None:
    """Model A's Wav2Vec2 convolutions in bf16 on the GPU run as bf16 convolutions: the float32 detour
    (emotrain.models.cpu_convs) is for CPUs only."""
    from gpu_util import probe_model, step_memory

    from emotrain.config import load_config
    from emotrain.models import ModelConfig
    from emotrain.models import cpu_convs
    from emotrain.models.random_init import random_weights

    decided = []
    original = cpu_convs._bf16_on_cpu
    monkeypatch.setattr(cpu_convs, "_bf16_on_cpu", lambda x: decided.append(original(x)) or decided[-1])
    seen = []
    model = probe_model(random_weights(load_config(ModelConfig, REPO / "configs/model/audio_text.yaml")), torch.device("cuda"))
    convs = [m for m in model.modules() if isinstance(m, cpu_convs.Float32OnCpu)]
    assert convs, "the model has no swappable convolutions"
    for conv in convs:
        conv.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
    step_memory(model, "audio_text", 2, torch.device("cuda"))
    assert decided and not any(decided)
    assert seen and all(dtypes == (torch.bfloat16, torch.bfloat16) for dtypes in seen)


def test_nvjpeg_decode_matches_libjpeg_and_batches_are_pinned(gpu_shards) -> None:
    """``jpeg_decode: device`` on CUDA decodes with nvJPEG; libjpeg-turbo's pixels within 2 levels on average
    (IDCT and upsampling differ). On CUDA the loader's batches come in pinned memory."""
    from dataclasses import replace

    from helpers import data_config

    from emotrain.data.media import VideoConfig
    from emotrain.data.prepared import decode_on_device
    from emotrain.data.stream import Modalities, build_loader

    cfg = replace(data_config(gpu_shards), video=VideoConfig(num_frames=8, image_size=224, jpeg_decode="device"))
    loader, _ = build_loader(cfg, "train", Modalities(audio=False, video=True), 4, train=False)
    batches = [b for _, b in zip(range(3), loader)]
    for batch in batches:
        assert batch["video_jpeg"].is_pinned() and batch["labels"].is_pinned()
        args = (batch["video_jpeg"], batch["video_jpeg_sizes"], batch["video_jpeg_side"])
        on_gpu = decode_on_device(*args, torch.device("cuda"))
        on_cpu = decode_on_device(*args, torch.device("cpu"))
        assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.uint8 and on_gpu.shape == on_cpu.shape
        diff = (on_gpu.cpu().int() - on_cpu.int()).abs().float()
        assert float(diff.mean()) < 2.0, float(diff.mean())
    record("nvjpeg_vs_libjpeg", {"mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max())})


@pytest.mark.parametrize("kind", KINDS)
def test_rtx3060_config_trains_under_12_gb(kind: str, gpu_shards, tmp_path: Path) -> None:
    """configs/rtx3060 (ZeRO-2, optimizer offloaded, micro-batch 2, gradient checkpointing) under a 12 GiB cap:
    four optimizer steps (64 micro-batches: steady state) without running out of memory; peak allocated and
    reserved memory and the largest micro-batch that fits are reported."""
    config = full_size_run_yaml(kind, gpu_shards, tmp_path / "run.yaml", variant="rtx3060")
    report = tmp_path / "memory.json"
    cmd = [sys.executable, str(REPO / "tests" / "gpu_capped_train.py"), "--cap-gib", "12", "--report", str(report),
           "--", str(config), "--run-dir", str(tmp_path / "run"), "--set", "train.total_samples=128",
           "--set", "train.checkpoint_every_steps=0", "--set", "train.eval_every_steps=0", "--set", "data.num_workers=4"]
    proc = subprocess.run(cmd, env=gpu_env(), cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = json.loads(report.read_text())
    record(f"rtx3060_{kind}", found)
    assert found["exit_code"] == 0 and found["train_peak_reserved_gib"] <= 12.0
    assert found["largest_micro_batch"] >= found["micro_batch_size"], found
