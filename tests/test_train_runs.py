"""The real models through the real entry point: 2 CPU ranks, ZeRO-2, bf16, on synthetic shards.

Launcher: the deepspeed launcher (model B, the faster of the two on this CPU: what it tests is the
launch path; `accelerate launch` runs the toy in test_engine_runs). Both models train under
torchrun, are evaluated on 2 ranks and exported in tests/test_demo.py.
"""

from __future__ import annotations

import json
import subprocess

import torch

import pytest
from helpers import BIN, REPO, TIMEOUT, child_env, descendants, kill9_tree, scalars, wait_for

from corpus import make_shards
from emotrain.data.splits import SplitRecipe
from emotrain.training.distributed import free_port

pytestmark = pytest.mark.slow
STEPS = 30
OVERRIDES = [f"train.total_samples={16 * STEPS}", "train.lr=2e-3", "train.encoder_lr=2e-3", "train.warmup_samples=0",
             "train.checkpoint_every_steps=10", "train.eval_every_steps=15", "train.log_every_steps=5",
             "data.num_workers=1", "eval_batch_size=8"]


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
    tags = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step"))
    best = f"step{status['best_step']:08d}"  # validation at steps 15 and 30: the better one is kept as well
    assert status["best_step"] in (15, 30) and status["best_metric"] == "val/macro_f1"
    assert tags == sorted({"step00000020", "step00000030", best})  # every 10 steps, keep the last 2, and the best
    assert (run_dir / "checkpoints" / "best").read_text() == best
    losses = [v for _, v in scalars(run_dir)["train/loss"]]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    assert json.loads((run_dir / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 2


def test_the_deepspeed_launcher_trains_model_b_and_evaluate_defaults_to_the_best_checkpoint(shards, tmp_path):
    """launch/train.py under the deepspeed launcher (which appends --local_rank). `accelerate launch` of
    the same script is the torchrun path with accelerate's variables: test_engine_runs'
    test_other_launchers_train_identically[accelerate] runs it (launcher, world size, same losses)."""
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
    run(cmd + train_args("video_text", shards, tmp_path))
    assert_trained(tmp_path)
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["launcher"], status["world_size"]) == ("deepspeed", 2)
    run([str(BIN / "emotrain"), "evaluate", str(tmp_path), "--split", "val", "--no-progress"])
    report = json.loads((tmp_path / "eval" / "val" / "report.json").read_text())
    assert (report["checkpoint"], report["checkpoint_kind"]) == (f"step{status['best_step']:08d}", "best")
    run([str(BIN / "emotrain"), "evaluate", str(tmp_path), "--split", "val", "--no-progress", "--last"])
    report = json.loads((tmp_path / "eval" / "val" / "report.json").read_text())
    assert (report["checkpoint"], report["checkpoint_kind"]) == ("step00000030", "last")


def test_turns_last_trains_evaluates_and_fuses(shards, tmp_path):
    """One process per step: each model trains and is scored on the last turn of each conversation only."""
    last = ["data.turns=last", "train.total_samples=64", "train.checkpoint_every_steps=4", "train.eval_every_steps=4"]
    for model in ("audio_text", "video_text"):
        cmd = [str(BIN / "emotrain"), "train", f"demo/{model}", "--run-dir", str(tmp_path / model),
               "--set", f"data.shards={shards}", *[arg for item in [*OVERRIDES, *last] for arg in ("--set", item)]]
        run(cmd)
        run([str(BIN / "emotrain"), "evaluate", str(tmp_path / model), "--split", "val", "test", "--no-progress"])
        for split in ("val", "test"):
            manifest = json.loads((shards / split / "manifest.json").read_text())
            report = json.loads((tmp_path / model / "eval" / split / "report.json").read_text())
            assert report["splits"][split]["n"] == manifest["labelled_last_turns"] < manifest["labelled_turns"]
    fused = run([str(BIN / "emotrain"), "fuse", "--audio", str(tmp_path / "audio_text"), "--video",
                 str(tmp_path / "video_text"), "--config", "fusion/quick", "--out", str(tmp_path / "fusion"),
                 # one labelled last turn in this tiny val split: too few for the cross-validated strategies
                 "--set", "strategies=[mean, weighted, confidence_maxprob]"])
    summary = json.loads((tmp_path / "fusion" / "fusion.json").read_text())
    assert summary["counts"]["test"]["both"] == json.loads((shards / "test" / "manifest.json").read_text())["labelled_last_turns"]
    assert "Late fusion" in fused.stdout


def test_same_config_and_seed_give_the_same_loss_curve(shards, tmp_path):
    """The real loader (1 worker, shuffle buffer on) and model B on one rank: two runs, identical per-step losses.
    At 2 ranks x 2 workers, the kill -9 test below compares a fresh run's steps 1-8 with another fresh run's, bitwise."""
    curves = []
    for attempt in ("a", "b"):
        run_dir = tmp_path / attempt
        args = train_args("video_text", shards, run_dir) + ["--set", "train.log_every_steps=1",
                                                           "--set", "train.total_samples=160", "--set", "data.shuffle_buffer=16"]
        run([str(BIN / "torchrun"), "--nproc_per_node", "1", "--master_port", str(free_port()), *args])
        curves.append(scalars(run_dir)["train/loss"])
    assert len(curves[0]) == 10 and curves[0] == curves[1]


def test_kill9_and_resume_continue_the_real_stream_exactly(shards, tmp_path):
    """2 ranks x 2 loader workers, model B: killed with -9 after the step-8 checkpoint, resumed; the
    per-step losses equal an uninterrupted run's (bitwise: same batches, same crops, same RNG). Steps 1-8
    come from the killed run's first launch, a fresh run: so two fresh 2-rank runs of one config and seed
    give the same loss curve too."""
    exact = ["--set", "train.log_every_steps=1", "--set", "train.total_samples=192", "--set", "data.num_workers=2",
             "--set", "train.checkpoint_every_steps=4", "--set", "train.eval_every_steps=0", "--set", "data.shuffle_buffer=8"]

    def launch(run_dir):
        return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                *train_args("video_text", shards, run_dir), *exact]

    run(launch(tmp_path / "whole"))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(launch(killed), env=child_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(killed / "checkpoints" / "step00000008" / "complete", proc, timeout=TIMEOUT)
    finally:
        kill9_tree(proc.pid)
        proc.wait()
    assert not (killed / "status.json").exists()  # it really died mid-run
    resumed = run(launch(killed))
    assert "resumed from step 8" in resumed.stdout
    whole, again = scalars(tmp_path / "whole")["train/loss"], scalars(killed)["train/loss"]
    assert [s for s, _ in whole] == list(range(1, 13)) and [s for s, _ in again] == list(range(1, 13))
    assert max(abs(a - b) for (_, a), (_, b) in zip(whole, again)) == 0.0, str([(s, round(a - b, 6)) for (s, a), (_, b) in zip(whole, again)])


@pytest.mark.parametrize("who", ["ranks_and_their_helpers", "torchrun_too"])
def test_sigterm_to_every_process_of_the_step_still_checkpoints(who, shards, tmp_path):
    """What slurmstepd does at preemption, scancel or a time limit: SIGTERM to every process, loader
    workers and the fork server included (2 ranks x 2 workers, model B)."""
    import os
    import signal

    # 16 micro-batches per step and rank: more than the workers hold prefetched (2 x 4), so the step
    # after the signal needs live workers.
    args = train_args("video_text", shards, tmp_path) + [
        "--set", "train.total_samples=16000", "--set", "train.global_batch_size=256", "--set", "data.num_workers=2",
        "--set", "train.eval_every_steps=0", "--set", "train.checkpoint_every_steps=2", "--set", "train.warmup_samples=0"]
    proc = subprocess.Popen([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), *args],
                            env=child_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "checkpoints" / "step00000002" / "complete", proc, timeout=TIMEOUT)
    victims = descendants(proc.pid) + ([proc.pid] if who == "torchrun_too" else [])
    assert len(victims) >= 2 + 2 * 2 + 1  # 2 ranks, their 4 workers, at least one fork server
    for pid in victims:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    _, stderr = proc.communicate(timeout=TIMEOUT)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "preempted", stderr[-3000:]
    assert (tmp_path / "checkpoints" / f"step{status['step']:08d}" / "complete").is_file()
    assert status["step"] > 2 and "exited unexpectedly" not in stderr
    if who == "ranks_and_their_helpers":
        assert proc.returncode == 0, stderr[-3000:]


