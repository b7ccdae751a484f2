"""Training through a real SLURM (slurm/local/start.sh): sbatch, two nodes, requeue, submitit.

The jobs run slurm/train.sbatch and launch/submit.py exactly as a user would, with CPU-only
overrides on the command line (no GPUs on the test cluster) and model B's tiny config (the
fastest real model here: these tests are about the launch path, not the model).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import make_shards
from emotrain.data.splits import SplitRecipe
from slurm_util import (  # noqa: F401
    SlurmCluster,
    job_info,
    poll_until,
    release_requeued,
    requeue,
    sbatch,
    slurm,
    slurm_cluster,
    wait_job,
    wait_state,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
CPU_ONLY = ["--partition=debug", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10", f"--chdir={REPO}"]


@pytest.fixture(scope="module")
def shards(corpus13, tmp_path_factory):
    out = tmp_path_factory.mktemp("slurmshards") / "tiny"
    make_shards(corpus13, out, recipe=SplitRecipe(0.2, 0.2, seed=1), shard_mb=100.0, max_per_shard=2)
    return out


CONFIG = "configs/demo/video_text.yaml"
CPU_ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
# What a shell that ran torchrun (or a test that initialised in-process) leaves behind; a job
# submitted with it must still be numbered by SLURM.
STRAY_TORCH_ENV = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}


def overrides(shards: Path, steps: int, every: int = 5) -> list[str]:
    return [f"data.shards={shards}", f"train.total_samples={16 * steps}", f"train.checkpoint_every_steps={every}",
            "train.eval_every_steps=0", "train.log_every_steps=5", "data.num_workers=1"]


def job_env(shards: Path, run_dir: Path, steps: int) -> dict[str, str]:
    """What slurm/train.sbatch reads from the environment sbatch exports."""
    extra = " ".join(f"--set {o}" for o in overrides(shards, steps))
    return {"CONFIG": CONFIG, "RUN_DIR": str(run_dir), "PYTHON": sys.executable, "EXTRA": extra, **CPU_ENV}


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def test_sbatch_two_tasks_trains_and_checkpoints(slurm_cluster: SlurmCluster, shards, tmp_path):
    run_dir = tmp_path / "run"
    job = sbatch(REPO / "slurm" / "train.sbatch", options=[*CPU_ONLY, "--nodes=1", "--ntasks-per-node=2"],
                 env={**job_env(shards, run_dir, steps=10), **STRAY_TORCH_ENV}, cwd=tmp_path)
    result = wait_job(job, timeout=300)
    assert result.ok, result.describe()
    got = status(run_dir)
    assert (got["status"], got["step"], got["world_size"], got["launcher"]) == ("completed", 10, 2, "slurm")
    assert (run_dir / "checkpoints" / "step00000010").is_dir()


def test_two_nodes_train_with_world_size_two(slurm_cluster: SlurmCluster, shards, tmp_path):
    run_dir = tmp_path / "run"
    job = sbatch(REPO / "slurm" / "train.sbatch", options=[*CPU_ONLY, "--nodes=2", "--ntasks-per-node=1"],
                 env=job_env(shards, run_dir, steps=6), cwd=tmp_path)
    result = wait_job(job, timeout=300)
    assert result.ok, result.describe()
    got = status(run_dir)
    assert (got["status"], got["world_size"], got["num_nodes"]) == ("completed", 2, 2)


def test_requeue_mid_training_resumes_from_the_checkpoint(slurm_cluster: SlurmCluster, shards, tmp_path):
    run_dir = tmp_path / "run"
    steps = 80
    job = sbatch(REPO / "slurm" / "train.sbatch", options=[*CPU_ONLY, "--nodes=1", "--ntasks-per-node=2"],
                 env=job_env(shards, run_dir, steps=steps), cwd=tmp_path)
    ckpts = run_dir / "checkpoints"
    poll_until(lambda: ckpts.is_dir() and any(p.name.startswith("step") for p in ckpts.iterdir()), 240,
               "the first checkpoint")
    requeue(job.job_id)
    result = wait_job(job, timeout=400)
    assert result.ok, result.describe()
    assert result.restarts == 1
    got = status(run_dir)
    assert got["status"] == "completed" and got["step"] == steps
    assert 5 <= got["resumed_from"] < steps, got
    print(f"requeued job resumed from step {got['resumed_from']} of {steps}")


def submit(shards: Path, run_dir: Path, logs: Path, steps: int, wait: bool) -> subprocess.CompletedProcess:
    """launch/submit.py as a user runs it, 2 tasks on one node of the local cluster."""
    sets = [arg for o in overrides(shards, steps=steps) for arg in ("--set", o)]
    cmd = [sys.executable, str(REPO / "launch" / "submit.py"), "--cluster", "slurm", "--config", CONFIG,
           "--run-dir", str(run_dir), *sets, "--nodes", "1", "--tasks-per-node", "2", "--cpus-per-task", "1",
           "--partition", "debug", "--time", "10", "--logs", str(logs), *(["--wait"] if wait else [])]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **CPU_ENV, **STRAY_TORCH_ENV}, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_submitit_trains_two_tasks(slurm_cluster: SlurmCluster, shards, tmp_path):
    run_dir = tmp_path / "run"
    submit(shards, run_dir, tmp_path / "submitit", steps=6, wait=True)
    got = status(run_dir)
    assert (got["status"], got["step"], got["world_size"], got["launcher"]) == ("completed", 6, 2, "submitit")
    assert (run_dir / "checkpoints" / "step00000006").is_dir()


def test_submitit_preemption_checkpoints_requeues_and_resumes(slurm_cluster: SlurmCluster, shards, tmp_path):
    """SIGUSR2 (submitit's preemption signal) to the ranks: checkpoint, submitit requeues, resume."""
    run_dir, steps = tmp_path / "run", 80
    proc = submit(shards, run_dir, tmp_path / "submitit", steps=steps, wait=False)
    job_id = int(re.search(r"submitted job (\d+)", proc.stdout).group(1))
    ckpts = run_dir / "checkpoints"
    poll_until(lambda: ckpts.is_dir() and any(p.name.startswith("step") for p in ckpts.iterdir()), 240,
               "the first checkpoint")
    slurm("scancel", "--signal=USR2", str(job_id))
    release_requeued(job_id, timeout=120)
    wait_state(job_id, {"COMPLETED"}, timeout=400)
    assert int(job_info(job_id).get("Restarts", "0")) == 1
    got = status(run_dir)
    assert (got["status"], got["step"]) == ("completed", steps)
    assert 5 <= got["resumed_from"] < steps, got
    print(f"submitit job resumed from step {got['resumed_from']} of {steps}")
