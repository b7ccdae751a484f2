"""The engine end to end: 2 CPU ranks (gloo) of tests/toy_train.py under torchrun, accelerate and the
deepspeed launcher; kill -9 and resume; SIGTERM; non-finite losses; zero_to_fp32 and export; ZeRO memory.

Every run is a real multi-process job, so these are marked slow (about 10-20 s each here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    BIN,
    REFERENCE,
    REPO,
    TIMEOUT,
    TOY,
    child_env,
    children,
    kill9_tree,
    losses,
    result_of,
    run,
    scalars,
    toy_args,
    torchrun,
    wait_for,
)
from toy_train import ToyModel

from emotrain.training import checkpoint
from emotrain.training.distributed import free_port

pytestmark = pytest.mark.slow


def rank_pid(launcher_pid: int, rank: int) -> int:
    """The worker process of ``rank`` among the launcher's children (read from /proc)."""
    for pid in children(launcher_pid):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no rank {rank} among the children of {launcher_pid}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted 2-rank ZeRO-2 bf16 run under torchrun; several tests read it."""
    run_dir = tmp_path_factory.mktemp("reference")
    proc = run(torchrun(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, result_of(run_dir, proc)


def test_torchrun_zero2_bf16_learns_and_checkpoints(reference: tuple[Path, dict]) -> None:
    run_dir, result = reference
    assert (result["launcher"], result["world_size"], result["stop_reason"], result["step"]) == ("torchrun", 2, "completed", 16)
    curve = [loss for _, loss in result["losses"]]
    assert sum(curve[-4:]) / 4 < 0.75 * sum(curve[:4]) / 4, curve
    assert result["evaluations"]["16"]["val/accuracy"] > 3 / 7, result["evaluations"]  # chance is 1/7
    ds = json.loads((run_dir / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] and ds["gradient_accumulation_steps"] == 2
    assert "train_batch_size" not in ds
    ckpts = checkpoint.checkpoint_dir(run_dir)
    assert checkpoint.complete_tags(ckpts) == ["step00000012", "step00000016"]  # keep_checkpoints=2
    assert (ckpts / "latest").read_text() == "step00000016"
    assert sorted(p.name for p in (ckpts / "step00000016").glob("rng_rank*.pt")) == ["rng_rank00000.pt", "rng_rank00001.pt"]
    assert json.loads((run_dir / "versions.json").read_text())["packages"]["deepspeed"]


def test_tensorboard_scalars(reference: tuple[Path, dict]) -> None:
    run_dir, result = reference
    found = scalars(run_dir)
    for tag in ("train/loss", "train/lr", "train/lr_encoder", "train/grad_norm", "train/samples_per_s",
                "train/data_wait_share", "train/skipped_samples", "train/nonfinite_steps", "val/accuracy"):
        assert tag in found, sorted(found)
    assert [step for step, _ in found["train/loss"]] == list(range(2, 17, 2))
    assert found["train/skipped_samples"][-1][1] == 1  # toy ranks report 0 and 1: summed over ranks
    assert all(0 <= share <= 1 for _, share in found["train/data_wait_share"])
    lrs = [lr for _, lr in found["train/lr"]]
    assert lrs[-1] < lrs[0] and found["train/lr_encoder"][0][1] < lrs[0]


def test_kill9_then_resume_matches_uninterrupted(reference: tuple[Path, dict], tmp_path: Path) -> None:
    ref_dir, ref = reference
    proc = subprocess.Popen(torchrun(tmp_path, "--delay", "0.2"), env=child_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(checkpoint.checkpoint_dir(tmp_path) / "step00000008" / checkpoint.COMPLETE, proc)
    finally:
        kill9_tree(proc.pid)
        proc.wait()
    assert not (tmp_path / "result.json").exists()
    killed_at = checkpoint.latest_complete_tag(checkpoint.checkpoint_dir(tmp_path))
    assert killed_at in ("step00000008", "step00000012")

    again = run(torchrun(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    result = result_of(tmp_path, again)
    assert result["resumed_from"] == int(killed_at[4:]) and result["step"] == 16 and result["stop_reason"] == "completed"
    resumed, uninterrupted = losses(result), losses(ref)
    assert sorted(resumed) == list(range(result["resumed_from"] + 1, 17))
    for step, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted[step], rel=1e-5), (step, resumed, uninterrupted)
    tb_steps = [step for step, _ in scalars(tmp_path)["train/loss"]]
    assert tb_steps == list(range(2, 17, 2))  # the killed run's later events were purged, none doubled


def test_sigterm_on_one_rank_checkpoints_everywhere_and_exits_0(tmp_path: Path) -> None:
    proc = subprocess.Popen(torchrun(tmp_path, "--delay", "0.2"), env=child_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(checkpoint.checkpoint_dir(tmp_path) / "step00000004" / checkpoint.COMPLETE, proc)
        os.kill(rank_pid(proc.pid, rank=1), signal.SIGTERM)  # only rank 1 hears it, as when one node is preempted
        stderr = proc.communicate(timeout=TIMEOUT)[1]
    finally:
        if proc.poll() is None:
            kill9_tree(proc.pid)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    result = result_of(tmp_path)
    assert result["stop_reason"] == "preempted" and result["exit_code"] == 0
    assert 4 <= result["step"] < 16
    tag = checkpoint.tag_for(result["step"])
    assert checkpoint.latest_complete_tag(checkpoint.checkpoint_dir(tmp_path)) == tag
    assert (checkpoint.checkpoint_dir(tmp_path) / "latest").read_text() == tag


def test_nonfinite_losses_are_skipped_together_then_stop(tmp_path: Path) -> None:
    """NaNs on rank 1 only: both ranks skip the optimizer step they fall in; 3 skipped steps in a row stop the
    run with a checkpoint."""
    proc = run(torchrun(tmp_path, "--nan-at", "3,9,11,13", train=REFERENCE + ["max_consecutive_nonfinite=3"]))
    result = result_of(tmp_path, proc)
    assert proc.returncode != 0
    assert (result["stop_reason"], result["exit_code"], result["nonfinite"]) == ("nonfinite", 3, 4)
    # Steps of 2 micro-batches: (0,1) step 1, (2,3) skipped, (4,5) step 2, (6,7) step 3, then (8,9), (10,11),
    # (12,13) skipped in a row.
    assert result["step"] == 3 and sorted(losses(result)) == [1, 2, 3]
    assert "3 non-finite losses in a row" in proc.stderr
    assert checkpoint.latest_complete_tag(checkpoint.checkpoint_dir(tmp_path)) == "step00000003"


def test_engine_syncs_once_per_optimizer_step(tmp_path: Path) -> None:
    """The engine's own collectives and host reads (tests/sync_counter.py), per rank, over 8 steps of 3
    micro-batches logged every 4: one all-reduce and one read of it per step (the loader counters ride along on
    logging steps); logging may read the grad norm. Per micro-batch syncs made this 26 collectives and 76 reads."""
    counts = tmp_path / "syncs.json"
    train = ["total_samples=384", "global_batch_size=48", "micro_batch_size=8", "checkpoint_every_steps=0",
             "eval_every_steps=0", "log_every_steps=4"]
    proc = run(torchrun(tmp_path, "--count-syncs", str(counts), train=train))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        found = json.loads(counts.with_suffix(f".rank{rank}.json").read_text())
        print(f"rank {rank}: {found}")
        assert found["steps"] == 8
        assert found["collectives"] == 8 and found["collectives:all_reduce"] == 8, found
        assert 8 <= found["host_reads"] <= 8 + 2, found  # + the grad norm at the 2 logging steps
    assert [step for step, _ in scalars(tmp_path)["train/skipped_samples"]] == [4, 8]


@pytest.mark.parametrize("launcher", ["accelerate", "deepspeed"])
def test_other_launchers_train_identically(reference: tuple[Path, dict], tmp_path: Path, launcher: str) -> None:
    port = str(free_port())
    if launcher == "accelerate":
        cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "configs/accelerate/multi_process.yaml"),
               "--main_process_port", port, *toy_args(tmp_path)]
    else:  # passes --local_rank=N to the script, which must accept it
        cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", port, *toy_args(tmp_path)]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = result_of(tmp_path, proc)
    assert (result["launcher"], result["world_size"], result["step"]) == (launcher, 2, 16)
    ref = losses(reference[1])
    for step, loss in losses(result).items():
        assert loss == pytest.approx(ref[step], rel=1e-3), step


def test_accelerate_multi_node_deepspeed_config_is_honoured(tmp_path: Path) -> None:
    """Two `accelerate launch` "nodes" on this machine; the DeepSpeed file accelerate names (ZeRO-2) wins over
    the train config's zero0.json."""
    port = str(free_port())
    train = REFERENCE + ["deepspeed_config=configs/deepspeed/zero0.json", "total_samples=256"]
    procs = [
        subprocess.Popen([str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "configs/accelerate/multi_node_deepspeed.yaml"),
                          "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(node),
                          "--main_process_ip", "127.0.0.1", "--main_process_port", port, *toy_args(tmp_path, train=train)],
                         env=child_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for node in (0, 1)
    ]
    errors = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    result = result_of(tmp_path)
    assert (result["launcher"], result["world_size"], result["num_nodes"], result["step"]) == ("accelerate", 2, 2, 8)
    assert json.loads((tmp_path / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 2


def test_zero_to_fp32_and_export_load_without_deepspeed(reference: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = reference
    ckpts = checkpoint.checkpoint_dir(run_dir)
    converted = subprocess.run([sys.executable, "zero_to_fp32.py", ".", str(tmp_path / "z2f")], cwd=ckpts,
                               env=child_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert converted.returncode == 0, converted.stderr[-2000:]
    exported = subprocess.run([sys.executable, "-m", "emotrain.cli", "export", str(run_dir), "--out", str(tmp_path / "export")],
                              cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "export" / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()
    check = f"""
import sys, torch
sys.path.insert(0, {str(TOY.parent)!r})
from safetensors.torch import load_file
from toy_train import ToyModel
ds = torch.load({str(tmp_path / 'z2f' / 'pytorch_model.bin')!r}, weights_only=True)
ex = load_file({str(tmp_path / 'export' / 'model.safetensors')!r})
for weights in (ds, ex):
    ToyModel().load_state_dict(weights, strict=True)
assert ds.keys() == ex.keys() and all(torch.equal(ds[k].float(), ex[k]) for k in ds)
assert all(t.dtype == torch.float32 for t in ex.values())
assert "deepspeed" not in sys.modules, "loading the export must not need DeepSpeed"
print("ok", len(ex))
"""
    loaded = subprocess.run([sys.executable, "-c", check], env=child_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert loaded.returncode == 0 and loaded.stdout.startswith("ok"), loaded.stderr[-2000:]


@pytest.fixture(scope="module")
def zero_run(tmp_path_factory: pytest.TempPathFactory):
    """``zero_run(stage)``: a 2-rank bf16 toy engine at that ZeRO stage after three steps and a checkpoint, run
    once per stage: (run folder, the optimizer's fp32 master weights, the optimizer's bytes on each rank)."""
    runs: dict[int, tuple[Path, Path, list[int]]] = {}

    def get(stage: int) -> tuple[Path, Path, list[int]]:
        if stage not in runs:
            root = tmp_path_factory.mktemp(f"zero{stage}")
            run_dir, masters_file = root / "run", root / "masters.safetensors"
            train = ["global_batch_size=32", "micro_batch_size=8", f"zero_stage={stage}"]
            proc = run(torchrun(run_dir, "--dump-fp32", str(masters_file), train=train))
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[stage] = run_dir, masters_file, result_of(run_dir, proc)["optimizer_bytes"]
        return runs[stage]

    return get


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_export_holds_the_fp32_master_weights_at_every_zero_stage(stage: int, zero_run, tmp_path: Path) -> None:
    """bf16 training on 2 ranks: the export equals the optimizer's fp32 masters bit for bit, not the bf16 module.

    ZeRO-0 and ZeRO-1 in bf16 keep their masters where DeepSpeed's ``zero_to_fp32`` does not look;
    an export that upcasts the module differs from them by up to ~1e-2 after three steps."""
    from safetensors.torch import load_file

    from emotrain.evaluation.export import export_weights

    run_dir, masters_file, _ = zero_run(stage)
    masters = load_file(str(masters_file))
    exported = load_file(str(export_weights(run_dir, tmp_path / "export")))
    assert exported.keys() == masters.keys()
    assert all(exported[name].dtype == torch.float32 for name in exported)
    differing = [name for name in masters if not torch.equal(exported[name], masters[name])]
    assert not differing, f"ZeRO-{stage}: export differs from the fp32 masters in {differing}"
    module = torch.load(next((run_dir / "checkpoints" / "step00000003").glob("*model_states.pt")), map_location="cpu",
                        weights_only=True)["module"] if stage < 3 else None
    if module is not None:  # the masters really are more than the upcast bf16 module
        assert any(not torch.equal(module[name].float(), masters[name]) for name in masters)


def test_zero2_optimizer_state_per_rank_is_at_most_0_6_of_stage_0(zero_run) -> None:
    """Measured on the export test's runs (the same engine after three steps: Adam's moments exist)."""
    measured = {stage: zero_run(stage)[2] for stage in (0, 2)}
    print(f"optimizer bytes per rank: ZeRO-0 {measured[0]}, ZeRO-2 {measured[2]}")
    n_params = sum(p.numel() for p in ToyModel().parameters())
    assert all(b >= 12 * n_params for b in measured[0])  # fp32 master + two Adam moments, unsharded
    for zero0, zero2 in zip(measured[0], measured[2]):
        assert zero2 <= 0.6 * zero0, measured
