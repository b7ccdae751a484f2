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
# A progress line every second in the job's .out (its output is a file, not a terminal): the scancel test
# reads from it how far the run got.
CPU_ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "EMOTRAIN_PROGRESS_EVERY": "1"}
# What a shell that ran torchrun (or a test that initialised in-process) leaves behind; a job
# submitted with it must still be numbered by SLURM.
STRAY_TORCH_ENV = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}


def overrides(shards: Path, steps: int, every: int = 5) -> list[str]:
    return [f"data.shards={shards}", f"train.total_samples={16 * steps}", f"train.checkpoint_every_steps={every}",
            "train.eval_every_steps=0", "train.log_every_steps=5", "data.num_workers=1"]


def job_env(shards: Path, run_dir: Path, steps: int, every: int = 5) -> dict[str, str]:
    """What slurm/train.sbatch reads from the environment sbatch exports."""
    extra = " ".join(f"--set {o}" for o in overrides(shards, steps, every))
    return {"CONFIG": CONFIG, "RUN_DIR": str(run_dir), "PYTHON": sys.executable, "EXTRA": extra, **CPU_ENV}


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def test_two_nodes_train_with_world_size_two(slurm_cluster: SlurmCluster, shards, tmp_path):
    run_dir = tmp_path / "run"
    job = sbatch(REPO / "slurm" / "train.sbatch", options=[*CPU_ONLY, "--nodes=2", "--ntasks-per-node=1"],
                 env=job_env(shards, run_dir, steps=6), cwd=tmp_path)
    result = wait_job(job, timeout=300)
    assert result.ok, result.describe()
    got = status(run_dir)
    assert (got["status"], got["world_size"], got["num_nodes"]) == ("completed", 2, 2)


def test_sbatch_two_tasks_train_and_a_requeue_mid_training_resumes_from_the_checkpoint(slurm_cluster: SlurmCluster,
                                                                                        shards, tmp_path):
    """slurm/train.sbatch with 2 tasks on one node, submitted from a shell with stray torchrun variables
    (SLURM numbers the ranks all the same); requeued after its first checkpoint, it resumes and completes."""
    run_dir = tmp_path / "run"
    steps = 40  # the requeue comes a poll (0.3 s) after the first checkpoint (step 5): far from the end
    job = sbatch(REPO / "slurm" / "train.sbatch", options=[*CPU_ONLY, "--nodes=1", "--ntasks-per-node=2"],
                 env={**job_env(shards, run_dir, steps=steps), **STRAY_TORCH_ENV}, cwd=tmp_path)
    ckpts = run_dir / "checkpoints"
    poll_until(lambda: ckpts.is_dir() and any(p.name.startswith("step") for p in ckpts.iterdir()), 240,
               "the first checkpoint")
    requeue(job.job_id)
    result = wait_job(job, timeout=400)
    assert result.ok, result.describe()
    assert result.restarts == 1
    got = status(run_dir)
    assert (got["status"], got["step"], got["world_size"], got["launcher"]) == ("completed", steps, 2, "slurm"), got
    assert (run_dir / "checkpoints" / f"step{steps:08d}").is_dir()
    assert 5 <= got["resumed_from"] < steps, got
    print(f"requeued job resumed from step {got['resumed_from']} of {steps}")


def progress(job, total: int) -> int:
    """The last step rank 0's progress line showed in the job's output (0 before the first)."""
    text = "".join(path.read_text(errors="replace") for path in (job.stdout_path, job.stderr_path) if path.is_file())
    counts = re.findall(rf"\btrain: (\d+)/{total}\b", text)
    return int(counts[-1]) if counts else 0


def test_scancel_of_the_step_checkpoints_at_that_step_and_the_requeue_resumes_there(slurm_cluster: SlurmCluster, shards,
                                                                                 tmp_path):
    """What a scheduler does: SIGTERM to every process of the step (both ranks, their loader workers and
    fork servers; ``scancel --signal=TERM JOB.0``), with SIGKILL to follow after KillWait (5 s here).
    The ranks checkpoint the step they reached; the batch script requeues; the new run resumes from
    that step, not from the periodic checkpoint before it."""
    run_dir, steps, every = tmp_path / "run", 60, 20  # TERM at step >= 27: the resumed run still has 30 to go
    job = sbatch(REPO / "slurm" / "train.sbatch", options=[*CPU_ONLY, "--nodes=1", "--ntasks-per-node=2"],
                 env=job_env(shards, run_dir, steps=steps, every=every), cwd=tmp_path)
    poll_until(lambda: (run_dir / "checkpoints" / f"step{every:08d}" / "complete").is_file(), 240, "the first checkpoint")
    poll_until(lambda: progress(job, steps) >= every + 7, 120, "steps past the periodic checkpoint")
    shown = progress(job, steps)
    slurm("scancel", "--signal=TERM", f"{job.job_id}.0")
    release_requeued(job.job_id, timeout=120)
    result = wait_job(job, timeout=600)
    assert result.ok, result.describe()
    assert result.restarts == 1
    got = status(run_dir)
    assert (got["status"], got["step"]) == ("completed", steps), got
    stopped = re.search(r"preempted at step (\d+)/", result.stdout)
    assert stopped, result.describe()
    resumed = got["resumed_from"]
    assert resumed == int(stopped.group(1)) >= shown > every, (resumed, shown)  # where it stopped, not the periodic one
    print(f"scancel --signal=TERM of the step at step >= {shown}: checkpointed at step {resumed} and resumed from it "
          f"(periodic checkpoint before it: {every * (resumed // every)})")


