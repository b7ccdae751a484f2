"""The real models through the real entry point: 2 CPU ranks, ZeRO-2, bf16, on synthetic shards.

Launchers: torchrun (model A; model B trains under torchrun in tests/test_demo.py), `accelerate
launch` and the deepspeed launcher (model B, the faster of the two on this CPU: what they test is
the launch path);
then `emotrain evaluate` on 2 ranks and `emotrain export` read the run back.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_engine_runs import BIN, REPO, TIMEOUT, child_env, scalars

from corpus import make_shards
from emotrain.data.splits import SplitRecipe
from emotrain.dist import free_port
from emotrain.predictions import load_predictions

pytestmark = pytest.mark.slow
STEPS = 30
OVERRIDES = [f"train.total_samples={16 * STEPS}", "train.lr=2e-3", "train.encoder_lr=2e-3", "train.warmup_samples=0",
             "train.checkpoint_every_steps=10", "train.eval_every_steps=15", "train.log_every_steps=5",
             "data.num_workers=1", "eval_batch_size=8",
             "data.audio.max_seconds=1.5"]  # the test corpus's clips are 0.5-1.5 s: no padding to 3 s


@pytest.fixture(scope="module")
def shards(corpus13, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainshards") / "tiny"
    make_shards(corpus13, out, recipe=SplitRecipe(0.2, 0.2, seed=1), shard_mb=100.0, max_per_shard=2)
    return out


def train_args(model: str, shards, run_dir) -> list[str]:
    args = [str(REPO / "launch" / "train.py"), str(REPO / "configs" / "demo" / f"{model}.yaml"), "--run-dir", str(run_dir),
            "--set", f"data.shards={shards}"]
    for item in OVERRIDES:
        args += ["--set", item]
    return args


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def assert_trained(run_dir) -> None:
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["status"], status["step"], status["total_steps"]) == ("completed", STEPS, STEPS)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step")) == \
        ["step00000020", "step00000030"]  # every 10 steps, keep the last 2
    losses = [v for _, v in scalars(run_dir)["train/loss"]]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    assert json.loads((run_dir / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 2


@pytest.fixture(scope="module")
def run_a(shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run_a")
    run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
         *train_args("audio_text", shards, run_dir)])
    return run_dir


def test_torchrun_trains_model_a(run_a):
    assert_trained(run_a)
    tags = scalars(run_a)
    assert {"val/accuracy", "val/macro_f1", "train/samples_per_s", "train/lr"} <= set(tags)


@pytest.mark.parametrize("launcher", ["accelerate", "deepspeed"])
def test_other_launchers_train_model_b(launcher, shards, tmp_path):
    port = str(free_port())
    if launcher == "accelerate":
        cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "configs/accelerate/multi_process.yaml"),
               "--main_process_port", port]
    else:
        cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", port]
    run(cmd + train_args("video_text", shards, tmp_path))
    assert_trained(tmp_path)


def test_evaluate_on_two_ranks_and_export(run_a, shards, tmp_path):
    run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "emotrain.cli", "evaluate", str(run_a), "--split", "val", "test", "--no-progress"])
    for split in ("val", "test"):
        manifest = json.loads((shards / split / "manifest.json").read_text())
        preds = load_predictions(run_a / "predictions" / f"{split}.npz")
        assert len(preds.keys) == manifest["labelled_turns"] > 0
    report = json.loads((run_a / "eval" / "test" / "report.json").read_text())
    assert report["checkpoint"] == "step00000030" and report["text_inputs"]["context_fields"] == ["context"]
    out = tmp_path / "export"
    run([sys.executable, "-m", "emotrain.cli", "export", str(run_a), "--out", str(out)])
    check = f"""
import torch
from safetensors.torch import load_file
from emotrain.run_config import load_run_config
from emotrain.models import build_model
from emotrain.data.schema import meta_vocab_sizes
import json
cfg = load_run_config({str(out / 'config.yaml')!r})
manifest = json.load(open({str(shards / 'train' / 'manifest.json')!r}))
model = build_model(cfg.model, 7, meta_vocab_sizes(manifest['vocab']), load_weights=False)
missing, unexpected = model.load_state_dict(load_file({str(out / 'model.safetensors')!r}), strict=True)
print('ok', len(model.state_dict()))
"""
    proc = run([sys.executable, "-c", check])
    assert proc.stdout.startswith("ok")