def test_a_run_continues_on_another_world_size_from_its_weights(shards, tmp_path):
    """Resuming 1-rank checkpoints on 2 ranks is refused with the way out; train.init_from takes it."""
    one = ["--set", "train.total_samples=32", "--set", "train.global_batch_size=16", "--set", "train.checkpoint_every_steps=2"]
    run([str(BIN / "emotrain"), "train", *train_args("video_text", shards, tmp_path / "one")[1:], *one])
    two = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())]
    refused = subprocess.run([*two, *train_args("video_text", shards, tmp_path / "one"), *one], env=child_env(),
                             cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert refused.returncode != 0 and f"train.init_from={tmp_path / 'one'}" in refused.stderr
    # a learning rate too small to move the weights: the new run's weights must be the old run's
    frozen = ["--set", "train.lr=1e-12", "--set", "train.encoder_lr=1e-12", "--set", "train.warmup_samples=0"]
    started = run([*two, *train_args("video_text", shards, tmp_path / "two"), *one, *frozen,
                   "--set", f"train.init_from={tmp_path / 'one'}"])
    assert f"initialised from {tmp_path / 'one'}" in started.stdout
    assert json.loads((tmp_path / "two" / "status.json").read_text())["world_size"] == 2
    from emotrain.training.master_weights import fp32_state_dict

    old, new = fp32_state_dict(tmp_path / "one"), fp32_state_dict(tmp_path / "two")
    assert old.keys() == new.keys()
    # DeepSpeed's bf16 engine builds its fp32 master weights from the bf16 module: the new run starts
    # from the old weights rounded to bf16
    assert all(torch.allclose(old[k].bfloat16().float(), new[k], atol=1e-6) for k in old if old[k].is_floating_point())