def test_time_limit_without_signal_requeues_from_that_step_and_scancel_stops_with_a_checkpoint(
        slurm_cluster: SlurmCluster, shards, tmp_path):
    """A job script without ``--signal`` reaching its time limit: SLURM sends SIGTERM to the batch shell
    and to every process of the step at once, and SIGKILL after KillWait (5 s here). The ranks
    checkpoint the step they reached within that, the script requeues, and the new run resumes
    there. A user's ``scancel`` of that run then checkpoints too, and is not requeued."""
    script = tmp_path / "train.sbatch"  # the shipped script minus its --signal line, as many users' scripts are
    lines = (REPO / "slurm" / "train.sbatch").read_text().splitlines()
    script.write_text("\n".join(line for line in lines if "--signal" not in line) + "\n")
    run_dir, steps = tmp_path / "run", 100_000  # never finishes: both launches end by a signal
    options = [*(o for o in CPU_ONLY if not o.startswith("--time")), "--time=1", "--nodes=1", "--ntasks-per-node=2"]
    job = sbatch(script, options=options, env=job_env(shards, run_dir, steps=steps, every=20), cwd=tmp_path)
    requeued = lambda: (lambda info: (info.get("JobState"), info.get("Restarts")) == ("PENDING", "1"))(job_info(job.job_id))  # noqa: E731
    poll_until(requeued, 240, "the job to requeue itself after its time limit")
    slurm("scontrol", "update", f"JobId={job.job_id}", "TimeLimit=10")
    release_requeued(job.job_id, timeout=60)
    poll_until(lambda: "train: resumed from step" in job.stdout_path.read_text(), 180, "the requeued run to resume")
    first = re.search(r"preempted at step (\d+)/", job.stdout_path.read_text())
    resumed = re.search(r"train: resumed from step (\d+)", job.stdout_path.read_text())
    assert first and resumed and resumed.group(1) == first.group(1), job.stdout_path.read_text()
    assert "DUE TO TIME LIMIT" in job.stderr_path.read_text()
    # The resumed run is stepping (not still starting up, when a signal has no step to checkpoint at yet)
    after_resume = lambda: job.stdout_path.read_text().split("train: resumed from step", 1)[1]  # noqa: E731
    poll_until(lambda: re.search(r"\btrain: \d+/", after_resume()) is not None, 180, "a step of the resumed run")
    slurm("scancel", str(job.job_id))
    result = wait_job(job, timeout=120)
    assert result.state == "CANCELLED" and result.restarts == 1, result.describe()
    assert "cancelled (scancel): checkpointed, not requeueing" in result.stdout, result.describe()
    got = status(run_dir)
    assert got["status"] == "preempted" and got["step"] > int(first.group(1)), got
    assert got["resumed_from"] == int(first.group(1)), got
    assert (run_dir / "checkpoints" / f"step{got['step']:08d}" / "complete").is_file()
    print(f"time limit: checkpoint at step {first.group(1)}, requeued run resumed from it; "
          f"scancel: checkpoint at step {got['step']}, not requeued")


def submit(shards: Path, run_dir: Path, logs: Path, steps: int) -> subprocess.Popen:
    """launch/submit.py --wait as a user runs it, 2 tasks on one node of the local cluster."""
    sets = [arg for o in overrides(shards, steps=steps) for arg in ("--set", o)]
    cmd = [sys.executable, str(REPO / "launch" / "submit.py"), "--cluster", "slurm", "--config", CONFIG,
           "--run-dir", str(run_dir), *sets, "--nodes", "1", "--tasks-per-node", "2", "--cpus-per-task", "1",
           "--partition", "debug", "--time", "10", "--logs", str(logs), "--wait"]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **CPU_ENV, **STRAY_TORCH_ENV, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_submitit_trains_two_tasks_and_preemption_checkpoints_requeues_and_resumes(slurm_cluster: SlurmCluster, shards,
                                                                                   tmp_path):
    """launch/submit.py --wait, 2 tasks: SIGUSR2 (submitit's preemption signal) to the ranks after the first
    checkpoint: they checkpoint, submitit requeues, the run resumes and completes; --wait returns then, 0."""
    run_dir, steps = tmp_path / "run", 40  # USR2 comes a poll (0.3 s) after the first checkpoint (step 5)
    proc = submit(shards, run_dir, tmp_path / "submitit", steps=steps)
    try:
        first = proc.stdout.readline()
        submitted = re.search(r"submitted job (\d+)", first)
        assert submitted, first + proc.stderr.read()[-3000:]
        job_id = int(submitted.group(1))
        ckpts = run_dir / "checkpoints"
        poll_until(lambda: ckpts.is_dir() and any(p.name.startswith("step") for p in ckpts.iterdir()), 240,
                   "the first checkpoint")
        slurm("scancel", "--signal=USR2", str(job_id))
        release_requeued(job_id, timeout=120)
        wait_state(job_id, {"COMPLETED"}, timeout=400)
        rest, stderr = proc.communicate(timeout=120)  # --wait: the job's result, once the requeued run ended
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest[-2000:] + stderr[-3000:]
    assert json.loads(rest.strip().splitlines()[-1]), rest
    assert int(job_info(job_id).get("Restarts", "0")) == 1
    got = status(run_dir)
    assert (got["status"], got["step"], got["world_size"], got["launcher"]) == ("completed", steps, 2, "submitit"), got
    assert (run_dir / "checkpoints" / f"step{steps:08d}").is_dir()
    assert 5 <= got["resumed_from"] < steps, got
    print(f"submitit job resumed from step {got['resumed_from']} of {steps}")
